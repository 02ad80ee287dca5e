"""Mask geometry: boxes from masks, mask IoU and COCO run-length encoding.

Masks are bool (H, W) arrays (or stacks (K, H, W)) in the pixel frame of
``vlsam_ros.core.results``. Boxes are (x0, y0, x1, y1) integer pixels with x1/y1 exclusive.
COCO RLE here means the format of pycocotools: the mask is read column-major (Fortran
order) and ``counts`` alternates run lengths starting with a run of zeros (possibly 0).
Pairwise IoU works on compressed RLE through pycocotools, so full-resolution masks of many
candidates never need to exist at once.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils

Rle = dict
"""A compressed COCO RLE as pycocotools returns it: {'size': [H, W], 'counts': bytes}."""


def box_from_mask(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box (x0, y0, x1, y1) of a non-empty bool (H, W) mask; x1/y1 exclusive.

    Raises ValueError for an empty mask (it has no extent).
    """
    if mask.ndim != 2:
        raise ValueError(f"expected a (H, W) mask, got shape {mask.shape}")
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("box_from_mask: the mask is empty")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def encode_rle(mask: np.ndarray) -> Rle:
    """bool (H, W) -> compressed COCO RLE (pycocotools)."""
    if mask.ndim != 2:
        raise ValueError(f"expected a (H, W) mask, got shape {mask.shape}")
    return mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))


def rle_to_json(rle: Rle) -> dict:
    """Compressed (bytes counts) or uncompressed (list counts) COCO RLE -> compressed COCO RLE
    with str ``counts``: the one JSON form of masks in result files and annotations."""
    height, width = (int(v) for v in rle["size"])
    if isinstance(rle.get("counts"), list):
        rle = mask_utils.frPyObjects(rle, height, width)
    counts = rle["counts"]
    return {"size": [height, width],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else str(counts)}


def decode_rle(rle: Rle) -> np.ndarray:
    """Compressed or uncompressed COCO RLE -> bool (H, W)."""
    if isinstance(rle.get("counts"), list):
        height, width = rle["size"]
        rle = mask_utils.frPyObjects(rle, height, width)
    return mask_utils.decode(rle).astype(bool)


def rle_box(rle: Rle) -> tuple[int, int, int, int]:
    """Tight box (x0, y0, x1, y1), x1/y1 exclusive, of a non-empty compressed RLE."""
    x, y, w, h = (int(round(v)) for v in mask_utils.toBbox(rle))
    return x, y, x + w, y + h


def rle_iou(a: Sequence[Rle], b: Sequence[Rle]) -> np.ndarray:
    """Pairwise mask IoU of compressed RLEs, float64 (len(a), len(b)). Empty vs empty is 0."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    iou = mask_utils.iou(list(a), list(b), [0] * len(b))
    return np.asarray(iou, dtype=np.float64).reshape(len(a), len(b))


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of bool masks a (N, H, W) and b (M, H, W): float64 (N, M).

    IoU = |a & b| / |a | b|; two empty masks have IoU 0.
    """
    if a.ndim != 3 or b.ndim != 3 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"mask_iou expects (N, H, W) and (M, H, W); got {a.shape}, {b.shape}")
    return rle_iou([encode_rle(m) for m in a], [encode_rle(m) for m in b])


def mask_to_rle_counts(mask: np.ndarray) -> list[int]:
    """bool (H, W) -> COCO *uncompressed* RLE counts (column-major, first run = zeros).

    This is the ``mask_rle`` field of Detection.msg; ``rle_counts_to_mask`` inverts it.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected a (H, W) mask, got shape {mask.shape}")
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1          # indices where a run starts
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds)
    if flat[0]:
        counts = np.concatenate(([0], counts))                    # runs start with zeros
    return counts.astype(np.int64).tolist()


def rle_counts_to_mask(counts: Sequence[int], height: int, width: int) -> np.ndarray:
    """COCO uncompressed RLE counts of an (height, width) mask -> bool (height, width).

    Raises ValueError when the counts do not add up to height * width.
    """
    total = int(np.sum(np.asarray(counts, dtype=np.int64))) if len(counts) else 0
    if total != height * width:
        raise ValueError(f"RLE counts sum to {total}, expected {height} x {width} = "
                         f"{height * width}")
    return decode_rle({"size": [int(height), int(width)], "counts": [int(c) for c in counts]})
