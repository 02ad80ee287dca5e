"""One adapter for Segment Anything (vit_h / vit_l / vit_b) and MobileSAM (vit_t).

Both packages build the same ``Sam`` module (image encoder, prompt encoder, mask decoder);
only the image encoder differs. The variants come from a plain dict registry. Checkpoints
are plain state dicts loaded with ``torch.load(map_location=device, weights_only=True)``;
nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlsam_ros.core.config import SamConfig, VlsamConfig
from vlsam_ros.core.device import resolve_device
from vlsam_ros.core.errors import ModelNotFoundError
from vlsam_ros.core.segmenter.base import LOW_RES_MASK_SIZE, SegmentationBatch


@dataclasses.dataclass(frozen=True)
class SamVariant:
    """Where a SAM variant's builder lives and which official checkpoint it loads."""

    module: str          # python package that builds it
    builder: str         # function name in ``<module>.build_sam``; called with checkpoint=None
    checkpoint_file: str  # official file name
    checkpoint_url: str  # where the official file is published


SAM_VARIANTS: dict[str, SamVariant] = {
    "vit_h": SamVariant("segment_anything", "build_sam_vit_h", "sam_vit_h_4b8939.pth",
                        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"),
    "vit_l": SamVariant("segment_anything", "build_sam_vit_l", "sam_vit_l_0b3195.pth",
                        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth"),
    "vit_b": SamVariant("segment_anything", "build_sam_vit_b", "sam_vit_b_01ec64.pth",
                        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"),
    "vit_t": SamVariant(
        "mobile_sam", "build_sam_vit_t", "mobile_sam.pt",
        "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"),
}


def _import_package(name: str) -> Any:
    """Imports segment_anything / mobile_sam, hiding timm's import-time deprecation noise
    that mobile_sam triggers (it re-registers TinyViT names in timm's registry)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"timm\..*")
        warnings.filterwarnings("ignore", message=r"Overwriting tiny_vit_.*", category=UserWarning)
        return importlib.import_module(name)


def build_sam_model(sam_type: str) -> torch.nn.Module:
    """Builds the architecture of ``sam_type`` with random weights (checkpoint=None), in eval
    mode on the CPU. Seed torch beforehand for reproducible weights."""
    if sam_type not in SAM_VARIANTS:
        raise ValueError(f"unknown SAM type {sam_type!r}; expected one of {sorted(SAM_VARIANTS)}")
    variant = SAM_VARIANTS[sam_type]
    package = _import_package(variant.module)
    builder = getattr(package, "sam_model_registry")[sam_type]
    model = builder(checkpoint=None)
    return model.eval()


def load_sam_model(sam_type: str, checkpoint: str | Path, device: torch.device) -> torch.nn.Module:
    """Builds ``sam_type`` and loads the state dict at ``checkpoint`` onto ``device``.

    Raises ModelNotFoundError (saying what to download and which key to set) when the file
    is missing.
    """
    variant = SAM_VARIANTS.get(sam_type)
    if variant is None:
        raise ValueError(f"unknown SAM type {sam_type!r}; expected one of {sorted(SAM_VARIANTS)}")
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(
            f"SAM checkpoint for sam.type={sam_type} not found at '{path}'. Download the "
            f"official {variant.checkpoint_file} ({variant.checkpoint_url}) and set "
            f"sam.checkpoint to its path, or build tiny random test weights with "
            f"`vlsam-make-tiny-models`.")
    model = build_sam_model(sam_type)
    state = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval()


@dataclasses.dataclass(frozen=True)
class SamEmbedding:
    """Image encoder output for one image.

    features: float (1, 256, 64, 64) on the model's device.
    original_size: (H, W) of the image given to ``embed``.
    input_size: (h, w) of the resized image before padding to the encoder's square input.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class SamSegmenter:
    """PromptableSegmenter over a segment_anything / mobile_sam ``Sam`` module."""

    def __init__(self, model: torch.nn.Module, sam_cfg: SamConfig):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        transforms = _import_package("segment_anything.utils.transforms")
        # The exact resize SAM was trained with (PIL bilinear, longest side to img_size).
        self.resize = transforms.ResizeLongestSide(int(model.image_encoder.img_size))
        self.multimask = sam_cfg.multimask
        self.mask_threshold = sam_cfg.mask_threshold

    def configure(self, sam_cfg: SamConfig) -> None:
        """Applies multimask and mask_threshold from the next ``segment`` call on."""
        self.multimask = sam_cfg.multimask
        self.mask_threshold = sam_cfg.mask_threshold

    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> SamEmbedding:
        """Runs the image encoder once. image: RGB uint8 (H, W, 3)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"embed expects RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        resized = self.resize.apply_image(np.ascontiguousarray(image))          # (h, w, 3) uint8
        input_size = (int(resized.shape[0]), int(resized.shape[1]))
        x = torch.from_numpy(resized).to(self.device).permute(2, 0, 1)[None].float()
        features = self.model.image_encoder(self.model.preprocess(x))          # (1, 256, 64, 64)
        return SamEmbedding(features, (height, width), input_size)

    @torch.inference_mode()
    def segment(self, embedding: SamEmbedding, points: np.ndarray, labels: np.ndarray,
                mask_logits: np.ndarray | None = None) -> SegmentationBatch:
        """One batched decoder call for K prompts (see PromptableSegmenter.segment).

        With multimask, SAM returns 3 candidates per prompt and the one with the highest
        predicted IoU is kept; otherwise SAM's single-mask output is used.
        """
        points = np.asarray(points, dtype=np.float32)
        labels = np.asarray(labels)
        if points.ndim != 3 or points.shape[2] != 2 or labels.shape != points.shape[:2]:
            raise ValueError(f"points must be (K, P, 2) and labels (K, P); got {points.shape} "
                             f"and {labels.shape}")
        k = points.shape[0]
        if mask_logits is not None and mask_logits.shape != (k, 1, LOW_RES_MASK_SIZE,
                                                             LOW_RES_MASK_SIZE):
            raise ValueError(f"mask_logits must be ({k}, 1, {LOW_RES_MASK_SIZE}, "
                             f"{LOW_RES_MASK_SIZE}); got {mask_logits.shape}")
        height, width = embedding.original_size
        in_h, in_w = embedding.input_size
        coords = torch.from_numpy(points).to(self.device)                       # (K, P, 2)
        scale = torch.tensor([in_w / width, in_h / height], device=self.device)
        # Continuous pixel coords -> SAM's convention (it adds 0.5 itself: index frame).
        coords = coords * scale - 0.5
        label_t = torch.from_numpy(labels.astype(np.int64)).to(self.device)     # (K, P)
        mask_t = None
        if mask_logits is not None:
            mask_t = torch.from_numpy(np.ascontiguousarray(mask_logits, dtype=np.float32))
            mask_t = mask_t.to(self.device)
        sparse, dense = self.model.prompt_encoder(points=(coords, label_t), boxes=None,
                                                  masks=mask_t)
        low_res, iou = self.model.mask_decoder(
            image_embeddings=embedding.features,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=self.multimask,
        )                                                      # (K, C, 256, 256), (K, C)
        best = iou.argmax(dim=1)                                                # (K,)
        rows = torch.arange(k, device=self.device)
        low_res = low_res[rows, best][:, None]                                  # (K, 1, 256, 256)
        iou = iou[rows, best]                                                   # (K,)
        full = self.model.postprocess_masks(low_res, embedding.input_size,
                                            embedding.original_size)           # (K, 1, H, W)
        masks = (full[:, 0] > self.mask_threshold).cpu().numpy()
        return SegmentationBatch(masks=masks,
                                 iou_predictions=iou.float().cpu().numpy(),
                                 low_res_logits=low_res.float().cpu().numpy())


def load_segmenter(cfg: VlsamConfig) -> SamSegmenter:
    """Builds the segmenter named by ``cfg.sam`` on ``cfg.device``.

    Raises ModelNotFoundError when the checkpoint is missing and DeviceUnavailableError
    when the device does not exist.
    """
    device = resolve_device(cfg.device)
    model = load_sam_model(cfg.sam.type, cfg.sam.checkpoint, device)
    return SamSegmenter(model, cfg.sam)
