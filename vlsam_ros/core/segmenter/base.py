"""The PromptableSegmenter protocol (SAM-style point + mask prompts).

Points follow the frame of ``vlsam_ros.core.results``: continuous pixel coordinates (x, y),
x to the right, y down, the centre of pixel (row r, column c) at (c + 0.5, r + 0.5).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np

from vlsam_ros.core.config import SamConfig

LOW_RES_MASK_SIZE = 256
"""Side of SAM's low-resolution mask logits (fixed by the SAM architecture)."""

PADDING_LABEL = -1
"""Point label that marks padding: the decoder ignores the point (SAM's not-a-point)."""


def point_prompts(points: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """``points`` as float32 (K, P, 2) pixel (x, y) and ``labels`` (K, P), checked; the one
    prompt check of every segmenter backend. Raises ValueError naming both shapes."""
    points = np.asarray(points, dtype=np.float32)
    labels = np.asarray(labels)
    if points.ndim != 3 or points.shape[2] != 2 or labels.shape != points.shape[:2]:
        raise ValueError(f"points must be (K, P, 2) and labels (K, P); got {points.shape} "
                         f"and {labels.shape}")
    return points, labels


def box_prompts(boxes: Any, k: int) -> np.ndarray | None:
    """None, or ``boxes`` as float32 (K, 4) pixel (x0, y0, x1, y1), one per point prompt;
    raises ValueError naming the shape otherwise."""
    if boxes is None:
        return None
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.shape != (k, 4):
        raise ValueError(f"boxes must be ({k}, 4); got {boxes.shape}")
    return boxes


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


SAM_MASK_PROMPT_FRAME = (LOW_RES_MASK_SIZE, False)
"""``mask_prompt_frame`` of SAM / MobileSAM and of the decoders shaped like them: 256 x 256
logits over the image resized (longest side) and padded to the square."""


class PromptableSegmenter(Protocol):
    @property
    def mask_prompt_frame(self) -> tuple[int, bool]:
        """(S, square_resize): side of the low-resolution logits a mask prompt must have,
        and whether the model stretches the image to its square input (else it resizes the
        longest side and pads), for mask prompts made from a mask
        (``tracking.followers.mask_to_low_res_logits``)."""
        ...

    def embed(self, image: np.ndarray) -> Any:
        """Runs the image encoder once. image: RGB uint8 (H, W, 3). Returns an opaque handle."""
        ...

    def segment(self, embedding: Any, points: np.ndarray, labels: np.ndarray,
                mask_logits: np.ndarray | None = None, boxes: np.ndarray | None = None,
                *, sam_cfg: SamConfig) -> SegmentationBatch:
        """One batched decoder call, with the runtime settings of ``sam_cfg`` (multimask,
        mask_threshold, decoder, decoder_chunk) for this call only; the model-defining
        fields (type, checkpoint, model) are fixed when the segmenter is loaded.

        points: float32 (K, P, 2), (x, y) pixels in the embedded image (module docstring).
        labels: int (K, P), 1 positive / 0 negative / -1 padding (ignored).
        mask_logits: optional float32 (K, 1, 256, 256) from a previous call.
        boxes: optional float32 (K, 4), one box prompt per prompt: (x0, y0, x1, y1) corners
            in the same pixel frame (a mask's tight box has x1/y1 exclusive).
        """
        ...
