"""The vlsam node end to end over real DDS (loopback) with the tiny real models.

* stamps/frame_ids: a separate publisher process, the node started by vlsam-node-runner from
  a parameter file, rgb8 + bgr8 + JPEG cameras;
* stale frames: the worker only ever takes the newest frame of a camera (slot event log);
* fuzz: malformed Image/CompressedImage never produce a detection, the node goes on;
* lifecycle: configure -> activate -> deactivate -> activate -> cleanup leaks no thread or
  model; runtime parameters; a missing model leaves the node inactive.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
import weakref

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="ROS 2 wheels not installed (make setup)")
pytest.importorskip("vlsam_ros.msg", reason="messages not built: bash scripts/build_ros.sh "
                    "&& source scripts/ros_env.sh")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from ros_harness import (Collector, SlotEventLog, published_frames, ros_session,  # noqa: E402
                         start_publisher, stamp_ns)
from vlsam_ros.msg import DetectionArray  # noqa: E402
from vlsam_ros.ros.images import image_msg  # noqa: E402
from vlsam_ros.ros.node import VlsamNode  # noqa: E402
from vlsam_ros.ros.parameters import parameter_overrides  # noqa: E402
from vlsam_ros.tools.write_params_yaml import params_yaml  # noqa: E402

pytestmark = pytest.mark.ros

SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE


def make_node(session, cfg, **kwargs) -> VlsamNode:
    node = VlsamNode("vlsam", context=session.context,
                     parameter_overrides=parameter_overrides(cfg), **kwargs)
    return session.add(node)


def activate(node: VlsamNode) -> None:
    assert node.trigger_configure() == SUCCESS, node.problem
    assert node.trigger_activate() == SUCCESS, node.problem
    assert node.lifecycle_state == "active"


# ---------------------------------------------------------------------------------------
# Stamps and frame ids through the runner (separate processes for publisher and node)
# ---------------------------------------------------------------------------------------

def test_runner_publishes_source_stamp_and_frame_id(tiny_config, tmp_path):
    cameras = ["/e2e_rgb/image_raw", "/e2e_bgr/image_raw", "/e2e_jpeg/image_raw/compressed"]
    cfg = tiny_config(cameras=cameras)
    params = tmp_path / "params.yaml"
    params.write_text(params_yaml(cfg))
    outputs = ["/e2e_rgb/vlsam/detections", "/e2e_bgr/vlsam/detections",
               "/e2e_jpeg/vlsam/detections"]
    log = tmp_path / "published.jsonl"
    runner = subprocess.Popen(
        [sys.executable, "-m", "vlsam_ros.ros.run_node", "--params-file", str(params),
         "--set", "node.diagnostics_period_s=0.5"],
        env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    publisher = None
    try:
        with ros_session() as session:
            collector = Collector(session, DetectionArray, outputs)
            publisher = start_publisher(
                log, ["/e2e_rgb/image_raw=rgb8", "/e2e_bgr/image_raw=bgr8",
                      "/e2e_jpeg/image_raw/compressed"], rate=10.0, duration=120.0)
            served = collector.wait_for(lambda: all(collector.received(t) for t in outputs),
                                        timeout_s=120.0)
            publisher.send_signal(signal.SIGTERM)
            publisher.wait(timeout=20)
            received = {t: collector.received(t) for t in outputs}
        runner.send_signal(signal.SIGTERM)
        runner_out, _ = runner.communicate(timeout=60)
    finally:
        for proc in (runner, publisher):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert served, f"not every camera was served: { {t: len(m) for t, m in received.items()} }"
    assert runner.returncode == 0, runner_out[-3000:]
    sent = published_frames(log)
    expected_encoding = {outputs[0]: "rgb8", outputs[1]: "bgr8", outputs[2]: "jpeg"}
    for out_topic, camera in zip(outputs, cameras):
        for msg in received[out_topic]:
            record = sent.get((camera, stamp_ns(msg.header.stamp)))
            assert record is not None, f"{out_topic}: stamp {msg.header.stamp} was never sent"
            assert msg.header.frame_id == record["frame_id"]
            assert record["encoding"] == expected_encoding[out_topic]
            assert msg.total_ms > 0 and msg.latency_ms > 0
            assert msg.latency_ms >= msg.total_ms * 0.5  # stamped at capture, not at publish
            for det in msg.detections:
                assert det.mask_height == 48 and det.mask_width == 64
    print(f"runner e2e: DetectionArrays per camera "
          f"{ {t: len(m) for t, m in received.items()} }")


# ---------------------------------------------------------------------------------------
# Stale frames: the worker takes only the newest frame
# ---------------------------------------------------------------------------------------

@pytest.mark.slow  # the default suite checks the same on 4 cameras: test_ros_load.py
def test_worker_takes_only_the_newest_frame(tiny_config, tmp_path):
    camera = "/stale_cam/image_raw"
    cfg = tiny_config(cameras=[camera])
    events = SlotEventLog()
    log = tmp_path / "published.jsonl"
    with ros_session() as session:
        node = make_node(session, cfg, slot_observer=events)
        activate(node)
        collector = Collector(session, DetectionArray, ["/stale_cam/vlsam/detections"])
        publisher = start_publisher(log, [camera], rate=20.0, duration=120.0)
        try:
            collector.wait_for(lambda: collector.count() >= 3, timeout_s=120.0)
        finally:
            publisher.send_signal(signal.SIGTERM)
            publisher.wait(timeout=20)
        counts = node.camera_counts()[camera]
        assert node.trigger_deactivate() == SUCCESS
        published = [stamp_ns(m.header.stamp) for m in collector.received(
            "/stale_cam/vlsam/detections")]
    takes = events.takes()
    assert len(published) >= 3
    assert events.stale_takes() == [], "a frame was taken while a newer one was waiting"
    assert counts["dropped"] > counts["taken"], counts  # the pipeline is slower than 20 Hz
    taken_stamps = [stamp for _, stamp in takes]
    assert published == taken_stamps[: len(published)]  # outputs in take order, none extra
    assert all(a < b for a, b in zip(published, published[1:]))
    print(f"stale test: {counts}")


# ---------------------------------------------------------------------------------------
# Fuzz: malformed frames are skipped, the next good frame is served
# ---------------------------------------------------------------------------------------

def _good_image(rng: np.random.Generator, height: int = 48, width: int = 64) -> Image:
    return image_msg(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _good_jpeg(rng: np.random.Generator) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


def malformed_images(rng: np.random.Generator, n: int) -> list[tuple[str, Image]]:
    """``n`` Image messages, each broken in one way drawn from the list below (seeded)."""
    kinds = ["step_short", "step_padded_data_unpadded", "data_truncated", "data_extended",
             "unknown_encoding", "zero_height", "zero_width", "huge_dims", "garbage"]
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        msg = _good_image(rng, int(rng.integers(2, 40)), int(rng.integers(2, 40)))
        row = msg.width * 3
        if kind == "step_short":
            msg.step = int(rng.integers(0, row))
            msg.data = bytes(msg.step * msg.height)
        elif kind == "step_padded_data_unpadded":
            msg.step = row + int(rng.integers(1, 16))
        elif kind == "data_truncated":
            msg.data = bytes(msg.data)[: int(rng.integers(0, len(msg.data)))]
        elif kind == "data_extended":
            msg.data = bytes(msg.data) + bytes(int(rng.integers(1, 64)))
        elif kind == "unknown_encoding":
            msg.encoding = str(rng.choice(["rgb9", "", "RGB8", "8UC2", "yuv999", "jpeg",
                                           "bgr8 ", "rgb8\x00"]))
        elif kind == "zero_height":
            msg.height, msg.data = 0, b""
        elif kind == "zero_width":
            msg.width, msg.step, msg.data = 0, 0, b""
        elif kind == "huge_dims":
            msg.height = int(rng.choice([100_000, 2**31 - 1, 2**32 - 1]))
            msg.width = int(rng.choice([100_000, 2**31 - 1]))
            msg.step = msg.width * 3 % 2**32
        elif kind == "garbage":
            msg.encoding = str(rng.choice(["rgb8", "bgr8", "mono16", "bayer_rggb8"]))
            msg.height, msg.width = int(rng.integers(1, 50)), int(rng.integers(1, 50))
            msg.step = int(rng.integers(0, 400))
            size = int(rng.integers(0, 3000))
            if size == msg.step * msg.height:
                size += 1
            msg.data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        out.append((kind, msg))
    return out


def malformed_compressed(rng: np.random.Generator, n: int) -> list[tuple[str, CompressedImage]]:
    """``n`` CompressedImage messages that are not decodable images (seeded)."""
    kinds = ["garbage", "empty", "truncated_jpeg", "jpeg_header_only", "broken_png",
             "huge_jpeg_header"]
    good = _good_jpeg(rng)
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        msg = CompressedImage()
        msg.format = str(rng.choice(["jpeg", "png", "rgb8; jpeg compressed bgr8", "", "xyz"]))
        if kind == "garbage":
            data = rng.integers(0, 256, int(rng.integers(1, 4000)), dtype=np.uint8).tobytes()
            if data[:3] == b"\xff\xd8\xff" or data[:4] == b"\x89PNG":
                data = b"\x00" + data
        elif kind == "empty":
            data = b""
        elif kind == "truncated_jpeg":
            data = good[: int(rng.integers(4, len(good) - 8))]
        elif kind == "jpeg_header_only":
            data = good[:200]
        elif kind == "broken_png":
            data = b"\x89PNG\r\n\x1a\n" + rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
        else:  # SOF0 segment claiming 60000 x 60000 pixels
            data = (b"\xff\xd8\xff\xc0\x00\x11\x08" + (60000).to_bytes(2, "big")
                    + (60000).to_bytes(2, "big") + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
                    + b"\xff\xd9")
        msg.data = data
        out.append((kind, msg))
    return out


def test_malformed_frames_are_skipped_and_node_keeps_serving(tiny_config):
    raw_topic, jpeg_topic = "/fuzz_raw/image_raw", "/fuzz_jpeg/image_raw/compressed"
    outputs = ["/fuzz_raw/vlsam/detections", "/fuzz_jpeg/vlsam/detections"]
    cfg = tiny_config(cameras=[raw_topic, jpeg_topic], node__log_throttle_s=60.0)
    rng = np.random.default_rng(1234)
    cases = ([(raw_topic, kind, msg) for kind, msg in malformed_images(rng, 72)]
             + [(jpeg_topic, kind, msg) for kind, msg in malformed_compressed(rng, 36)])
    order = rng.permutation(len(cases))
    with ros_session() as session:
        # Decoding happens before the pipeline: the real tiny VLM with the oracle segmenter
        # serves the good frames (MobileSAM's encoder would only add seconds per frame).
        node = make_node(session, cfg, pipeline_factory=oracle_sam_pipeline)
        activate(node)
        collector = Collector(session, DetectionArray, outputs)
        sender = session.add(session_node(session, "fuzz_sender"))
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        pubs = {raw_topic: sender.create_publisher(Image, raw_topic, qos),
                jpeg_topic: sender.create_publisher(CompressedImage, jpeg_topic, qos)}
        assert collector.wait_for(lambda: all(p.get_subscription_count() for p in
                                              pubs.values()), timeout_s=10.0)
        bad_stamps: set[tuple[str, int]] = set()
        good_stamps: list[tuple[str, int]] = []
        next_stamp = [1_000_000_000]

        def send(topic, msg) -> tuple[str, int]:
            next_stamp[0] += 1_000_000
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(next_stamp[0], 10**9)
            msg.header.frame_id = "fuzz"
            processed_before = _processed(node, topic)
            pubs[topic].publish(msg)
            assert collector.wait_for(lambda: _processed(node, topic) > processed_before,
                                      timeout_s=60.0), f"{topic}: frame never processed"
            return topic, next_stamp[0]

        for count, index in enumerate(order, start=1):
            topic, kind, msg = cases[index]
            malformed_before = node.camera_counts()[topic]["malformed"]
            bad_stamps.add(send(topic, msg))
            assert node.camera_counts()[topic]["malformed"] == malformed_before + 1, kind
            if count in (len(cases) // 2, len(cases)):  # then a good frame on each camera
                good_stamps.append(send(raw_topic, _good_image(rng)))
                jpeg = CompressedImage(format="jpeg", data=_good_jpeg(rng))
                good_stamps.append(send(jpeg_topic, jpeg))
        assert collector.wait_for(lambda: collector.count() >= len(good_stamps), 30.0)
        counts = node.camera_counts()
        assert node.lifecycle_state == "active"
        received = {(cam, stamp_ns(m.header.stamp)) for cam, out in zip([raw_topic, jpeg_topic],
                                                                        outputs)
                    for m in collector.received(out)}
    assert not received & bad_stamps, "a malformed frame produced a DetectionArray"
    assert set(good_stamps) <= received
    assert sum(c["malformed"] for c in counts.values()) == len(cases)
    assert sum(c["failed"] for c in counts.values()) == 0
    print(f"fuzz: {len(cases)} malformed cases ({len(cases) - 36} Image, 36 CompressedImage), "
          f"{len(good_stamps)} good frames served after them")


def oracle_sam_pipeline(cfg):
    """The pipeline with the tiny VLM and test/oracle.py's segmenter in place of SAM."""
    from oracle import OracleSegmenter

    from vlsam_ros.core.pipeline import Pipeline
    from vlsam_ros.core.vlm import load_vlm

    return Pipeline(cfg, load_vlm(cfg), OracleSegmenter())


