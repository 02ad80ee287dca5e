"""Tracking with real architectures and seeded random weights: the flow follower with a
tiny MobileSAM (and box prompts through both SAM decoders)."""

from __future__ import annotations

import numpy as np
import pytest

from vlsam_ros.core.config import SamConfig, from_flat
from vlsam_ros.core.pipeline import Pipeline
from vlsam_ros.core.segmenter import load_segmenter
from vlsam_ros.core.segmenter.sam_adapter import SamSegmenter, build_sam_model
from vlsam_ros.testing.tiny_segmenters import save_tiny_sam
from vlsam_ros.core.tracking.followers import FlowFollower
from vlsam_ros.core.tracking.tracker import Tracker
from vlsam_ros.core.tracking.two_rate import TwoRateSequence
from vlsam_ros.testing.synthetic.moving_scene import default_moving_scene
from vlsam_ros.testing.synthetic.scene_models import ScenePlantedVlm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Random weights give random quality figures: these keep every track alive, so that the
# run shows ids and shapes end to end (the loss rules are tested with the oracle).
KEEP_TRACKS = {"tracking.min_iou_prediction": 0.0, "tracking.min_stability": 0.0,
               "tracking.max_area_change": 1e6, "tracking.max_overlap_iou": 1.0,
               "tracking.min_area_px": 0, "tracking.min_discovery_score": 0.0}


@pytest.fixture(scope="module")
def scene():
    return default_moving_scene(6)


@pytest.fixture(scope="module")
def vit_t_checkpoint(tmp_path_factory):
    return save_tiny_sam("vit_t", tmp_path_factory.mktemp("sam") / "sam_vit_t.pt", seed=0)


def test_box_prompts_decode_alike_in_both_decoders():
    import torch

    torch.manual_seed(0)
    model = build_sam_model("vit_t")
    image = (np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)
    points = np.array([[[40, 50], [60, 70]], [[100, 30], [0, 0]]], np.float32)
    labels = np.array([[1, 1], [1, -1]])
    boxes = np.array([[30, 40, 80, 90], [90, 20, 118, 60]], np.float32)
    logits = np.random.default_rng(1).normal(size=(2, 1, 256, 256)).astype(np.float32)
    out = {}
    for decoder in ("factored", "stock"):
        segmenter, sam_cfg = SamSegmenter(model), SamConfig(decoder=decoder)
        embedding = segmenter.embed(image)
        out[decoder] = [segmenter.segment(embedding, points, labels, m, boxes=boxes,
                                          sam_cfg=sam_cfg)
                        for m in (None, logits)]
        without = segmenter.segment(embedding, points, labels, sam_cfg=sam_cfg)
        assert not np.allclose(without.low_res_logits, out[decoder][0].low_res_logits)
    for factored, stock in zip(out["factored"], out["stock"]):
        np.testing.assert_allclose(factored.low_res_logits, stock.low_res_logits, atol=1e-4)
        np.testing.assert_allclose(factored.iou_predictions, stock.iou_predictions, atol=1e-5)
    with pytest.raises(ValueError, match="boxes"):
        segmenter.segment(embedding, points, labels, boxes=boxes[:1], sam_cfg=sam_cfg)


