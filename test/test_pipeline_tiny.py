"""End to end through the production loaders: tiny random LLaVA + MobileSAM (vit_t)."""

from __future__ import annotations

import numpy as np
import pytest

from vlsam_ros.core.pipeline import build_pipeline
from vlsam_ros.core.results import Detection, FrameResult


@pytest.fixture(scope="module")
def street_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, (97, 131, 3), dtype=np.uint8)
    image[40:80, 20:70] = (200, 30, 30)
    image[10:30, 90:120] = (30, 200, 200)
    return image


def test_tiny_models_end_to_end_are_deterministic(tiny_config, street_image):
    pipe = build_pipeline(tiny_config(prompts__refinement_rounds=2))
    first = pipe.run(street_image)
    second = pipe.run(street_image)
    assert isinstance(first, FrameResult)
    assert first.description == second.description and first.description
    assert [(d.label, d.box_xyxy, d.score) for d in first.detections] == [
        (d.label, d.box_xyxy, d.score) for d in second.detections]
    for d in first.detections:
        assert isinstance(d, Detection)
        assert d.mask.shape == street_image.shape[:2] and d.mask.dtype == bool
        assert 0.0 <= d.score <= 1.0
    assert first.total_ms > 0 and first.vlm_ms > 0 and first.segment_ms > 0


@pytest.mark.slow
def test_tiny_models_full_recipe(tiny_config, street_image):
    pipe = build_pipeline(tiny_config(prompts__refinement_rounds=2, ensemble__tiles=True,
                                      ensemble__num_questions=3))
    result = pipe.run(street_image)
    assert len(pipe.questions()) == 3
    assert result.stage_ms["encoder"] > 0
    assert all(d.mask.shape == street_image.shape[:2] for d in result.detections)
