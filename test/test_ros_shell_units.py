"""Unit tests of the ROS shell's plain parts: latest-frame slots, topic mapping, the parameter
file generated from the schema, parameter descriptors and the runner's argument handling."""

from __future__ import annotations

import platform
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from vlsam_ros.ros.camera_topics import all_camera_topics, camera_topics
from vlsam_ros.core.config import ConfigError, VlsamConfig, from_flat, schema
from vlsam_ros.core.config_files import parameters_from_yaml
from vlsam_ros.ros.latest_frame_slot import FrameSlots, LatestFrameSlot
from vlsam_ros.tools.write_params_yaml import params_yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- latest-frame slots

def test_slot_keeps_only_the_newest_frame_and_counts_drops():
    slot = LatestFrameSlot()
    assert [slot.put(i) for i in range(5)] == [False, True, True, True, True]
    assert slot.take() == 4
    with pytest.raises(LookupError):
        slot.take()
    counts = slot.counts()
    assert (counts.received, counts.taken, counts.dropped) == (5, 1, 4)


def test_slots_serve_busy_cameras_round_robin():
    slots = FrameSlots(3)
    order = []
    for frame in range(4):
        for cam in range(3):
            slots.put(cam, (cam, frame))
        # With every camera fresh, each take goes to the next camera in turn.
        taken = slots.take(timeout_s=0)
        order.append(taken[0])
    assert order == [0, 1, 2, 0]
    # Cameras 1 and 2 still hold frames: the scan goes on after camera 0.
    assert slots.take(timeout_s=0)[0] == 1


def test_slots_skip_cameras_without_fresh_frames():
    slots = FrameSlots(3)
    slots.put(2, "a")
    assert slots.take(timeout_s=0) == (2, "a")
    assert slots.take(timeout_s=0) is None  # nothing fresh: nothing served twice
    slots.put(0, "b")
    slots.put(0, "c")
    assert slots.take(timeout_s=0) == (0, "c")
    assert [c.dropped for c in slots.counts()] == [1, 0, 0]


def test_close_wakes_a_waiting_worker_and_ignores_later_frames():
    slots = FrameSlots(1)
    result = []
    worker = threading.Thread(target=lambda: result.append(slots.take(timeout_s=30)))
    worker.start()
    time.sleep(0.1)
    slots.close()
    worker.join(timeout=5)
    assert not worker.is_alive() and result == [None] and slots.closed
    assert slots.put(0, "late") is False
    assert slots.counts()[0].received == 0


def test_observer_sees_puts_and_takes_in_order():
    events = []
    slots = FrameSlots(2, observer=lambda e, cam, f: events.append((e, cam, f)))
    slots.put(1, "x")
    slots.put(1, "y")
    slots.take(timeout_s=0)
    assert events == [("put", 1, "x"), ("put", 1, "y"), ("take", 1, "y")]


@pytest.mark.parametrize("cameras", [0, -1])
def test_slots_need_a_camera(cameras):
    with pytest.raises(ValueError):
        FrameSlots(cameras)


def test_stale_take_check_detects_a_fifo_hand_over():
    """The check used by the ROS tests must fail for a queue that serves old frames."""
    pytest.importorskip("rclpy")
    from ros_harness import SlotEventLog

    def frame(ns):
        return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=0, nanosec=ns)))

    log = SlotEventLog()
    log("put", 0, frame(1))
    log("put", 0, frame(2))
    log("take", 0, frame(1))  # what a FIFO would do
    log("take", 0, frame(2))
    assert log.stale_takes() == [(0, 1, 2)]
    assert log.takes() == [(0, 1), (0, 2)]


# ---------------------------------------------------------------- topic mapping

@pytest.mark.parametrize("topic, namespace, compressed, ns_of_node, detections", [
    ("/cam_front/image_raw", "/cam_front", False, "/", "/cam_front/vlsam/detections"),
    ("/cam_front/image_raw/compressed", "/cam_front", True, "/",
     "/cam_front/vlsam/detections"),
    ("/car/cam_left/image_rect", "/car/cam_left", False, "/", "/car/cam_left/vlsam/detections"),
    ("/image_raw", "", False, "/", "/vlsam/detections"),
    ("cam/image_raw", "/robot/cam", False, "/robot", "/robot/cam/vlsam/detections"),
])
def test_camera_topic_mapping(topic, namespace, compressed, ns_of_node, detections):
    cam = camera_topics(topic, "vlsam", ns_of_node)
    assert (cam.namespace, cam.compressed, cam.detections) == (namespace, compressed, detections)
    assert cam.overlay == detections.replace("detections", "overlay")
    assert cam.markers == detections.replace("detections", "markers")
    assert cam.detections_2d == detections + "_2d"


@pytest.mark.parametrize("topic", ["", "/cam/", "//cam/image", "~/image", "/compressed"])
def test_invalid_camera_topics_are_rejected(topic):
    with pytest.raises(ConfigError):
        camera_topics(topic, "vlsam")