def session_node(session, name: str):
    import rclpy

    return rclpy.create_node(name, context=session.context)


def _processed(node: VlsamNode, topic: str) -> int:
    c = node.camera_counts()[topic]
    return c["published"] + c["malformed"] + c["failed"]


# ---------------------------------------------------------------------------------------
# Lifecycle, runtime parameters, visual outputs, diagnostics
# ---------------------------------------------------------------------------------------

class TrackingFactory:
    """Builds the tiny VLM + oracle segmenter pipeline (:func:`oracle_sam_pipeline`) and keeps
    weak references to every pipeline it built. The lifecycle is what is under test, not
    MobileSAM, whose 1024 x 1024 encode would cost over a second per frame here."""

    def __init__(self) -> None:
        self.built: list[weakref.ref] = []

    def __call__(self, cfg):
        pipeline = oracle_sam_pipeline(cfg)
        self.built.append(weakref.ref(pipeline))
        return pipeline

    def alive(self) -> int:
        gc.collect()
        return sum(ref() is not None for ref in self.built)


def _wait_threads(baseline: set[threading.Thread], timeout_s: float = 10.0) -> set:
    deadline = time.monotonic() + timeout_s
    while True:
        extra = {t for t in threading.enumerate() if t not in baseline and t.is_alive()}
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.05)


