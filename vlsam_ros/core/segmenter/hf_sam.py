"""SAM 2.1, EdgeTAM and SAM-HQ image segmenters through transformers.

One adapter, :class:`HfSamSegmenter`, serves the three families; they differ only in the
model and processor classes, in how the processor fits the image to the model's square
input, and in what the image encoder returns (:class:`HfSamFamily`):

* SAM 2.1 / EdgeTAM (``Sam2Model`` / ``EdgeTamModel``, ``Sam2Processor``): the image is
  resized to the square input (aspect ratio not kept); the encoder returns three feature
  maps (two high-resolution ones used by the decoder's upscaling, then the 1/16 grid);
* SAM-HQ (``SamHQModel``, ``SamHQProcessor``): SAM's resize of the longest side plus
  bottom/right padding; the encoder returns the 1/16 grid plus the ViT's intermediate
  embeddings, which the HQ decoder fuses.

Contract (PromptableSegmenter): ``embed`` runs the processor and the image encoder once per
view; ``segment`` runs the model's own forward on those embeddings for K prompts at once
(each prompt as one batch row with its own optional mask prompt, the embeddings expanded,
not copied), keeps the candidate with the highest predicted IoU per prompt, and upsamples
its logits with the processor's ``post_process_masks``.

Frames: input points are continuous pixel coordinates of the embedded image (x right, y
down, pixel (r, c) centred at (c + 0.5, r + 0.5)); the models add 0.5 to their input
(index-frame) coordinates, so a point x maps to ``x * s - 0.5`` in the model's input frame
(s = input size / image size per axis). Box corners map to ``corner * s``. Mask logits are
the model's low-resolution logits (K, 1, S, S), S = input side / 4 (256 for the published
1024-pixel models); a mask prompt of another square size is resized by the model itself.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlsam_ros.core import cancellation
from vlsam_ros.core.config import SamConfig
from vlsam_ros.core.device import TORCH_DTYPES
from vlsam_ros.core.errors import ModelLoadError, ModelNotFoundError
from vlsam_ros.core.segmenter.base import SegmentationBatch, box_prompts, point_prompts



@dataclasses.dataclass(frozen=True)
class HfSamFamily:
    """One promptable-segmenter family of transformers.

    backend: the ``sam.backend`` value. model_types: accepted ``model_type`` values of the
    folder's config.json. square_resize: the processor resizes to the square input (SAM 2
    family) rather than SAM's longest side + padding. intermediate: the encoder also returns
    intermediate ViT embeddings the decoder needs (SAM-HQ). checkpoints: published hub ids
    in transformers format (for messages and the README).
    """

    backend: str
    model_types: tuple[str, ...]
    model_class: str
    processor_class: str
    square_resize: bool
    intermediate: bool
    checkpoints: tuple[str, ...]

    def classes(self) -> tuple[type, type]:
        module = importlib.import_module("transformers")
        return getattr(module, self.model_class), getattr(module, self.processor_class)


HF_SAM_FAMILIES: dict[str, HfSamFamily] = {
    "sam2": HfSamFamily("sam2", ("sam2",), "Sam2Model", "Sam2Processor", True, False,
                        ("facebook/sam2.1-hiera-tiny", "facebook/sam2.1-hiera-small",
                         "facebook/sam2.1-hiera-base-plus", "facebook/sam2.1-hiera-large")),
    "edgetam": HfSamFamily("edgetam", ("edgetam",), "EdgeTamModel", "Sam2Processor", True,
                           False, ("yonigozlan/EdgeTAM-hf",)),
    "sam_hq": HfSamFamily("sam_hq", ("sam_hq",), "SamHQModel", "SamHQProcessor", False, True,
                          ("syscv-community/sam-hq-vit-base", "syscv-community/sam-hq-vit-large",
                           "syscv-community/sam-hq-vit-huge")),
}
"""``sam.backend`` -> family (``sam`` itself is segment_anything / mobile_sam)."""


def download_hint(family: HfSamFamily, path: Path) -> str:
    """What to download for ``family`` and where to put it."""
    ids = ", ".join(family.checkpoints)
    return (f"Download a {family.backend} checkpoint in transformers format ({ids}), e.g. "
            f"`huggingface-cli download {family.checkpoints[0]} --local-dir {path}`, and set "
            f"sam.model to that folder; or build tiny random test weights with "
            f"`vlsam-make-tiny-models`.")


def read_model_type(path: Path, what: str, hint: str) -> str:
    """``model_type`` of the save_pretrained folder ``path``. Raises ModelNotFoundError
    (saying ``hint``) when there is no config.json, ModelLoadError when it is unreadable."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(f"{what} not found at '{path}' (no config.json). {hint}")
    try:
        return str(json.loads(config_file.read_text()).get("model_type", ""))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{what}: '{config_file}' is not a readable JSON model config "
                             f"({exc}). {hint}") from None


