"""FrameResult <-> DetectionArray, vision_msgs switch and the decode dispatcher.

Without the colcon build the messages come from rosbags' typestore, generated from the same
msg/*.msg files (so a missing or misspelt field fails here too); the ``ros`` tests repeat the
round trip with the rclpy classes and rclpy serialisation.
"""

from __future__ import annotations

import json
import sys
import types as pytypes

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from vlsam_ros.ros.detections import (
    MessageTypes,
    detection_to_msg,
    frame_result_to_detection2d_array,
    frame_result_to_msg,
    latency_ms,
    msg_to_detection,
    msg_to_dicts,
    msg_to_frame_result,
    vision_msgs_available,
    vision_msgs_enabled,
)
from vlsam_ros.core.config import NodeConfig
from vlsam_ros.core.errors import InvalidImageError
from vlsam_ros.core.masks import box_from_mask
from vlsam_ros.core.results import Detection, FrameResult
from vlsam_ros.ros.images import decode_image_msg

H, W = 30, 40


def _detection(mask, label, score, n_points=2, alt=()):
    rng = np.random.default_rng(len(label))
    points = rng.uniform(0, [W, H], size=(n_points, 2)).astype(np.float32)
    labels = np.array(([1] + [0] * (n_points - 1))[:n_points], np.int8)
    return Detection(label=label, score=score, mask=mask, box_xyxy=box_from_mask(mask),
                     prompt_points=points, prompt_labels=labels, alt_labels=alt)


def make_result() -> FrameResult:
    """Masks chosen for RLE edge cases: starting with a set pixel (first zero run is 0),
    touching the last pixel, the full image, a random blob, a single pixel."""
    rng = np.random.default_rng(0)
    corner = np.zeros((H, W), bool)
    corner[:5, :7] = True
    last = np.zeros((H, W), bool)
    last[20:, 33:] = True
    blob = rng.random((H, W)) > 0.6
    single = np.zeros((H, W), bool)
    single[12, 17] = True
    dets = (_detection(blob, "traffic cone", 0.31, 3, ("cone", "pylon")),
            _detection(corner, "dog", 0.9, 2),
            _detection(np.ones((H, W), bool), "road", 0.55, 1),
            _detection(last, "fallen cargo", 0.7, 2),
            _detection(single, "caf\u00e9 sign", 0.1, 0))
    return FrameResult(detections=dets, description="dog, road, traffic cone\nmore",
                       vlm_ms=12.5, segment_ms=3.25, total_ms=17.0)


@pytest.fixture(scope="module")
def typestore():
    from vlsam_ros.offline.replay.bag_io import vlsam_typestore
    return vlsam_typestore()


@pytest.fixture(scope="module")
def bag_types(typestore):
    return MessageTypes.from_typestore(typestore)


@pytest.fixture(scope="module")
def bag_header(typestore):
    t = typestore.types
    return t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=7, nanosec=5),
                                    frame_id="cam_front_optical")


def assert_same_result(back: FrameResult, result: FrameResult):
    expected = sorted(result.detections, key=lambda d: -d.score)
    assert [d.label for d in back.detections] == [d.label for d in expected]
    for got, want in zip(back.detections, expected):
        np.testing.assert_array_equal(got.mask, want.mask)
        assert got.mask.dtype == bool
        assert got.box_xyxy == want.box_xyxy
        assert got.score == pytest.approx(want.score, rel=1e-6)
        np.testing.assert_array_equal(got.prompt_points, want.prompt_points)
        np.testing.assert_array_equal(got.prompt_labels, want.prompt_labels)
        assert got.prompt_points.shape == (len(want.prompt_labels), 2)
        assert got.alt_labels == tuple(want.alt_labels)
    assert back.description == result.description
    assert (back.vlm_ms, back.segment_ms, back.total_ms) == (12.5, 3.25, 17.0)


def test_round_trip_through_bag_types(bag_types, bag_header):
    result = make_result()
    msg = frame_result_to_msg(result, bag_header, latency_ms=42.0, types=bag_types)
    assert msg.header is bag_header and msg.latency_ms == 42.0
    scores = [d.score for d in msg.detections]
    assert scores == sorted(scores, reverse=True)
    assert_same_result(msg_to_frame_result(msg), result)


def test_round_trip_through_cdr_bytes(typestore, bag_types, bag_header):
    """What a bag stores: serialise with rosbags, read back, decode."""
    result = make_result()
    msg = frame_result_to_msg(result, bag_header, 1.5, types=bag_types)
    raw = typestore.serialize_cdr(msg, "vlsam_ros/msg/DetectionArray")
    back = typestore.deserialize_cdr(raw, "vlsam_ros/msg/DetectionArray")
    assert back.header.frame_id == "cam_front_optical" and back.header.stamp.sec == 7
    assert back.latency_ms == pytest.approx(1.5)
    assert_same_result(msg_to_frame_result(back), result)