def test_lifecycle_cycle_leaks_nothing_and_parameters_apply(tiny_config, tmp_path,
                                                            monkeypatch):
    import vlsam_ros.ros.node as node_module

    overlays_built = []
    real_overlay = node_module.overlay_msg
    monkeypatch.setattr(node_module, "overlay_msg",
                        lambda *a, **k: overlays_built.append(1) or real_overlay(*a, **k))
    camera = "/life_cam/image_raw"
    cfg = tiny_config(cameras=[camera], node__diagnostics_period_s=0.2)
    factory = TrackingFactory()
    log = tmp_path / "published.jsonl"
    with ros_session() as session:
        node = make_node(session, cfg, pipeline_factory=factory)
        listener = Collector(session, DetectionArray, ["/life_cam/vlsam/detections"])
        diag = Collector(session, DiagnosticArray, ["/diagnostics"], name="diag_listener")
        baseline = set(threading.enumerate())
        publisher = start_publisher(log, [camera], rate=10.0, duration=300.0)
        try:
            assert node.trigger_configure() == SUCCESS
            assert node.lifecycle_state == "inactive"
            for round_ in range(2):
                assert node.trigger_activate() == SUCCESS, node.problem
                assert node.worker_thread is not None and node.worker_thread.is_alive()
                before = listener.count()
                assert listener.wait_for(lambda: listener.count() > before, 120.0)
                if round_ == 0:
                    overlay = _check_visual_outputs_only_when_subscribed(session, overlays_built)
                if round_ == 1:
                    _check_runtime_parameters(node, listener)
                assert node.trigger_deactivate() == SUCCESS
                assert node.pipeline is None and node.worker_thread is None
                assert factory.alive() == 0, "deactivate did not free the models"
            assert node.trigger_cleanup() == SUCCESS
            assert node.lifecycle_state == "unconfigured"
        finally:
            publisher.send_signal(signal.SIGTERM)
            publisher.wait(timeout=20)
        leaked = _wait_threads(baseline)
        statuses = [s for m in diag.received("/diagnostics") for s in m.status
                    if s.name == f"/vlsam: {camera}"]
    assert len(factory.built) == 2 and factory.alive() == 0
    assert (camera, stamp_ns(overlay.header.stamp)) in published_frames(log)
    assert (overlay.height, overlay.width) == (48, 64) and overlay.encoding == "rgb8"
    assert not leaked, f"threads left after cleanup: {[t.name for t in leaked]}"
    assert statuses, "no /diagnostics for the camera"
    keys = {kv.key for kv in statuses[-1].values}
    assert {"rate_hz", "mean_latency_ms", "frames_dropped_stale", "vlm_model", "device"} <= keys
    values = {kv.key: kv.value for s in statuses for kv in s.values}
    assert values["vlm_model"] == cfg.vlm.model and values["device"] == "cpu"


