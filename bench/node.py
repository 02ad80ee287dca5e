"""ROS overhead of the vlsam node: end-to-end time per frame through the node divided by a
bare pipeline call on the same frame (1600x900 rgb8, tiny random models, CPU by default).

    source scripts/ros_env.sh && python bench/node.py [--frames 5] [--device cpu]

End to end = from publishing a sensor_msgs/Image to receiving its DetectionArray (DDS
transport of the 4.3 MB image, the callback, the latest-frame slot, decoding, the pipeline,
message conversion and publication). Both paths use the same pipeline object and the same
frame; node and bare measurements alternate so that machine load affects both alike.
The last line printed is JSON with ``ros_overhead_ratio`` (median node / median bare) and
``pairwise_median_ratio`` (median over alternating pairs, less sensitive to load drift).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")
os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from vlsam_ros.core.config import from_flat  # noqa: E402
from vlsam_ros.core.pipeline import build_pipeline  # noqa: E402
from vlsam_ros.msg import DetectionArray  # noqa: E402
from vlsam_ros.ros.node import VlsamNode  # noqa: E402
from vlsam_ros.ros.parameters import parameter_overrides  # noqa: E402
from vlsam_ros.testing.make_tiny_models import make_tiny_models, tiny_model_overrides  # noqa: E402

WIDTH, HEIGHT = 1600, 900
CAMERA = "/bench_cam/image_raw"
OUTPUT = "/bench_cam/vlsam/detections"


def frame(seed: int = 0) -> np.ndarray:
    """uint8 (900, 1600, 3) RGB: a seeded street-like pattern (sky, road, boxes)."""
    rng = np.random.default_rng(seed)
    img = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    img[: HEIGHT // 2] = (135, 180, 230)
    img[HEIGHT // 2:] = (90, 90, 90)
    for _ in range(5):
        h, w = int(rng.integers(60, 300)), int(rng.integers(60, 400))
        y, x = int(rng.integers(HEIGHT // 3, HEIGHT - h)), int(rng.integers(0, WIDTH - w))
        img[y:y + h, x:x + w] = rng.integers(0, 256, 3)
    return img


def image_msg(rgb: np.ndarray, stamp_ns: int) -> Image:
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
    msg.header.frame_id = "bench_cam_optical"
    msg.height, msg.width = rgb.shape[:2]
    msg.encoding, msg.is_bigendian, msg.step = "rgb8", 0, rgb.shape[1] * 3
    msg.data = rgb.tobytes()
    return msg


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5, help="timed frames per path")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    model_dir = Path(tempfile.mkdtemp(prefix="vlsam_bench_models_"))
    make_tiny_models(model_dir)
    overrides = tiny_model_overrides(model_dir)
    overrides.update({"device": args.device, "cameras": [CAMERA]})
    cfg = from_flat(overrides)
    pipeline = build_pipeline(cfg)
    rgb = frame()

    context = Context()
    rclpy.init(context=context)
    node = VlsamNode("vlsam", context=context, parameter_overrides=parameter_overrides(cfg),
                     pipeline_factory=lambda _cfg: pipeline)
    client = rclpy.create_node("bench_client", context=context)
    received: dict[int, float] = {}
    arrived = threading.Condition()

    def on_detections(msg: DetectionArray) -> None:
        with arrived:
            received[msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec] = time.perf_counter()
            arrived.notify_all()

    client.create_subscription(DetectionArray, OUTPUT, on_detections,
                               QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    pub = client.create_publisher(Image, CAMERA,
                                  QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(client)
    spinning = threading.Event()
    spinning.set()

    def spin() -> None:
        while spinning.is_set():
            executor.spin_once(timeout_sec=0.05)

    spin_thread = threading.Thread(target=spin, daemon=True)
    spin_thread.start()
    node.trigger_configure()
    node.trigger_activate()
    deadline = time.monotonic() + 10
    while pub.get_subscription_count() == 0 or client.count_publishers(OUTPUT) == 0:
        if time.monotonic() > deadline:
            raise RuntimeError("the node's subscription/publisher did not appear")
        time.sleep(0.05)

    def through_node(stamp_ns: int) -> float:
        msg = image_msg(rgb, stamp_ns)
        start = time.perf_counter()
        pub.publish(msg)
        with arrived:
            if not arrived.wait_for(lambda: stamp_ns in received, timeout=600):
                raise RuntimeError(f"no DetectionArray for stamp {stamp_ns}")
        return received[stamp_ns] - start

    def bare() -> float:
        start = time.perf_counter()
        pipeline.run(rgb)
        return time.perf_counter() - start

    through_node(1)  # warm-up of both paths (first-call allocations, DDS discovery)
    bare()
    node_s, bare_s = [], []
    for i in range(args.frames):
        node_s.append(through_node(10**9 + i))
        bare_s.append(bare())
    spinning.clear()
    spin_thread.join()
    node.trigger_deactivate()
    node.trigger_cleanup()
    executor.shutdown()
    node.destroy_node()
    client.destroy_node()
    rclpy.try_shutdown(context=context)

    node_ms, bare_ms = statistics.median(node_s) * 1e3, statistics.median(bare_s) * 1e3
    pair_ratio = statistics.median(n / b for n, b in zip(node_s, bare_s))
    print(f"node end-to-end ms: {[round(t * 1e3, 1) for t in node_s]}")
    print(f"bare pipeline ms:   {[round(t * 1e3, 1) for t in bare_s]}")
    print(json.dumps({"ros_overhead_ratio": round(node_ms / bare_ms, 4),
                      "node_ms_median": round(node_ms, 1), "bare_ms_median": round(bare_ms, 1),
                      "overhead_ms": round(node_ms - bare_ms, 1),
                      "pairwise_median_ratio": round(pair_ratio, 4), "frames": args.frames,
                      "image": f"{WIDTH}x{HEIGHT} rgb8", "device": args.device}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
