"""The question ensemble: rephrasings generated once, parsed robustly, fallbacks logged."""

from __future__ import annotations

import logging

import pytest

from oracle import OracleSegmenter, PlantedVlm, make_scene
from vlsam_ros.core.config import ConfigError, from_flat
from vlsam_ros.core.pipeline import Pipeline
from vlsam_ros.core.questions import build_questions, clean_line, parse_rephrasings

MAIN = "List every object in the image."
FALLBACK = ["Fallback question number one?", "Fallback question number two?",
            "Fallback question number three?"]

GOOD_TEXT = """Here are 3 questions:
1. What objects can you see in this image?
2) "Name all the things visible in the picture."
- Which items are present in this scene?
"""


def _cfg(**values):
    base = {"device": "cpu", "vlm.question": MAIN, "ensemble.questions": FALLBACK}
    base.update({k.replace("__", "."): v for k, v in values.items()})
    return from_flat(base)


@pytest.mark.parametrize("raw,clean", [
    ("1. What is here?", "What is here?"), ("  12) Name them.", "Name them."),
    ("- List things.", "List things."), ("* 'Quoted?'", "Quoted?"),
    ("Q3: What objects?", "What objects?"), ("\u201cSmart quotes?\u201d", "Smart quotes?"),
    ("What   spaced  out?", "What spaced out?")])
def test_clean_line(raw, clean):
    assert clean_line(raw) == clean


def test_parse_keeps_questions_and_explains_rejections():
    text = GOOD_TEXT + "\nok?\nwhat objects can you see in this image\nWhat objects can you " \
                       "see in this image?\n42 is not a question.\n" + "word " * 70 + "?"
    accepted, rejected = parse_rephrasings(text, 3, 60, exclude=[MAIN])
    assert accepted == ["What objects can you see in this image?",
                        "Name all the things visible in the picture.",
                        "Which items are present in this scene?"]
    reasons = [reason for _, reason in rejected]
    assert reasons == ["does not end with '?' or '.'", "fewer than 3 words",
                       "does not end with '?' or '.'", "duplicate",
                       "does not start with a letter", "more than 60 words"]


def test_parse_rejects_the_main_question_itself():
    accepted, rejected = parse_rephrasings("list every object in the image!?.", 3, 60, [MAIN])
    assert accepted == [] and rejected[0][1] == "duplicate"


def test_generated_questions_are_used_and_logged(caplog):
    vlm = PlantedVlm(make_scene(8, 8, []), rephrasings=GOOD_TEXT)
    with caplog.at_level(logging.INFO, logger="vlsam_ros.core.questions"):
        questions = build_questions(vlm, _cfg().vlm, _cfg(ensemble__num_questions=3).ensemble)
    assert questions == (MAIN, "What objects can you see in this image?",
                         "Name all the things visible in the picture.")
    assert "{n}" not in vlm.text_prompts[0] and "2 different questions" in vlm.text_prompts[0]
    assert MAIN in vlm.text_prompts[0]
    assert "3 questions (2 generated)" in caplog.text
    assert "discarded generated rephrasing 'Here are 3 questions:'" in caplog.text


def test_garbage_rephrasings_fall_back_to_configured_questions(caplog):
    vlm = PlantedVlm(make_scene(8, 8, []), rephrasings="car truck , the red\n\n, , and")
    with caplog.at_level(logging.WARNING, logger="vlsam_ros.core.questions"):
        questions = build_questions(vlm, _cfg().vlm, _cfg(ensemble__num_questions=3).ensemble)
    assert questions == (MAIN, *FALLBACK[:2])
    assert "wrote 0 usable rephrasing(s) of 2 wanted; 2 taken from ensemble.questions" \
        in caplog.text
    assert caplog.text.count("discarded generated rephrasing") == 2


def test_too_few_questions_anywhere_is_logged(caplog):
    vlm = PlantedVlm(make_scene(8, 8, []), rephrasings="")
    with caplog.at_level(logging.WARNING, logger="vlsam_ros.core.questions"):
        questions = build_questions(vlm, _cfg().vlm, _cfg(ensemble__num_questions=6).ensemble)
    assert questions == (MAIN, *FALLBACK)
    assert "only 4 of 6 questions available" in caplog.text


def test_config_source_never_asks_the_vlm():
    vlm = PlantedVlm(make_scene(8, 8, []), rephrasings=GOOD_TEXT)
    cfg = _cfg(ensemble__num_questions=3, ensemble__question_source="config")
    assert build_questions(vlm, cfg.vlm, cfg.ensemble) == (MAIN, *FALLBACK[:2])
    assert vlm.text_prompts == []


def test_config_source_needs_enough_questions():
    with pytest.raises(ConfigError, match="needs 4 entries"):
        _cfg(ensemble__num_questions=5, ensemble__question_source="config")


def test_rephrase_prompt_needs_its_placeholders():
    with pytest.raises(ConfigError, match=r"\{n\}"):
        _cfg(ensemble__rephrase_prompt="Rephrase {question}")


def test_pipeline_generates_questions_once_and_again_only_when_they_change():
    scene = make_scene(64, 64, [("box", (10, 10, 40, 40))])
    vlm = PlantedVlm(scene, rephrasings=GOOD_TEXT)
    pipe = Pipeline(_cfg(ensemble__num_questions=3), vlm, OracleSegmenter())
    assert len(vlm.text_prompts) == 1, "generated at construction"
    for _ in range(3):
        pipe.run(scene.image)
    assert len(vlm.text_prompts) == 1 and vlm.describe_batches == [3, 3, 3]
    pipe.update_config(_cfg(ensemble__num_questions=3, ensemble__min_score=0.1))
    pipe.run(scene.image)
    assert len(vlm.text_prompts) == 1, "unrelated change: cache kept"
    pipe.update_config(_cfg(ensemble__num_questions=4))
    pipe.run(scene.image)
    assert len(vlm.text_prompts) == 2 and vlm.describe_batches[-1] == 4
    assert pipe.questions()[:4] == (MAIN, "What objects can you see in this image?",
                                    "Name all the things visible in the picture.",
                                    "Which items are present in this scene?")