def _check_visual_outputs_only_when_subscribed(session, overlays_built: list) -> Image:
    """No overlay is drawn while nobody listens; once subscribed, overlay and markers come."""
    from visualization_msgs.msg import MarkerArray

    assert not overlays_built, "overlay built without a subscriber"
    overlay = Collector(session, Image, ["/life_cam/vlsam/overlay"], name="overlay_sub")
    markers = Collector(session, MarkerArray, ["/life_cam/vlsam/markers"], name="markers_sub")
    assert overlay.wait_for(lambda: overlay.count() >= 1 and markers.count() >= 1, 120.0)
    assert overlays_built
    return overlay.received("/life_cam/vlsam/overlay")[0]


def _check_runtime_parameters(node: VlsamNode, listener: Collector) -> None:
    """Runtime fields change from the next frame; read-only and out-of-range are refused;
    a frame without detections still publishes its DetectionArray with the description."""
    results = node.set_parameters([Parameter("ensemble.min_score", value=1.0)])
    assert results[0].successful
    assert node.config.ensemble.min_score == 1.0
    assert not node.set_parameters([Parameter("vlm.model", value="/elsewhere")])[0].successful
    refused = node.set_parameters([Parameter("prompts.threshold", value=1.5)])[0]
    assert not refused.successful
    assert node.config.prompts.threshold == 0.5
    before = listener.count()
    # Two more frames: the first may have started before the change.
    assert listener.wait_for(lambda: listener.count() >= before + 2, 120.0)
    assert node.pipeline.cfg.ensemble.min_score == 1.0
    last = listener.received("/life_cam/vlsam/detections")[-1]
    assert len(last.detections) == 0 and last.description != ""


