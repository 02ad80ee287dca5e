"""How the camera frame is prepared for the VLM (``vlm.image_fit`` and the pixel budgets).

Checkpoint processors are made for photos of one subject. ``llava-hf/llava-1.5-7b-hf``
resizes the short side to 336 and centre-crops 336 x 336, so the VLM sees the middle 56 %
of a 1600 x 900 frame's columns (30 % of a 1242 x 375 one) and never names what lies
outside. With ``image_fit = 'whole'`` (default) every family sees the whole frame:

* llava: pad to a centred square with the image-mean colour, then resize, no crop: the
  ``expand2square`` LLaVA-1.5 was trained with. A checkpoint whose image processor cannot
  pad (``CLIPImageProcessor``) gets a ``LlavaImageProcessor`` with the same values.
* llava_next: anyres already keeps everything (the base image is resized to the tile size,
  not cropped; the high-resolution image is resized to fit the chosen grid and padded, and
  the model drops the padding). Only the grid pinpoints budget applies.
* qwen2_vl: dynamic resolution resizes the whole frame to multiples of 28 px within a pixel
  range; the range budget applies.
* idefics3: image splitting on (tiles of the resized frame plus a global image); the
  longest-edge budget applies.

``image_fit = 'processor'`` keeps the checkpoint's image processor exactly as saved and
ignores the budgets. Nothing here edits the saved checkpoint: the backend builds a fitted
copy of the processor (``fit_processor``).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from vlsam_ros.core.config import ConfigError, VlmConfig, parse_grid_pinpoints


@dataclasses.dataclass(frozen=True)
class ImageFit:
    """The image-preparation part of ``VlmConfig`` (hashable: fitted processors are cached
    per value). Budgets of 0 / () mean 'the checkpoint's own value'."""

    mode: str = "whole"                                   # 'whole' | 'processor'
    qwen_min_pixels: int = 0
    qwen_max_pixels: int = 0
    idefics3_longest_edge: int = 0
    llava_next_grid_pinpoints: tuple[tuple[int, int], ...] = ()   # (height, width) pairs

    @classmethod
    def from_config(cls, cfg: VlmConfig) -> "ImageFit":
        return cls(mode=cfg.image_fit, qwen_min_pixels=cfg.qwen_min_pixels,
                   qwen_max_pixels=cfg.qwen_max_pixels,
                   idefics3_longest_edge=cfg.idefics3_longest_edge,
                   llava_next_grid_pinpoints=parse_grid_pinpoints(cfg.llava_next_grid_pinpoints))


def _size(size: Any, key: str) -> int | None:
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return None if value is None else int(value)


def _llava_whole(image_processor):
    """Pad-to-square (image-mean colour), resize, no centre crop."""
    from transformers import LlavaImageProcessor

    if hasattr(image_processor, "pad_to_square"):
        fitted = copy.deepcopy(image_processor)
    else:   # e.g. CLIPImageProcessor: same values in the processor class that can pad
        values = {k: v for k, v in image_processor.to_dict().items()
                  if k in LlavaImageProcessor.valid_kwargs.__annotations__}
        fitted = LlavaImageProcessor(**values)
    fitted.do_pad = True
    fitted.do_center_crop = False
    return fitted


def _llava_next_whole(image_processor, pinpoints: tuple[tuple[int, int], ...]):
    tile_h, tile_w = _size(image_processor.crop_size, "height"), _size(image_processor.crop_size,
                                                                        "width")
    short = _size(image_processor.size, "shortest_edge") or _size(image_processor.size, "height")
    if image_processor.do_center_crop and (short != tile_h or tile_h != tile_w):
        raise ConfigError(f"vlm.image_fit=whole: this LLaVA-NeXT image processor resizes tiles to "
                          f"{short} px and centre-crops {tile_h}x{tile_w}, which drops the tile "
                          "borders; use vlm.image_fit=processor or a checkpoint whose size equals "
                          "its crop size")
    fitted = copy.deepcopy(image_processor)
    if pinpoints:
        bad = [p for p in pinpoints if p[0] % tile_h or p[1] % tile_w]
        if bad:
            raise ConfigError(f"vlm.llava_next_grid_pinpoints: {bad} are not multiples of the "
                              f"checkpoint's {tile_h}x{tile_w} tile")
        fitted.image_grid_pinpoints = [list(p) for p in pinpoints]
    return fitted


def _qwen_whole(image_processor, fit: ImageFit):
    own_min = _size(image_processor.size, "shortest_edge")
    own_max = _size(image_processor.size, "longest_edge")
    low = max(own_min, fit.qwen_min_pixels) if fit.qwen_min_pixels else own_min
    high = min(own_max, fit.qwen_max_pixels) if fit.qwen_max_pixels else own_max
    if low > high:
        raise ConfigError(f"vlm.qwen_min_pixels / vlm.qwen_max_pixels: the pixel range "
                          f"[{low}, {high}] (intersected with the checkpoint's "
                          f"[{own_min}, {own_max}]) is empty")
    fitted = copy.deepcopy(image_processor)
    fitted.size = {"shortest_edge": low, "longest_edge": high}
    return fitted


def _idefics3_whole(image_processor, fit: ImageFit):
    fitted = copy.deepcopy(image_processor)
    fitted.do_image_splitting = True
    if fit.idefics3_longest_edge:
        own = _size(image_processor.size, "longest_edge")
        fitted.size = {"longest_edge": min(own, fit.idefics3_longest_edge)}
    return fitted


def fit_image_processor(image_processor, family: str, fit: ImageFit):
    """A copy of ``image_processor`` that prepares the whole frame within the budgets of
    ``fit`` (``fit.mode == 'processor'``: the processor itself, unchanged)."""
    if fit.mode == "processor":
        return image_processor
    if family == "llava":
        return _llava_whole(image_processor)
    if family == "llava_next":
        return _llava_next_whole(image_processor, fit.llava_next_grid_pinpoints)
    if family == "qwen2_vl":
        return _qwen_whole(image_processor, fit)
    if family == "idefics3":
        return _idefics3_whole(image_processor, fit)
    raise ValueError(f"unknown VLM family {family!r}")


def fit_processor(processor, family: str, fit: ImageFit):
    """A shallow copy of a transformers processor whose image processor is
    ``fit_image_processor(processor.image_processor, family, fit)``; tokenizer and chat
    template are shared with ``processor``, which is left unchanged."""
    if fit.mode == "processor":
        return processor
    fitted = copy.copy(processor)
    fitted.image_processor = fit_image_processor(processor.image_processor, family, fit)
    return fitted


def visible_fraction(box_xyxy: tuple[float, float, float, float],
                     image_hw: tuple[int, int]) -> float:
    """Fraction of the image area (pixels, x right, y down) inside the layout's grid box:
    1.0 when the VLM's patch grid covers the whole frame (padding outside the frame is
    allowed), 900/1600 for a centre-cropped 1600 x 900 frame."""
    h, w = image_hw
    x0, y0, x1, y1 = box_xyxy
    inside_w = max(0.0, min(x1, w) - max(x0, 0.0))
    inside_h = max(0.0, min(y1, h) - max(y0, 0.0))
    return inside_w * inside_h / float(w * h)