def test_flow_tracking_with_tiny_mobile_sam_keeps_ids_and_shapes(scene, vit_t_checkpoint):
    cfg = from_flat({"device": "cpu", "sam.type": "vit_t",
                     "sam.checkpoint": str(vit_t_checkpoint), "tracking.mode": "flow",
                     **KEEP_TRACKS})
    segmenter = load_segmenter(cfg)
    pipeline = Pipeline(cfg, ScenePlantedVlm(scene), segmenter)
    calls = {"embed": 0, "segment": 0}
    embed, segment = segmenter.embed, segmenter.segment

    def counting_embed(image):
        calls["embed"] += 1
        return embed(image)

    def counting_segment(*args, **kwargs):
        calls["segment"] += 1
        return segment(*args, **kwargs)

    follower_segmenter = SamSegmenter(segmenter.model)
    follower_segmenter.embed, follower_segmenter.segment = counting_embed, counting_segment
    tracker = Tracker(cfg.tracking, FlowFollower(follower_segmenter, cfg.sam))
    sequence = TwoRateSequence(tracker, pipeline.run, every=4)
    results = [sequence.step(f.image, f.stamp_ns) for f in scene.frames[:4]]
    ids = [[d.track_id for d in r.detections] for r in results]
    assert ids[0] and all(i == ids[0] for i in ids)          # same tracks on every frame
    assert len(set(ids[0])) == len(ids[0]) and min(ids[0]) >= 1
    assert calls == {"embed": 3, "segment": 3}               # frames 1-3: one pass each
    for result, frame in zip(results, scene.frames):
        for det in result.detections:
            assert det.mask.shape == frame.ids.shape and det.mask.dtype == bool
            assert det.label_stamp_ns == scene.frames[0].stamp_ns
            assert det.prompt_points.shape[1:] == (2,) and det.prompt_points.dtype == np.float32
    assert [r.discovery for r in results] == [True, False, False, False]


# ---------------------------------------------------------------------------- memory

FAMILIES = ("sam2", "edgetam", "sam3")


@pytest.fixture(scope="module")
def video_tracker_dirs(tmp_path_factory):
    from vlsam_ros.testing.synthetic.tiny_video_trackers import save_tiny_video_tracker

    root = tmp_path_factory.mktemp("video_trackers")
    return {f: save_tiny_video_tracker(f, root / f, seed=0) for f in FAMILIES}


def _memory_cfg(path, **extra):
    return from_flat({"device": "cpu", "tracking.mode": "memory",
                      "tracking.memory_model": str(path), **extra})