def load_hf_sam(sam_cfg: SamConfig, device: torch.device) -> HfSamSegmenter:
    """Loads the ``sam.backend`` family from the local folder ``sam.model`` (save_pretrained
    layout: config.json, weights, processor_config.json) in ``sam.dtype`` on ``device``.
    Nothing is downloaded. Raises ModelNotFoundError for a missing folder and
    ModelLoadError for a folder of another model family or without its processor."""
    family = HF_SAM_FAMILIES[sam_cfg.backend]
    path = Path(sam_cfg.model).expanduser()
    hint = download_hint(family, path)
    model_type = read_model_type(path, f"{family.backend} segmenter (sam.model)", hint)
    if model_type not in family.model_types:
        backends = [f.backend for f in HF_SAM_FAMILIES.values() if model_type in f.model_types]
        fix = f"set sam.backend: {backends[0]}" if backends else "use a matching folder"
        raise ModelLoadError(f"sam.model '{path}' holds a {model_type!r} model, but "
                             f"sam.backend is {family.backend} ({fix}). {hint}")
    model_class, processor_class = family.classes()
    model = model_class.from_pretrained(path, local_files_only=True,
                                        dtype=TORCH_DTYPES[sam_cfg.dtype])
    try:
        processor = processor_class.from_pretrained(path, local_files_only=True)
    except OSError as exc:
        raise ModelLoadError(f"sam.model '{path}' has no usable {processor_class} "
                             f"(processor_config.json): {exc}. {hint}") from None
    return HfSamSegmenter(model.to(device).eval(), processor, family)


