"""The one Image-message builder (``images.image_msg``) and the one decoder dispatch rule
(``images.decode_image_msg``), for rclpy and rosbags message classes."""

import cv2
import numpy as np
import pytest

from vlsam_ros.core.config import NodeConfig
from vlsam_ros.ros.images import decode_image_msg, image_msg

pytest.importorskip("sensor_msgs.msg")
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

RGB = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def bag_image_type():
    from vlsam_ros.offline.replay.bag_io import vlsam_typestore

    return vlsam_typestore().types["sensor_msgs/msg/Image"]


@pytest.mark.parametrize("encoding,channels", [("rgb8", 3), ("bgr8", 3), ("rgba8", 4),
                                               ("bgra8", 4), ("mono8", 1)])
def test_builder_fields_and_round_trip(encoding, channels):
    msg = image_msg(RGB, encoding=encoding)
    assert isinstance(msg, Image)
    assert (msg.height, msg.width, msg.encoding, msg.is_bigendian) == (5, 7, encoding, 0)
    assert msg.step == 7 * channels and len(msg.data) == 5 * 7 * channels
    decoded = decode_image_msg(msg)
    if encoding == "mono8":  # grey by OpenCV's weights, decoded back to three equal channels
        grey = cv2.cvtColor(RGB, cv2.COLOR_RGB2GRAY)
        np.testing.assert_array_equal(decoded, np.repeat(grey[:, :, None], 3, axis=2))
    else:
        np.testing.assert_array_equal(decoded, RGB)


def test_builder_with_a_rosbags_class_serialises_and_decodes(bag_image_type):
    from vlsam_ros.offline.replay.bag_io import vlsam_typestore

    store = vlsam_typestore()
    header = store.types["std_msgs/msg/Header"](
        stamp=store.types["builtin_interfaces/msg/Time"](sec=3, nanosec=4), frame_id="cam")
    msg = image_msg(RGB, header, encoding="bgr8", msg_type=bag_image_type)
    back = store.deserialize_cdr(store.serialize_cdr(msg, "sensor_msgs/msg/Image"),
                                 "sensor_msgs/msg/Image")
    assert back.header.frame_id == "cam" and back.header.stamp.nanosec == 4
    np.testing.assert_array_equal(decode_image_msg(back), RGB)


def test_builder_rejects_non_rgb_input():
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        image_msg(RGB.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        image_msg(RGB[:, :, 0])


def test_dispatch_is_by_the_format_field_only():
    ok, png = cv2.imencode(".png", RGB[:, :, ::-1])
    assert ok
    compressed = CompressedImage(format="", data=png.tobytes())  # empty format: still compressed
    np.testing.assert_array_equal(decode_image_msg(compressed), RGB)
    raw = image_msg(RGB)
    np.testing.assert_array_equal(decode_image_msg(raw, NodeConfig(max_image_pixels=35)), RGB)
