"""Camera topic names are checked with the configuration, by the ROS naming rules."""

from __future__ import annotations

import pytest

from vlsam_ros.core.config import ConfigError, from_flat
from vlsam_ros.core.topic_names import topic_name_problem

NAMES = ["/cam_front/image_raw", "cam/image_raw", "/a/b_", "_a", "/car/cam_2/image",
         "a__b", "/image_raw/compressed",
         "not a topic!", "/a//b", "/a/", "/", "", "/1cam/image", "/cam/1", "/a-b", "/é",
         "/cam/image raw", "/cam.front/image"]
# Valid ROS names this node does not accept for cameras (documented in topic_names.py).
UNSUPPORTED = ["~/image_raw", "{node}/image", "/cam/{ns}"]


@pytest.mark.parametrize("name", NAMES)
def test_rules_agree_with_rclpy(name):
    """The core's rules (no rclpy import) accept exactly what rclpy accepts once the name is
    expanded in the node's namespace."""
    rclpy_names = pytest.importorskip("rclpy.expand_topic_name")
    from rclpy.validate_full_topic_name import validate_full_topic_name

    try:
        validate_full_topic_name(rclpy_names.expand_topic_name(name, "vlsam", "/"))
        rclpy_ok = True
    except Exception:  # noqa: BLE001 -- rclpy raises ValueError or InvalidTopicNameException
        rclpy_ok = False
    assert (topic_name_problem(name) is None) == rclpy_ok, topic_name_problem(name)


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_private_and_substituted_names_are_refused_with_a_reason(name):
    assert "not supported for cameras" in topic_name_problem(name)


@pytest.mark.parametrize("name, reason", [
    ("not a topic!", "it contains ' ', '!'"),
    ("/a//b", "must not contain '//'"),
    ("/cam/", "must not end with '/'"),
    ("/3d/image", "'3d' starts with a digit"),
])
def test_config_rejects_invalid_camera_topics_naming_the_entry(name, reason):
    with pytest.raises(ConfigError) as info:
        from_flat({"cameras": ["/ok/image_raw", name]})
    message = str(info.value)
    assert message.startswith(f"cameras: {name!r} is not a valid ROS topic name")
    assert reason in message


def test_unclosed_list_is_a_config_error():
    with pytest.raises(ConfigError, match=r"cameras='\[/a,/b': not a valid list"):
        from_flat({"cameras": "[/a,/b"})