@dataclasses.dataclass(frozen=True)
class HfSamEmbedding:
    """Image encoder output for one image (batch of 1, on the model's device).

    features: the decoder's image inputs: SAM 2 family: (s0 (1, C0, 4g, 4g), s1 (1, C1,
        2g, 2g), grid (1, 256, g, g)); SAM-HQ: (grid (1, 256, g, g),).
    intermediate: SAM-HQ's intermediate ViT embeddings, each (1, g, g, D); () otherwise.
    original_size: (H, W) of the embedded image. input_size: (h, w) of the resized image
        inside the model's square input (the square itself for the SAM 2 family).
    """

    features: tuple[torch.Tensor, ...]
    intermediate: tuple[torch.Tensor, ...]
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class HfSamSegmenter:
    """PromptableSegmenter over a transformers Sam2Model / EdgeTamModel / SamHQModel."""

    def __init__(self, model: torch.nn.Module, processor: Any, family: HfSamFamily) -> None:
        self.model = model.eval()
        self.processor = processor
        self.family = family
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    @property
    def input_side(self) -> int:
        """Side of the model's square input, pixels."""
        return int(self.model.config.prompt_encoder_config.image_size)

    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> HfSamEmbedding:
        """Processor + image encoder once. image: RGB uint8 (H, W, 3)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"embed expects RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
        cancellation.check("before the SAM image encoder")
        inputs = self.processor(images=np.ascontiguousarray(image), return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        height, width = image.shape[:2]
        if self.family.intermediate:
            grid, intermediate = self.model.get_image_embeddings(pixels)
            features, extra = (grid,), tuple(intermediate)
        else:
            features, extra = tuple(self.model.get_image_embeddings(pixels)), ()
        if "reshaped_input_sizes" in inputs:
            in_h, in_w = (int(v) for v in inputs["reshaped_input_sizes"][0])
        else:
            in_h, in_w = (int(v) for v in pixels.shape[-2:])
        return HfSamEmbedding(features, extra, (height, width), (in_h, in_w))

    @property
    def mask_prompt_frame(self) -> tuple[int, bool]:
        """(S, square_resize): side of the low-resolution logits and whether the image is
        stretched to the square (SAM 2 family) rather than resized and padded (SAM-HQ), for
        mask prompts made from a mask (``followers.mask_to_low_res_logits``)."""
        return self.input_side // 4, self.family.square_resize

    def model_frame(self, embedding: HfSamEmbedding) -> tuple[float, float]:
        """(s_x, s_y): model input pixels per image pixel, as the processor scales points."""
        height, width = embedding.original_size
        in_h, in_w = embedding.input_size
        return in_w / width, in_h / height

    @torch.inference_mode()
    def segment(self, embedding: HfSamEmbedding, points: np.ndarray, labels: np.ndarray,
                mask_logits: np.ndarray | None = None, boxes: np.ndarray | None = None,
                *, sam_cfg: SamConfig) -> SegmentationBatch:
        """One batched model call for K prompts (see PromptableSegmenter.segment); uses
        multimask, mask_threshold and hq_token_only (SAM-HQ) of ``sam_cfg``."""
        points, labels = point_prompts(points, labels)
        k = points.shape[0]
        side = self.input_side // 4
        if mask_logits is not None and (mask_logits.ndim != 4 or mask_logits.shape[:2] != (k, 1)
                                        or mask_logits.shape[2] != mask_logits.shape[3]):
            raise ValueError(f"mask_logits must be ({k}, 1, S, S); got {mask_logits.shape}")
        boxes = box_prompts(boxes, k)
        height, width = embedding.original_size
        if k == 0:
            return SegmentationBatch(np.zeros((0, height, width), bool),
                                     np.zeros((0,), np.float32),
                                     np.zeros((0, 1, side, side), np.float32))
        s_x, s_y = self.model_frame(embedding)
        coords = torch.from_numpy(points.copy())
        coords[..., 0] = (coords[..., 0] - 0.5 / s_x) * s_x       # the processor's scaling of
        coords[..., 1] = (coords[..., 1] - 0.5 / s_y) * s_y       # index-frame points
        kwargs: dict[str, Any] = {
            "input_points": coords[:, None].to(self.device, self.dtype),            # (K,1,P,2)
            "input_labels": torch.from_numpy(labels.astype(np.int64))[:, None].to(self.device),
            "multimask_output": sam_cfg.multimask,
        }
        if boxes is not None:
            box_t = torch.from_numpy(boxes.copy())
            box_t[:, 0::2] *= s_x
            box_t[:, 1::2] *= s_y
            kwargs["input_boxes"] = box_t[:, None].to(self.device, self.dtype)       # (K,1,4)
        if mask_logits is not None:
            kwargs["input_masks"] = torch.from_numpy(
                np.ascontiguousarray(mask_logits, dtype=np.float32)).to(self.device, self.dtype)
        grid_like = [f.expand(k, *f.shape[1:]) for f in embedding.features]
        if self.family.intermediate:
            kwargs["intermediate_embeddings"] = [t.expand(k, *t.shape[1:])
                                                 for t in embedding.intermediate]
            kwargs["hq_token_only"] = sam_cfg.hq_token_only
            out = self.model(image_embeddings=grid_like[0], **kwargs)
        else:
            out = self.model(image_embeddings=grid_like, **kwargs)
        low_res, iou = best_candidates(out.pred_masks[:, 0], out.iou_scores[:, 0])
        full = self.upsample(low_res, embedding)                                  # (K, H, W)
        return SegmentationBatch(masks=(full > sam_cfg.mask_threshold).cpu().numpy(),
                                 iou_predictions=iou.float().cpu().numpy(),
                                 low_res_logits=low_res.float().cpu().numpy())

    def upsample(self, low_res: torch.Tensor, embedding: HfSamEmbedding) -> torch.Tensor:
        """Low-resolution logits (K, 1, S, S) -> float logits (K, H, W) of the embedded image,
        by the processor's ``post_process_masks`` (unpadding and resizing included)."""
        sizes = [list(embedding.original_size)]
        if self.family.square_resize:
            full = self.processor.post_process_masks(low_res[None].float(), sizes,
                                                     binarize=False)[0]
        else:
            full = self.processor.post_process_masks(low_res[None].float(), sizes,
                                                     [list(embedding.input_size)],
                                                     binarize=False)[0]
        return full[:, 0]


def best_candidates(masks: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per prompt, the candidate mask with the highest predicted IoU.
    masks: (K, M, S, S) logits; iou: (K, M). Returns (K, 1, S, S) and (K,)."""
    best = iou.argmax(dim=1)
    rows = torch.arange(iou.shape[0], device=iou.device)
    return masks[rows, best][:, None], iou[rows, best]