def _objects_appear(video):
    """Random weights mostly say 'no object' (masks forced empty): raise the presence
    head's bias so that the comparison below sees real mask logits."""
    import torch

    torch.nn.init.constant_(video.model.mask_decoder.pred_obj_score_head.proj_out.bias, 5.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_memory_step_equals_the_models_own_streaming_forward(family, video_tracker_dirs,
                                                                     scene):
    """Our step (one encoder pass, per-track memory attention, one batched decoder call,
    bounded bank) against transformers' own per-object streaming forward on the same
    frames and mask prompts: the same low-resolution logits and presence scores."""
    import torch
    import torch.nn.functional as F

    from vlsam_ros.core.tracking.followers import FollowInput
    from vlsam_ros.core.tracking.memory_follower import MemoryFollower, load_video_tracker
    from vlsam_ros.core.tracking.motion import to_grey

    cfg = _memory_cfg(video_tracker_dirs[family])
    video = load_video_tracker(cfg)
    _objects_appear(video)
    ours = MemoryFollower(video)
    _, session_class = video.family.classes()
    height, width = scene.frames[0].ids.shape
    reference = session_class(video_height=height, video_width=width, inference_device="cpu",
                              dtype=torch.float32)
    ids = [1, 2, 5]
    for index, frame in enumerate(scene.frames[:6]):
        tracks = [FollowInput(k, frame.mask(k), index == 0) for k in ids]
        out = ours.follow(frame.image, to_grey(frame.image), None, tracks, cfg.tracking)
        assert (out.encoder_calls, out.decoder_calls) == (1, 3 if index == 0 else 1)
        with torch.inference_mode():
            if index == 0:
                for k in ids:
                    reference.add_mask_inputs(reference.obj_id_to_idx(k), 0,
                                              ours._mask_input(frame.mask(k)))
                reference.obj_with_new_inputs = list(ids)
            ref = video.model(inference_session=reference, frame=ours._pixels(frame.image))
        expected = ref.pred_masks.float().numpy()
        assert ours.last_logits.shape == expected.shape
        np.testing.assert_allclose(ours.last_logits, expected, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(out.object_scores, ref.object_score_logits.reshape(-1).numpy(),
                                   rtol=1e-4, atol=1e-6)
        full = F.interpolate(ref.pred_masks.float(), size=(height, width), mode="bilinear",
                             align_corners=False)[:, 0].numpy()
        clear = np.abs(full) > 1e-5              # (random logits are tiny: skip ties at 0)
        np.testing.assert_array_equal(out.masks[clear], full[clear] > 0)
    assert 0.0 < out.masks.mean() < 1.0


def test_memory_bank_is_bounded_and_forget_drops_it(video_tracker_dirs):
    from vlsam_ros.core.tracking.followers import FollowInput
    from vlsam_ros.core.tracking.memory_follower import MemoryFollower, load_video_tracker
    from vlsam_ros.core.tracking.motion import to_grey

    long_scene = default_moving_scene(40)
    cfg = _memory_cfg(video_tracker_dirs["sam2"], **{"tracking.memory_conditioning_frames": 2})
    video = load_video_tracker(cfg)
    follower = MemoryFollower(video)
    config = video.model.config
    window = max(video.model.num_maskmem, config.max_object_pointers_in_encoder)
    held = []
    for index, frame in enumerate(long_scene.frames):
        new = index in (0, 5, 9)                      # re-anchored: more conditioning frames
        tracks = [FollowInput(k, frame.mask(k), new) for k in (1, 5)]
        follower.follow(frame.image, to_grey(frame.image), None, tracks, cfg.tracking)
        held.append(follower.memory_frames())
        assert len(follower._session.processed_frames) == 1
    # per track: 2 conditioning frames + the current and window - 1 previous frames
    assert max(held) <= 2 * (2 + window) and held[-1] == held[-2] == 2 * (2 + window)
    follower.forget([1])
    assert follower.memory_frames() == held[-1] // 2


def test_memory_tracking_end_to_end_keeps_ids_and_shapes(video_tracker_dirs, scene):
    """Replay-style two-rate tracking with a random-weight video tracker (every family) and
    oracle discovery: every frame has the discovered tracks, same ids, image-sized masks."""
    from vlsam_ros.core.tracking.factory import build_follower
    from vlsam_ros.core.tracking.memory_follower import load_video_tracker
    from vlsam_ros.core.tracking.two_rate import OfflineTracking
    from vlsam_ros.testing.synthetic.scene_models import SceneOracleSegmenter

    for family in FAMILIES:
        keep = {**KEEP_TRACKS, "tracking.min_discovery_score": 0.1}   # (oracle discovery)
        cfg = _memory_cfg(video_tracker_dirs[family], **keep,
                          **{"tracking.min_object_score": -100.0,
                             "tracking.replay_discovery_every": 5})
        pipeline = Pipeline(cfg, ScenePlantedVlm(scene), SceneOracleSegmenter(scene))
        video = load_video_tracker(cfg)
        _objects_appear(video)                # (else random weights see no object at all)
        tracking = OfflineTracking(cfg, pipeline.run,
                                   lambda: build_follower(cfg, pipeline.segmenter, video))
        results = [tracking.step("/cam", f.image, f.stamp_ns) for f in scene.frames]
        ids = [[d.track_id for d in r.detections] for r in results]
        # the 4 objects discovered on frame 0 keep their ids on every frame (random masks
        # need not match the second discovery, which may start more tracks)
        assert len(ids[0]) == 4 and all(set(ids[0]) <= set(i) for i in ids), (family, ids)
        assert all(i == ids[0] for i in ids[:5])
        assert all(d.mask.shape == scene.frames[0].ids.shape for r in results
                   for d in r.detections)
        assert [r.discovery for r in results] == [True] + [False] * 4 + [True]


def test_missing_or_wrong_video_tracker_is_a_clear_error(tmp_path):
    from vlsam_ros.core.config import ConfigError
    from vlsam_ros.core.errors import ModelNotFoundError
    from vlsam_ros.core.tracking.memory_follower import load_video_tracker

    with pytest.raises(ModelNotFoundError, match="tracking.memory_model"):
        load_video_tracker(_memory_cfg(tmp_path / "nothing"))
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ConfigError, match="not a SAM 2-family"):
        load_video_tracker(_memory_cfg(tmp_path / "bert"))
