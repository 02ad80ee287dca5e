"""Where each family puts its image tokens, and which part of the image each covers.

An ``ImageLayout`` says, for one prompt, which sequence positions hold image tokens and how
the ones used for the map form a 2-D patch grid over the image (pixels, x right, y down).

Family layouts (all read from the processed token ids, so they follow the processor):

* LLaVA-1.5: one run of side x side tokens (CLS dropped) over the processor's square
  (optional pad-to-square, resize, optional centre crop: the grid box is computed from it).
* LLaVA-NeXT: a base run of side x side tokens, then the high-resolution "anyres" features,
  unpadded, row by row, each row followed by one newline token. The map uses the
  high-resolution rows x cols grid (newlines dropped), covering the whole image.
* Qwen2-VL / Qwen2.5-VL: dynamic resolution; ``image_grid_thw`` = (t, h, w) patches, merged
  m x m, so the run is (h/m) x (w/m) tokens in raster order, covering the whole image.
* Idefics3 / SmolVLM: tiles marked by ``<row_r_col_c>`` tokens, each followed by its tokens
  (side x side), then ``<global-img>`` and the global image's tokens. With tiles the map
  grid is the tiles assembled (rows*side x cols*side); without splitting it is the global
  image's grid. Both cover the whole image. The marker tokens are read from the tokenizer's
  vocabulary, so any grid its vocabulary spells works.

``family_layout`` picks the family's layout; the backend passes the processor that prepared
the image (``image_fit.fit_processor``), so the grid box follows pad / crop settings.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Sequence

import torch

from vlsam_ros.core.errors import AttentionUnavailableError


@dataclasses.dataclass(frozen=True)
class ImageLayout:
    """Image tokens of one prompt.

    ``image_positions``: (P,) int64, every image-token position (0-based, unpadded prompt).
    ``grid_index``: (GR, GC) int64 positions forming the map's patch grid.
    ``box_xyxy``: pixel box of the original image the grid covers (may exceed the image
    for padded inputs or be smaller after a centre crop).
    """

    image_positions: torch.Tensor
    grid_index: torch.Tensor
    box_xyxy: tuple[float, float, float, float]

    @property
    def grid_shape(self) -> tuple[int, int]:
        return int(self.grid_index.shape[0]), int(self.grid_index.shape[1])


def token_runs(ids: Sequence[int], token_id: int) -> list[tuple[int, int]]:
    """Maximal runs [start, end) of ``token_id`` in ``ids``."""
    runs: list[tuple[int, int]] = []
    start = None
    for i, t in enumerate(ids):
        if t == token_id and start is None:
            start = i
        elif t != token_id and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(ids)))
    return runs


def _single_run(ids: Sequence[int], token_id: int, family: str) -> tuple[int, int]:
    runs = token_runs(ids, token_id)
    if len(runs) != 1:
        raise AttentionUnavailableError(
            f"{family}: expected one run of image tokens (id {token_id}) in the prompt, found "
            f"{len(runs)}; exactly one image per prompt is supported")
    return runs[0]


def _square_side(count: int, family: str) -> int:
    side = math.isqrt(count)
    if side * side != count:
        raise AttentionUnavailableError(f"{family}: {count} image tokens do not form a square grid")
    return side


def _size_hw(size) -> tuple[int | None, int | None, int | None]:
    """(height, width, shortest_edge) from a transformers size dict / SizeDict."""
    get = size.get if isinstance(size, dict) else (lambda k, d=None: getattr(size, k, d))
    return get("height", None), get("width", None), get("shortest_edge", None)


def llava_box(image_hw: tuple[int, int], image_processor) -> tuple[float, float, float, float]:
    """Pixel box of the original image that LLaVA's processed square shows.

    Follows the processor: optional pad to a centred square (``do_pad``), resize (shortest
    edge, or fixed height/width), optional centre crop (``do_center_crop``).
    """
    h, w = image_hw
    x0, y0, x1, y1 = 0.0, 0.0, float(w), float(h)
    if getattr(image_processor, "do_pad", False) and h != w:
        side = max(h, w)
        x0, y0 = -((side - w) // 2), -((side - h) // 2)
        x1, y1 = x0 + side, y0 + side
    cur_h, cur_w = y1 - y0, x1 - x0
    if getattr(image_processor, "do_resize", True):
        th, tw, short = _size_hw(image_processor.size)
        if short is not None:
            scale = short / min(cur_h, cur_w)
            new_h, new_w = cur_h * scale, cur_w * scale
        else:
            new_h, new_w = float(th), float(tw)
    else:
        new_h, new_w = cur_h, cur_w
    sy, sx = cur_h / new_h, cur_w / new_w             # original pixels per processed pixel
    if getattr(image_processor, "do_center_crop", False):
        ch, cw, _ = _size_hw(image_processor.crop_size)
        top, left = (new_h - ch) / 2.0, (new_w - cw) / 2.0
        x0, x1 = x0 + left * sx, x0 + (left + cw) * sx
        y0, y1 = y0 + top * sy, y0 + (top + ch) * sy
    return (float(x0), float(y0), float(x1), float(y1))


def llava_layout(ids: Sequence[int], image_token_id: int, image_hw: tuple[int, int],
                 image_processor) -> ImageLayout:
    start, end = _single_run(ids, image_token_id, "llava")
    side = _square_side(end - start, "llava")
    positions = torch.arange(start, end)
    return ImageLayout(positions, positions.reshape(side, side),
                       llava_box(image_hw, image_processor))


def llava_next_layout(ids: Sequence[int], image_token_id: int, image_hw: tuple[int, int],
                      image_processor, patch_size: int) -> ImageLayout:
    """Base grid first, then rows x (cols + 1) anyres features with a newline per row."""
    from transformers.image_processing_utils import select_best_resolution

    start, end = _single_run(ids, image_token_id, "llava_next")
    ch, cw, _ = _size_hw(image_processor.crop_size)
    base = (ch // patch_size) * (cw // patch_size)
    best_h, best_w = select_best_resolution(list(image_hw), image_processor.image_grid_pinpoints)
    cur_h, cur_w = (ch // patch_size) * (best_h // ch), (cw // patch_size) * (best_w // cw)
    h, w = image_hw
    if w / h > cur_w / cur_h:
        new_h = int(round(h * (cur_w / w), 7))
        cur_h -= ((cur_h - new_h) // 2) * 2
    else:
        new_w = int(round(w * (cur_h / h), 7))
        cur_w -= ((cur_w - new_w) // 2) * 2
    if end - start != base + cur_h * (cur_w + 1):
        raise AttentionUnavailableError(
            f"llava_next: {end - start} image tokens, expected {base} base + {cur_h} x "
            f"({cur_w} + 1) anyres tokens; unsupported processor settings")
    hi_res = torch.arange(start + base, end).reshape(cur_h, cur_w + 1)[:, :cur_w]
    return ImageLayout(torch.arange(start, end), hi_res.contiguous(),
                       (0.0, 0.0, float(w), float(h)))


def qwen2_vl_layout(ids: Sequence[int], image_token_id: int, image_hw: tuple[int, int],
                    grid_thw: Sequence[int], merge_size: int) -> ImageLayout:
    start, end = _single_run(ids, image_token_id, "qwen2_vl")
    t, gh, gw = (int(v) for v in grid_thw)
    rows, cols = gh // merge_size, gw // merge_size
    if end - start != t * rows * cols or t != 1:
        raise AttentionUnavailableError(
            f"qwen2_vl: {end - start} image tokens do not match grid_thw {tuple(grid_thw)} "
            f"with merge size {merge_size}")
    positions = torch.arange(start, end)
    h, w = image_hw
    return ImageLayout(positions, positions.reshape(rows, cols), (0.0, 0.0, float(w), float(h)))


def idefics3_layout(ids: Sequence[int], image_token_id: int, image_hw: tuple[int, int],
                    tile_marker_ids: dict[int, tuple[int, int]], global_marker_id: int
                    ) -> ImageLayout:
    """Tiles in ``<row_r_col_c>`` order (1-based r, c), then the global image.

    tile_marker_ids: token id of ``<row_r_col_c>`` -> (r, c); global_marker_id: id of
    ``<global-img>``.
    """
    runs = token_runs(ids, image_token_id)
    if not runs:
        raise AttentionUnavailableError("idefics3: no image tokens in the prompt")
    tiles: dict[tuple[int, int], tuple[int, int]] = {}
    global_run = None
    gap_start = 0
    for run in runs:
        # the run's marker lies between the previous run and this one
        marker = next((ids[i] for i in range(run[0] - 1, gap_start - 1, -1)
                       if ids[i] in tile_marker_ids or ids[i] == global_marker_id), None)
        gap_start = run[1]
        if marker == global_marker_id:
            global_run = run
        elif marker is not None:
            tiles[tile_marker_ids[marker]] = run
        else:
            raise AttentionUnavailableError(
                f"idefics3: the image-token run at positions {run[0]}..{run[1] - 1} has no "
                "<row_r_col_c> or <global-img> marker token before it; the tokenizer's "
                "vocabulary lacks the marker of this tile grid (lower vlm.idefics3_longest_edge)")
    if global_run is None:
        raise AttentionUnavailableError("idefics3: no <global-img> run of image tokens found")
    side = _square_side(global_run[1] - global_run[0], "idefics3")
    h, w = image_hw
    box = (0.0, 0.0, float(w), float(h))
    positions = torch.cat([torch.arange(s, e) for s, e in runs])
    if not tiles:
        return ImageLayout(positions, torch.arange(*global_run).reshape(side, side), box)
    n_rows = max(r for r, _ in tiles)
    n_cols = max(c for _, c in tiles)
    if len(tiles) != n_rows * n_cols:
        raise AttentionUnavailableError(f"idefics3: incomplete tile set {sorted(tiles)}")
    grid = torch.empty((n_rows * side, n_cols * side), dtype=torch.int64)
    for (r, c), (s, e) in tiles.items():
        if e - s != side * side:
            raise AttentionUnavailableError("idefics3: tiles and global image differ in tokens")
        block = torch.arange(s, e).reshape(side, side)
        grid[(r - 1) * side:r * side, (c - 1) * side:c * side] = block
    return ImageLayout(positions, grid, box)


_TILE_MARKER = re.compile(r"<row_(\d+)_col_(\d+)>")


def idefics3_markers(tokenizer) -> tuple[dict[int, tuple[int, int]], int]:
    """Token ids of every ``<row_r_col_c>`` in the tokenizer's vocabulary (added tokens
    included; r, c 1-based, any size) -> (r, c), and the id of ``<global-img>``."""
    markers: dict[int, tuple[int, int]] = {}
    for token, tid in tokenizer.get_vocab().items():
        m = _TILE_MARKER.fullmatch(token)
        if m:
            markers[int(tid)] = (int(m.group(1)), int(m.group(2)))
    global_id = tokenizer.get_vocab().get("<global-img>")
    if global_id is None:
        raise AttentionUnavailableError("idefics3: the tokenizer has no <global-img> token")
    return markers, int(global_id)


def family_layout(family: str, ids: Sequence[int], image_token_id: int,
                  image_hw: tuple[int, int], processor: Any, inputs: dict, index: int,
                  idefics3_marker_ids: tuple[dict[int, tuple[int, int]], int] | None = None
                  ) -> ImageLayout:
    """The layout of batch row ``index`` of ``family`` prepared by ``processor`` (the fitted
    processor that produced ``inputs``); ``ids``: that row's unpadded prompt token ids.
    ``idefics3_marker_ids``: ``idefics3_markers(tokenizer)``, computed when None."""
    if family == "llava":
        return llava_layout(ids, image_token_id, image_hw, processor.image_processor)
    if family == "llava_next":
        return llava_next_layout(ids, image_token_id, image_hw, processor.image_processor,
                                 processor.patch_size)
    if family == "qwen2_vl":
        return qwen2_vl_layout(ids, image_token_id, image_hw,
                               inputs["image_grid_thw"][index].tolist(),
                               int(processor.image_processor.merge_size))
    if family == "idefics3":
        markers, global_id = idefics3_marker_ids or idefics3_markers(processor.tokenizer)
        return idefics3_layout(ids, image_token_id, image_hw, markers, global_id)
    raise ValueError(f"unknown VLM family {family!r}")
