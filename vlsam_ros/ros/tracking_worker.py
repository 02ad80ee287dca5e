"""Two-rate serving for the node (``tracking.mode`` flow or memory), without rclpy.

The node's one worker thread keeps taking each camera's newest frame (no backlog) and
calls :meth:`TrackingWorker.serve` for it, which

1. applies the discovery answers that arrived for that camera since its last frame
   (``Tracker.apply_discovery``: associated at the time of the frame they were computed
   on, new objects carried to the newest frame);
2. follows every live track of that camera to the frame (``Tracker.follow``: one
   image-encoder pass, one batched decoder call) and returns the tracked result, which
   the node publishes at once;
3. hands the frame to discovery when the discovery thread is idle and this camera is the
   one waiting longest for it (and ``tracking.discovery_period_s`` has passed since its
   last discovery). There is never more than one discovery job: a busy discovery thread
   means the frame is simply not discovered.

Discovery (the VL-SAM pipeline, ``pipeline.run``) runs in its own thread on the same
models. Following has priority: the discovery thread's segmenter calls wait while a
follow step runs (:class:`FollowFirstGate`); the VLM's generation cannot be paused in the
middle, so on one GPU a follow step may still share it with generation. One model set
serves every camera; track ids are unique across cameras (one ``TrackIdSource``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
import time
import traceback
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from vlsam_ros.core.cancellation import CancellationToken, FrameCancelled
from vlsam_ros.core.config import VlsamConfig
from vlsam_ros.core.image_check import check_image
from vlsam_ros.core.results import FrameResult
from vlsam_ros.core.tracking.factory import build_follower
from vlsam_ros.core.tracking.followers import FlowFollower
from vlsam_ros.core.tracking.tracker import Tracker, tracked_result
from vlsam_ros.core.tracking.tracks import TrackIdSource

LOG = logging.getLogger(__name__)
NS_PER_S = 1_000_000_000
IDLE_POLL_S = 0.5  # how often an idle discovery thread re-checks for stop; not a tunable


class FollowFirstGate:
    """Lets the follower run first: ``following()`` marks a follow step, ``wait_turn()``
    (called by discovery before each segmenter call) blocks while one runs."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0

    @contextlib.contextmanager
    def following(self) -> Iterator[None]:
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def wait_turn(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._active == 0)