def test_missing_model_leaves_node_inactive_with_clear_error(tiny_config, tmp_path):
    missing = tmp_path / "no_such_model"
    cfg = tiny_config(cameras=["/missing_cam/image_raw"], vlm__model=str(missing))
    with ros_session() as session:
        node = make_node(session, cfg)
        assert node.trigger_configure() == SUCCESS
        assert node.trigger_activate() == FAILURE
        assert node.lifecycle_state == "inactive"
        assert str(missing) in node.problem
        assert node.pipeline is None and node.worker_thread is None
        assert node.trigger_cleanup() == SUCCESS


def test_invalid_configuration_fails_configure(tiny_config):
    cfg = tiny_config(cameras=["/dup/image_raw", "/dup/image_rect"])
    with ros_session() as session:
        node = make_node(session, cfg)
        assert node.trigger_configure() == FAILURE
        assert node.lifecycle_state == "unconfigured"


# ---------------------------------------------------------------------------------------
# CUDA out of memory, empty results, signals (stub pipeline: these are about the shell)
# ---------------------------------------------------------------------------------------

class OomOncePipeline:
    """Raises torch.cuda.OutOfMemoryError on the first frame, then finds nothing."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.calls = 0

    def run(self, image, cancel=None):
        import torch

        from vlsam_ros.core.results import FrameResult

        self.calls += 1
        if self.calls == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return FrameResult((), "an empty road", 1.0, 1.0, 2.0)

    def update_config(self, cfg) -> None:
        self.cfg = cfg


def test_cuda_oom_skips_the_frame_and_empty_results_are_published(tiny_config):
    camera = "/oom_cam/image_raw"
    cfg = tiny_config(cameras=[camera])
    rng = np.random.default_rng(5)
    with ros_session() as session:
        node = make_node(session, cfg, pipeline_factory=OomOncePipeline)
        activate(node)
        collector = Collector(session, DetectionArray, ["/oom_cam/vlsam/detections"])
        sender = session.add(session_node(session, "oom_sender"))
        pub = sender.create_publisher(Image, camera, 10)
        assert collector.wait_for(lambda: pub.get_subscription_count() > 0, 10.0)
        for sec in (1, 2):
            msg = _good_image(rng)
            msg.header.stamp.sec = sec
            before = _processed(node, camera)
            pub.publish(msg)
            assert collector.wait_for(lambda: _processed(node, camera) > before, 30.0)
        assert collector.wait_for(lambda: collector.count() >= 1, 10.0)
        counts = node.camera_counts()[camera]
        received = collector.received("/oom_cam/vlsam/detections")
        assert node.lifecycle_state == "active"
    assert counts["failed"] == 1 and counts["published"] == 1
    assert [m.header.stamp.sec for m in received] == [2]
    assert len(received[0].detections) == 0 and received[0].description == "an empty road"


def test_spin_until_shutdown_stops_cleanly_on_sigint(tiny_config):
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    from vlsam_ros.ros.spin import spin_until_shutdown

    cfg = tiny_config(cameras=["/sig_cam/image_raw"])
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = VlsamNode("vlsam", parameter_overrides=parameter_overrides(cfg),
                     pipeline_factory=OomOncePipeline)
    states = []
    previous_handler = signal.getsignal(signal.SIGINT)
    timer = threading.Timer(1.0, lambda: (states.append(node.lifecycle_state),
                                          os.kill(os.getpid(), signal.SIGINT)))
    timer.start()
    assert spin_until_shutdown(node, activate=True) == 0
    timer.join()
    assert states == ["active"]
    assert not rclpy.ok()
    assert signal.getsignal(signal.SIGINT) is previous_handler
