"""A fixed-cost, deterministic stand-in for the pipeline (tests and benchmarks of the
offline tools), with an optional injected crash.

:class:`StandInPipeline` returns one detection per frame (the pixels brighter than the
frame's mean) after spending ``cost_s`` seconds of CPU (a busy loop, so that two workers on
two cores scale like a compute-bound model would, unlike a sleep). Its timing fields are
made up (non-zero), so a replay must zero them to be reproducible.

:class:`StandInFactory` builds one per process (``factory(cfg)``, what ``vlsam-label``
calls in each actor). With ``crash_on_call=N`` and ``crash_marker=PATH``, the first process
to reach its N-th ``run`` call while ``PATH`` does not exist creates ``PATH`` and ends
itself at once (``os._exit``), like a killed worker; later processes run normally. With
``fail_on_width=W``, a frame W pixels wide raises RuntimeError (a pipeline error, not a bad
image).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np

from vlsam_ros.core.errors import InvalidImageError
from vlsam_ros.core.results import Detection, FrameResult


class StandInPipeline:
    """Deterministic one-detection pipeline; ``run`` takes uint8 (H, W, 3) RGB."""

    def __init__(self, cost_s: float = 0.0, crash_on_call: int | None = None,
                 crash_marker: str | None = None, fail_on_width: int | None = None) -> None:
        self.cost_s = cost_s
        self.crash_on_call = crash_on_call
        self.crash_marker = crash_marker
        self.fail_on_width = fail_on_width
        self.calls = 0

    def run(self, image: np.ndarray) -> FrameResult:
        self.calls += 1
        if (self.crash_on_call is not None and self.calls == self.crash_on_call
                and self.crash_marker is not None and not Path(self.crash_marker).exists()):
            Path(self.crash_marker).touch()
            os._exit(17)  # a dead worker: no exception, no clean-up
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InvalidImageError(f"expected uint8 (H, W, 3), got {image.dtype} "
                                    f"{image.shape}")
        if image.shape[1] == self.fail_on_width:
            raise RuntimeError(f"stand-in failure on a {image.shape[1]} px wide frame")
        end = time.perf_counter() + self.cost_s
        while time.perf_counter() < end:  # fixed CPU cost
            pass
        grey = image.mean(axis=2)
        mask = grey > grey.mean()
        if not mask.any():
            mask[0, 0] = True
        ys, xs = np.nonzero(mask)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        det = Detection("blob", 0.5, mask, box,
                        np.array([[xs[0] + 0.5, ys[0] + 0.5]], dtype=np.float32),
                        np.array([1], dtype=np.int8))
        return FrameResult((det,), "a blob", 12.5, 3.25, 16.0 + self.calls)


@dataclasses.dataclass(frozen=True)
class StandInFactory:
    """Picklable ``factory(cfg) -> StandInPipeline`` (the config is not used)."""

    cost_s: float = 0.0
    crash_on_call: int | None = None
    crash_marker: str | None = None
    fail_on_width: int | None = None

    def __call__(self, cfg: object) -> StandInPipeline:
        return StandInPipeline(self.cost_s, self.crash_on_call, self.crash_marker,
                               self.fail_on_width)