class GatedSegmenter:
    """A PromptableSegmenter whose calls wait for the gate (discovery's view of the shared
    segmenter); everything else is the wrapped segmenter's."""

    def __init__(self, inner: Any, gate: FollowFirstGate) -> None:
        self.inner = inner
        self.gate = gate

    @property
    def mask_prompt_frame(self) -> tuple[int, bool]:
        return self.inner.mask_prompt_frame

    def embed(self, image: np.ndarray) -> Any:
        self.gate.wait_turn()
        return self.inner.embed(image)

    def segment(self, *args: Any, **kwargs: Any) -> Any:
        self.gate.wait_turn()
        return self.inner.segment(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class _Job:
    camera: str
    image: np.ndarray
    stamp_ns: int


@dataclasses.dataclass(frozen=True)
class _Answer:
    stamp_ns: int
    result: FrameResult


class TrackingWorker:
    """Trackers of every camera plus the discovery thread (module docstring).

    pipeline: the VL-SAM pipeline (``run``, ``update_config``; its ``segmenter`` is
    shared with the flow followers and gated for discovery). cameras: the keys
    ``serve`` is called with. on_discovery_error: ``(camera, exception, traceback text)``,
    called from the discovery thread when a discovery run fails (the frame is skipped).
    """

    def __init__(self, cfg: VlsamConfig, pipeline: Any, cameras: Sequence[str],
                 on_discovery_error: Callable[[str, BaseException, str], None] | None = None,
                 video_model: Any = None) -> None:
        self.pipeline = pipeline
        self.gate = FollowFirstGate()
        raw_segmenter = getattr(pipeline, "segmenter", None)
        if raw_segmenter is not None:
            pipeline.segmenter = GatedSegmenter(raw_segmenter, self.gate)
        if cfg.tracking.mode == "memory" and video_model is None:
            from vlsam_ros.core.tracking.memory_follower import load_video_tracker

            video_model = load_video_tracker(cfg)
        self.ids = TrackIdSource()
        self.trackers = {c: Tracker(cfg.tracking, build_follower(cfg, raw_segmenter, video_model),
                                    self.ids) for c in cameras}
        self._cfg = cfg
        self._on_error = on_discovery_error
        self._cond = threading.Condition()
        self._job: _Job | None = None
        self._busy = False
        self._stopped = False
        self._answers: dict[str, list[_Answer]] = {c: [] for c in cameras}
        self._last_start: dict[str, float] = {c: -math.inf for c in cameras}  # monotonic
        self._last_start_stamp: dict[str, int | None] = {c: None for c in cameras}
        self._last_served: dict[str, float] = {c: -math.inf for c in cameras}  # monotonic
        self._last_handover = -math.inf
        self.discovery_runs = 0
        self.discovery_failures = 0
        self._cancel = CancellationToken()   # stops a running discovery at a safe point
        self._thread = threading.Thread(target=self._discovery_loop, name="vlsam-discovery",
                                        daemon=True)
        self._thread.start()

    def update_config(self, cfg: VlsamConfig) -> None:
        """Runtime tracking settings apply from the next frame (the pipeline gets its own
        update from the node)."""
        self._cfg = cfg
        for tracker in self.trackers.values():
            tracker.update_config(cfg.tracking)
            if isinstance(tracker.follower, FlowFollower):
                tracker.follower.sam_cfg = cfg.sam

    def stop(self) -> None:
        """Stops the discovery thread: a running discovery ends at its next safe point
        (``core/cancellation.py``), then the thread is joined."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._cancel.cancel("tracking stopped")
        self._thread.join()

    @property
    def discovery_busy(self) -> bool:
        with self._cond:
            return self._busy or self._job is not None

    # ------------------------------------------------------------------ follower side

    def serve(self, camera: str, image: np.ndarray, stamp_ns: int) -> FrameResult:
        """Steps 1-3 of the module docstring for one frame of ``camera`` (RGB uint8
        (H, W, 3), stamped ``stamp_ns``). Raises InvalidImageError for a malformed image."""
        start = time.perf_counter()
        check_image(image)
        tracker = self.trackers[camera]
        with self._cond:
            answers, self._answers[camera] = self._answers[camera], []
        with self.gate.following():
            for answer in answers:
                tracker.apply_discovery(answer.result, answer.stamp_ns)
            report = tracker.follow(image, stamp_ns)
        started = self._offer(camera, image, stamp_ns)
        return tracked_result(tracker.detections(), started, [a.result for a in answers],
                              report.follow_ms, (time.perf_counter() - start) * 1e3)

    def _offer(self, camera: str, image: np.ndarray, stamp_ns: int) -> bool:
        """Hands the frame to discovery when it is idle, this camera's discovery period
        has passed, and no other active camera (one served since the last hand-over) has
        waited longer for discovery. Returns whether it did."""
        period_ns = self._cfg.tracking.discovery_period_s * NS_PER_S
        now = time.monotonic()
        with self._cond:
            self._last_served[camera] = now
            if self._stopped or self._busy or self._job is not None:
                return False
            last = self._last_start_stamp[camera]
            if last is not None and stamp_ns >= last and stamp_ns - last < period_ns:
                return False
            active = [c for c, t in self._last_served.items() if t >= self._last_handover]
            if self._last_start[camera] > min(self._last_start[c] for c in active):
                return False
            self._job = _Job(camera, image, stamp_ns)
            self._last_start[camera] = self._last_handover = now
            self._last_start_stamp[camera] = stamp_ns
            self._cond.notify_all()
            return True

    # ------------------------------------------------------------------ discovery side

    def _discovery_loop(self) -> None:
        while True:
            with self._cond:
                while self._job is None and not self._stopped:
                    self._cond.wait(IDLE_POLL_S)
                if self._stopped:
                    return
                job, self._job, self._busy = self._job, None, True
            try:
                result = self.pipeline.run(job.image, cancel=self._cancel)
            except FrameCancelled:
                result = None
            except Exception as exc:  # noqa: BLE001 -- reported with traceback, counted
                self.discovery_failures += 1
                if self._on_error is not None:
                    self._on_error(job.camera, exc, traceback.format_exc())
                else:
                    LOG.error("discovery failed on %s: %s", job.camera, exc)
                result = None
            with self._cond:
                self._busy = False
                self.discovery_runs += 1
                if result is not None:
                    self._answers[job.camera].append(_Answer(job.stamp_ns, result))
