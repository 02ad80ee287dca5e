"""Attention map -> SAM point prompts (method.md section 3).

Maps are float32 (H, W), min-max normalised to [0, 1] by the VLM side and sized to the
image they describe. Points are continuous pixel coordinates (x, y): the centre of pixel
(row r, column c) is (c + 0.5, r + 0.5) (see ``vlsam_ros.core.results``).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import cv2
import numpy as np

from vlsam_ros.core.segmenter.base import PADDING_LABEL


@dataclasses.dataclass(frozen=True)
class PointPrompt:
    """Points for one SAM prompt.

    points: float32 (P, 2), (x, y) pixels; labels: int8 (P,), 1 positive, 0 negative.
    positive_area: bool (H, W), the connected component the positive point came from.
    """

    points: np.ndarray
    labels: np.ndarray
    positive_area: np.ndarray


def largest_component(binary: np.ndarray, connectivity: int = 8) -> np.ndarray:
    """The largest connected component of a bool (H, W) image, as bool (H, W).

    Ties between equally large components go to the one whose first pixel comes first in
    row-major order. An all-False input returns all False.
    """
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        binary.astype(np.uint8), connectivity=connectivity)
    if count <= 1:
        return np.zeros(binary.shape, dtype=bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    return labels == 1 + int(np.argmax(areas))


def pixel_centre(flat_index: int, width: int) -> tuple[float, float]:
    """Row-major flat pixel index -> (x, y) of that pixel's centre."""
    row, col = divmod(int(flat_index), width)
    return col + 0.5, row + 0.5


def sample_point_pair(attention: np.ndarray, threshold: float, connectivity: int = 8,
                      negative: bool = True) -> PointPrompt | None:
    """Positive and negative point from one attention map (method.md section 3).

    1. positive area = largest connected component of ``attention >= threshold``;
    2. positive point = centre of the pixel with the highest attention inside it;
    3. negative point = centre of the pixel with the lowest attention outside it (omitted
       when ``negative`` is False or the positive area covers the whole map).
    Ties go to the first pixel in row-major order. Returns None when no pixel reaches the
    threshold (nothing left to prompt).
    """
    if attention.ndim != 2:
        raise ValueError(f"attention must be (H, W), got shape {attention.shape}")
    if not np.any(attention >= threshold):
        return None
    area = largest_component(attention >= threshold, connectivity)
    width = attention.shape[1]
    pos = int(np.argmax(np.where(area, attention, -np.inf)))
    points = [pixel_centre(pos, width)]
    labels = [1]
    if negative and not area.all():
        neg = int(np.argmin(np.where(area, np.inf, attention)))
        points.append(pixel_centre(neg, width))
        labels.append(0)
    return PointPrompt(np.asarray(points, dtype=np.float32), np.asarray(labels, dtype=np.int8),
                       area)


def stack_prompts(prompts: Sequence[PointPrompt]) -> tuple[np.ndarray, np.ndarray]:
    """K prompts -> points float32 (K, P, 2) and labels int64 (K, P) for one batched decoder
    call. Prompts with fewer than P points are padded with label -1 (ignored by SAM)."""
    if not prompts:
        raise ValueError("stack_prompts needs at least one prompt")
    p = max(len(pr.labels) for pr in prompts)
    points = np.zeros((len(prompts), p, 2), dtype=np.float32)
    labels = np.full((len(prompts), p), PADDING_LABEL, dtype=np.int64)
    for k, pr in enumerate(prompts):
        points[k, :len(pr.labels)] = pr.points
        labels[k, :len(pr.labels)] = pr.labels
    return points, labels
