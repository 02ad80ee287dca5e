"""Followers: move every live track to a new frame and re-segment all of them with one
image-encoder pass and one batched decoder call.

A follower sees tracks only as :class:`FollowInput` (id, mask on the previous followed
frame, whether it is new) and returns one mask per track (:class:`FollowOutput`). Two
implementations share this protocol:

* :class:`FlowFollower` (``tracking.mode=flow``): Lucas-Kanade flow on points inside each
  mask gives the object's motion (``motion.py``); the moved prompt (the most interior
  tracked points, the moved mask's box and the moved mask as SAM's mask prompt) is decoded
  by the promptable segmenter (SAM / MobileSAM) for all tracks at once;
* ``MemoryFollower`` (``tracking.mode=memory``, ``memory_follower.py``): a SAM 2-family
  video tracker with a memory bank.

Coordinates: the continuous pixel frame of ``vlsam_ros.core.results``.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import cv2
import numpy as np

from vlsam_ros.core.config import SamConfig, TrackingConfig
from vlsam_ros.core.segmenter.base import LOW_RES_MASK_SIZE, PADDING_LABEL, PromptableSegmenter
from vlsam_ros.core.tracking.motion import (FlowSettings, estimate_motion, sample_points,
                                            track_points, warp_mask)

SAM_INPUT_SIDE = 4 * LOW_RES_MASK_SIZE
"""SAM resizes an image's longest side to 1024 px and pads it square; its low-resolution
logits (256 x 256) cover that padded square at a quarter of the resolution."""


@dataclasses.dataclass(frozen=True)
class FollowInput:
    """One live track as a follower sees it.

    mask: bool (H, W) on the previous followed frame (for a track started since, the
    discovered mask carried to that frame). new: True on the first follow after the track
    started (or was revived or re-anchored), so a follower with per-track state starts it.
    """

    track_id: int
    mask: np.ndarray
    new: bool


@dataclasses.dataclass(frozen=True)
class FollowOutput:
    """The followed masks of K tracks on the new frame, in input order.

    masks: bool (K, H, W). iou_predictions: float32 (K,) the segmenter's predicted IoU.
    stability: float32 (K,) area(logits > t + offset) / area(logits > t - offset).
    object_scores: float32 (K,) object-presence logits (+inf where the follower has none).
    prompt_points: K float32 (P_k, 2) arrays; prompt_labels: K int8 (P_k,) arrays (1
    positive, 0 negative) given to the segmenter. ``encoder_calls`` and ``decoder_calls``
    count the model calls of this step.
    """

    masks: np.ndarray
    iou_predictions: np.ndarray
    stability: np.ndarray
    object_scores: np.ndarray
    prompt_points: list[np.ndarray]
    prompt_labels: list[np.ndarray]
    encoder_calls: int = 0
    decoder_calls: int = 0


def empty_output(height: int, width: int) -> FollowOutput:
    """The output for no tracks."""
    return FollowOutput(np.zeros((0, height, width), bool), np.zeros(0, np.float32),
                        np.zeros(0, np.float32), np.zeros(0, np.float32), [], [])


class Follower(Protocol):
    def follow(self, image: np.ndarray, grey: np.ndarray, prev_grey: np.ndarray | None,
               tracks: Sequence[FollowInput], cfg: TrackingConfig) -> FollowOutput:
        """Moves ``tracks`` from the previous followed frame (``prev_grey``, None before
        the first frame) to ``image`` (RGB uint8 (H, W, 3); ``grey`` its uint8 (H, W) grey
        version) and segments them all there."""
        ...

    def forget(self, track_ids: Sequence[int]) -> None:
        """Drops any per-track state of tracks that ended."""
        ...


def stability_scores(low_res_logits: np.ndarray, threshold: float,
                     offset: float) -> np.ndarray:
    """SAM's stability score per mask: |logits > t + offset| / |logits > t - offset|.
    low_res_logits: float (K, 1, h, w). Returns float32 (K,); 0 where both areas are 0."""
    flat = low_res_logits.reshape(len(low_res_logits), -1)
    high = (flat > threshold + offset).sum(axis=1)
    low = (flat > threshold - offset).sum(axis=1)
    return np.where(low > 0, high / np.maximum(low, 1), 0.0).astype(np.float32)


def mask_to_low_res_logits(mask: np.ndarray, logit: float, side: int = LOW_RES_MASK_SIZE,
                           square_resize: bool = False) -> np.ndarray:
    """A bool (H, W) mask as SAM's mask prompt: float32 (1, side, side) logits, +logit
    inside and -logit outside, in the segmenter's low-resolution input square: SAM's
    (longest side resized to ``side``, padded at the bottom and right) or, with
    ``square_resize``, the SAM 2 family's (the whole image stretched to the square)."""
    height, width = mask.shape
    if square_resize:
        new_w = new_h = side
    else:
        scale = side / max(height, width)
        new_w, new_h = int(width * scale + 0.5), int(height * scale + 0.5)
    small = cv2.resize(mask.astype(np.uint8), (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    out = np.full((1, side, side), -logit, np.float32)
    out[0, :new_h, :new_w][small > 0] = logit
    return out


def interior_points(mask: np.ndarray, candidates: np.ndarray, count: int) -> np.ndarray:
    """Positive prompt points for an object whose (moved) mask is ``mask``.

    The first point is the candidate deepest inside the mask (largest distance to its
    border), then candidates farthest from those chosen (spread over the object). Without
    candidates inside the mask, the mask's deepest pixel. candidates: float (N, 2) (x, y)
    tracked points. Returns float32 (M, 2), 1 <= M <= count, or (0, 2) for an empty mask.
    """
    if not mask.any():
        return np.zeros((0, 2), np.float32)
    depth = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)   # (H, W) float32
    height, width = mask.shape
    if len(candidates):
        cols = np.clip(np.floor(candidates[:, 0]).astype(int), 0, width - 1)
        rows = np.clip(np.floor(candidates[:, 1]).astype(int), 0, height - 1)
        inside = depth[rows, cols] > 0
        candidates, values = candidates[inside], depth[rows, cols][inside]
    if not len(candidates):
        row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
        return np.array([[col + 0.5, row + 0.5]], np.float32)
    chosen = [int(np.argmax(values))]
    while len(chosen) < min(count, len(candidates)):
        gaps = np.min(np.linalg.norm(candidates[:, None] - candidates[chosen][None], axis=2),
                      axis=1)
        chosen.append(int(np.argmax(gaps)))
    return candidates[chosen].astype(np.float32)


def box_of(mask: np.ndarray) -> np.ndarray:
    """Tight box corners (x0, y0, x1, y1), x1/y1 exclusive, of a non-empty mask: float32 (4,)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


class FlowFollower:
    """Lucas-Kanade prompt propagation + one batched SAM decode (module docstring).

    segmenter: a PromptableSegmenter (SAM / MobileSAM adapter, or a test double).
    sam_cfg: the segmenter settings sent with each decoder call; its ``mask_threshold`` is
    also the centre of the stability score. A plain value (``TrackingWorker.update_config``
    replaces it), never applied to the shared segmenter.
    """

    def __init__(self, segmenter: PromptableSegmenter, sam_cfg: SamConfig | None = None) -> None:
        self.segmenter = segmenter
        self.sam_cfg = sam_cfg if sam_cfg is not None else SamConfig()

    def forget(self, track_ids: Sequence[int]) -> None:
        """Stateless per track: nothing to drop."""

    def move_prompt(self, mask: np.ndarray, grey: np.ndarray, prev_grey: np.ndarray | None,
                    cfg: TrackingConfig) -> tuple[np.ndarray, np.ndarray]:
        """One track's prompt on the new frame: (moved mask bool (H, W), positive points
        float32 (M, 2)). Points sampled inside ``mask`` on ``prev_grey`` are tracked to
        ``grey``; their similarity motion moves the mask; the points come from
        :func:`interior_points`. Without a previous frame nothing moves."""
        if prev_grey is None:
            return mask, interior_points(mask, np.zeros((0, 2), np.float32),
                                         cfg.flow_prompt_points)
        settings = FlowSettings.from_config(cfg)
        start = sample_points(mask, prev_grey, settings.points)
        moved, ok = track_points(prev_grey, grey, start, settings)
        warped = warp_mask(mask, estimate_motion(start[ok], moved[ok]))
        return warped, interior_points(warped, moved[ok], cfg.flow_prompt_points)

    def follow(self, image: np.ndarray, grey: np.ndarray, prev_grey: np.ndarray | None,
               tracks: Sequence[FollowInput], cfg: TrackingConfig) -> FollowOutput:
        """See :class:`Follower`. Tracks whose moved mask left the image get an empty mask
        and IoU 0 (their loss follows from ``tracking.min_area_px``) and are not decoded."""
        height, width = grey.shape
        if not tracks:
            return empty_output(height, width)
        moved = [self.move_prompt(t.mask, grey, prev_grey, cfg) for t in tracks]
        live = [i for i, (_, pts) in enumerate(moved) if len(pts)]
        masks = np.zeros((len(tracks), height, width), bool)
        ious = np.zeros(len(tracks), np.float32)
        stability = np.zeros(len(tracks), np.float32)
        points_out = [np.zeros((0, 2), np.float32) for _ in tracks]
        labels_out = [np.zeros((0,), np.int8) for _ in tracks]
        encoder_calls = decoder_calls = 0
        if live:
            count = max(len(moved[i][1]) for i in live)
            points = np.zeros((len(live), count, 2), np.float32)
            labels = np.full((len(live), count), PADDING_LABEL, np.int64)
            for row, i in enumerate(live):
                pts = moved[i][1]
                points[row, :len(pts)] = pts
                labels[row, :len(pts)] = 1
                points_out[i], labels_out[i] = pts, np.ones(len(pts), np.int8)
            side, square = self.segmenter.mask_prompt_frame
            logits = (np.stack([mask_to_low_res_logits(moved[i][0], cfg.flow_mask_prompt_logit,
                                                       side, square)
                                for i in live]) if cfg.flow_mask_prompt else None)
            boxes = np.stack([box_of(moved[i][0]) for i in live]) if cfg.flow_box_prompt else None
            extra = {} if boxes is None else {"boxes": boxes}
            embedding = self.segmenter.embed(image)
            batch = self.segmenter.segment(embedding, points, labels, logits,
                                           sam_cfg=self.sam_cfg, **extra)
            encoder_calls, decoder_calls = 1, 1
            masks[live] = batch.masks
            ious[live] = batch.iou_predictions
            stability[live] = stability_scores(batch.low_res_logits, self.sam_cfg.mask_threshold,
                                               cfg.stability_offset)
        return FollowOutput(masks, ious, stability, np.full(len(tracks), np.inf, np.float32),
                            points_out, labels_out, encoder_calls, decoder_calls)
