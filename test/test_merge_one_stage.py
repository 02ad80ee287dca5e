"""Merging is ONE mask-IoU NMS over every candidate of every view and question (method.md
section 5), not NMS per view followed by NMS across views.

The difference: a chain A > B > C (scores) where A overlaps B, B overlaps C, but A does not
overlap C. With B and C from one view and A from another, per-view NMS lets B remove C
inside their view; then A removes B across views, and C is gone although nothing that
survives suppresses it. One-stage NMS keeps A and C.
"""

from __future__ import annotations

import numpy as np
import pytest

import vlsam_ros.core.pipeline as pipeline
from vlsam_ros.core import merging
from oracle import OracleSegmenter, PlantedVlm, make_scene
from vlsam_ros.core.config import from_flat
from vlsam_ros.core.masks import encode_rle, rle_iou
from vlsam_ros.core.refinement import Candidate

SHAPE = (60, 200)
IOU = 0.5


def _candidate(label: str, score: float, x0: int, x1: int) -> Candidate:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[10:50, x0:x1] = True
    return Candidate(label, score, encode_rle(mask), int(mask.sum()),
                     np.array([[x0 + 1.0, 20.0], [0.0, 0.0]], np.float32),
                     np.array([1, 0], np.int8), 0)


@pytest.fixture
def chain():
    a = _candidate("car", 0.9, 0, 100)        # view 0 (full image)
    b = _candidate("vehicle", 0.8, 20, 120)   # view 1 (a tile), overlaps a and c
    c = _candidate("van", 0.7, 40, 140)       # view 1, overlaps b, not a
    iou = rle_iou([a.rle, b.rle, c.rle], [a.rle, b.rle, c.rle])
    assert iou[0, 1] > IOU and iou[1, 2] > IOU and iou[0, 2] <= IOU  # the chain holds
    return a, b, c


def _two_stage(views: list[list[Candidate]]) -> list[Candidate]:
    """The former merging: NMS inside each view, then NMS over the survivors."""
    survivors = [c for view in views for c in merging.merge_candidates(view, IOU)]
    return merging.merge_candidates(survivors, IOU)


def test_two_stage_loses_a_detection_that_one_stage_keeps(chain):
    a, b, c = chain
    two = _two_stage([[a], [b, c]])
    one = merging.merge_candidates([a, b, c], IOU)
    assert [x.label for x in two] == ["car"]                   # "van" was lost
    assert sorted(x.label for x in one) == ["car", "van"]      # kept: nothing kept covers it
    kept = {x.label: x for x in one}
    assert kept["car"].alt_labels == ("vehicle",)
    assert kept["van"].alt_labels == ()


def test_the_pipeline_merges_once_over_all_views_in_full_frame(monkeypatch):
    """Through Pipeline.run with tiles on: exactly one NMS call per frame, whose input holds
    the candidates of every view, all in full-frame coordinates."""
    scene = make_scene(257, 321, [("cone", (20, 30, 84, 94)), ("car", (120, 20, 200, 80)),
                                  ("rock", (280, 220, 302, 242))])
    calls = []
    real_merge = merging.merge_candidates

    def recording_merge(candidates, iou_threshold):
        calls.append(list(candidates))
        return real_merge(candidates, iou_threshold)

    monkeypatch.setattr(merging, "merge_candidates", recording_merge)
    cfg = from_flat({"device": "cpu", "prompts.refinement_rounds": 0, "ensemble.tiles": True,
                     "ensemble.num_questions": 1})
    result = pipeline.Pipeline(cfg, PlantedVlm(scene), OracleSegmenter()).run(scene.image)
    assert len(calls) == 1
    merged_input = calls[0]
    assert all(list(c.rle["size"]) == [257, 321] for c in merged_input)
    # Tile candidates are in it too: more candidates than detections (duplicates across
    # views), e.g. the rock only tiles find at all.
    assert len(merged_input) > len(result.detections) >= 1
    assert any(d.label == "rock" for d in result.detections)
