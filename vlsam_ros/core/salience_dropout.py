"""Salience DropOut (PnP-OVSS; method.md section 8): complete partial attention maps.

Option ``prompts.dropout_iterations`` = k (0 = off) with ``prompts.dropout_patches`` = N.
It runs after the VLM described the view and before the maps become SAM prompts
(``pipeline.Pipeline``). A map covers the most salient part of an object; hiding that part
moves the VLM's attention to the parts not yet covered.

For one (image, question) row with objects m = 1..M and normalised maps ``a_m^(0)`` (the
maps of ``describe``), on the VLM's patch grid of cells (r, c):

    U^(t)[r, c]   = sum_m sum_{s < t} mean_{pixels p in cell (r, c)} a_m^(s)[p]
    D^(t)         = D^(t-1)  union  top_N { (r, c) not in D^(t-1) : U^(t)[r, c] }   (D^(0) = {})
    a_m^(t)       = maps of the same objects, the VLM teacher-forced on the SAME generated text
                    with every pixel of the cells in D^(t) set to black (0, 0, 0)
    final a_m     = minmax( sum_{t = 0..k} a_m^(t) )

for t = 1..k. [D] The N patches are chosen per row from the summed maps of all its objects
(one extra forward per row and iteration, not one per object); ties go to the first cell in
row-major order; cells with no pixel in the image are never chosen; the iterations stop
early when every cell is dropped. Cell (r, c) of a grid of GR x GC cells over the pixel box
(x0, y0, x1, y1) (``VlmAnswer.grid_box_xyxy``; the whole image when None) holds the pixels
whose centre (x + 0.5, y + 0.5) falls in
``[x0 + c (x1 - x0) / GC, x0 + (c + 1) (x1 - x0) / GC) x [y0 + r (y1 - y0) / GR, ...)``: the
family's image layout (``vlm/layouts.py``) says which pixels each map cell (patch token) sees.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from vlsam_ros.core import cancellation
from vlsam_ros.core.config import AttentionConfig, ConfigError, VlmConfig
from vlsam_ros.core.results import VlmAnswer


def pixel_cells(image_hw: tuple[int, int], grid_shape: tuple[int, int],
                box_xyxy: tuple[float, float, float, float] | None) -> np.ndarray:
    """Row-major cell index of every pixel, -1 for pixels outside the grid box.

    image_hw: (H, W); grid_shape: (GR, GC); box_xyxy: the grid's pixel box or None (whole
    image). Returns int64 (H, W).
    """
    h, w = image_hw
    gr, gc = grid_shape
    x0, y0, x1, y1 = box_xyxy if box_xyxy is not None else (0.0, 0.0, float(w), float(h))
    cols = np.floor((np.arange(w) + 0.5 - x0) / (x1 - x0) * gc).astype(np.int64)
    rows = np.floor((np.arange(h) + 0.5 - y0) / (y1 - y0) * gr).astype(np.int64)
    valid = ((rows[:, None] >= 0) & (rows[:, None] < gr)
             & (cols[None, :] >= 0) & (cols[None, :] < gc))
    return np.where(valid, rows[:, None] * gc + cols[None, :], -1)


def cell_means(values: np.ndarray, cells: np.ndarray, num_cells: int) -> np.ndarray:
    """Mean of ``values`` (H, W) over the pixels of each cell (``cells`` from
    ``pixel_cells``); -inf for a cell without pixels. Returns float64 (num_cells,)."""
    inside = cells >= 0
    sums = np.bincount(cells[inside], weights=values[inside].astype(np.float64),
                       minlength=num_cells)
    counts = np.bincount(cells[inside], minlength=num_cells)
    return np.where(counts > 0, sums / np.maximum(counts, 1), -np.inf)


def select_patches(salience: np.ndarray, dropped: np.ndarray, n: int) -> np.ndarray:
    """``D^(t) = D^(t-1) union top_N(U^(t))`` over cells not yet dropped and with a finite
    salience; ties to the lower (row-major) index.

    salience: float (C,) U^(t); dropped: bool (C,) D^(t-1); n: N >= 1. Returns bool (C,).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    candidates = np.flatnonzero(~dropped & np.isfinite(salience))
    order = candidates[np.argsort(-salience[candidates], kind="stable")]
    out = dropped.copy()
    out[order[:n]] = True
    return out


