"""Attention map -> SAM point prompts (method.md section 3).

Maps are float32 (H, W), min-max normalised to [0, 1] by the VLM side and sized to the
image they describe. Points are continuous pixel coordinates (x, y): the centre of pixel
(row r, column c) is (c + 0.5, r + 0.5) (see ``vlsam_ros.core.results``).

Two keypoint options from LENS (method.md section 8), both off by default
(``KeypointOptions``, config ``prompts.subpixel_peak`` / ``prompts.positive_points``):

* sub-pixel peak refinement: the map is a bilinear upsampling of a coarse patch grid, so its
  maximum always sits on a patch centre; a parabola (or a Gaussian) fitted through the
  peak and its neighbours one patch away on each axis locates the peak below patch
  resolution (``parabola_vertex``, ``subpixel_peak``);
* several positive points per object: up to M separated local maxima of the map inside
  the positive area (``separated_maxima``), for objects whose attention has several peaks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import cv2
import numpy as np

from vlsam_ros.core.segmenter.base import PADDING_LABEL

SUBPIXEL_METHODS = ("off", "quadratic", "gaussian")
"""``prompts.subpixel_peak`` choices: no refinement, parabola through the values, parabola
through their logarithms (exact for a Gaussian peak)."""

LOG_FLOOR = 1e-6
"""Numerical guard of the 'gaussian' fit, not a tunable: map values are floored here before
the logarithm (a normalised map is 0 at its minimum)."""


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


@dataclasses.dataclass(frozen=True)
class KeypointOptions:
    """The LENS keypoint options of the prompt step (config ``prompts.*``); the defaults
    are the paper's single positive point at the peak pixel.

    subpixel: one of ``SUBPIXEL_METHODS``; positive_points: M, the most positive points
    per prompt; min_separation_cells: least distance between two positive points, in
    patch cells (Euclidean, cells measured along each axis by ``cell_px``).
    """

    subpixel: str = "off"
    positive_points: int = 1
    min_separation_cells: float = 2.0

    def __post_init__(self) -> None:
        if self.subpixel not in SUBPIXEL_METHODS:
            raise ValueError(f"subpixel={self.subpixel!r}: must be one of {SUBPIXEL_METHODS}")
        if self.positive_points < 1:
            raise ValueError(f"positive_points={self.positive_points}: must be >= 1")

    @property
    def needs_cells(self) -> bool:
        """Whether the patch cell size must be known (any option on)."""
        return self.subpixel != "off" or self.positive_points > 1


def parabola_vertex(f_minus: float, f_zero: float, f_plus: float) -> float:
    """Offset of the vertex of the parabola through (-1, f-), (0, f0), (+1, f+):

    ``delta = (f- - f+) / (2 (f- - 2 f0 + f+))``, clipped to [-0.5, 0.5] (a sample that is
    the largest of its three lies within half a step of the true peak). When the
    curvature ``f- - 2 f0 + f+`` is not negative (no strict maximum) the offset is 0.
    """
    curvature = f_minus - 2.0 * f_zero + f_plus
    if not curvature < 0.0:
        return 0.0
    return float(np.clip((f_minus - f_plus) / (2.0 * curvature), -0.5, 0.5))


def sample_bilinear(image: np.ndarray, x: float, y: float) -> float:
    """Bilinear value of a float (H, W) map at the continuous pixel point (x, y), with
    pixel centres at (c + 0.5, r + 0.5); points beyond the outer centres take the border."""
    h, w = image.shape
    u = min(max(x - 0.5, 0.0), w - 1.0)
    v = min(max(y - 0.5, 0.0), h - 1.0)
    c0, r0 = int(np.floor(u)), int(np.floor(v))
    c1, r1 = min(c0 + 1, w - 1), min(r0 + 1, h - 1)
    a, b = u - c0, v - r0
    top = (1 - a) * image[r0, c0] + a * image[r0, c1]
    bottom = (1 - a) * image[r1, c0] + a * image[r1, c1]
    return float((1 - b) * top + b * bottom)


def subpixel_peak(attention: np.ndarray, peak_xy: tuple[float, float],
                  cell_px: tuple[float, float], method: str) -> tuple[float, float]:
    """Peak location below patch resolution.

    With the map's values f at the peak p = (x, y) and one patch cell (sx, sy) away on
    each axis, per axis: ``x* = x + sx * parabola_vertex(g(x - sx), g(x), g(x + sx))``
    (same for y), where g = f ('quadratic') or g = ln(max(f, LOG_FLOOR)) ('gaussian': a
    parabola through the logarithms is exact for a Gaussian peak). Off-grid samples are
    bilinear (``sample_bilinear``); the map being a bilinear upsampling of the patch grid,
    samples one cell apart around a peak on a patch centre are the grid's own values.
    The result is clipped to the image. ``method`` 'off' returns ``peak_xy``.

    attention: float (H, W); peak_xy: (x, y) pixels; cell_px: (sx, sy) pixels per cell.
    """
    if method == "off":
        return peak_xy
    if method not in SUBPIXEL_METHODS:
        raise ValueError(f"subpixel method {method!r}: must be one of {SUBPIXEL_METHODS}")
    x, y = peak_xy
    sx, sy = cell_px

    def g(px: float, py: float) -> float:
        value = sample_bilinear(attention, px, py)
        return float(np.log(max(value, LOG_FLOOR))) if method == "gaussian" else value

    centre = g(x, y)
    dx = parabola_vertex(g(x - sx, y), centre, g(x + sx, y))
    dy = parabola_vertex(g(x, y - sy), centre, g(x, y + sy))
    h, w = attention.shape
    return (float(np.clip(x + sx * dx, 0.0, np.nextafter(w, 0))),
            float(np.clip(y + sy * dy, 0.0, np.nextafter(h, 0))))


def separated_maxima(attention: np.ndarray, area: np.ndarray, count: int,
                     min_separation_px: tuple[float, float]) -> list[int]:
    """Up to ``count`` local maxima of ``attention`` inside ``area``, pairwise separated.

    Candidates are the pixels of ``area`` whose value equals the maximum of their 3 x 3
    neighbourhood within ``area``. Taken in decreasing value (ties: row-major order), a
    candidate is kept when, for every kept one, ``(dx / mx)^2 + (dy / my)^2 >= 1`` with
    (mx, my) = ``min_separation_px`` (an ellipse, one radius per axis). The first is the
    maximum of the area. On a flat plateau every pixel is a candidate, so a wide plateau
    yields points spread over it.

    attention: float (H, W); area: bool (H, W), not empty. Returns row-major flat indices.
    """
    masked = np.where(area, attention, -np.inf).astype(np.float64)
    dilated = cv2.dilate(masked, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT,
                         borderValue=-np.inf)
    candidates = np.flatnonzero(area & (masked >= dilated))
    order = candidates[np.argsort(-masked.ravel()[candidates], kind="stable")]
    width = attention.shape[1]
    mx, my = (max(float(m), 1e-9) for m in min_separation_px)
    kept: list[int] = []
    for idx in order:
        r, c = divmod(int(idx), width)
        if all(((c - kc) / mx) ** 2 + ((r - kr) / my) ** 2 >= 1.0
               for kr, kc in (divmod(k, width) for k in kept)):
            kept.append(int(idx))
            if len(kept) == count:
                break
    return kept


def sample_point_pair(attention: np.ndarray, threshold: float, connectivity: int = 8,
                      negative: bool = True, keypoints: KeypointOptions = KeypointOptions(),
                      cell_px: tuple[float, float] | None = None) -> PointPrompt | None:
    """Positive and negative point from one attention map (method.md section 3).

    1. positive area = largest connected component of ``attention >= threshold``;
    2. positive point = centre of the pixel with the highest attention inside it;
       with ``keypoints.positive_points`` = M > 1, up to M - 1 further positive points at
       the next separated local maxima inside the area (``separated_maxima``); with
       ``keypoints.subpixel`` each positive point is refined (``subpixel_peak``);
    3. negative point = centre of the pixel with the lowest attention outside it (omitted
       when ``negative`` is False or the positive area covers the whole map).
    Ties go to the first pixel in row-major order. Returns None when no pixel reaches the
    threshold (nothing left to prompt). ``cell_px`` = (sx, sy), the pixels of one patch
    cell, is required when a keypoint option is on.
    """
    if attention.ndim != 2:
        raise ValueError(f"attention must be (H, W), got shape {attention.shape}")
    if keypoints.needs_cells and cell_px is None:
        raise ValueError("cell_px (pixels per patch cell) is required by the keypoint options")
    if not np.any(attention >= threshold):
        return None
    area = largest_component(attention >= threshold, connectivity)
    width = attention.shape[1]
    if keypoints.positive_points > 1:
        sep = (keypoints.min_separation_cells * cell_px[0],
               keypoints.min_separation_cells * cell_px[1])
        peaks = separated_maxima(attention, area, keypoints.positive_points, sep)
    else:
        peaks = [int(np.argmax(np.where(area, attention, -np.inf)))]
    points = [subpixel_peak(attention, pixel_centre(p, width), cell_px, keypoints.subpixel)
              if keypoints.subpixel != "off" else pixel_centre(p, width) for p in peaks]
    labels = [1] * len(points)
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
