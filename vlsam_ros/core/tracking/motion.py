"""Sparse optical flow for the trackers: OpenCV pyramidal Lucas-Kanade on points inside a
mask, a robust similarity motion from the tracked points, and mask warping.

Coordinates are the continuous pixel frame of ``vlsam_ros.core.results`` (x right, y down,
pixel (r, c) centred at (c + 0.5, r + 0.5)). OpenCV's point functions use pixel indices
(centre of (r, c) at (c, r)); the conversions happen here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import cv2
import numpy as np

CORNER_QUALITY = 0.01
"""Shi-Tomasi corners weaker than this fraction of the strongest one in the mask are not
used (OpenCV's documented typical value); grid points fill in where corners are too few."""

EROSION_PX = 2
"""Points are sampled this far inside the mask (when the eroded mask is not empty), so
that they lie on the object and not on its boundary, where the background moves
differently."""


@dataclasses.dataclass(frozen=True)
class FlowSettings:
    """Lucas-Kanade settings (``tracking.flow_*`` fields of the config)."""

    points: int
    window_px: int
    pyramid_levels: int
    max_fb_error_px: float

    @classmethod
    def from_config(cls, cfg) -> "FlowSettings":
        """From a ``TrackingConfig``."""
        return cls(cfg.flow_points, cfg.flow_window_px, cfg.flow_pyramid_levels,
                   cfg.flow_max_fb_error_px)


def to_grey(image: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> grey uint8 (H, W), contiguous."""
    return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))


def sample_points(mask: np.ndarray, grey: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` points to track on an object: Shi-Tomasi corners of ``grey`` inside
    the (eroded) mask, topped up with evenly spaced mask pixels when fewer than half that
    many corners exist (flat objects). mask: bool (H, W). Returns float32 (N, 2) (x, y)
    pixel centres, N = 0 for an empty mask."""
    inside = mask.astype(np.uint8)
    eroded = cv2.erode(inside, np.ones((2 * EROSION_PX + 1,) * 2, np.uint8))
    if eroded.any():
        inside = eroded
    area = int(inside.sum())
    if area == 0:
        return np.zeros((0, 2), np.float32)
    spacing = max(1.0, float(np.sqrt(area / count)) / 2.0)
    corners = cv2.goodFeaturesToTrack(grey, maxCorners=count, qualityLevel=CORNER_QUALITY,
                                      minDistance=spacing, mask=inside)
    found = (np.zeros((0, 2), np.float32) if corners is None
             else corners.reshape(-1, 2).astype(np.float32) + 0.5)
    if len(found) >= max(1, count // 2):
        return found
    rows, cols = np.nonzero(inside)
    extra = min(count - len(found), rows.size)
    pick = np.linspace(0, rows.size - 1, extra).round().astype(np.int64)
    grid = np.stack([cols[pick] + 0.5, rows[pick] + 0.5], axis=1).astype(np.float32)
    return np.concatenate([found, grid])


def track_points(prev_grey: np.ndarray, grey: np.ndarray, points: np.ndarray,
                 settings: FlowSettings) -> tuple[np.ndarray, np.ndarray]:
    """Pyramidal Lucas-Kanade from ``prev_grey`` to ``grey`` with a forward-backward check.

    points: float32 (N, 2) (x, y) in ``prev_grey``. Returns the moved points float32 (N, 2)
    and ``ok`` bool (N,): tracked both ways, back within ``max_fb_error_px`` of the start,
    and inside the image.
    """
    if len(points) == 0:
        return np.zeros((0, 2), np.float32), np.zeros((0,), bool)
    lk = dict(winSize=(settings.window_px,) * 2, maxLevel=settings.pyramid_levels)
    start = (points - 0.5).reshape(-1, 1, 2).astype(np.float32)
    forward, status_f, _ = cv2.calcOpticalFlowPyrLK(prev_grey, grey, start, None, **lk)
    backward, status_b, _ = cv2.calcOpticalFlowPyrLK(grey, prev_grey, forward, None, **lk)
    error = np.linalg.norm((backward - start).reshape(-1, 2), axis=1)
    moved = forward.reshape(-1, 2) + 0.5
    height, width = grey.shape
    ok = ((status_f.reshape(-1) == 1) & (status_b.reshape(-1) == 1)
          & (error <= settings.max_fb_error_px)
          & (moved[:, 0] >= 0) & (moved[:, 0] <= width)
          & (moved[:, 1] >= 0) & (moved[:, 1] <= height))
    return moved.astype(np.float32), ok


def estimate_motion(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """Similarity transform (rotation, uniform scale, translation) taking ``src`` to ``dst``.

    src, dst: float (N, 2) corresponding (x, y) points. Three or more points: least median
    of squares (robust to up to half outliers, no threshold to tune); one or two: the
    median translation; none: None (no evidence of motion). Returns float64 (2, 3) A with
    dst ~ A[:, :2] @ src + A[:, 2], in continuous pixel coordinates.
    """
    if len(src) == 0:
        return None
    if len(src) >= 3:
        affine, _ = cv2.estimateAffinePartial2D(src.astype(np.float32),
                                                dst.astype(np.float32), method=cv2.LMEDS)
        if affine is not None:
            return affine.astype(np.float64)
    shift = np.median(dst - src, axis=0)
    return np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]])


def warp_mask(mask: np.ndarray, affine: np.ndarray | None) -> np.ndarray:
    """bool (H, W) mask moved by a (2, 3) transform in continuous pixel coordinates
    (nearest neighbour; parts leaving the image are cut). None returns the mask unchanged."""
    if affine is None:
        return mask.copy()
    linear, shift = affine[:, :2], affine[:, 2]
    # Index frame: p_idx = p - 0.5, so shift_idx = shift + linear @ (0.5, 0.5) - 0.5.
    index_affine = np.concatenate([linear, (shift + linear @ [0.5, 0.5] - 0.5)[:, None]],
                                  axis=1)
    height, width = mask.shape
    out = cv2.warpAffine(mask.astype(np.uint8), index_affine, (width, height),
                         flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=0)
    return out.astype(bool)


def carry_mask_through(mask: np.ndarray, greys: Sequence[np.ndarray],
                       settings: FlowSettings) -> list[np.ndarray]:
    """Moves a mask of ``greys[0]``'s frame through the following frames: points sampled
    once, tracked frame to frame (dropping the failures), and at each frame one similarity
    transform from the first to the current positions of the survivors. Returns the mask
    on every frame of ``greys`` (the first is a copy of ``mask``)."""
    out = [mask.copy()]
    if len(greys) < 2:
        return out
    if not mask.any():
        return out + [mask.copy() for _ in greys[1:]]
    start = sample_points(mask, greys[0], settings.points)
    current, alive = start, np.ones(len(start), bool)
    for prev_grey, grey in zip(greys[:-1], greys[1:]):
        moved, ok = track_points(prev_grey, grey, current, settings)
        current, alive = moved, alive & ok
        out.append(warp_mask(mask, estimate_motion(start[alive], current[alive])))
    return out


def carry_mask(mask: np.ndarray, greys: Sequence[np.ndarray],
               settings: FlowSettings) -> np.ndarray:
    """The mask of ``greys[0]``'s frame moved to ``greys[-1]``'s frame
    (:func:`carry_mask_through`); unchanged with fewer than two frames."""
    return carry_mask_through(mask, greys, settings)[-1]
