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
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from vlsam_ros.core import cancellation
from vlsam_ros.core.config import SamConfig, VlsamConfig
from vlsam_ros.core.device import resolve_device
from vlsam_ros.core.errors import ModelLoadError, ModelNotFoundError
from vlsam_ros.core.segmenter.base import (LOW_RES_MASK_SIZE, SAM_MASK_PROMPT_FRAME,
                                          SegmentationBatch, box_prompts, point_prompts)
from vlsam_ros.core.segmenter.factored_decoder import (
    ImageSideCache, build_image_side_cache, decode_best_masks)

CPU_DECODER_CHUNK = 2
"""Prompts per factored-decoder chunk on CPU when ``sam.decoder_chunk`` is 0: each prompt
carries a (4096, 256) float32 image state (4 MB), and two of them kept the fastest time in
``bench/segment.py`` on the 2-core development CPU (L2 2 MB per core, L3 32 MB)."""

CUDA_DECODER_CHUNK = 64
"""Prompts per factored-decoder chunk on CUDA when ``sam.decoder_chunk`` is 0. Each prompt
needs about 30 MB of transient float32 tensors (image states of 4096 x 256, upscaling
tensors of 4096 x 4 x 64 and 4096 x 16 x 32), so 64 prompts stay near 2 GB; estimated from
the tensor shapes, not measured on a GPU (none was available)."""


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
    builder = package.sam_model_registry[sam_type]
    model = builder(checkpoint=None)
    return model.eval()


_PICKLE_PROTO = b"\x80"  # first byte of a pickle (torch.save's legacy, non-zip format)

_VIT_TYPES_BY_WIDTH = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
"""Width of the ViT image encoder (last dim of ``image_encoder.pos_embed``) per SAM type."""


def checkpoint_sam_type(state: Any) -> str | None:
    """The SAM type a state dict was saved from ('vit_t', 'vit_b', 'vit_l', 'vit_h'), or None
    when it does not look like a SAM/MobileSAM checkpoint at all.

    MobileSAM's TinyViT encoder has ``image_encoder.patch_embed.seq.*`` / ``layers.*``
    weights; SAM's ViT encoders have ``image_encoder.pos_embed`` of shape
    (1, 64, 64, width) with width 768 / 1024 / 1280 for vit_b / vit_l / vit_h.
    """
    if not isinstance(state, Mapping):
        return None
    keys = [k for k in state if isinstance(k, str)]
    if any(k.startswith(("image_encoder.patch_embed.seq.", "image_encoder.layers."))
           for k in keys):
        return "vit_t"
    pos = state.get("image_encoder.pos_embed")
    if isinstance(pos, torch.Tensor) and pos.ndim == 4:
        return _VIT_TYPES_BY_WIDTH.get(int(pos.shape[-1]))
    return None


