"""Which of SAM 3's instances of a name the VLM meant: chosen by the object's attention map.

SAM 3's concept segmentation returns every instance of a noun phrase in the view; the VLM
named the object because it saw a particular one (or several). With the object's attention
map A (float (H, W) in [0, 1], the view's pixel frame) and its positive area
P = {p : A(p) >= t} (t = ``concept.attention_threshold``), an instance with mask M is

* **kept** when it holds enough of the positive area,
  ``coverage(M) = |P ∩ M| / |P| >= concept.min_coverage``, or when enough of it lies in
  the positive area, ``inside(M) = |P ∩ M| / |M| >= concept.min_inside`` (with N
  instances under one broad map each holds only about 1/N of it, but lies in it);
* **ranked** by the mean attention inside its mask, ``mean_M(A)`` (best first), and at most
  ``concept.max_instances`` are kept;
* **scored** ``instance score x mean_M(A)``, the same form as the point path's
  ``prompts.detection_score`` (SAM's predicted IoU x mean attention inside the mask).

Several instances are all kept when the map covers them (a row of cones under one broad
peak); an instance the map does not reach is dropped however confident SAM 3 is. An empty
positive area keeps nothing, and the object falls back to the point-prompted path.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class InstanceProposals:
    """SAM 3's instances of one name in one view.

    masks: bool (N, H, W) in the view's pixel frame; scores: float32 (N,) in [0, 1].
    """

    masks: np.ndarray
    scores: np.ndarray

    @staticmethod
    def empty(height: int, width: int) -> InstanceProposals:
        return InstanceProposals(np.zeros((0, height, width), bool), np.zeros(0, np.float32))


@dataclasses.dataclass(frozen=True)
class SelectedInstance:
    """One kept instance: ``index`` into the proposals, its coverage of the map's positive
    area, the fraction of its mask inside that area, the mean attention inside its mask and
    its detection score."""

    index: int
    coverage: float
    inside: float
    mean_attention: float
    score: float


def positive_area(attention: np.ndarray, threshold: float) -> np.ndarray:
    """bool (H, W): where the attention map reaches ``threshold``."""
    return attention >= threshold


def coverage(masks: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Fraction of the positive area inside each mask: float64 (N,) = |P ∩ M_i| / |P|;
    zeros when P is empty. masks: bool (N, H, W); positive: bool (H, W)."""
    total = int(positive.sum())
    if total == 0 or len(masks) == 0:
        return np.zeros(len(masks))
    inside = masks.reshape(len(masks), -1)[:, positive.ravel()].sum(axis=1)
    return inside / total


def inside_fraction(masks: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Fraction of each mask inside the positive area: float64 (N,) = |P ∩ M_i| / |M_i|;
    0 for an empty mask. masks: bool (N, H, W); positive: bool (H, W)."""
    flat = masks.reshape(len(masks), -1)
    area = flat.sum(axis=1)
    inside = flat[:, positive.ravel()].sum(axis=1)
    return np.where(area > 0, inside / np.maximum(area, 1), 0.0)


def mean_attention(masks: np.ndarray, attention: np.ndarray) -> np.ndarray:
    """Mean of the attention map inside each mask: float64 (N,), 0 for an empty mask."""
    flat = masks.reshape(len(masks), -1)
    area = flat.sum(axis=1)
    summed = flat.astype(np.float64) @ attention.ravel().astype(np.float64)
    return np.where(area > 0, summed / np.maximum(area, 1), 0.0)


def select_instances(proposals: InstanceProposals, attention: np.ndarray,
                     attention_threshold: float, min_coverage: float, min_inside: float,
                     max_instances: int) -> list[SelectedInstance]:
    """The instances the map points at (module docstring), best mean attention first."""
    if len(proposals.masks) == 0:
        return []
    if proposals.masks.shape[1:] != attention.shape:
        raise ValueError(f"instance masks {proposals.masks.shape[1:]} and attention map "
                         f"{attention.shape} differ in size")
    positive = positive_area(attention, attention_threshold)
    cover = coverage(proposals.masks, positive)
    inside = inside_fraction(proposals.masks, positive)
    means = mean_attention(proposals.masks, attention)
    kept = [i for i in range(len(cover))
            if cover[i] > 0 and (cover[i] >= min_coverage or inside[i] >= min_inside)]
    kept.sort(key=lambda i: (-means[i], i))
    return [SelectedInstance(i, float(cover[i]), float(inside[i]), float(means[i]),
                             float(proposals.scores[i]) * float(means[i]))
            for i in kept[:max_instances]]
