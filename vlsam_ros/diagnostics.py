"""Per-camera processing statistics and their ``/diagnostics`` messages.

``CameraStats`` is plain Python (thread-safe, no ROS); ``diagnostic_array`` turns a snapshot
of every camera into a ``diagnostic_msgs/DiagnosticArray`` with one status per camera, named
``vlsam: <camera topic>``.
"""

from __future__ import annotations

import dataclasses
import threading

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


def _fmt(value: float) -> str:
    return "nan" if value != value else f"{value:.1f}"


def camera_status(report: CameraReport, *, node_name: str, state: str, device: str,
                  model: str, sam: str, problem: str) -> DiagnosticStatus:
    """One camera's status. Level: ERROR when ``problem`` is set (e.g. models failed to
    load), WARN when the node is not active or published nothing in the window, else OK."""
    w = report.window
    if problem:
        level, message = DiagnosticStatus.ERROR, problem
    elif state != "active":
        level, message = DiagnosticStatus.WARN, f"node {state}"
    elif w.published == 0:
        level, message = DiagnosticStatus.WARN, "no frame processed in the last period"
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


def diagnostic_array(stamp, statuses: list[DiagnosticStatus]) -> DiagnosticArray:
    """Wraps statuses with the node clock's ``stamp`` (builtin_interfaces/Time)."""
    msg = DiagnosticArray(status=statuses)
    msg.header.stamp = stamp
    return msg
