"""Test helper, run as a separate process: publishes synthetic camera frames at a fixed rate.

    python test/ros_publisher.py --topic /cam0/image_raw --topic /cam1/image_raw=bgr8 \
        --rate 10 --duration 5 --encodings rgb8,bgr8 --width 64 --height 48 --log out.jsonl

Each topic gets ``sensor_msgs/Image`` frames (or ``CompressedImage`` JPEG for topics ending
in ``/compressed``; ``TOPIC=ENCODING`` fixes a raw topic's encoding) whose header stamp is
the publisher's clock at publication and whose frame_id is
``<camera namespace without slashes>_optical``. Encodings cycle per frame through
``--encodings``. Every published frame is appended to ``--log`` as one JSON line:
``{"topic", "stamp_ns", "frame_id", "encoding", "index"}``, written before ``publish`` so a
frame received by a subscriber is always in the log. Exits 0 after ``--duration`` seconds or
``--count`` frames per topic, or on SIGTERM/SIGINT.

The frames are a seeded street-like scene (grey road, sky, a few coloured boxes) moving by
one pixel per frame, so consecutive frames differ.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import cv2
import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from vlsam_ros.ros.images import image_msg


def scene(height: int, width: int, index: int, seed: int = 0) -> np.ndarray:
    """uint8 (H, W, 3) RGB: sky above, road below, three boxes shifted by ``index`` pixels."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.uint8)
    img[: height // 2] = (135, 180, 230)
    img[height // 2:] = (90, 90, 90)
    for _ in range(3):
        h = int(rng.integers(height // 8, height // 3))
        w = int(rng.integers(width // 8, width // 3))
        y = int(rng.integers(height // 3, height - h))
        x = (int(rng.integers(0, width - w)) + index) % max(1, width - w)
        img[y:y + h, x:x + w] = rng.integers(0, 256, 3)
    return img


def compressed_msg(rgb: np.ndarray) -> CompressedImage:
    ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    msg = CompressedImage()
    msg.format = "rgb8; jpeg compressed bgr8"
    msg.data = buf.tobytes()
    return msg


def frame_id_of(topic: str) -> str:
    base = topic[: -len("/compressed")] if topic.endswith("/compressed") else topic
    return base.rsplit("/", 1)[0].strip("/").replace("/", "_") + "_optical"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topic", action="append", required=True,
                        help="TOPIC or TOPIC=ENCODING (repeatable)")
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second per topic")
    parser.add_argument("--duration", type=float, default=None, help="seconds")
    parser.add_argument("--count", type=int, default=None, help="frames per topic")
    parser.add_argument("--encodings", default="rgb8,bgr8")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--reliable", action="store_true",
                        help="reliable QoS (default best effort)")
    parser.add_argument("--log", required=True, help="JSON-lines log of published frames")
    args = parser.parse_args(argv)

    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    rclpy.init(signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    node = rclpy.create_node(f"test_publisher_{os.getpid()}")
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE if args.reliable
                     else ReliabilityPolicy.BEST_EFFORT)
    topics = [t.partition("=")[0] for t in args.topic]
    fixed_encoding = {t.partition("=")[0]: t.partition("=")[2] for t in args.topic}
    pubs = [node.create_publisher(CompressedImage if t.endswith("/compressed") else Image, t, qos)
            for t in topics]
    encodings = args.encodings.split(",")
    # Frames are prepared up front so that the publishing rate does not depend on encoding cost.
    frames = [scene(args.height, args.width, i) for i in range(16)]
    period = 1.0 / args.rate
    start = time.monotonic()
    index = 0
    with open(args.log, "a", buffering=1) as log:
        while not stop:
            if args.count is not None and index >= args.count:
                break
            if args.duration is not None and time.monotonic() - start >= args.duration:
                break
            for topic, pub in zip(topics, pubs):
                rgb = frames[index % len(frames)]
                if topic.endswith("/compressed"):
                    msg, encoding = compressed_msg(rgb), "jpeg"
                else:
                    encoding = fixed_encoding[topic] or encodings[index % len(encodings)]
                    msg = image_msg(rgb, encoding=encoding)
                msg.header.frame_id = frame_id_of(topic)
                msg.header.stamp = node.get_clock().now().to_msg()
                stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                log.write(json.dumps({"topic": topic, "stamp_ns": stamp_ns,
                                      "frame_id": msg.header.frame_id, "encoding": encoding,
                                      "index": index}) + "\n")
                pub.publish(msg)
            index += 1
            next_time = start + index * period
            time.sleep(max(0.0, next_time - time.monotonic()))
    node.destroy_node()
    rclpy.try_shutdown()
    print(f"published {index} frames per topic", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
