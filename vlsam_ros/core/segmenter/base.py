"""The PromptableSegmenter protocol (SAM-style point + mask prompts)."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np


@dataclasses.dataclass(frozen=True)
class SegmentationBatch:
    """Output of one batched decoder call for K prompts.

    masks: bool (K, H, W) in the embedded image's pixel frame.
    iou_predictions: float32 (K,), SAM's predicted IoU of each kept mask.
    low_res_logits: float32 (K, 1, 256, 256), reusable as the next round's mask prompt.
    """

    masks: np.ndarray
    iou_predictions: np.ndarray
    low_res_logits: np.ndarray


class PromptableSegmenter(Protocol):
    def embed(self, image: np.ndarray) -> Any:
        """Runs the image encoder once. image: RGB uint8 (H, W, 3). Returns an opaque handle."""
        ...

    def segment(self, embedding: Any, points: np.ndarray, labels: np.ndarray,
                mask_logits: np.ndarray | None = None) -> SegmentationBatch:
        """One batched decoder call.

        points: float32 (K, P, 2), (x, y) pixels in the embedded image.
        labels: int (K, P), 1 positive / 0 negative.
        mask_logits: optional float32 (K, 1, 256, 256) from a previous call.
        """
        ...
