"""Per-camera processing statistics and their ``/diagnostics`` messages.

``CameraStats`` is plain Python (thread-safe, no ROS); ``diagnostic_array`` turns a snapshot
of every camera into a ``diagnostic_msgs/DiagnosticArray`` with one status per camera, named
``vlsam: <camera topic>``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Sequence

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue


@dataclasses.dataclass(frozen=True)
class StatsWindow:
    """What happened on one camera since the previous snapshot (``period_s`` seconds).

    Rates are frames per second over the window; times are means over the frames published
    in the window, in milliseconds (NaN when none was published). Totals are cumulative.
    """

    period_s: float
    published: int
    published_hz: float
    mean_total_ms: float
    mean_latency_ms: float
    max_latency_ms: float
    total_published: int
    total_malformed: int
    total_failed: int


class CameraStats:
    """Counts published / malformed / failed frames and timing of one camera."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._published = 0
        self._malformed = 0
        self._failed = 0
        self._window_count = 0
        self._window_total_ms = 0.0
        self._window_latency_ms = 0.0
        self._window_max_latency_ms = float("nan")

    def record_published(self, total_ms: float, latency_ms: float) -> None:
        with self._lock:
            self._published += 1
            self._window_count += 1
            self._window_total_ms += total_ms
            self._window_latency_ms += latency_ms
            if not (self._window_max_latency_ms >= latency_ms):  # NaN-aware max
                self._window_max_latency_ms = latency_ms

    def record_malformed(self) -> None:
        with self._lock:
            self._malformed += 1

    def record_failed(self) -> None:
        with self._lock:
            self._failed += 1

    def totals(self) -> dict[str, int]:
        """Cumulative counts: published, malformed, failed."""
        with self._lock:
            return {"published": self._published, "malformed": self._malformed,
                    "failed": self._failed}

    def snapshot(self, period_s: float) -> StatsWindow:
        """Returns the window since the last snapshot and starts a new one."""
        with self._lock:
            n = self._window_count
            window = StatsWindow(
                period_s=period_s,
                published=n,
                published_hz=n / period_s if period_s > 0 else float("nan"),
                mean_total_ms=self._window_total_ms / n if n else float("nan"),
                mean_latency_ms=self._window_latency_ms / n if n else float("nan"),
                max_latency_ms=self._window_max_latency_ms,
                total_published=self._published,
                total_malformed=self._malformed,
                total_failed=self._failed,
            )
            self._window_count = 0
            self._window_total_ms = 0.0
            self._window_latency_ms = 0.0
            self._window_max_latency_ms = float("nan")
            return window


@dataclasses.dataclass(frozen=True)
class CameraReport:
    """Everything one camera's diagnostic status shows."""

    topic: str
    window: StatsWindow
    received: int
    dropped: int
    received_in_window: int | None = None  # frames that arrived during the window (None: ?)


def _fmt(value: float) -> str:
    return "nan" if value != value else f"{value:.1f}"


def camera_status(report: CameraReport, *, node_name: str, state: str, device: str,
                  model: str, sam: str, problem: str) -> DiagnosticStatus:
    """One camera's status. Level: ERROR when ``problem`` is set (e.g. models failed to
    load); WARN when the node is not active, or when frames arrived in the window but none
    was processed; OK otherwise. A camera that simply has no (new) frames is OK, its message
    says so ("no frames received yet" / "no new frame in the last period"): an idle input is
    not the node's fault."""
    w = report.window
    if problem:
        level, message = DiagnosticStatus.ERROR, problem
    elif state != "active":
        level, message = DiagnosticStatus.WARN, f"node {state}"
    elif w.published == 0 and report.received == 0:
        level, message = DiagnosticStatus.OK, "no frames received yet"
    elif w.published == 0 and report.received_in_window == 0:
        level, message = DiagnosticStatus.OK, "no new frame in the last period (input idle)"
    elif w.published == 0:
        level, message = DiagnosticStatus.WARN, "frames arrived but none was processed in " \
                                                "the last period"
    else:
        level, message = DiagnosticStatus.OK, f"{w.published_hz:.2f} Hz"
    values = {
        "state": state,
        "rate_hz": _fmt(w.published_hz),
        "mean_total_ms": _fmt(w.mean_total_ms),
        "mean_latency_ms": _fmt(w.mean_latency_ms),
        "max_latency_ms": _fmt(w.max_latency_ms),
        "frames_received": str(report.received),
        "frames_published": str(w.total_published),
        "frames_dropped_stale": str(report.dropped),
        "frames_malformed": str(w.total_malformed),
        "frames_failed": str(w.total_failed),
        "vlm_model": model,
        "sam": sam,
        "device": device,
    }
    return DiagnosticStatus(
        level=level, name=f"{node_name}: {report.topic}", message=message,
        hardware_id=device, values=[KeyValue(key=k, value=v) for k, v in values.items()])


@dataclasses.dataclass(frozen=True)
class CameraCounts:
    """Cumulative frame counts of one camera at one moment (for the periodic rate line)."""

    received: int = 0
    published: int = 0
    dropped: int = 0
    malformed: int = 0
    failed: int = 0


class CountWindow:
    """The window between two periodic reports (``/diagnostics``, the rate line): the
    seconds since the previous report and every camera's counts at it. Counts belong to one
    activation (its frame slots), so the first report of a new activation compares with
    zero received/dropped, not with the previous activation's counts."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._slots: object = None
        self._previous: list[CameraCounts] = []

    def restart(self, slots: object = None, counts: Sequence[CameraCounts] = ()) -> None:
        """The window starts now, at ``counts`` of the activation whose slots are ``slots``."""
        self._last = time.monotonic()
        self._slots, self._previous = slots, list(counts)

    def advance(self, slots: object, counts: Sequence[CameraCounts]
                ) -> tuple[float, list[CameraCounts]]:
        """Ends the window at ``counts``; returns (its seconds, the counts at its start) and
        starts the next one."""
        now = time.monotonic()
        period, self._last = now - self._last, now
        previous = self._previous
        if self._slots is not slots or len(previous) != len(counts):
            previous = [CameraCounts(0, c.published, 0, c.malformed, c.failed) for c in counts]
        self._slots, self._previous = slots, list(counts)
        return period, previous


def rate_line(period_s: float, cameras: list[tuple[str, CameraCounts, CameraCounts]]) -> str:
    """The node's periodic log line: per camera, the input and output rates and what was
    dropped or failed since the previous line. ``cameras``: (topic, counts at the previous
    line, counts now)."""
    parts = []
    for topic, before, now in cameras:
        if now.received == 0:
            parts.append(f"{topic}: no frames yet")
            continue
        got = now.received - before.received
        done = now.published - before.published
        parts.append(f"{topic}: in {got / period_s:.2f} Hz, processed {done / period_s:.2f} Hz"
                     f", dropped stale {now.dropped - before.dropped}, malformed "
                     f"{now.malformed - before.malformed}, failed {now.failed - before.failed}")
    return f"last {period_s:.1f} s: " + "; ".join(parts)


def diagnostic_array(stamp, statuses: list[DiagnosticStatus]) -> DiagnosticArray:
    """Wraps statuses with the node clock's ``stamp`` (builtin_interfaces/Time)."""
    msg = DiagnosticArray(status=statuses)
    msg.header.stamp = stamp
    return msg