def test_cameras_sharing_outputs_are_rejected():
    with pytest.raises(ConfigError, match="both publish"):
        all_camera_topics(["/cam/image_raw", "/cam/image_raw/compressed"], "vlsam")


# ---------------------------------------------------------------- parameter file

def test_config_yaml_is_generated_from_the_schema():
    """config/vlsam.yaml must equal the generator's output; regenerate it after schema changes
    with: vlsam-write-params-yaml config/vlsam.yaml"""
    assert (REPO_ROOT / "config" / "vlsam.yaml").read_text() == params_yaml(VlsamConfig())


def test_generated_yaml_round_trips_non_default_values(tmp_path):
    cfg = from_flat({"cameras": ["/a/image_raw", "/b/image_raw/compressed"], "device": "cpu",
                     "prompts.threshold": 0.25, "ensemble.tiles": True,
                     "vlm.question": 'say "hi": a, b'})
    path = tmp_path / "p.yaml"
    path.write_text(params_yaml(cfg, node_name="other"))
    assert from_flat(parameters_from_yaml(path, "other")) == cfg


# ---------------------------------------------------------------- ROS parameters

def test_parameters_are_declared_from_the_schema():
    rclpy = pytest.importorskip("rclpy")
    pytest.importorskip("vlsam_ros.msg")
    from rcl_interfaces.msg import ParameterType
    from rclpy.context import Context
    from rclpy.parameter import Parameter

    from vlsam_ros.ros.node import VlsamNode
    from vlsam_ros.ros.parameters import config_from_parameters

    context = Context()
    rclpy.init(context=context)
    try:
        node = VlsamNode("vlsam_params", context=context)
        entries = list(schema())
        for entry in entries:
            desc = node.describe_parameter(entry.name)
            assert desc.description == entry.doc
            assert desc.read_only == (not entry.runtime)
            if entry.range is not None and entry.type is float:
                assert desc.floating_point_range[0].from_value == entry.range[0]
                assert desc.floating_point_range[0].to_value == entry.range[1]
            if entry.range is not None and entry.type is int:
                assert desc.integer_range[0].to_value == entry.range[1]
        assert node.describe_parameter("cameras").type == ParameterType.PARAMETER_STRING_ARRAY
        assert config_from_parameters(node) == VlsamConfig()
        # Schema checks beyond ROS ranges (choices) reject a change with the field's name.
        result = node.set_parameters([Parameter("attention.head_weighting", value="max")])[0]
        assert not result.successful and "head_weighting" in result.reason
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


# ---------------------------------------------------------------- runner

def test_runner_rejects_an_invalid_configuration_before_starting_ros(capsys):
    from vlsam_ros.ros.run_node import main

    assert main(["--set", "prompts.threshold=5"]) == 2
    assert "prompts.threshold" in capsys.readouterr().err
    assert main(["--params-file", "/nonexistent/params.yaml"]) == 2


def test_runner_passes_ros_own_parameters_through():
    pytest.importorskip("rclpy")
    from vlsam_ros.ros.run_node import split_ros_parameters

    schema_values, ros_values = split_ros_parameters(
        {"use_sim_time": True, "qos_overrides./x.subscription.depth": 3, "device": "cpu"})
    assert schema_values == {"device": "cpu"}
    assert ros_values == {"use_sim_time": True, "qos_overrides./x.subscription.depth": 3}


def test_launch_file_declares_documented_arguments():
    """Static check (no launch_ros needed): every launch argument has a description."""
    import ast

    tree = ast.parse((REPO_ROOT / "launch" / "vlsam.launch.py").read_text())
    declared = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument"):
            name = node.args[0].value
            declared[name] = {kw.arg for kw in node.keywords}
    assert {"params_file", "cameras", "use_sim_time", "rviz"} <= set(declared)
    assert all("description" in kws for kws in declared.values())


# ---------------------------------------------------------------- process memory

def test_malloc_arena_limit():
    import sys

    from vlsam_ros.ros.process_memory import limit_malloc_arenas

    assert limit_malloc_arenas(0) is False  # 0 keeps glibc's default
    with pytest.raises(ValueError):
        limit_malloc_arenas(-1)
    if sys.platform.startswith("linux"):
        import platform

        if platform.libc_ver()[0] == "glibc":
            assert limit_malloc_arenas(2) is True


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_malloc_trim_returns_freed_heap_memory():
    """Blocks freed below the heap's top stay resident until malloc_trim hands them back."""
    import psutil

    from vlsam_ros.ros.process_memory import trim_free_memory

    block = 100 * 1024                       # below glibc's mmap threshold: heap memory
    count = 1500                             # ~150 MB
    process = psutil.Process()
    blocks = [np.ones(block, dtype=np.uint8) for _ in range(count)]
    pin = np.ones(block, dtype=np.uint8)     # keeps the heap top in place
    del blocks
    before = process.memory_info().rss
    assert trim_free_memory() is True
    after = process.memory_info().rss
    assert before - after > 0.5 * block * count, (before >> 20, after >> 20)
    del pin