def test_message_fields_follow_the_msg_definition(bag_types, bag_header):
    det = make_result().detections[1]  # "dog": mask rows 0..4, cols 0..6
    msg = detection_to_msg(det, bag_types)
    assert (msg.box.x_offset, msg.box.y_offset, msg.box.width, msg.box.height) == (0, 0, 7, 5)
    assert msg.box.do_rectify is False
    assert (msg.mask_height, msg.mask_width) == (H, W)
    assert msg.mask_rle.dtype == np.uint32 and msg.mask_rle[0] == 0  # starts with a set pixel
    assert msg.mask_rle.sum() == H * W
    np.testing.assert_array_equal(msg.prompt_points,
                                  np.asarray(det.prompt_points).reshape(-1))  # x0, y0, x1, y1
    assert msg.prompt_labels.dtype == np.int8


@pytest.mark.parametrize("index", range(5))
def test_mask_rle_matches_pycocotools(bag_types, index):
    """Cross-check: pycocotools decodes our counts to the same mask, and its own encoder
    gives the same runs (compressed strings compared after frPyObjects)."""
    det = make_result().detections[index]
    msg = detection_to_msg(det, bag_types)
    rle = {"size": [H, W], "counts": [int(c) for c in msg.mask_rle]}
    compressed = mask_utils.frPyObjects(rle, H, W)
    np.testing.assert_array_equal(mask_utils.decode(compressed).astype(bool), det.mask)
    reference = mask_utils.encode(np.asfortranarray(det.mask.astype(np.uint8)))
    assert compressed["counts"] == reference["counts"]


def test_dicts_are_json_and_pycocotools_readable(bag_types, bag_header):
    result = make_result()
    msg = frame_result_to_msg(result, bag_header, 0.0, types=bag_types)
    dicts = json.loads(json.dumps(msg_to_dicts(msg)))
    assert [d["label"] for d in dicts] == [d.label for d in msg_to_frame_result(msg).detections]
    for entry, det in zip(dicts, msg_to_frame_result(msg).detections):
        seg = entry["segmentation"]
        mask = mask_utils.decode(mask_utils.frPyObjects(seg, *seg["size"])).astype(bool)
        np.testing.assert_array_equal(mask, det.mask)
        assert entry["box_xyxy"] == list(det.box_xyxy)
        assert len(entry["prompt_points"]) == len(entry["prompt_labels"])


def test_empty_result_keeps_description(bag_types, bag_header):
    empty = FrameResult(detections=(), description="nothing here", vlm_ms=1.0,
                        segment_ms=0.0, total_ms=1.0)
    msg = frame_result_to_msg(empty, bag_header, 3.0, types=bag_types)
    assert list(msg.detections) == [] and msg.description == "nothing here"
    assert msg_to_frame_result(msg).detections == ()


@pytest.mark.parametrize("change,match", [
    (dict(mask=np.zeros((2, H, W), bool)), "must be"),
    (dict(box_xyxy=(0, 0, W + 1, H)), "not inside"),
    (dict(box_xyxy=(5, 0, 4, H)), "not inside"),
    (dict(box_xyxy=(-1, 0, 3, 3)), "not inside"),
    (dict(prompt_labels=np.array([1], np.int8)), "prompt labels"),
])
def test_inconsistent_detections_are_rejected(bag_types, change, match):
    import dataclasses
    det = dataclasses.replace(make_result().detections[1], **change)
    with pytest.raises(ValueError, match=match):
        detection_to_msg(det, bag_types)


@pytest.mark.parametrize("field,value,match", [
    ("mask_rle", np.array([5, 3], np.uint32), "sum to"),
    ("prompt_points", np.array([1.0, 2.0, 3.0], np.float32), "prompt coordinates"),
    ("prompt_labels", np.array([1], np.int8), "prompt coordinates"),
])
def test_malformed_detection_messages_are_rejected(bag_types, field, value, match):
    msg = detection_to_msg(make_result().detections[1], bag_types)
    setattr(msg, field, value)
    with pytest.raises(ValueError, match=match):
        msg_to_detection(msg)


def test_latency_ms():
    stamp = pytypes.SimpleNamespace(sec=10, nanosec=250_000_000)
    assert latency_ms(stamp, 10_300_000_000) == pytest.approx(50.0)
    assert latency_ms(stamp, 10_250_000_000) == 0.0


