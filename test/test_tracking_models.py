"""Tracking with real architectures and seeded random weights: the flow follower with a
tiny MobileSAM (and box prompts through both SAM decoders)."""

from __future__ import annotations

import numpy as np
import pytest

from vlsam_ros.core.config import SamConfig, from_flat
from vlsam_ros.core.pipeline import Pipeline
from vlsam_ros.core.segmenter import load_segmenter
from vlsam_ros.core.segmenter.sam_adapter import SamSegmenter, build_sam_model
from vlsam_ros.core.segmenter.tiny import save_tiny_sam
from vlsam_ros.core.tracking.followers import FlowFollower
from vlsam_ros.core.tracking.tracker import Tracker
from vlsam_ros.core.tracking.two_rate import TwoRateSequence
from vlsam_ros.synthetic.moving_scene import default_moving_scene
from vlsam_ros.synthetic.scene_models import ScenePlantedVlm

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
        segmenter = SamSegmenter(model, SamConfig(decoder=decoder))
        embedding = segmenter.embed(image)
        out[decoder] = [segmenter.segment(embedding, points, labels, m, boxes=boxes)
                        for m in (None, logits)]
        without = segmenter.segment(embedding, points, labels)
        assert not np.allclose(without.low_res_logits, out[decoder][0].low_res_logits)
    for factored, stock in zip(out["factored"], out["stock"]):
        np.testing.assert_allclose(factored.low_res_logits, stock.low_res_logits, atol=1e-4)
        np.testing.assert_allclose(factored.iou_predictions, stock.iou_predictions, atol=1e-5)
    with pytest.raises(ValueError, match="boxes"):
        segmenter.segment(embedding, points, labels, boxes=boxes[:1])


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

    follower_segmenter = SamSegmenter(segmenter.model, cfg.sam)
    follower_segmenter.embed, follower_segmenter.segment = counting_embed, counting_segment
    tracker = Tracker(cfg.tracking, FlowFollower(follower_segmenter, cfg.sam.mask_threshold))
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
