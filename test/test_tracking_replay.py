"""Offline replay with tracking: every frame followed with track ids, discovery on every
K-th frame (a frame count), byte-identical output bags."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlsam_ros.offline.replay.bag_io import (DETECTION_ARRAY_TYPE, FRAME_INDEX_KEY, open_writer,
                                             vlsam_typestore)
from vlsam_ros.core.config import from_flat
from vlsam_ros.core.pipeline import Pipeline
from vlsam_ros.testing.synthetic.moving_scene import default_moving_scene
from vlsam_ros.testing.synthetic.scene_models import SceneOracleSegmenter, ScenePlantedVlm
from vlsam_ros.offline.replay import replay_bag as rb
from test_replay import assert_same_bytes, read_topic, stamp_ns

TOPIC = "/cam_front/image_raw"
OUT_TOPIC = "/cam_front/vlsam/detections"
START_NS = 1_700_000_000_000_000_000
QUIET = rb.ReplayOptions(progress=False)


def write_scene_bag(path: Path, frames) -> list[int]:
    store = vlsam_typestore()
    t = store.types
    writer = open_writer(path, "mcap", {FRAME_INDEX_KEY: "[]"})
    conn = writer.add_connection(TOPIC, "sensor_msgs/msg/Image", typestore=store)
    stamps = []
    for frame in frames:
        stamp = START_NS + frame.stamp_ns
        height, width = frame.image.shape[:2]
        msg = t["sensor_msgs/msg/Image"](
            header=t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](
                sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="cam_front"),
            height=height, width=width, encoding="rgb8", is_bigendian=0, step=3 * width,
            data=frame.image.reshape(-1))
        writer.write(conn, stamp, store.serialize_cdr(msg, "sensor_msgs/msg/Image"))
        stamps.append(stamp)
    writer.close()
    return stamps


@pytest.fixture(scope="module")
def scene():
    return default_moving_scene(35)


def test_replay_with_flow_tracking_and_discovery_every_10th_frame(tmp_path, scene):
    stamps = write_scene_bag(tmp_path / "in", scene.frames)
    cfg = from_flat({"device": "cpu", "cameras": [TOPIC], "tracking.mode": "flow",
                     "tracking.replay_discovery_every": 10})
    outputs = []
    for run in ("a", "b"):
        vlm = ScenePlantedVlm(scene)
        pipeline = Pipeline(cfg, vlm, SceneOracleSegmenter(scene))
        out = tmp_path / run / "replayed"
        summary = rb.replay_bag(tmp_path / "in", out, pipeline, cfg, QUIET)
        assert (summary.frames, summary.skipped) == (35, 0)
        assert vlm.describe_calls == 4                   # frames 0, 10, 20, 30
        outputs.append(out)
    assert_same_bytes(*outputs)
    msgs = [m for _, m in read_topic(outputs[0], OUT_TOPIC, DETECTION_ARRAY_TYPE)]
    assert [stamp_ns(m) for m in msgs] == stamps
    assert [m.discovery for m in msgs] == [i % 10 == 0 for i in range(35)]
    assert all(bool(m.description) == m.discovery for m in msgs)
    first_ids = {d.label: d.track_id for d in msgs[0].detections}
    assert len(first_ids) == 4 and min(first_ids.values()) >= 1
    for i, msg in enumerate(msgs):
        labels = {d.label: d.track_id for d in msg.detections}
        for label, track_id in first_ids.items():        # every frame: the same ids
            assert labels[label] == track_id, (i, label)
        for det in msg.detections:                       # the label's frame: last discovery
            label_ns = det.label_stamp.sec * 10**9 + det.label_stamp.nanosec
            assert label_ns == stamps[i - i % 10]
            assert (det.mask_height, det.mask_width) == scene.frames[0].ids.shape
    # the dog enters at frame 16, big enough to be named by frame 30: a new id from there
    assert "dog" not in {d.label for d in msgs[29].detections}
    dog = [d.track_id for d in msgs[30].detections if d.label == "dog"]
    assert dog and dog[0] not in first_ids.values()


@pytest.mark.slow  # default suite: the same with the oracle models above, real tiny MobileSAM
# following in test_tracking_models.py, real tiny models replayed in test_replay.py
def test_replay_with_tracking_and_the_real_tiny_models_is_byte_identical(tmp_path, tiny_config):
    from vlsam_ros.core.pipeline import build_pipeline

    scene = default_moving_scene(3)
    write_scene_bag(tmp_path / "in", scene.frames)
    cfg = tiny_config(cameras=[TOPIC], vlm__max_new_tokens=4, prompts__refinement_rounds=0,
                      tracking__mode="flow", tracking__replay_discovery_every=2,
                      tracking__min_discovery_score=0.0, tracking__min_iou_prediction=0.0,
                      tracking__min_stability=0.0)
    outputs = []
    for run in ("a", "b"):
        out = tmp_path / run / "replayed"
        summary = rb.replay_bag(tmp_path / "in", out, build_pipeline(cfg), cfg, QUIET)
        assert (summary.frames, summary.skipped) == (3, 0)
        outputs.append(out)
    assert_same_bytes(*outputs)
    msgs = [m for _, m in read_topic(outputs[0], OUT_TOPIC, DETECTION_ARRAY_TYPE)]
    assert [m.discovery for m in msgs] == [True, False, True]
    assert all(d.track_id >= 1 for m in msgs for d in m.detections)


def test_replay_with_memory_tracking_loads_the_video_tracker(tmp_path):
    """tracking.mode=memory through the replay tool's own loading path (a tiny SAM 2
    video tracker with random weights, saved like a checkpoint): byte-identical bags."""
    from vlsam_ros.testing.synthetic.tiny_video_trackers import save_tiny_video_tracker

    scene = default_moving_scene(4)
    write_scene_bag(tmp_path / "in", scene.frames)
    model_dir = save_tiny_video_tracker("sam2", tmp_path / "sam2_tiny")
    cfg = from_flat({"device": "cpu", "cameras": [TOPIC], "tracking.mode": "memory",
                     "tracking.memory_model": str(model_dir),
                     "tracking.replay_discovery_every": 2})
    outputs = []
    for run in ("a", "b"):
        pipeline = Pipeline(cfg, ScenePlantedVlm(scene), SceneOracleSegmenter(scene))
        out = tmp_path / run / "replayed"
        summary = rb.replay_bag(tmp_path / "in", out, pipeline, cfg, QUIET)
        assert (summary.frames, summary.skipped) == (4, 0)
        outputs.append(out)
    assert_same_bytes(*outputs)
    msgs = [m for _, m in read_topic(outputs[0], OUT_TOPIC, DETECTION_ARRAY_TYPE)]
    assert [m.discovery for m in msgs] == [True, False, True, False]
    assert msgs[0].detections and all(d.track_id >= 1 for d in msgs[0].detections)