# ------------------------------------------------------------------------ vision_msgs

@pytest.fixture
def no_vision_msgs(monkeypatch):
    """Make ``import vision_msgs`` fail even where it is installed."""
    monkeypatch.setitem(sys.modules, "vision_msgs", None)
    monkeypatch.setitem(sys.modules, "vision_msgs.msg", None)


def test_vision_msgs_switch_when_missing(no_vision_msgs, bag_header):
    assert vision_msgs_available() is False
    assert vision_msgs_enabled("off") is False
    assert vision_msgs_enabled("auto") is False
    with pytest.raises(ImportError, match="node.vision_msgs"):
        vision_msgs_enabled("on")
    with pytest.raises(ImportError, match="vision_msgs"):
        frame_result_to_detection2d_array(make_result(), bag_header)


def test_vision_msgs_setting_must_be_known():
    with pytest.raises(ValueError):
        vision_msgs_enabled("yes")


def _fake_vision_msgs():
    """Classes with vision_msgs 4.x's field layout (default-constructible, nested)."""
    ns = pytypes.SimpleNamespace

    class Detection2DArray:
        def __init__(self):
            self.header, self.detections = None, []

    class Detection2D:
        def __init__(self):
            self.header, self.results, self.id = None, [], ""
            self.bbox = ns(center=ns(position=ns(x=0.0, y=0.0), theta=0.0),
                           size_x=0.0, size_y=0.0)

    class ObjectHypothesisWithPose:
        def __init__(self):
            self.hypothesis = ns(class_id="", score=0.0)
            self.pose = None

    package = pytypes.ModuleType("vision_msgs")
    module = pytypes.ModuleType("vision_msgs.msg")
    module.Detection2DArray, module.Detection2D = Detection2DArray, Detection2D
    module.ObjectHypothesisWithPose = ObjectHypothesisWithPose
    package.msg = module
    return package, module


def test_vision_msgs_conversion_with_the_package_present(monkeypatch, bag_header):
    package, module = _fake_vision_msgs()
    monkeypatch.setitem(sys.modules, "vision_msgs", package)
    monkeypatch.setitem(sys.modules, "vision_msgs.msg", module)
    assert vision_msgs_enabled("auto") is True and vision_msgs_enabled("on") is True
    out = frame_result_to_detection2d_array(make_result(), bag_header)
    assert out.header is bag_header and len(out.detections) == 5
    best = out.detections[0]  # "dog": box (0, 0, 7, 5)
    assert best.id == "0" and best.header is bag_header
    assert best.results[0].hypothesis.class_id == "dog"
    assert best.results[0].hypothesis.score == pytest.approx(0.9)
    assert (best.bbox.center.position.x, best.bbox.center.position.y) == (3.5, 2.5)
    assert (best.bbox.size_x, best.bbox.size_y) == (7.0, 5.0)


# ------------------------------------------------------------------------ decode dispatch

def test_decode_image_msg_dispatches_on_message_type():
    from sensor_msgs.msg import CompressedImage, Image
    rgb = np.random.default_rng(4).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    raw = Image(height=6, width=5, encoding="bgr8", step=15, data=rgb[:, :, ::-1].tobytes())
    png = CompressedImage(format="png", data=cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes())
    for msg in (raw, png):
        np.testing.assert_array_equal(decode_image_msg(msg), rgb)
        with pytest.raises(InvalidImageError, match="max_image_pixels"):
            decode_image_msg(msg, NodeConfig(max_image_pixels=29))


# ------------------------------------------------------------------------ rclpy messages

@pytest.fixture
def ros_msgs():
    return pytest.importorskip(
        "vlsam_ros.msg", reason="vlsam_ros.msg not built: run scripts/build_ros.sh and "
        "source scripts/ros_env.sh")


@pytest.mark.ros
def test_round_trip_through_rclpy_messages(ros_msgs):
    from builtin_interfaces.msg import Time
    from rclpy.serialization import deserialize_message, serialize_message
    from std_msgs.msg import Header

    header = Header(stamp=Time(sec=3, nanosec=9), frame_id="cam_left")
    result = make_result()
    msg = frame_result_to_msg(result, header, latency_ms=8.0)  # default: rclpy classes
    assert isinstance(msg, ros_msgs.DetectionArray)
    assert msg.header == header and msg.latency_ms == 8.0
    back = deserialize_message(serialize_message(msg), ros_msgs.DetectionArray)
    assert back.header == header and back.latency_ms == 8.0  # (CDR padding bytes vary)
    assert_same_result(msg_to_frame_result(back), result)
