"""Load: 4 cameras at 30 Hz into one node with the tiny real models.

Checks resident memory growth after warm-up (< 5 %), fair round-robin service (every camera
served, counts within one of each other), newest-frame hand-over at every take, and that
every output stamp is one the worker took. Default run: 125 s of publishing; the 15-minute
soak is behind ``-m slow``. Figures are printed (run with ``-s``) and written to
``$VLSAM_LOAD_REPORT`` when that is set.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time

import pytest

pytest.importorskip("rclpy", reason="ROS 2 wheels not installed (make setup)")
pytest.importorskip("vlsam_ros.msg", reason="messages not built: bash scripts/build_ros.sh "
                    "&& source scripts/ros_env.sh")

import psutil  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402

from ros_harness import (Collector, SlotEventLog, ros_session, start_publisher,  # noqa: E402
                         stamp_ns)
from vlsam_ros.msg import DetectionArray  # noqa: E402
from vlsam_ros.ros.node import VlsamNode  # noqa: E402
from vlsam_ros.ros.parameters import parameter_overrides  # noqa: E402

pytestmark = pytest.mark.ros

CAMERAS = [f"/load_cam{i}/image_raw" for i in range(4)]
OUTPUTS = [f"/load_cam{i}/vlsam/detections" for i in range(4)]
RATE_HZ = 30.0
WARMUP_S = 30.0  # models loaded, first frames through every camera, allocator settled
MAX_RSS_GROWTH = 0.05


class RssSampler:
    """Samples this process's resident set size once per ``period_s`` in a thread."""

    def __init__(self, period_s: float = 1.0) -> None:
        self.samples: list[tuple[float, int]] = []
        self._period = period_s
        self._stop = threading.Event()
        self._proc = psutil.Process()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(self._period):
            self.samples.append((time.monotonic() - start, self._proc.memory_info().rss))

    def median_between(self, t0: float, t1: float) -> float:
        values = [rss for t, rss in self.samples if t0 <= t <= t1]
        if not values:
            raise ValueError(f"no RSS sample between {t0} and {t1} s")
        return statistics.median(values)


@pytest.mark.parametrize("duration_s", [
    pytest.param(125.0, id="2min"),
    pytest.param(900.0, id="15min", marks=pytest.mark.slow),
])
def test_four_cameras_at_30hz(tiny_config, tmp_path, duration_s):
    cfg = tiny_config(cameras=CAMERAS, node__diagnostics_period_s=1.0)
    events = SlotEventLog()
    log = tmp_path / "published.jsonl"
    with ros_session() as session, RssSampler() as rss:
        node = session.add(VlsamNode("vlsam", context=session.context,
                                     parameter_overrides=parameter_overrides(cfg),
                                     slot_observer=events))
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS, node.problem
        collector = Collector(session, DetectionArray, OUTPUTS)
        started = time.monotonic()
        publisher = start_publisher(log, CAMERAS, rate=RATE_HZ, duration=duration_s,
                                    width=320, height=240)
        try:
            publisher.wait(timeout=duration_s + 60)
        finally:
            if publisher.poll() is None:
                publisher.kill()
        elapsed = time.monotonic() - started
        counts = node.camera_counts()
        state = node.lifecycle_state
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        # The worker finishes its current frame during deactivate: count it too.
        published_total = {c: v["published"] for c, v in node.camera_counts().items()}
        time.sleep(0.5)  # the last DetectionArray in flight
        outputs = {out: [stamp_ns(m.header.stamp) for m in collector.received(out)]
                   for out in OUTPUTS}
    sampled_s = rss.samples[-1][0]
    # Medians over 20 s windows: single samples swing with the frame's transient tensors.
    rss_warm = rss.median_between(WARMUP_S, WARMUP_S + 20.0)
    rss_end = rss.median_between(sampled_s - 20.0, sampled_s)
    growth = (rss_end - rss_warm) / rss_warm
    served = [published_total[c] for c in CAMERAS]
    received_hz = [counts[c]["received"] / elapsed for c in CAMERAS]
    taken_by_camera: dict[int, set[int]] = {i: set() for i in range(len(CAMERAS))}
    for cam, stamp in events.takes():
        taken_by_camera[cam].add(stamp)
    report = {
        "duration_s": round(elapsed, 1),
        "input_hz_per_camera": [round(h, 1) for h in received_hz],
        "published_per_camera": served,
        "dropped_per_camera": [counts[c]["dropped"] for c in CAMERAS],
        "frames_taken": len(events.takes()),
        "stale_takes": len(events.stale_takes()),
        "rss_after_warmup_mb": round(rss_warm / 2**20, 1),
        "rss_end_mb": round(rss_end / 2**20, 1),
        "rss_growth_pct": round(100 * growth, 2),
        "rss_mb_every_10s": [round(r / 2**20) for t, r in rss.samples[::10]],
    }
    print("load test:", json.dumps(report))
    if os.environ.get("VLSAM_LOAD_REPORT"):
        with open(os.environ["VLSAM_LOAD_REPORT"], "a") as f:
            f.write(json.dumps(report) + "\n")
    assert state == "active"
    assert min(received_hz) > 0.5 * RATE_HZ, "the publisher did not load the node"
    assert min(served) >= 1, "a camera was never served"
    assert max(served) - min(served) <= 1, "round-robin service was not fair"
    assert events.stale_takes() == []
    for index, out in enumerate(OUTPUTS):
        assert set(outputs[out]) <= taken_by_camera[index]
        assert len(outputs[out]) == served[index]
    assert all(counts[c]["failed"] == 0 and counts[c]["malformed"] == 0 for c in CAMERAS)
    assert growth < MAX_RSS_GROWTH, report