def _read_checkpoint(path: Path, sam_type: str, variant: SamVariant,
                     device: torch.device) -> Mapping[str, Any]:
    """The state dict at ``path``; ModelLoadError naming the file when it is not a
    SAM/MobileSAM checkpoint of ``sam_type``."""
    get_it = (f"Download the official {variant.checkpoint_file} ({variant.checkpoint_url}) "
              f"and set sam.checkpoint to its path, or build tiny random test weights with "
              f"`vlsam-make-tiny-models`.")
    with path.open("rb") as f:
        head = f.read(1)
    if not zipfile.is_zipfile(path) and head != _PICKLE_PROTO:
        raise ModelLoadError(
            f"SAM checkpoint '{path}' (sam.checkpoint) is not a PyTorch checkpoint (neither "
            f"torch.save's zip archive nor a pickle): the file is damaged (truncated "
            f"download?) or of another kind. "
            f"{get_it}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- pickle, zip and torch errors of a bad file
        detail = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ModelLoadError(
            f"SAM checkpoint '{path}' (sam.checkpoint) cannot be read as a PyTorch state dict "
            f"({type(exc).__name__}: {detail}); the file is damaged (truncated download?) or "
            f"of another kind. {get_it}") from None
    found = checkpoint_sam_type(state)
    if found is None:
        raise ModelLoadError(
            f"SAM checkpoint '{path}' (sam.checkpoint) is a PyTorch file but not a "
            f"SAM/MobileSAM state dict (no image_encoder weights). {get_it}")
    if found != sam_type:
        raise ModelLoadError(
            f"SAM checkpoint '{path}' (sam.checkpoint) holds {found} weights "
            f"({SAM_VARIANTS[found].module}), but sam.type is {sam_type}: set sam.type: "
            f"{found}, or point sam.checkpoint at a {sam_type} checkpoint "
            f"({variant.checkpoint_file}).")
    return state


def load_sam_model(sam_type: str, checkpoint: str | Path, device: torch.device) -> torch.nn.Module:
    """Builds ``sam_type`` and loads the state dict at ``checkpoint`` onto ``device``.

    Raises ModelNotFoundError (saying what to download and which key to set) when the file
    is missing, ModelLoadError (naming the file and the key) when it is not a checkpoint of
    ``sam_type``: unreadable, not a SAM state dict, or another SAM type's weights.
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
    state = _read_checkpoint(path, sam_type, variant, device)
    model = build_sam_model(sam_type)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # missing/unexpected keys or shape mismatches
        detail = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ModelLoadError(
            f"SAM checkpoint '{path}' (sam.checkpoint) does not fit the {sam_type} "
            f"architecture ({detail}); use the official {variant.checkpoint_file} "
            f"({variant.checkpoint_url}) or set sam.type to the checkpoint's type.") from None
    return model.to(device).eval()


@dataclasses.dataclass(frozen=True)
class SamEmbedding:
    """Image encoder output for one image.

    features: float (1, 256, 64, 64) on the model's device.
    original_size: (H, W) of the image given to ``embed``.
    input_size: (h, w) of the resized image before padding to the encoder's square input.
    decoder_cache: the prompt-independent decoder work for this image, filled by the first
        factored ``segment`` call without mask prompts and reused by later ones.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    decoder_cache: dict[str, ImageSideCache] = dataclasses.field(
        default_factory=dict, compare=False, repr=False)


class SamSegmenter:
    """PromptableSegmenter over a segment_anything / mobile_sam ``Sam`` module."""

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        transforms = _import_package("segment_anything.utils.transforms")
        # The exact resize SAM was trained with (PIL bilinear, longest side to img_size).
        self.resize = transforms.ResizeLongestSide(int(model.image_encoder.img_size))
        for block in _encoder_blocks(model.image_encoder):  # cancellation safe points
            block.register_forward_pre_hook(_encoder_safe_point)

    @property
    def mask_prompt_frame(self) -> tuple[int, bool]:
        """SAM_MASK_PROMPT_FRAME (PromptableSegmenter.mask_prompt_frame)."""
        return SAM_MASK_PROMPT_FRAME

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
                mask_logits: np.ndarray | None = None, boxes: np.ndarray | None = None,
                *, sam_cfg: SamConfig) -> SegmentationBatch:
        """One batched decoder call for K prompts (see PromptableSegmenter.segment).

        With multimask, SAM returns 3 candidates per prompt and the one with the highest
        predicted IoU is kept; otherwise SAM's single-mask output is used. ``sam.decoder``
        picks the factored evaluation (default) or the package's stock decoder.
        """
        points, labels = point_prompts(points, labels)
        k = points.shape[0]
        if mask_logits is not None and mask_logits.shape != (k, 1, LOW_RES_MASK_SIZE,
                                                             LOW_RES_MASK_SIZE):
            raise ValueError(f"mask_logits must be ({k}, 1, {LOW_RES_MASK_SIZE}, "
                             f"{LOW_RES_MASK_SIZE}); got {mask_logits.shape}")
        boxes = box_prompts(boxes, k)
        height, width = embedding.original_size
        if k == 0:
            return SegmentationBatch(
                masks=np.zeros((0, height, width), dtype=bool),
                iou_predictions=np.zeros((0,), dtype=np.float32),
                low_res_logits=np.zeros((0, 1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE),
                                        dtype=np.float32))
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
        box_t = None
        if boxes is not None:  # box corners: SAM's prompt encoder adds the 0.5 itself
            box_t = torch.from_numpy(boxes).to(self.device) * scale.repeat(2)    # (K, 4)
        sparse, dense = self.model.prompt_encoder(points=(coords, label_t), boxes=box_t,
                                                  masks=mask_t)
        if sam_cfg.decoder == "factored":
            low_res, iou = self._decode_factored(embedding, sparse,
                                                 None if mask_t is None else dense, sam_cfg)
        else:
            low_res, iou = self._decode_stock(embedding, sparse, dense, sam_cfg.multimask)
        full = self.model.postprocess_masks(low_res, embedding.input_size,
                                            embedding.original_size)           # (K, 1, H, W)
        masks = (full[:, 0] > sam_cfg.mask_threshold).cpu().numpy()
        return SegmentationBatch(masks=masks,
                                 iou_predictions=iou.float().cpu().numpy(),
                                 low_res_logits=low_res.float().cpu().numpy())

    def _decode_stock(self, embedding: SamEmbedding, sparse: torch.Tensor,
                      dense: torch.Tensor, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The package's MaskDecoder on all K prompts at once, then the best mask per
        prompt. Returns low-res logits (K, 1, 256, 256) and IoU (K,)."""
        low_res, iou = self.model.mask_decoder(
            image_embeddings=embedding.features,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )                                                      # (K, C, 256, 256), (K, C)
        best = iou.argmax(dim=1)                                                # (K,)
        rows = torch.arange(iou.shape[0], device=self.device)
        return low_res[rows, best][:, None], iou[rows, best]

    def _decode_factored(self, embedding: SamEmbedding, sparse: torch.Tensor,
                         dense: torch.Tensor | None,
                         sam_cfg: SamConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """The factored decoder (factored_decoder.py); without mask prompts it reuses the
        embedding's image-side cache. Returns low-res logits (K, 1, 256, 256) and IoU (K,)."""
        cache = None
        if dense is None:
            cache = embedding.decoder_cache.get("image_side")
            if cache is None:
                cache = build_image_side_cache(self.model, embedding.features)
                embedding.decoder_cache["image_side"] = cache
        chunk = sam_cfg.decoder_chunk
        if chunk == 0:
            chunk = CPU_DECODER_CHUNK if self.device.type == "cpu" else CUDA_DECODER_CHUNK
        return decode_best_masks(self.model, embedding.features, sparse, dense,
                                 sam_cfg.multimask, cache, chunk)


def _encoder_blocks(encoder: torch.nn.Module) -> list[torch.nn.Module]:
    """The sequential blocks of a SAM ViT (``blocks``: 12-32 transformer blocks) or MobileSAM
    TinyViT (``layers``, each a ModuleList of ``blocks`` plus a downsampling step) image
    encoder, before each of which a cancelled frame may stop."""
    out: list[torch.nn.Module] = []
    for name in ("blocks", "layers"):
        stages = getattr(encoder, name, None)
        if isinstance(stages, torch.nn.ModuleList):
            for stage in stages:
                inner = getattr(stage, "blocks", None)
                out.extend(inner if isinstance(inner, torch.nn.ModuleList) else [stage])
                downsample = getattr(stage, "downsample", None)
                if isinstance(downsample, torch.nn.Module):
                    out.append(downsample)
    return out


def _encoder_safe_point(module: torch.nn.Module, args: Any) -> None:
    cancellation.check("in the SAM image encoder")


def load_segmenter(cfg: VlsamConfig) -> Any:
    """Builds the segmenter named by ``cfg.sam`` on ``cfg.device``: ``sam.backend`` 'sam'
    loads ``sam.type`` from ``sam.checkpoint`` (SamSegmenter); 'sam2', 'edgetam' and
    'sam_hq' load the transformers folder ``sam.model`` (hf_sam.HfSamSegmenter).

    Raises ModelNotFoundError when the checkpoint is missing and DeviceUnavailableError
    when the device does not exist.
    """
    device = resolve_device(cfg.device)
    if cfg.sam.backend != "sam":
        from vlsam_ros.core.segmenter.hf_sam import load_hf_sam

        return load_hf_sam(cfg.sam, device)
    model = load_sam_model(cfg.sam.type, cfg.sam.checkpoint, device)
    return SamSegmenter(model)