def black_out(image: np.ndarray, dropped: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Copy of the RGB uint8 (H, W, 3) ``image`` with every pixel of a dropped cell black.
    dropped: bool (C,); cells: int64 (H, W) from ``pixel_cells``."""
    out = image.copy()
    hit = (cells >= 0) & dropped[np.maximum(cells, 0)]
    out[hit] = 0
    return out


def normalized_sum(maps: Sequence[np.ndarray]) -> np.ndarray:
    """``minmax(sum_t a^(t))`` per object: maps are float (K, H, W) each; a constant sum
    becomes zeros. Returns float32 (K, H, W)."""
    return minmax_per_object(np.sum(np.stack([m.astype(np.float64) for m in maps]), axis=0))


def minmax_per_object(total: np.ndarray) -> np.ndarray:
    """float (K, H, W) -> float32 (K, H, W), each object's map min-max scaled to [0, 1]; a
    constant map becomes zeros."""
    lo = total.min(axis=(1, 2), keepdims=True)
    hi = total.max(axis=(1, 2), keepdims=True)
    span = hi - lo
    return np.where(span > 0, (total - lo) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


@dataclasses.dataclass
class _Row:
    index: int
    cells: np.ndarray
    num_cells: int
    dropped: np.ndarray
    total: np.ndarray      # float64 (K, H, W): the sum of the maps so far


def complete_maps(vlm: Any, images: Sequence[np.ndarray], questions: Sequence[str],
                  answers: Sequence[VlmAnswer], vlm_cfg: VlmConfig, attn_cfg: AttentionConfig,
                  iterations: int, patches: int) -> list[VlmAnswer]:
    """Salience DropOut over a batch of answers (module docstring): each iteration is ONE
    ``vlm.attend`` batch of every row that still has objects and cells to drop.

    ``vlm``: a ``TeacherForcedVlm`` (core/vlm/base.py; ConfigError for one without
    ``attend``). images[b] / questions[b]: what answers[b] was generated from. Returns the
    answers with their maps replaced by the normalised sums (text and objects unchanged).
    """
    if iterations < 1:
        return list(answers)
    if not hasattr(vlm, "attend"):
        raise ConfigError(f"prompts.dropout_iterations={iterations} needs a VLM that re-runs "
                          f"given text (an 'attend' method); {type(vlm).__name__} has none. "
                          "Set prompts.dropout_iterations to 0.")
    rows = []
    for b, (image, answer) in enumerate(zip(images, answers)):
        if not answer.objects:
            continue
        cells = pixel_cells(image.shape[:2], answer.grid_shape, answer.grid_box_xyxy)
        num = answer.grid_shape[0] * answer.grid_shape[1]
        rows.append(_Row(b, cells, num, np.zeros(num, bool),
                         answer.attention_maps.astype(np.float64)))
    for t in range(iterations):
        cancellation.check(f"before Salience DropOut iteration {t + 1} of {iterations}")
        active, dropped_images = [], []
        for row in rows:
            salience = cell_means(row.total.sum(axis=0), row.cells, row.num_cells)
            chosen = select_patches(salience, row.dropped, patches)
            if np.array_equal(chosen, row.dropped):
                continue                                   # nothing left to drop
            row.dropped = chosen
            active.append(row)
            dropped_images.append(black_out(images[row.index], chosen, row.cells))
        if not active:
            break
        new_maps = vlm.attend(dropped_images, [questions[r.index] for r in active],
                              [answers[r.index] for r in active], vlm_cfg, attn_cfg)
        for row, maps in zip(active, new_maps):
            row.total += maps
    out = list(answers)
    for row in rows:
        out[row.index] = dataclasses.replace(answers[row.index],
                                             attention_maps=minmax_per_object(row.total))
    return out
