"""`make demo`: the whole product end to end with tiny random models, on this machine.

1. builds tiny seeded random models (LLaVA architecture + MobileSAM) into ``models/tiny``;
2. generates a small street-like dataset in CODA's layout (images + corner_case.json);
3. **live**: starts the node (``vlsam-node-runner``, same YAML path as the launch file) in
   its own process, publishes the frames as sensor_msgs/Image, and saves what comes back on
   ``<camera ns>/vlsam/detections`` and ``.../overlay`` (one JSON and one PNG per frame);
4. **offline**: converts the dataset to a rosbag2, replays every frame through the
   pipeline into an output bag, and scores it class-agnostically (report.json + plot).

``--profile NAME`` (a profile of config/profiles, e.g. paper) runs that profile's recipe in both
parts, with tiny models of the profile's VLM family (and tiny MobileSAM for any SAM type).

The weights are random, so labels, masks and scores are meaningless: this demo proves the
plumbing, not the accuracy. Real weights: see the README.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from vlsam_ros.tools.cli import (EXIT_FAILURE, EXIT_OK, ToolError, ToolParser,
                                 check_output_parent, positive_float, positive_int, run_tool,
                                 staged_output)
from vlsam_ros.testing.make_tiny_models import make_tiny_models, tiny_model_overrides

CAMERA = "/cam_front/image_raw"
DETECTIONS = "/cam_front/vlsam/detections"
OVERLAY = "/cam_front/vlsam/overlay"
#: Small frames keep the CPU-only demo to a few minutes (MobileSAM encodes at 1024 px anyway).
FRAME_SIZE = (160, 120)


def _set_flags(overrides: dict[str, Any]) -> list[str]:
    flags: list[str] = []
    for key, value in overrides.items():
        flags += ["--set", f"{key}={value}"]
    return flags


def _profile_flag(profile: str | None) -> list[str]:
    return ["--profile", profile] if profile else []


def _ros_env() -> dict[str, str]:
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_LOCALHOST_ONLY"] = "1"
    env.setdefault("ROS_DOMAIN_ID", str(10 + os.getpid() % 90))
    return env


def run_live(frames: list[tuple[np.ndarray, int]], overrides: dict[str, Any], out: Path,
             timeout_s: float, profile: str | None = None) -> int:
    """Publishes ``frames`` (RGB, stamp ns) to a node process one at a time and saves each
    DetectionArray (JSON) and overlay (PNG). Returns the number of frames answered."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from vlsam_ros.ros.detections import msg_to_dicts
    from vlsam_ros.msg import DetectionArray
    from vlsam_ros.ros.images import image_msg
    from std_msgs.msg import Header

    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "vlsam_ros.ros.run_node", "--params-file",
           "config/vlsam.yaml", *_profile_flag(profile),
           *_set_flags({**overrides, "cameras": f"[{CAMERA}]"})]
    node_proc = subprocess.Popen(cmd, env=os.environ.copy())
    rclpy.init()
    client = rclpy.create_node("vlsam_demo_client")
    got: dict[int, Any] = {}
    overlays: dict[int, Any] = {}
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    key = lambda m: m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec  # noqa: E731
    client.create_subscription(DetectionArray, DETECTIONS,
                               lambda m: got.__setitem__(key(m), m), qos)
    client.create_subscription(Image, OVERLAY, lambda m: overlays.__setitem__(key(m), m), qos)
    pub = client.create_publisher(Image, CAMERA, qos)
    answered = 0
    try:
        for index, (rgb, stamp) in enumerate(frames):
            header = Header(frame_id="cam_front")
            header.stamp.sec, header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            msg = image_msg(rgb, header, encoding="bgr8" if index % 2 else "rgb8")
            deadline = time.monotonic() + timeout_s
            next_send = 0.0
            while time.monotonic() < deadline and not (stamp in got and stamp in overlays):
                if node_proc.poll() is not None:
                    raise ToolError(f"the node exited with code {node_proc.returncode} (its "
                                    "log is above)", EXIT_FAILURE)
                if time.monotonic() >= next_send and stamp not in got:
                    pub.publish(msg)  # re-sent until the node (still loading) takes it
                    next_send = time.monotonic() + 2.0
                rclpy.spin_once(client, timeout_sec=0.1)
            if stamp not in got:
                print(f"  live frame {index}: no DetectionArray within {timeout_s:.0f} s")
                continue
            answered += 1
            det = got[stamp]
            record = {"stamp_ns": stamp, "frame_id": det.header.frame_id,
                      "description": det.description, "total_ms": det.total_ms,
                      "latency_ms": det.latency_ms, "detections": msg_to_dicts(det)}
            (out / f"frame_{index:03d}.json").write_text(json.dumps(record, indent=1) + "\n")
            if stamp in overlays:
                ov = overlays[stamp]
                img = np.frombuffer(bytes(ov.data), np.uint8).reshape(ov.height, ov.width, 3)
                if ov.encoding == "rgb8":
                    img = img[:, :, ::-1]
                cv2.imwrite(str(out / f"frame_{index:03d}_overlay.png"), img)
            print(f"  live frame {index}: {len(det.detections)} detection(s), "
                  f"{det.total_ms:.0f} ms, stamp and frame_id match: "
                  f"{key(det) == stamp and det.header.frame_id == 'cam_front'}")
    finally:
        client.destroy_node()
        rclpy.shutdown()
        node_proc.terminate()
        try:
            node_proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node_proc.kill()
    return answered


