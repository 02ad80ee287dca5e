"""Concept mode (concept.enabled) in the pipeline, with an oracle concept segmenter that
returns the planted instances of a name (SAM 3's concept segmentation as a test double),
the oracle point segmenter and planted attention maps."""

from __future__ import annotations

import numpy as np
import pytest

from oracle import OracleConceptSegmenter, OracleSegmenter, PlantedVlm, make_scene, scene_recall
from vlsam_ros.core.config import ConfigError, from_flat
from vlsam_ros.core.pipeline import Pipeline

QUESTION = "list the objects"


def _cfg(concept=True, **values):
    base = {"device": "cpu", "vlm.question": QUESTION, "ensemble.tiles": False,
            "ensemble.num_questions": 1, "concept.enabled": concept}
    base.update({k.replace("__", "."): v for k, v in values.items()})
    return from_flat(base)


@pytest.fixture(scope="module")
def yard():
    """Three boxes side by side, two cones close together, a deer SAM 3 misses."""
    return make_scene(144, 192, [
        ("box", (10, 10, 50, 50)), ("box", (76, 10, 116, 50)), ("box", (142, 10, 182, 50)),
        ("cone", (20, 84, 50, 114)), ("cone", (56, 84, 86, 114)),
        ("deer", (130, 80, 176, 130))])


def _run(scene, cfg, missed=frozenset(), **vlm_kwargs):
    vlm = PlantedVlm(scene, **vlm_kwargs)
    seg, concept = OracleSegmenter(), OracleConceptSegmenter(scene, missed=missed)
    pipe = Pipeline(cfg, vlm, seg, concept)
    return pipe.run(scene.image), pipe, seg, concept


def _masks_of(result, label):
    return [d.mask for d in result.detections if d.label == label]


def test_the_map_selects_the_intended_instance_among_several_of_the_same_name(yard):
    result, pipe, seg, concept = _run(yard, _cfg(), attended={"box": (1,)})
    boxes = [d for d in result.detections if d.label == "box"]
    assert len(boxes) == 1
    np.testing.assert_array_equal(boxes[0].mask, yard.objects[1].mask)
    assert boxes[0].prompt_points.shape == (0, 2)          # from SAM 3, not from points
    assert "box" in concept.calls[0]
    assert not any((c["points"][:, 0, 0] < 120).any() and (c["points"][:, 0, 1] < 60).any()
                   for c in seg.calls), "no point prompt for the box"


def test_all_instances_under_one_map_are_kept(yard):
    result, pipe, _, _ = _run(yard, _cfg(prompts__refinement_rounds=0))
    cones = _masks_of(result, "cone")
    assert len(cones) == 2
    for obj in yard.objects[3:5]:
        assert any(np.array_equal(m, obj.mask) for m in cones)
    assert len(_masks_of(result, "box")) == 3
    # The point path with the same map finds one cone only (one instance per peak).
    points_only, *_ = _run(yard, _cfg(concept=False, prompts__refinement_rounds=0))
    assert len(_masks_of(points_only, "cone")) == 1


def test_an_object_sam3_misses_comes_from_the_point_path(yard):
    result, pipe, seg, concept = _run(yard, _cfg(prompts__refinement_rounds=1),
                                      missed=frozenset({"deer"}))
    deer = [d for d in result.detections if d.label == "deer"]
    assert len(deer) == 1
    np.testing.assert_array_equal(deer[0].mask, yard.objects[5].mask)
    assert len(deer[0].prompt_points) > 0                 # a point-prompted detection
    assert seg.calls and all(c["k"] == 1 for c in seg.calls), "only the deer is prompted"
    assert result.stage_ms["concept_fallbacks"] == 1
    assert result.stage_ms["concept_instances"] == 5


@pytest.fixture(scope="module")
def roadworks():
    """An oracle scene built for concept mode: rows of same-name objects under broad maps
    (cones, barrels), a pair of bags, and two names SAM 3 misses (deer, debris)."""
    cones = [("cone", (8 + 46 * i, 150, 48 + 46 * i, 194)) for i in range(5)]
    barrels = [("barrel", (200 + 36 * i, 40, 230 + 36 * i, 90)) for i in range(3)]
    return make_scene(240, 320, cones + barrels + [
        ("bag", (20, 20, 60, 60)), ("bag", (70, 20, 110, 60)),
        ("deer", (250, 150, 300, 210)), ("debris", (130, 80, 170, 120))])


def test_recall_concept_mode_vs_point_only(roadworks):
    """Class-agnostic mAR (project evaluator) at the default refinement (2 rounds): the
    point path finds about one instance per attention peak and round; concept mode keeps
    every instance under the map and still finds the missed names by points."""
    missed = frozenset({"deer", "debris"})
    point_only = scene_recall(roadworks, _run(roadworks, _cfg(concept=False), missed)[0]).mAR
    concept = scene_recall(roadworks, _run(roadworks, _cfg(), missed)[0]).mAR
    print(f"\nroadworks (12 objects) mAR: point-only {point_only:.3f}, concept {concept:.3f}")
    assert concept == pytest.approx(1.0)
    assert point_only < concept
    assert point_only == pytest.approx(5 / 12)


def test_concept_mode_needs_its_segmenter_and_is_fixed_at_load(yard):
    with pytest.raises(ConfigError, match="concept segmenter"):
        Pipeline(_cfg(), PlantedVlm(yard), OracleSegmenter())
    pipe = Pipeline(_cfg(concept=False), PlantedVlm(yard), OracleSegmenter())
    with pytest.raises(ConfigError, match="concept.enabled"):
        pipe.update_config(_cfg())
    pipe = Pipeline(_cfg(), PlantedVlm(yard), OracleSegmenter(), OracleConceptSegmenter(yard))
    pipe.update_config(_cfg(concept__min_coverage=0.5))    # thresholds are runtime
    assert pipe.cfg.concept.min_coverage == 0.5
