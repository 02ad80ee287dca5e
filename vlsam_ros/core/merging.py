"""Merging candidates (method.md section 5): greedy mask-IoU NMS and the labels a kept
detection absorbs from the candidates it suppresses. The pipeline runs it once per frame over
every candidate of every view and question, in full-frame coordinates."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from vlsam_ros.core.masks import Rle, rle_iou
from vlsam_ros.core.refinement import Candidate


@dataclasses.dataclass(frozen=True)
class NmsGroup:
    """One kept candidate and the candidates it suppressed (indices into the input)."""

    keep: int
    suppressed: tuple[int, ...]


def mask_nms(rles: Sequence[Rle], scores: np.ndarray, iou_threshold: float) -> list[NmsGroup]:
    """Greedy mask-IoU NMS.

    Candidates are visited by decreasing score (ties: lower index first). Each unsuppressed
    candidate is kept and suppresses every later candidate whose mask IoU with it is
    strictly above ``iou_threshold``. Returns the kept groups in visiting order.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(rles),):
        raise ValueError(f"scores must have shape ({len(rles)},), got {scores.shape}")
    order = np.argsort(-scores, kind="stable")
    iou = rle_iou(rles, rles)
    alive = np.ones(len(rles), dtype=bool)
    groups: list[NmsGroup] = []
    for i in order:
        if not alive[i]:
            continue
        alive[i] = False
        victims = [int(j) for j in order if alive[j] and iou[i, j] > iou_threshold]
        alive[victims] = False
        groups.append(NmsGroup(int(i), tuple(victims)))
    return groups


def merge_labels(kept_label: str, others: Sequence[str]) -> tuple[str, ...]:
    """Alternative labels of a merged detection: ``others`` in order, without duplicates
    (case-insensitive) and without the kept label itself."""
    seen = {kept_label.strip().lower()}
    out: list[str] = []
    for label in others:
        key = label.strip().lower()
        if key and key not in seen:
            seen.add(key)
            out.append(label)
    return tuple(out)


def merge_candidates(candidates: Sequence[Candidate], iou_threshold: float) -> list[Candidate]:
    """Mask-IoU NMS (:func:`mask_nms`) over ``candidates``; each kept candidate absorbs the
    labels of those it suppressed as ``alt_labels`` (:func:`merge_labels`)."""
    if not candidates:
        return []
    groups = mask_nms([c.rle for c in candidates], np.array([c.score for c in candidates]),
                      iou_threshold)
    out = []
    for g in groups:
        kept = candidates[g.keep]
        absorbed = [kept.label] + list(kept.alt_labels)
        for j in g.suppressed:
            absorbed += [candidates[j].label, *candidates[j].alt_labels]
        out.append(dataclasses.replace(kept, alt_labels=merge_labels(kept.label, absorbed)))
    return out