def run_offline(dataset_dir: Path, gt_path: Path, overrides: dict[str, Any], out: Path,
                profile: str | None = None) -> dict:
    """Dataset -> bag -> replay (every frame) -> evaluation report."""
    from vlsam_ros.offline.datasets.coda_dataset import load_coda_dataset
    from vlsam_ros.offline.datasets.dataset_to_bag import dataset_to_bag
    from vlsam_ros.offline.evaluation.evaluate import evaluate

    in_bag, out_bag = out / "input_bag", out / "detections_bag"
    dataset_to_bag(load_coda_dataset(dataset_dir), in_bag)
    replay = subprocess.run(
        [sys.executable, "-m", "vlsam_ros.offline.replay.replay_bag", str(in_bag), str(out_bag),
         "--config", "config/vlsam.yaml", "--overlay", "--no-progress", *_profile_flag(profile),
         *_set_flags({**overrides, "cameras": f"[{CAMERA}]"})], env=os.environ.copy())
    if replay.returncode not in (0, 3):
        raise ToolError(f"replay failed with exit code {replay.returncode} (its message is "
                        "above)", EXIT_FAILURE)
    return evaluate(gt_path, out / "evaluation", bag=out_bag)


def build_parser() -> ToolParser:
    parser = ToolParser(prog="vlsam-demo", description=__doc__.splitlines()[0],
                        epilog="Exit status: 0 every live frame answered, 1 some were not (or "
                               "the node or replay failed), 2 bad arguments or unwritable "
                               "output, 130 interrupted. The outputs are replaced only by a "
                               "complete run.")
    parser.add_argument("--out", type=Path, default=Path("out/demo"),
                        help="output folder (default %(default)s); its dataset/, live/, "
                             "input_bag/, detections_bag/ and evaluation/ are replaced")
    parser.add_argument("--models", type=Path, default=Path("models/tiny"),
                        help="tiny random models folder, built there when missing "
                             "(default %(default)s)")
    parser.add_argument("--frames", type=positive_int, default=4,
                        help="number of generated frames (default %(default)s)")
    parser.add_argument("--profile", help="run a profile's recipe (config/profiles: paper, "
                        "edge, cpu) with tiny models of its VLM family (and tiny MobileSAM)")
    parser.add_argument("--timeout", type=positive_float, default=180.0,
                        help="seconds to wait for each live frame's result "
                             "(default %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool("vlsam-demo", lambda: _demo(args))


def _demo(args: argparse.Namespace) -> int:
    os.environ.update(_ros_env())

    from vlsam_ros.offline.datasets.coda_dataset import load_coda_dataset, read_frame_rgb
    from vlsam_ros.offline.datasets.make_demo_dataset import make_demo_dataset

    # The demo sets itself up: the parents of its own output and model folders are created.
    for folder in (args.out, args.models):
        Path(folder).absolute().parent.mkdir(parents=True, exist_ok=True)
    check_output_parent(args.out)
    print("NOTE: tiny RANDOM models -> labels, masks and scores are meaningless; this demo "
          "shows the plumbing. Put real weights in config/vlsam.yaml for real output.")
    family = "llava"
    if args.profile:
        from vlsam_ros.core.config_files import load_config

        family = load_config("config/vlsam.yaml", profile=args.profile).vlm.family
    if not (args.models / family / "config.json").is_file():
        print(f"[1/4] building tiny random models in {args.models}")
        make_tiny_models(args.models, families=(family,))
    else:
        print(f"[1/4] reusing tiny random models in {args.models}")
    overrides = tiny_model_overrides(args.models, family=family)
    # Everything is written in a staging folder and replaces the previous run's parts only
    # when this run is complete.
    with staged_output(args.out, merge=True) as staging:
        staging.mkdir()
        dataset_dir = staging / "dataset"
        print(f"[2/4] writing a {args.frames}-frame street-like dataset (CODA layout)")
        gt_path = make_demo_dataset(dataset_dir, num_frames=args.frames, width=FRAME_SIZE[0],
                                    height=FRAME_SIZE[1])
        dataset = load_coda_dataset(dataset_dir)
        # Live frames are stamped with the wall clock, as a camera driver would, so
        # latency_ms is meaningful; the offline part keeps the dataset's stamps.
        frames = [(read_frame_rgb(f), time.time_ns()) for f in dataset.frames]
        print("[3/4] live: node process <- published images -> detections + overlays")
        answered = run_live(frames, overrides, staging / "live", args.timeout, args.profile)
        print("[4/4] offline: dataset -> bag -> replay -> class-agnostic evaluation")
        report = run_offline(dataset_dir, gt_path, overrides, staging, args.profile)
    overall = report.get("overall", report)
    print(f"\nlive: {answered}/{len(frames)} frames answered -> {args.out / 'live'} "
          "(frame_*.json, frame_*_overlay.png)")
    print(f"offline: output bag {args.out / 'detections_bag'}; report "
          f"{args.out / 'evaluation' / 'report.json'} and recall_vs_iou.png")
    print("scores (meaningless with random weights): " + json.dumps(
        {k: overall.get(k) for k in ("mAR", "AR50", "AR75", "AR1", "AR10")}))
    return EXIT_OK if answered == len(frames) else EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
