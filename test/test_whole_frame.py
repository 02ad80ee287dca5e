"""The whole camera frame reaches the VLM, for every family, at the published processor sizes.

Each published checkpoint's real transformers processor is built from
``vlsam_ros/testing/data/published_vlm_configs.json`` (tokenizer: the family's tiny one, which
spells the same special tokens) and fitted by ``image_fit`` as the backend does. A small
white square is drawn on a black frame (1600x900 nuScenes-like, 1242x375 KITTI-like) at each
corner and at the left and right edge (mid-height). Without any model weights:

1. the processor prepares the frame (``pixel_values``, prompt ids);
2. the image tokens whose *input pixels* contain the square are found from ``pixel_values``
   with each model's own token order (CLIP patches; LLaVA-NeXT tiles unpadded with the
   model's ``unpad_image``; Qwen's merge-ordered patch rows; Idefics3 tiles + global image);
3. an attention row with mass on those tokens' positions becomes a map through the
   backend's layout (``layouts.family_layout``) and ``attention.object_map``;
4. the map must peak on the square (within one token's footprint).

With ``image_fit=processor``, LLaVA-1.5 centre-crops: the same procedure finds no token that
sees a corner or edge square, so those objects cannot be reached (the test can fail).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from vlsam_ros.core import attention
from vlsam_ros.core.config import VlmConfig
from vlsam_ros.core.vlm import layouts
from vlsam_ros.core.vlm.image_fit import ImageFit, fit_processor, visible_fraction
from vlsam_ros.testing.published_configs import (build_published_processor,
                                                  published_checkpoints)
from vlsam_ros.testing.tiny_vlm import build_tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FRAMES = {"nuscenes": (900, 1600), "kitti": (375, 1242)}
SQUARE = 32                    # side of the planted object, pixels of the original frame
POSITIONS = ("top_left", "top_right", "bottom_left", "bottom_right", "left_mid", "right_mid")
BRIGHT = 0.75                  # un-normalised intensity above which a pixel shows the square
PROMPTS = {
    "llava": "USER: <image>\nDescribe. ASSISTANT:",
    "llava_next": "USER: <image>\nDescribe. ASSISTANT:",
    "qwen2_vl": "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe."
                "<|im_end|>\n<|im_start|>assistant\n",
    "idefics3": "<|begin_of_text|>User:<image> Describe.<end_of_utterance>\nAssistant:",
}


def _square_box(position: str, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the planted square, flush with the frame's border."""
    h, w = hw
    x0 = 0 if "left" in position else w - SQUARE
    y0 = {"top": 0, "bottom": h - SQUARE}.get(position.split("_")[0], (h - SQUARE) // 2)
    return x0, y0, x0 + SQUARE, y0 + SQUARE


def _frame(position: str, hw: tuple[int, int]) -> np.ndarray:
    image = np.zeros((*hw, 3), np.uint8)
    x0, y0, x1, y1 = _square_box(position, hw)
    image[y0:y1, x0:x1] = 255
    return image


def _intensity(pixels: torch.Tensor, image_processor) -> torch.Tensor:
    """(..., 3, H, W) normalised pixel values -> (..., H, W) max-over-channels intensity in
    the original [0, 1] scale."""
    mean = torch.tensor(image_processor.image_mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(image_processor.image_std, dtype=torch.float32)[:, None, None]
    return (pixels.float() * std + mean).amax(dim=-3)


def _blocks_bright(intensity: torch.Tensor, block: int) -> torch.Tensor:
    """(H, W) -> (H/block, W/block) bool: the block contains a square pixel."""
    h, w = intensity.shape
    return intensity.reshape(h // block, block, w // block, block).amax(dim=(1, 3)) > BRIGHT


def _llava_positions(inputs, processor, run) -> list[int]:
    """CLIP: token k = patch (k // side, k % side) of the single square image."""
    grid = _blocks_bright(_intensity(inputs["pixel_values"][0], processor.image_processor),
                          processor.patch_size)
    return [run[0] + int(i) for i in torch.nonzero(grid.flatten()).flatten()]


def _llava_next_positions(inputs, processor, run, hw) -> list[int]:
    """Base image first, then the high-resolution tiles assembled in raster order, unpadded by
    the model's own ``unpad_image``, one newline token after each row."""
    from transformers.image_processing_utils import select_best_resolution
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    ip, patch = processor.image_processor, processor.patch_size
    tile = ip.crop_size["height"]
    side = tile // patch
    best_h, best_w = select_best_resolution(list(hw), ip.image_grid_pinpoints)
    nph, npw = best_h // tile, best_w // tile
    tiles = inputs["pixel_values"][0, 1:1 + nph * npw]
    bright = torch.stack([_blocks_bright(_intensity(t, ip), patch) for t in tiles]).float()
    feature = bright.reshape(nph, npw, side, side).permute(0, 2, 1, 3).reshape(nph * side,
                                                                             npw * side)
    unpadded = unpad_image(feature[None], torch.tensor(hw))[0] > 0.5       # (rows, cols)
    cols = unpadded.shape[1]
    start = run[0] + side * side                                          # after the base image
    return [start + int(r) * (cols + 1) + int(c) for r, c in torch.nonzero(unpadded)]


def _qwen_positions(inputs, processor, run) -> list[int]:
    """Patch rows come merge-ordered: token j merges patches j*m*m .. (j+1)*m*m - 1."""
    ip = processor.image_processor
    m, p, t = ip.merge_size, ip.patch_size, ip.temporal_patch_size
    patches = inputs["pixel_values"].reshape(-1, 3, t, p, p)[:, :, 0]     # (N, 3, p, p)
    bright = (_intensity(patches, ip).flatten(1) > BRIGHT).any(dim=1)     # (N,)
    tokens = bright.reshape(-1, m * m).any(dim=1)
    return [run[0] + int(j) for j in torch.nonzero(tokens).flatten()]


def _idefics3_positions(inputs, processor, runs, ckpt) -> list[int]:
    """Images are the tiles in raster order, then the global image; image n fills the n-th
    run of image tokens, side x side tokens in raster order, token (i, j) = the block of
    scale x scale encoder patches at (i, j) (pixel shuffle). The encoder's valid convolution
    drops a tile's last pixels when the tile is not a multiple of the patch (SmolVLM-Instruct:
    384 px tiles, 14 px patches -> 27 x 14 = 378 px seen)."""
    ip = processor.image_processor
    side = math.isqrt(processor.image_seq_len)
    block = ckpt.value("vision_config.patch_size") * ckpt.value("scale_factor")
    images = inputs["pixel_values"][0]
    assert len(images) == len(runs)
    positions = []
    for image, run in zip(images, runs):
        seen = _intensity(image, ip)[:side * block, :side * block]
        grid = _blocks_bright(seen, block)
        positions += [run[0] + int(i) for i in torch.nonzero(grid.flatten()).flatten()]
    return positions


def _positions_seeing_square(ckpt, inputs, processor, ids, image_token_id, hw) -> list[int]:
    family = ckpt.family
    runs = layouts.token_runs(ids, image_token_id)
    if family == "llava":
        return _llava_positions(inputs, processor, runs[0])
    if family == "llava_next":
        return _llava_next_positions(inputs, processor, runs[0], hw)
    if family == "qwen2_vl":
        return _qwen_positions(inputs, processor, runs[0])
    return _idefics3_positions(inputs, processor, runs, ckpt)


def _reach(repo: str, fit: ImageFit, frame: str, position: str) -> dict:
    """Plants the square, finds the tokens that see it, maps an attention row on them.

    Returns seen (number of image tokens whose input pixels show the square), peak (y, x) of
    the map or None, miss (pixels from the peak to the square) and tolerance (one token's
    footprint in the original frame)."""
    ckpt = published_checkpoints()[repo]
    hw = FRAMES[frame]
    processor = fit_processor(build_published_processor(repo, build_tiny_tokenizer(ckpt.family)),
                              ckpt.family, fit)
    inputs = processor(text=[PROMPTS[ckpt.family]], images=[Image.fromarray(_frame(position, hw))],
                       padding=True, return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    layout = layouts.family_layout(ckpt.family, ids, processor.image_token_id, hw, processor,
                                   inputs, 0)
    seen = _positions_seeing_square(ckpt, inputs, processor, ids,
                                    processor.image_token_id, hw)
    x0, y0, x1, y1 = layout.box_xyxy
    tolerance = max((x1 - x0) / layout.grid_shape[1], (y1 - y0) / layout.grid_shape[0])
    result = {"seen": len(seen), "peak": None, "miss": math.inf, "tolerance": tolerance,
              "layout": layout}
    if not seen:
        return result
    row = torch.zeros(len(ids), dtype=torch.float64)
    row[seen] = 1.0
    heat = attention.object_map(row, layout.grid_index, hw, layout.box_xyxy)
    py, px = np.unravel_index(int(heat.argmax()), heat.shape)
    sx0, sy0, sx1, sy1 = _square_box(position, hw)
    dx = max(sx0 - px, 0, px - (sx1 - 1))
    dy = max(sy0 - py, 0, py - (sy1 - 1))
    result.update(peak=(int(py), int(px)), miss=math.hypot(dx, dy),
                  peak_value=float(heat[py, px]))
    return result


WHOLE = ImageFit.from_config(VlmConfig())                       # the backend's default
PROCESSOR = ImageFit.from_config(VlmConfig(image_fit="processor"))


@pytest.mark.parametrize("frame", sorted(FRAMES))
@pytest.mark.parametrize("repo", list(published_checkpoints()))
def test_planted_object_at_every_border_is_reachable_in_whole_mode(repo, frame):
    for position in POSITIONS:
        r = _reach(repo, WHOLE, frame, position)
        assert r["seen"] > 0, f"{repo} {frame} {position}: no image token sees the square"
        assert r["miss"] <= r["tolerance"], (
            f"{repo} {frame} {position}: map peaks at {r['peak']}, {r['miss']:.0f} px from the "
            f"square (tolerance {r['tolerance']:.0f} px)")
        assert visible_fraction(r["layout"].box_xyxy, FRAMES[frame]) == 1.0


@pytest.mark.parametrize("frame", sorted(FRAMES))
def test_llava_processor_mode_cannot_reach_border_objects(frame):
    """The checkpoint's own LLaVA-1.5 processor centre-crops: nothing at the left or right
    border (corners included) reaches any image token, so no attention can point there."""
    for position in POSITIONS:
        r = _reach("llava-hf/llava-1.5-7b-hf", PROCESSOR, frame, position)
        assert r["seen"] == 0 and r["peak"] is None, f"{frame} {position}: {r}"
    hw = FRAMES[frame]
    fraction = visible_fraction(r["layout"].box_xyxy, hw)
    assert fraction == pytest.approx(min(hw) / max(hw))       # 0.5625 nuScenes, 0.302 KITTI


def test_llava_whole_mode_pads_with_the_image_mean_and_does_not_crop():
    """LLaVA-1.5's expand2square: a black 1600x900 frame becomes a 336x336 square whose top
    and bottom bands are the image-mean colour (normalised value 0)."""
    repo = "llava-hf/llava-1.5-7b-hf"
    processor = fit_processor(build_published_processor(repo, build_tiny_tokenizer("llava")),
                              "llava", WHOLE)
    pixels = processor.image_processor(Image.fromarray(np.zeros((900, 1600, 3), np.uint8)),
                                       return_tensors="pt")["pixel_values"][0]
    assert tuple(pixels.shape) == (3, 336, 336)
    band = round(336 * 350 / 1600)                          # 350 px of padding above the frame
    edge = 3                                                # rows the bicubic kernel blends
    assert pixels[:, :band - edge].abs().max() < 0.02        # mean colour (8-bit): ~0
    assert pixels[:, 336 - band + edge:].abs().max() < 0.02
    assert pixels[:, band + edge:336 - band - edge].max() < -1.4   # the black frame itself
