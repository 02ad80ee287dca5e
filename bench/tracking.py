"""Two-rate tracking: camera-rate following with persistent ids (vlsam_ros/core/tracking).

    source scripts/ros_env.sh && python bench/tracking.py [--rate-seconds 12] [--repeats 3]
        [--threads 1] [--skip rate,scene,batch,memory,discovery]

Sections (each adds keys to the final JSON line):

* ``rate``: the node (tracking.mode=flow) serving one camera publishing the moving scene
  (vlsam_ros.testing.synthetic) at 10 Hz for ``--rate-seconds``, discovery = the VL-SAM pipeline
  with the planted VLM slowed to 1 s per call, oracle segmenter. ``follow_rate_ratio`` =
  published frames per second / camera frames per second (target >= 0.95 on this CPU),
  plus the discovery runs and the slot's dropped frames.
* ``scene``: the moving scene (120 frames, 6 objects) with the oracle segmenter and
  discovery every 10th frame, answers on the same frame and 5 frames late: MOTA, IDF1 and
  identity switches (motmetrics), mean mask IoU per object over its matched frames.
* ``batch``: follow-step ms of the flow follower with the real tiny MobileSAM (random
  weights) on a 480 x 640 frame for 1, 8 and 32 tracks: batched (one encoder pass, one
  decoder call) against one decoder call per track on the same embedding;
  ``follow_batched_speedup`` at 32 tracks; the same for the decoding alone (encoder
  excluded), where batching matters.
* ``memory``: the memory follower (tiny random SAM 2 video tracker, 256-pixel input) for 8
  tracks, our batched step against the model's own per-object streaming forward.
* ``discovery``: ``follow_vs_discovery`` = one follow step / one discovery run on the same
  frame with the tiny real models of the default and paper profiles (tiny VLM of the
  profile's family + MobileSAM; 8 tracks followed). On this CPU the SAM encoder at 1024 px
  dominates both; the real target (<= 0.05) is for real-size models on a GPU.

The last line printed is one JSON object.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

CAMERA = "/bench_track/image_raw"
OUTPUT = "/bench_track/vlsam/detections"


def _median_ms(fn, repeats: int) -> float:
    fn()                                               # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


# ---------------------------------------------------------------------------- rate

def bench_rate(seconds: float, vlm_delay_s: float = 1.0, rate_hz: float = 10.0) -> dict:
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from vlsam_ros.core.config import from_flat
    from vlsam_ros.core.pipeline import Pipeline
    from vlsam_ros.msg import DetectionArray
    from vlsam_ros.ros.node import VlsamNode
    from vlsam_ros.ros.parameters import parameter_overrides
    from vlsam_ros.testing.synthetic.moving_scene import default_moving_scene
    from vlsam_ros.testing.synthetic.scene_models import SceneOracleSegmenter, ScenePlantedVlm

    frames = int(seconds * rate_hz)
    scene = default_moving_scene(min(frames, 120))
    vlm = ScenePlantedVlm(scene, delay_s=vlm_delay_s)
    cfg = from_flat({"device": "cpu", "cameras": [CAMERA], "tracking.mode": "flow"})
    context = Context()
    rclpy.init(context=context)
    node = VlsamNode("vlsam", context=context, parameter_overrides=parameter_overrides(cfg),
                     pipeline_factory=lambda c: Pipeline(c, vlm, SceneOracleSegmenter(scene)))
    client = rclpy.create_node("bench_camera", context=context)
    received: list = []
    lock = threading.Lock()

    def on_detections(msg) -> None:
        with lock:
            received.append((time.monotonic(), msg))

    client.create_subscription(DetectionArray, OUTPUT, on_detections,
                               QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    pub = client.create_publisher(Image, CAMERA, QoSProfile(
        depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(client)
    spinning = threading.Event()
    spinning.set()
    spin_thread = threading.Thread(
        target=lambda: [executor.spin_once(timeout_sec=0.05) for _ in iter(spinning.is_set, False)],
        daemon=True)
    spin_thread.start()
    node.trigger_configure()
    node.trigger_activate()
    deadline = time.monotonic() + 10
    while pub.get_subscription_count() == 0 or client.count_publishers(OUTPUT) == 0:
        if time.monotonic() > deadline:
            raise RuntimeError("the node's subscription/publisher did not appear")
        time.sleep(0.05)
    sent = []
    start = time.monotonic()
    for i in range(frames):
        time.sleep(max(0.0, start + i / rate_hz - time.monotonic()))
        image = scene.frames[i % len(scene.frames)].image
        height, width = image.shape[:2]
        header = Header(stamp=client.get_clock().now().to_msg(), frame_id="bench_track")
        sent.append(time.monotonic())
        pub.publish(Image(header=header, height=height, width=width, encoding="rgb8",
                          is_bigendian=0, step=3 * width, data=image.tobytes()))
    time.sleep(1.0)
    counts = node.camera_counts()[CAMERA]
    runs = node.tracking.discovery_runs
    spinning.clear()
    spin_thread.join()
    node.trigger_deactivate()
    node.trigger_cleanup()
    executor.shutdown()
    node.destroy_node()
    client.destroy_node()
    rclpy.try_shutdown(context=context)
    with lock:
        arrivals = [t for t, _ in received]
        msgs = [m for _, m in received]
    camera_fps = (len(sent) - 1) / (sent[-1] - sent[0])
    published_fps = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    with_ids = [m for m in msgs if m.detections]
    return {"follow_rate_ratio": round(published_fps / camera_fps, 4),
            "camera_fps": round(camera_fps, 3), "published_fps": round(published_fps, 3),
            "frames_sent": len(sent), "frames_published": len(msgs),
            "discovery_runs": runs, "discovery_flagged": sum(m.discovery for m in msgs),
            "frames_with_tracks": len(with_ids), "slot_counts": counts,
            "vlm_delay_s": vlm_delay_s}


# ---------------------------------------------------------------------------- scene

def bench_scene() -> dict:
    from vlsam_ros.core.config import from_flat
    from vlsam_ros.core.pipeline import Pipeline
    from vlsam_ros.core.tracking.followers import FlowFollower
    from vlsam_ros.core.tracking.metrics import LabelledMasks, score_tracking
    from vlsam_ros.core.tracking.tracker import Tracker
    from vlsam_ros.core.tracking.two_rate import TwoRateSequence
    from vlsam_ros.testing.synthetic.moving_scene import default_moving_scene, ground_truth
    from vlsam_ros.testing.synthetic.scene_models import SceneOracleSegmenter, ScenePlantedVlm

    scene = default_moving_scene()
    cfg = from_flat({"device": "cpu", "tracking.mode": "flow"})
    out = {}
    for delay in (0, 5):
        pipeline = Pipeline(cfg, ScenePlantedVlm(scene), SceneOracleSegmenter(scene))
        tracker = Tracker(cfg.tracking, FlowFollower(SceneOracleSegmenter(scene)))
        sequence = TwoRateSequence(tracker, pipeline.run, every=10, delay=delay)
        tracked = []
        start = time.perf_counter()
        for f in scene.frames:
            r = sequence.step(f.image, f.stamp_ns)
            masks = (np.stack([d.mask for d in r.detections]) if r.detections
                     else np.zeros((0, *f.ids.shape), bool))
            tracked.append(LabelledMasks(np.array([d.track_id for d in r.detections]), masks))
        wall = time.perf_counter() - start
        scores = score_tracking(ground_truth(scene), tracked, names=scene.names())
        out[f"delay_{delay}"] = {
            "mota": round(scores.mota, 4), "idf1": round(scores.idf1, 4),
            "id_switches": scores.id_switches, "misses": scores.misses,
            "false_positives": scores.false_positives,
            "ground_truth_object_frames": scores.ground_truth_count,
            "mean_iou": round(scores.mean_iou, 4),
            "per_object": {o.name: {"mean_iou": round(o.mean_iou, 4),
                                    "frames_matched": o.frames_matched,
                                    "frames_visible": o.frames_visible}
                           for o in scores.per_object.values()},
            "wall_s": round(wall, 2)}
    return {"scene": {"frames": len(scene.frames), "objects": len(scene.objects),
                      "discovery_every": 10, **out}}


# ---------------------------------------------------------------------------- batch

def _grid_scene(count: int, height: int = 480, width: int = 640):
    from vlsam_ros.testing.synthetic.moving_scene import CameraMotion, SceneObject, render_scene

    cols = 8
    objects = []
    for i in range(count):
        x = 40 + (i % cols) * 75
        y = 40 + (i // cols) * 100
        objects.append(SceneObject(i + 1, f"object {i}", "rect", (40, 50), 1,
                                   (60 + 5 * i, 200 - 4 * i, 120), ((0, x, y), (1, x + 3, y + 2))))
    return render_scene(objects, CameraMotion(0, 0, 1, 1), 2, height, width, seed=1)


def bench_batch(repeats: int) -> dict:
    from vlsam_ros.core.config import TrackingConfig, SamConfig
    from vlsam_ros.core.segmenter.base import PADDING_LABEL
    from vlsam_ros.core.segmenter.sam_adapter import SamSegmenter, build_sam_model
    from vlsam_ros.core.tracking.followers import (FlowFollower, FollowInput, box_of,
                                                   mask_to_low_res_logits)
    from vlsam_ros.core.tracking.motion import to_grey

    torch.manual_seed(0)
    sam_cfg = SamConfig()
    segmenter = SamSegmenter(build_sam_model("vit_t"))
    follower = FlowFollower(segmenter, sam_cfg)
    cfg = TrackingConfig(mode="flow")
    out = {}
    for count in (1, 8, 32):
        scene = _grid_scene(count)
        prev, cur = scene.frames
        grey, prev_grey = to_grey(cur.image), to_grey(prev.image)
        tracks = [FollowInput(i, prev.mask(i), False) for i in range(1, count + 1)]

        def batched():
            follower.follow(cur.image, grey, prev_grey, tracks, cfg)

        def moved_prompts():
            return [follower.move_prompt(t.mask, grey, prev_grey, cfg) for t in tracks]

        def per_track():
            embedding = segmenter.embed(cur.image)
            for mask, points in moved_prompts():
                segmenter.segment(embedding, points[None], np.ones((1, len(points)), np.int64),
                                  mask_to_low_res_logits(mask, cfg.flow_mask_prompt_logit)[None],
                                  boxes=box_of(mask)[None], sam_cfg=sam_cfg)

        embedding = segmenter.embed(cur.image)
        prompts = moved_prompts()
        size = max(len(p) for _, p in prompts)
        points = np.zeros((count, size, 2), np.float32)
        labels = np.full((count, size), PADDING_LABEL, np.int64)
        for k, (_, p) in enumerate(prompts):
            points[k, :len(p)], labels[k, :len(p)] = p, 1
        logits = np.stack([mask_to_low_res_logits(m, cfg.flow_mask_prompt_logit)
                           for m, _ in prompts])
        boxes = np.stack([box_of(m) for m, _ in prompts])

        def decode_batched():
            segmenter.segment(embedding, points, labels, logits, boxes=boxes, sam_cfg=sam_cfg)

        def decode_per_track():
            for k in range(count):
                segmenter.segment(embedding, points[k:k + 1], labels[k:k + 1],
                                  logits[k:k + 1], boxes=boxes[k:k + 1], sam_cfg=sam_cfg)

        b, p = _median_ms(batched, repeats), _median_ms(per_track, repeats)
        db, dp = _median_ms(decode_batched, repeats), _median_ms(decode_per_track, repeats)
        out[str(count)] = {"follow_batched_ms": round(b, 1), "follow_per_track_ms": round(p, 1),
                           "speedup": round(p / b, 3), "decode_batched_ms": round(db, 1),
                           "decode_per_track_ms": round(dp, 1), "decode_speedup": round(dp / db, 3)}
    return {"follow_batched_speedup": out["32"]["speedup"],
            "decode_batched_speedup": out["32"]["decode_speedup"],
            "follow_steps": out, "batch_setup": "MobileSAM vit_t random weights, 480x640 frame, "
                                                "per-track baseline shares one embedding"}


# ---------------------------------------------------------------------------- memory

def bench_memory(repeats: int) -> dict:
    from vlsam_ros.core.config import from_flat
    from vlsam_ros.core.tracking.followers import FollowInput
    from vlsam_ros.core.tracking.memory_follower import MemoryFollower, load_video_tracker
    from vlsam_ros.core.tracking.motion import to_grey
    from vlsam_ros.testing.synthetic.tiny_video_trackers import save_tiny_video_tracker

    scene = _grid_scene(8)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_tiny_video_tracker("sam2", Path(tmp) / "sam2")
        cfg = from_flat({"device": "cpu", "tracking.mode": "memory",
                         "tracking.memory_model": str(path)})
        video = load_video_tracker(cfg)
    ours = MemoryFollower(video)
    _, session_class = video.family.classes()
    height, width = scene.frames[0].ids.shape
    reference = session_class(video_height=height, video_width=width, inference_device="cpu",
                              dtype=torch.float32, max_vision_features_cache_size=1)
    frame = scene.frames[0]
    grey = to_grey(frame.image)
    tracks = [FollowInput(i, frame.mask(i), True) for i in range(1, 9)]
    ours.follow(frame.image, grey, None, tracks, cfg.tracking)       # start the tracks
    steady = [FollowInput(t.track_id, t.mask, False) for t in tracks]
    with torch.inference_mode():
        for t in tracks:
            reference.add_mask_inputs(reference.obj_id_to_idx(t.track_id), 0,
                                      ours._mask_input(t.mask))
        reference.obj_with_new_inputs = [t.track_id for t in tracks]
        video.model(inference_session=reference, frame=ours._pixels(frame.image))
    pixels = ours._pixels(frame.image)

    def ours_step():
        ours.follow(frame.image, grey, grey, steady, cfg.tracking)

    def reference_step():
        with torch.inference_mode():
            video.model(inference_session=reference, frame=pixels)

    mine, theirs = _median_ms(ours_step, repeats), _median_ms(reference_step, repeats)
    return {"memory_follow": {"tracks": 8, "model": "tiny SAM 2 video tracker, 256 px input",
                              "batched_ms": round(mine, 1),
                              "per_object_forward_ms": round(theirs, 1),
                              "speedup": round(theirs / mine, 3),
                              "note": "the reference keeps every frame (unbounded session)"}}


# ---------------------------------------------------------------------------- discovery

def bench_discovery(repeats: int) -> dict:
    from profiles import profile_config

    from vlsam_ros.core.pipeline import build_pipeline
    from vlsam_ros.core.tracking.followers import FlowFollower, FollowInput
    from vlsam_ros.core.tracking.motion import to_grey
    from vlsam_ros.testing.make_tiny_models import make_tiny_models

    scene = _grid_scene(8)
    prev, cur = scene.frames
    tracks = [FollowInput(i, prev.mask(i), False) for i in range(1, 9)]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_models(Path(tmp), families=("llava",), sam_types=("vit_t",))
        for profile in ("default", "paper"):
            cfg = profile_config(profile, model_dir)
            pipeline = build_pipeline(cfg)
            follower = FlowFollower(pipeline.segmenter, cfg.sam)
            grey, prev_grey = to_grey(cur.image), to_grey(prev.image)
            follow = _median_ms(lambda: follower.follow(cur.image, grey, prev_grey, tracks,
                                                        cfg.tracking), repeats)
            discover = _median_ms(lambda: pipeline.run(cur.image), max(1, repeats // 2))
            out[profile] = {"follow_ms": round(follow, 1), "discovery_ms": round(discover, 1),
                            "follow_vs_discovery": round(follow / discover, 4)}
    return {"follow_vs_discovery": {k: v["follow_vs_discovery"] for k, v in out.items()},
            "discovery_profiles": out}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate-seconds", type=float, default=12.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    result: dict = {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    for name, run in (("rate", lambda: bench_rate(args.rate_seconds)),
                      ("scene", bench_scene),
                      ("batch", lambda: bench_batch(args.repeats)),
                      ("memory", lambda: bench_memory(args.repeats)),
                      ("discovery", lambda: bench_discovery(args.repeats))):
        if name in skip:
            continue
        start = time.perf_counter()
        section = run()
        print(f"{name} ({time.perf_counter() - start:.0f} s): {json.dumps(section)}", flush=True)
        result.update(section)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
