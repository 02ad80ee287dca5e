"""The question ensemble (method.md section 5): which questions each frame asks.

With ``ensemble.num_questions`` = N the frame asks ``vlm.question`` plus N-1 more:

* ``question_source: generated``: the VLM writes rephrasings once (text only, the prompt is
  ``ensemble.rephrase_prompt``). They do not depend on the image, so they are generated
  once per configuration and cached. Lines that do not look like a question are rejected
  with a logged warning; missing ones are topped up from ``ensemble.questions``.
* ``question_source: config``: the first N-1 of ``ensemble.questions``.

The questions in use are always logged.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from typing import TYPE_CHECKING, Sequence

from vlsam_ros.core.config import EnsembleConfig, VlmConfig

if TYPE_CHECKING:  # importing vlsam_ros.core.vlm pulls in transformers
    from vlsam_ros.core.vlm.base import VisionLanguageModel

LOG = logging.getLogger(__name__)

_ENUMERATION = re.compile(r"^\s*(?:(?:q(?:uestion)?\s*)?\d+\s*[.):\]-]|[-*\u2022])\s*",
                          re.IGNORECASE)
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"
_ENDINGS = ("?", ".")
_LOG_LINE_CHARS = 120   # rejected lines are shortened to this in the log


def _normalise(question: str) -> str:
    """Case-, space- and end-punctuation-insensitive key for duplicate detection."""
    return " ".join(re.sub(r"[^\w\s]", " ", question.lower()).split())


def clean_line(line: str) -> str:
    """Strips enumeration ('1.', '2)', '-', '*', 'Q3:'), surrounding quotes and extra spaces."""
    line = _ENUMERATION.sub("", line.strip())
    line = line.strip().strip(_QUOTES).strip()
    return " ".join(line.split())


def rejection_reason(question: str, min_words: int, max_words: int) -> str | None:
    """Why a cleaned line is not a usable question, or None when it is usable.

    Usable: min_words..max_words words, printable, starts with a letter and ends with '?'
    or '.' (a question or an instruction, not a heading or a fragment).
    """
    words = question.split()
    if len(words) < min_words:
        return f"fewer than {min_words} words"
    if len(words) > max_words:
        return f"more than {max_words} words"
    if not question.isprintable():
        return "non-printable characters"
    if not question[0].isalpha():
        return "does not start with a letter"
    if not question.endswith(_ENDINGS):
        return "does not end with '?' or '.'"
    return None


def parse_rephrasings(text: str, min_words: int, max_words: int,
                      exclude: Sequence[str] = ()) -> tuple[list[str], list[tuple[str, str]]]:
    """Splits the VLM's answer into questions, one per line.

    Returns (accepted questions in order, [(rejected line, reason), ...]). Blank lines are
    skipped silently; duplicates (of each other or of ``exclude``) are rejected.
    """
    seen = {_normalise(q) for q in exclude}
    accepted: list[str] = []
    rejected: list[tuple[str, str]] = []
    for raw in text.splitlines():
        if not raw.strip():
            continue
        question = clean_line(raw)
        reason = rejection_reason(question, min_words, max_words) if question else "empty"
        if reason is None and _normalise(question) in seen:
            reason = "duplicate"
        if reason is not None:
            rejected.append((raw.strip(), reason))
            continue
        seen.add(_normalise(question))
        accepted.append(question)
    return accepted, rejected


def rephrase_prompt(ens_cfg: EnsembleConfig, question: str, n: int) -> str:
    """``ensemble.rephrase_prompt`` with {n} and {question} filled in (no str.format, so
    braces inside the question are harmless)."""
    return ens_cfg.rephrase_prompt.replace("{n}", str(n)).replace("{question}", question)


def _top_up(questions: list[str], fallback: Sequence[str], wanted: int) -> list[str]:
    seen = {_normalise(q) for q in questions}
    for q in fallback:
        if len(questions) >= wanted:
            break
        if _normalise(q) not in seen:
            seen.add(_normalise(q))
            questions.append(q)
    return questions


def build_questions(vlm: VisionLanguageModel, vlm_cfg: VlmConfig,
                    ens_cfg: EnsembleConfig) -> tuple[str, ...]:
    """The questions one frame asks: ``vlm.question`` first, then up to N-1 others."""
    main = vlm_cfg.question
    wanted = ens_cfg.num_questions - 1
    if wanted == 0:
        return (main,)
    if ens_cfg.question_source == "config":
        extra = _top_up([], ens_cfg.questions, wanted)
        LOG.info("question ensemble: %d questions from ensemble.questions (config): %s",
                 len(extra) + 1, [main, *extra])
        return (main, *extra)
    prompt = rephrase_prompt(ens_cfg, main, wanted)
    text = vlm.generate_text(prompt, dataclasses.replace(
        vlm_cfg, max_new_tokens=ens_cfg.rephrase_max_new_tokens))
    accepted, rejected = parse_rephrasings(text, ens_cfg.question_min_words,
                                           ens_cfg.question_max_words, exclude=[main])
    for line, reason in rejected:
        shown = line if len(line) <= _LOG_LINE_CHARS else line[:_LOG_LINE_CHARS] + "..."
        LOG.warning("question ensemble: discarded generated rephrasing %r (%s)", shown, reason)
    extra = accepted[:wanted]
    generated = len(extra)
    if generated < wanted:
        extra = _top_up(extra, ens_cfg.questions, wanted)
        LOG.warning("question ensemble: the VLM wrote %d usable rephrasing(s) of %d wanted; "
                    "%d taken from ensemble.questions", generated, wanted, len(extra) - generated)
    if len(extra) < wanted:
        LOG.warning("question ensemble: only %d of %d questions available; running with %d",
                    len(extra) + 1, wanted + 1, len(extra) + 1)
    LOG.info("question ensemble: %d questions (%d generated): %s", len(extra) + 1, generated,
             [main, *extra])
    return (main, *extra)


class QuestionCache:
    """Builds the question set once per relevant configuration and reuses it.

    Thread-safe: concurrent callers wait for the one generation in progress.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._questions: tuple[str, ...] = ()

    @staticmethod
    def key(vlm_cfg: VlmConfig, ens_cfg: EnsembleConfig) -> tuple:
        """The configuration values the question set depends on."""
        return (vlm_cfg.question, ens_cfg.num_questions, ens_cfg.question_source,
                ens_cfg.questions, ens_cfg.rephrase_prompt, ens_cfg.rephrase_max_new_tokens,
                ens_cfg.question_min_words, ens_cfg.question_max_words,
                vlm_cfg.do_sample, vlm_cfg.temperature, vlm_cfg.top_p, vlm_cfg.seed)

    def get(self, vlm: VisionLanguageModel, vlm_cfg: VlmConfig,
            ens_cfg: EnsembleConfig) -> tuple[str, ...]:
        key = self.key(vlm_cfg, ens_cfg)
        with self._lock:
            if key != self._key:
                self._questions = build_questions(vlm, vlm_cfg, ens_cfg)
                self._key = key
            return self._questions
