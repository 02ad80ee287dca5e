"""SAM 3 concept segmentation through transformers (segmenter/concept.py), tiny random
weights saved and loaded like the real checkpoint; and one frame of the pipeline in concept
mode with the tiny SAM 3 and tiny SAM 2.1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oracle import PlantedVlm, make_scene
from vlsam_ros.core.config import ConceptConfig, from_flat
from vlsam_ros.core.errors import ModelLoadError, ModelNotFoundError
from vlsam_ros.core.pipeline import Pipeline
from vlsam_ros.core.segmenter import load_segmenter
from vlsam_ros.core.segmenter.concept import (SAM3_CHECKPOINT, Sam3ConceptSegmenter,
                                              load_concept_segmenter)
from vlsam_ros.testing.tiny_hf_segmenters import (build_tiny_segmenter, save_tiny_segmenter,
                                                  tiny_processor)

# Random weights give scores near 0.25; a low threshold keeps some proposals to compare.
CFG = ConceptConfig(score_threshold=0.2, mask_threshold=0.5)


@pytest.fixture(scope="module")
def sam3_folder(tmp_path_factory):
    return save_tiny_segmenter("sam3", tmp_path_factory.mktemp("sam3"), seed=0)


@pytest.fixture(scope="module")
def concept(sam3_folder):
    return load_concept_segmenter(from_flat({"device": "cpu", "concept.model": str(sam3_folder)}))


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (70, 101, 3), dtype=np.uint8)


def _reference(segmenter, image, name, cfg):
    """The model's own forward on the processor's inputs (image and text together)."""
    inputs = segmenter.processor(images=image, text=name, return_tensors="pt")
    with torch.inference_mode():
        out = segmenter.model(**{k: v for k, v in inputs.items() if k != "original_sizes"})
    return segmenter.processor.post_process_instance_segmentation(
        out, threshold=cfg.score_threshold, mask_threshold=cfg.mask_threshold,
        target_sizes=[image.shape[:2]])[0]


def test_proposals_equal_the_models_own_forward(concept, image):
    handle = concept.embed(image)
    names = ["car", "traffic cone"]
    proposals = concept.propose(handle, names, CFG)
    assert len(proposals) == 2
    for name, got in zip(names, proposals):
        expected = _reference(concept, image, name, CFG)
        assert len(expected["scores"]) > 0, "the comparison needs some proposals"
        assert got.masks.dtype == bool and got.masks.shape == (len(expected["scores"]), 70, 101)
        np.testing.assert_allclose(got.scores, expected["scores"].numpy(), rtol=0, atol=1e-6)
        assert np.array_equal(got.masks, expected["masks"].bool().numpy())
    assert concept.propose(handle, ["car"], ConceptConfig(score_threshold=1.0))[0].masks.shape \
        == (0, 70, 101)


def test_save_load_gives_identical_proposals(concept, image):
    in_memory = Sam3ConceptSegmenter(build_tiny_segmenter("sam3", seed=0), tiny_processor("sam3"))
    a = in_memory.propose(in_memory.embed(image), ["box"], CFG)[0]
    b = concept.propose(concept.embed(image), ["box"], CFG)[0]
    assert np.array_equal(a.masks, b.masks) and np.array_equal(a.scores, b.scores)


def test_missing_or_wrong_folder_is_a_clear_error(tmp_path, sam3_folder):
    with pytest.raises(ModelNotFoundError) as err:
        load_concept_segmenter(from_flat({"device": "cpu",
                                          "concept.model": str(tmp_path / "nope")}))
    message = str(err.value)
    assert SAM3_CHECKPOINT in message and "concept.model" in message and "nope" in message
    with pytest.raises(ModelLoadError, match="sam.backend: sam2"):
        load_segmenter(from_flat({"device": "cpu", "sam.backend": "sam_hq",
                                  "sam.model": str(save_tiny_segmenter("sam2", tmp_path / "s"))}))
    with pytest.raises(ModelLoadError, match="not SAM 3"):
        load_concept_segmenter(from_flat({"device": "cpu", "concept.model": str(tmp_path / "s")}))


def test_a_frame_in_concept_mode_with_tiny_sam3_and_sam2(concept, sam3_folder, tmp_path):
    """Shapes and wiring only (random weights): the planted VLM names two objects; every
    detection is a full-frame mask; the stage counters add up."""
    scene = make_scene(96, 128, [("car", (10, 10, 60, 60)), ("cone", (70, 40, 120, 90))])
    cfg = from_flat({"device": "cpu", "sam.backend": "sam2",
                     "sam.model": str(save_tiny_segmenter("sam2", tmp_path / "sam2")),
                     "concept.enabled": True, "concept.model": str(sam3_folder),
                     "concept.score_threshold": 0.2, "ensemble.tiles": False,
                     "ensemble.num_questions": 1, "ensemble.min_score": 0.0})
    pipe = Pipeline(cfg, PlantedVlm(scene), load_segmenter(cfg), concept)
    result = pipe.run(scene.image)
    stages = result.stage_ms
    assert stages["concept_instances"] + stages["concept_fallbacks"] >= 2
    assert stages["concept"] > 0 and stages["encoder"] > 0
    for det in result.detections:
        assert det.mask.shape == (96, 128) and det.label in ("car", "cone")
