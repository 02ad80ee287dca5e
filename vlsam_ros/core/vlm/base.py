"""The VisionLanguageModel protocol every backend implements."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from vlsam_ros.core.config import AttentionConfig, VlmConfig
from vlsam_ros.core.results import VlmAnswer


class VisionLanguageModel(Protocol):
    """A VLM that names objects and returns one attention map per name."""

    def describe(self, images: Sequence[np.ndarray], questions: Sequence[str],
                 vlm_cfg: VlmConfig, attn_cfg: AttentionConfig) -> list[VlmAnswer]:
        """Runs ``questions[i]`` on ``images[i]`` as one batch.

        images: RGB uint8 arrays of shape (H_i, W_i, 3), any sizes.
        Returns one VlmAnswer per pair, maps sized to that pair's image.
        """
        ...

    def generate_text(self, prompt: str, vlm_cfg: VlmConfig) -> str:
        """Text-only generation (used to write question rephrasings)."""
        ...


class TeacherForcedVlm(VisionLanguageModel, Protocol):
    """A VLM that can also re-run text it generated (Salience DropOut,
    ``core/salience_dropout.py``). Optional: only ``prompts.dropout_iterations`` > 0 needs it."""

    def attend(self, images: Sequence[np.ndarray], questions: Sequence[str],
               answers: Sequence[VlmAnswer], vlm_cfg: VlmConfig,
               attn_cfg: AttentionConfig) -> list[np.ndarray]:
        """Maps of ``answers[i]``'s objects on ``images[i]`` (same size as the image the
        answer was generated on) with the answer's generated text fed back, without
        generating: float32 (K_i, H_i, W_i) each, made as ``describe`` makes them."""
        ...
