"""Matching discovered objects to tracks by mask IoU, and the rules that end a track."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vlsam_ros.core.config import TrackingConfig
from vlsam_ros.core.masks import mask_iou


def greedy_match(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """One-to-one matches of a (D, T) IoU matrix: repeatedly the largest remaining IoU,
    its row and column then taken; pairs below ``threshold`` (or with IoU 0) never match.
    Ties go to the lower row, then the lower column. Returns (row, column) pairs in
    matching order."""
    pairs = []
    if iou.size == 0:
        return pairs
    order = np.lexsort((np.arange(iou.size) % iou.shape[1],
                        np.arange(iou.size) // iou.shape[1], -iou.reshape(-1)))
    used_rows, used_cols = set(), set()
    for flat in order:
        row, col = divmod(int(flat), iou.shape[1])
        value = iou[row, col]
        if value < threshold or value <= 0:
            break
        if row in used_rows or col in used_cols:
            continue
        used_rows.add(row)
        used_cols.add(col)
        pairs.append((row, col))
    return pairs


def area_change(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Factor by which each mask's area changed, >= 1 either way: max(a/b, b/a); inf when
    exactly one of them is 0, 1 when both are. before, after: int (K,) pixel counts."""
    before = before.astype(np.float64)
    after = after.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.maximum(after / before, before / after)
    ratio[(before == 0) & (after == 0)] = 1.0
    return ratio


def loss_reasons(areas_before: np.ndarray, masks: np.ndarray, iou_predictions: np.ndarray,
                 stability: np.ndarray, object_scores: np.ndarray,
                 cfg: TrackingConfig) -> list[str | None]:
    """Why each followed track is lost (None: it is kept). Rules, first that applies:

    1. ``object absent``: object-presence logit < ``min_object_score`` (memory follower);
    2. ``too small``: mask area < ``min_area_px`` (left the image, or hidden);
    3. ``low predicted IoU``: < ``min_iou_prediction``;
    4. ``unstable``: stability score < ``min_stability``;
    5. ``area jump``: area grew or shrank by more than ``max_area_change`` since the
       previous frame;
    6. ``overlap``: of two surviving tracks whose masks overlap with IoU above
       ``max_overlap_iou``, the one whose area changed more (the younger, higher id, on a
       tie: callers pass tracks in id order) -- its prompt jumped onto the other object.

    masks: bool (K, H, W) on the new frame; areas_before: int (K,) on the previous frame.
    """
    areas = masks.reshape(len(masks), -1).sum(axis=1) if len(masks) else np.zeros(0, np.int64)
    change = area_change(areas_before, areas)
    reasons: list[str | None] = []
    for k in range(len(masks)):
        if object_scores[k] < cfg.min_object_score:
            reasons.append("object absent")
        elif areas[k] < max(cfg.min_area_px, 1):
            reasons.append("too small")
        elif iou_predictions[k] < cfg.min_iou_prediction:
            reasons.append("low predicted IoU")
        elif stability[k] < cfg.min_stability:
            reasons.append("unstable")
        elif change[k] > cfg.max_area_change:
            reasons.append("area jump")
        else:
            reasons.append(None)
    kept = [k for k, r in enumerate(reasons) if r is None]
    if len(kept) > 1:
        overlap = mask_iou(masks[kept], masks[kept])
        np.fill_diagonal(overlap, 0.0)
        for i, j in zip(*np.nonzero(np.triu(overlap > cfg.max_overlap_iou))):
            a, b = kept[i], kept[j]
            if reasons[a] is not None or reasons[b] is not None:
                continue
            loser = b if change[b] >= change[a] else a
            reasons[loser] = "overlap"
    return reasons


def labels_match(label: str, alt_labels: Sequence[str], other: str,
                 other_alt: Sequence[str]) -> bool:
    """Whether two detections share a name (label or alternative labels, case-folded and
    stripped)."""
    names = {n.strip().casefold() for n in (label, *alt_labels)}
    return bool(names & {n.strip().casefold() for n in (other, *other_alt)})
