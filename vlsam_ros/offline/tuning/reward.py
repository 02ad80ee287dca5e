"""The label-free contrastive reward (PnP-OVSS, method.md section 8) and the image-text
scorer it uses.

For one frame I (RGB uint8 (H, W, 3)) and its detections d = (name n_d, bool mask M_d):

    kept_d    = I * M_d            (pixels outside the mask blacked out)
    removed_d = I * (1 - M_d)      (pixels inside the mask blacked out)
    r_d       = s(kept_d, t(n_d)) - s(removed_d, t(n_d))
    R(I)      = sum over d of r_d            (0 for a frame without detections)

and the reward of a configuration over F frames is the mean ``(1/F) sum_f R(I_f)``. Here
s(image, text) is the scorer's image-text similarity (CLIP: the cosine of the two
embeddings) and t(n) the text template filled with the name (default "a photo of a {}.").
A detection is rewarded when the model sees its name more in the mask than in the rest of
the image; a wrong or leaking mask is penalised. Black (0) is the fill, as PnP-OVSS compares
against a black image. The sum (not the mean) over a frame's detections makes finding a
further, correctly named object worth more, since the node is judged by recall; NMS has
already merged duplicates.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import numpy as np

DEFAULT_TEXT_TEMPLATE = "a photo of a {}."


class ImageTextScorer(Protocol):
    """Scores how well images match texts."""

    name: str

    def similarity(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
        """float64 (N,): the similarity of ``images[i]`` (RGB uint8 (H, W, 3)) and
        ``texts[i]``; larger is a better match. ``len(images) == len(texts)``."""


@dataclasses.dataclass(frozen=True)
class Masked:
    """One detection of a frame as the reward sees it: its name and bool (H, W) mask."""

    name: str
    mask: np.ndarray


def keep_and_remove(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(I * M, I * (1 - M))`` for RGB uint8 (H, W, 3) I and bool (H, W) M."""
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match image {image.shape[:2]}")
    m = mask[..., None]
    return np.where(m, image, 0).astype(np.uint8), np.where(m, 0, image).astype(np.uint8)


def detection_rewards(image: np.ndarray, detections: Sequence[Masked], scorer: ImageTextScorer,
                      template: str = DEFAULT_TEXT_TEMPLATE) -> np.ndarray:
    """float64 (D,): ``r_d = s(I * M_d, t(n_d)) - s(I * (1 - M_d), t(n_d))`` for each
    detection, scored in ONE scorer call of 2D image-text pairs."""
    if not detections:
        return np.zeros(0, dtype=np.float64)
    images: list[np.ndarray] = []
    texts: list[str] = []
    for d in detections:
        kept, removed = keep_and_remove(image, d.mask)
        text = template.format(d.name)
        images += [kept, removed]
        texts += [text, text]
    sims = np.asarray(scorer.similarity(images, texts), dtype=np.float64)
    if sims.shape != (len(images),):
        raise ValueError(f"scorer returned shape {sims.shape} for {len(images)} pairs")
    return sims[0::2] - sims[1::2]


def frame_reward(image: np.ndarray, detections: Sequence[Masked], scorer: ImageTextScorer,
                 template: str = DEFAULT_TEXT_TEMPLATE) -> float:
    """``R(I) = sum_d r_d`` (see the module docstring); 0.0 without detections."""
    return float(detection_rewards(image, detections, scorer, template).sum())
