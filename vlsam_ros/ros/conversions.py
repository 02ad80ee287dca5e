"""ROS messages <-> numpy and core results: the one import for the node and the tools.

Image decoding lives in :mod:`vlsam_ros.ros.image_decoding`, result messages in
:mod:`vlsam_ros.ros.detection_messages`; this module re-exports their public functions and adds
:func:`decode_image_msg`, which picks the decoder from the message and the limits from the
node configuration.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlsam_ros.core.config import NodeConfig
from vlsam_ros.ros.detection_messages import (
    MessageTypes,
    detection_to_msg,
    frame_result_to_detection2d_array,
    frame_result_to_msg,
    latency_ms,
    msg_to_detection,
    msg_to_dicts,
    msg_to_frame_result,
    ranked_detections,
    vision_msgs_available,
    vision_msgs_enabled,
)
from vlsam_ros.ros.image_decoding import RAW_ENCODINGS, compressed_to_rgb, image_to_rgb

__all__ = [
    "MessageTypes", "RAW_ENCODINGS", "compressed_to_rgb", "decode_image_msg", "ranked_detections",
    "detection_to_msg", "frame_result_to_detection2d_array", "frame_result_to_msg",
    "image_to_rgb", "latency_ms", "msg_to_detection", "msg_to_dicts", "msg_to_frame_result",
    "vision_msgs_available", "vision_msgs_enabled",
]


def decode_image_msg(msg: Any, cfg: NodeConfig = NodeConfig()) -> np.ndarray:
    """``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage`` (told apart by the
    ``format`` field only CompressedImage has) -> uint8 (H, W, 3) RGB, with
    ``cfg.max_image_pixels`` and ``cfg.uint16_scaling``. Raises InvalidImageError."""
    decoder = compressed_to_rgb if hasattr(msg, "format") else image_to_rgb
    return decoder(msg, max_pixels=cfg.max_image_pixels, uint16_scaling=cfg.uint16_scaling)
