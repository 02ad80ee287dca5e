"""Offline two-rate tracking of one camera's frame sequence: every frame is followed, and
discovery runs on every ``every``-th frame (a frame count, so a run is reproducible).

Its answer is applied ``delay`` frames later (0: on the same frame, before the frame's
result is taken), which lets tests and benchmarks reproduce the node's late answers
deterministically. Offline replay uses it with delay 0.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np

from vlsam_ros.core.config import VlsamConfig
from vlsam_ros.core.image_check import check_image
from vlsam_ros.core.results import FrameResult
from vlsam_ros.core.tracking.tracker import DiscoveryReport, FollowReport, Tracker, tracked_result
from vlsam_ros.core.tracking.tracks import TrackIdSource

Discover = Callable[[np.ndarray], FrameResult]
"""``discover(image) -> FrameResult``: the VL-SAM pipeline's ``run``."""


@dataclasses.dataclass
class _Pending:
    due_index: int
    stamp_ns: int
    result: FrameResult


class TwoRateSequence:
    """Steps one camera's frames through a Tracker (module docstring). ``reports`` keeps
    the follow and discovery reports of the latest step."""

    def __init__(self, tracker: Tracker, discover: Discover, every: int,
                 delay: int = 0) -> None:
        if every < 1 or delay < 0:
            raise ValueError(f"every={every} must be >= 1 and delay={delay} >= 0")
        self.tracker = tracker
        self.discover = discover
        self.every = every
        self.delay = delay
        self.index = 0
        self._pending: list[_Pending] = []
        self.last_follow: FollowReport | None = None
        self.last_discoveries: list[DiscoveryReport] = []

    def step(self, image: np.ndarray, stamp_ns: int) -> FrameResult:
        """Follows ``image`` (RGB uint8 (H, W, 3)), runs discovery when this frame's index
        is a multiple of ``every``, applies the answers that are due, and returns the
        frame's tracked result (``discovery`` True when this frame ran it)."""
        start = time.perf_counter()
        self.last_follow = self.tracker.follow(image, stamp_ns)
        ran = None
        if self.index % self.every == 0:
            ran = self.discover(image)
            self._pending.append(_Pending(self.index + self.delay, stamp_ns, ran))
        due = [p for p in self._pending if p.due_index <= self.index]
        self._pending = [p for p in self._pending if p.due_index > self.index]
        self.last_discoveries = [self.tracker.apply_discovery(p.result, p.stamp_ns)
                                 for p in due]
        self.index += 1
        total = (time.perf_counter() - start) * 1e3
        return tracked_result(self.tracker.detections(), ran is not None,
                              [p.result for p in due], self.last_follow.follow_ms, total)


class OfflineTracking:
    """Two-rate tracking of several cameras for offline replay: one TwoRateSequence per
    camera key (discovery every ``tracking.replay_discovery_every`` frames of that camera,
    answers applied on the same frame), one id source for all of them."""

    def __init__(self, cfg: VlsamConfig, discover: Discover,
                 make_follower: Callable[[], Any]) -> None:
        self.cfg = cfg
        self.discover = discover
        self.make_follower = make_follower
        self.ids = TrackIdSource()
        self.sequences: dict[str, TwoRateSequence] = {}

    @classmethod
    def for_pipeline(cls, pipeline: Any, cfg: VlsamConfig) -> "OfflineTracking":
        """Discovery = ``pipeline.run``; followers per ``tracking.mode`` over the
        pipeline's segmenter (flow) or one video tracker loaded here (memory)."""
        from vlsam_ros.core.tracking.factory import build_follower

        video_model = None
        if cfg.tracking.mode == "memory":
            from vlsam_ros.core.tracking.memory_follower import load_video_tracker

            video_model = load_video_tracker(cfg)
        return cls(cfg, pipeline.run,
                   lambda: build_follower(cfg, pipeline.segmenter, video_model))

    def step(self, camera: str, image: np.ndarray, stamp_ns: int) -> FrameResult:
        """One frame of ``camera``; InvalidImageError for a malformed image."""
        check_image(image)
        sequence = self.sequences.get(camera)
        if sequence is None:
            tracker = Tracker(self.cfg.tracking, self.make_follower(), self.ids)
            sequence = TwoRateSequence(tracker, self.discover,
                                       self.cfg.tracking.replay_discovery_every)
            self.sequences[camera] = sequence
        return sequence.step(image, stamp_ns)
