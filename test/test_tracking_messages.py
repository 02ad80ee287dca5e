"""Tracking fields of the messages and debug outputs: Detection.track_id and label_stamp,
DetectionArray.discovery, the vision_msgs id, and colours that follow the track id."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest

from vlsam_ros.ros.detections import (MessageTypes, detection_to_msg,
                                      frame_result_to_detection2d_array, frame_result_to_msg,
                                      msg_to_dicts, msg_to_frame_result)
from vlsam_ros.core.masks import box_from_mask
from vlsam_ros.core.results import Detection, FrameResult
from vlsam_ros.ros.visualization import detection_colour, draw_overlay, label_text

H, W = 20, 30


def _det(label, score, rows, track_id=0, label_stamp_ns=None):
    mask = np.zeros((H, W), bool)
    mask[rows] = True
    return Detection(label, score, mask, box_from_mask(mask), np.array([[1.5, 2.5]], np.float32),
                     np.array([1], np.int8), (), track_id, label_stamp_ns)


@pytest.fixture(scope="module")
def typestore():
    from vlsam_ros.offline.replay.bag_io import vlsam_typestore
    return vlsam_typestore()


@pytest.fixture(scope="module")
def header(typestore):
    t = typestore.types
    return t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=12, nanosec=300),
                                    frame_id="cam")


def test_tracked_fields_round_trip_through_bag_bytes(typestore, header):
    types = MessageTypes.from_typestore(typestore)
    result = FrameResult((_det("car", 0.9, slice(0, 5), 7, 10_500_000_000),
                          _det("dog", 0.4, slice(10, 12), 12, 12_000_000_300)),
                         "", 0.0, 3.0, 3.5, discovery=False)
    msg = frame_result_to_msg(result, header, 0.0, types=types)
    raw = typestore.serialize_cdr(msg, "vlsam_ros/msg/DetectionArray")
    back = typestore.deserialize_cdr(raw, "vlsam_ros/msg/DetectionArray")
    assert back.discovery is False
    assert [d.track_id for d in back.detections] == [7, 12]
    assert [(d.label_stamp.sec, d.label_stamp.nanosec) for d in back.detections] == \
        [(10, 500_000_000), (12, 300)]
    core = msg_to_frame_result(back)
    assert [(d.track_id, d.label_stamp_ns) for d in core.detections] == \
        [(7, 10_500_000_000), (12, 12_000_000_300)]
    assert core.discovery is False
    dicts = msg_to_dicts(back)
    assert [(d["track_id"], d["label_stamp_ns"]) for d in dicts] == \
        [(7, 10_500_000_000), (12, 12_000_000_300)]


def test_without_tracking_the_label_stamp_is_the_frames_own(typestore, header):
    types = MessageTypes.from_typestore(typestore)
    msg = frame_result_to_msg(FrameResult((_det("car", 0.9, slice(0, 5)),), "car", 1, 2, 3),
                              header, 0.0, types=types)
    assert msg.discovery is True
    det = msg.detections[0]
    assert det.track_id == 0 and (det.label_stamp.sec, det.label_stamp.nanosec) == (12, 300)
    alone = detection_to_msg(_det("car", 0.9, slice(0, 5)), types)   # no header: zero stamp
    assert (alone.label_stamp.sec, alone.label_stamp.nanosec) == (0, 0)


def test_vision_msgs_id_is_the_track_id(monkeypatch, header):
    from test_conversions import _fake_vision_msgs  # the same vision_msgs 4.x layout

    package, module = _fake_vision_msgs()
    monkeypatch.setitem(sys.modules, "vision_msgs", package)
    monkeypatch.setitem(sys.modules, "vision_msgs.msg", module)
    tracked = FrameResult((_det("car", 0.9, slice(0, 5), 7), _det("dog", 0.4, slice(9, 12), 3)),
                          "", 0, 0, 0, discovery=False)
    assert [d.id for d in frame_result_to_detection2d_array(tracked, header).detections] == \
        ["7", "3"]
    plain = FrameResult((_det("car", 0.9, slice(0, 5)), _det("dog", 0.4, slice(9, 12))),
                        "", 0, 0, 0)
    assert [d.id for d in frame_result_to_detection2d_array(plain, header).detections] == \
        ["0", "1"]


def test_overlay_colour_follows_the_track_id_not_the_rank():
    from vlsam_ros.core.config import NodeConfig

    def det(label, score, rows, track_id):
        mask = np.zeros((60, 80), bool)
        mask[rows, 10:70] = True
        return Detection(label, score, mask, box_from_mask(mask), np.zeros((0, 2), np.float32),
                         np.zeros(0, np.int8), (), track_id)

    image = np.zeros((60, 80, 3), np.uint8)
    car, dog = det("car", 0.9, slice(20, 35), 7), det("dog", 0.4, slice(45, 58), 3)
    small = NodeConfig(overlay_font_px=4, overlay_line_px=1)
    expected = np.round(0.5 * np.array(detection_colour(7))).astype(int)
    for ordered in ([car, dog], [dataclasses.replace(dog, score=0.95),
                                 dataclasses.replace(car, score=0.2)]):
        out = draw_overlay(image, ordered, small)
        np.testing.assert_allclose(out[28, 40].astype(int), expected, atol=1)   # inside "car"
    car_first = [_det("car", 0.9, slice(0, 5), 7)]
    assert label_text(car_first[0]) == "#7 car 0.90"
    assert label_text(_det("car", 0.9, slice(0, 5))) == "car 0.90"


@pytest.mark.ros
def test_markers_colour_follows_the_track_id():
    pytest.importorskip("vlsam_ros.msg")
    from std_msgs.msg import Header

    from vlsam_ros.ros.visualization import markers_msg

    result = FrameResult((_det("dog", 0.95, slice(10, 15), 3), _det("car", 0.2, slice(0, 5), 7)),
                         "", 0, 0, 0, discovery=False)
    markers = markers_msg(result, Header(frame_id="cam"), (H, W))
    boxes = [m for m in markers.markers if m.ns == "vlsam/boxes"]
    r, g, b = detection_colour(7)
    assert (boxes[1].color.r, boxes[1].color.g, boxes[1].color.b) == \
        pytest.approx((r / 255, g / 255, b / 255))


@pytest.mark.ros
def test_rclpy_messages_carry_the_tracking_fields():
    ros_msgs = pytest.importorskip("vlsam_ros.msg")
    from builtin_interfaces.msg import Time
    from rclpy.serialization import deserialize_message, serialize_message
    from std_msgs.msg import Header

    header = Header(stamp=Time(sec=3, nanosec=9), frame_id="cam")
    result = FrameResult((_det("car", 0.9, slice(0, 5), 5, 2_000_000_001),), "", 0, 0, 0,
                         discovery=False)
    msg = frame_result_to_msg(result, header, 1.0)
    back = deserialize_message(serialize_message(msg), ros_msgs.DetectionArray)
    assert back.discovery is False and back.detections[0].track_id == 5
    assert back.detections[0].label_stamp == Time(sec=2, nanosec=1)
