"""Prompting SAM with every object of one view, with iterative refinement (method.md 3-4).

Rounds (``prompts.refinement_rounds`` = R):

* round 0: one positive/negative pair per object map -> SAM's best mask and its logits
  (the LENS keypoint options of ``prompts.KeypointOptions`` refine and multiply the
  positive points of every round's prompts);
* round 1 (R >= 1, cascade): the same points again, with round 0's low-res logits as the
  mask prompt; the refined mask replaces round 0's;
* round r >= 2 (masked attention): the object's map is zeroed inside every mask found for
  it so far and a new pair is sampled, which finds further parts or instances of the same
  name. An object stops when its remaining maximum falls under ``prompts.threshold``.

Every round sends the prompts of all still-active objects to ONE batched decoder call
(exact duplicate prompts are decoded once). Each mask is scored by :func:`detection_score`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from vlsam_ros.core import cancellation
from vlsam_ros.core.config import PromptConfig, SamConfig
from vlsam_ros.core.masks import Rle, encode_rle
from vlsam_ros.core.prompts import KeypointOptions, PointPrompt, sample_point_pair, stack_prompts
from vlsam_ros.core.segmenter.base import PromptableSegmenter, SegmentationBatch


def suppress_attention(attention: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
    """Copy of ``attention`` with every pixel inside any of ``masks`` (bool (H, W)) set to 0:
    the masked-attention step of refinement (method.md section 4)."""
    out = attention.copy()
    for mask in masks:
        out[mask] = 0.0
    return out


def detection_score(iou_prediction: float, attention: np.ndarray, mask: np.ndarray) -> float:
    """score = SAM's predicted IoU x mean normalised attention inside the mask.

    The first factor rates the mask's quality, the second how much of the VLM's attention
    for the name the mask explains; both lie in [0, 1] for a normalised map, and the
    product is clipped to [0, 1]. An empty mask scores 0.
    """
    if not mask.any():
        return 0.0
    value = float(iou_prediction) * float(attention[mask].mean())
    return float(np.clip(value, 0.0, 1.0))


@dataclasses.dataclass(frozen=True)
class ObjectMap:
    """One named object of a VLM answer: its label and float32 (H, W) map in [0, 1];
    ``cell_px`` = (width, height) of one patch cell of the map in pixels (needed by the
    keypoint options, ``prompts.KeypointOptions``)."""

    label: str
    attention: np.ndarray
    cell_px: tuple[float, float] | None = None


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A mask proposal in some image frame (a view's, or the full image's).

    rle: compressed COCO RLE of the bool mask; area: its pixel count.
    points: float32 (P, 2) (x, y) prompt points; point_labels: int8 (P,) 1 pos / 0 neg.
    score: SAM predicted IoU x mean attention inside the mask (:func:`detection_score`).
    round: the refinement round that produced it.
    alt_labels: labels of candidates merged into this one by NMS.
    """

    label: str
    score: float
    rle: Rle
    area: int
    points: np.ndarray
    point_labels: np.ndarray
    round: int
    alt_labels: tuple[str, ...] = ()


@dataclasses.dataclass
class DecodeStats:
    """Accumulates decoder work over a frame: calls, prompts decoded, exact duplicate
    prompts skipped, and milliseconds."""

    calls: int = 0
    prompts: int = 0
    duplicates: int = 0
    decoder_ms: float = 0.0


def _decode(segmenter: PromptableSegmenter, embedding: Any, prompts: Sequence[PointPrompt],
            mask_logits: np.ndarray | None, sam_cfg: SamConfig,
            stats: DecodeStats) -> SegmentationBatch:
    """One decoder call for all prompts. Exact duplicates (same points, labels and mask
    prompt, e.g. the same name sampled identically under two questions) are decoded once
    and their outputs shared."""
    cancellation.check(f"between SAM decoder calls ({stats.calls} of this frame done)")
    index: dict[tuple, int] = {}
    inverse = np.empty(len(prompts), dtype=np.int64)
    unique: list[int] = []
    for k, p in enumerate(prompts):
        key = (p.points.tobytes(), p.labels.tobytes(),
               None if mask_logits is None else mask_logits[k].tobytes())
        if key not in index:
            index[key] = len(unique)
            unique.append(k)
        inverse[k] = index[key]
    points, labels = stack_prompts([prompts[k] for k in unique])
    logits = None if mask_logits is None else mask_logits[unique]
    start = time.perf_counter()
    batch = segmenter.segment(embedding, points, labels, logits, sam_cfg=sam_cfg)
    stats.decoder_ms += (time.perf_counter() - start) * 1e3
    stats.calls += 1
    stats.prompts += len(unique)
    stats.duplicates += len(prompts) - len(unique)
    if batch.masks.shape[0] != len(unique):
        raise ValueError(f"segmenter returned {batch.masks.shape[0]} masks for "
                         f"{len(unique)} prompts")
    return SegmentationBatch(batch.masks[inverse], batch.iou_predictions[inverse],
                             batch.low_res_logits[inverse])


def keypoint_options(cfg: PromptConfig) -> KeypointOptions:
    """The LENS keypoint options (``prompts.subpixel_peak``, ``prompts.positive_points``,
    ``prompts.positive_separation_cells``) of a prompt configuration."""
    return KeypointOptions(cfg.subpixel_peak, cfg.positive_points,
                           cfg.positive_separation_cells)


def _sample(remaining: list[np.ndarray], objects: Sequence[ObjectMap], indices: Sequence[int],
            cfg: PromptConfig) -> tuple[list[int], list[PointPrompt]]:
    """New point pairs for the objects ``indices``; drops those with nothing left."""
    kept: list[int] = []
    prompts: list[PointPrompt] = []
    keypoints = keypoint_options(cfg)
    for i in indices:
        prompt = sample_point_pair(remaining[i], cfg.threshold, cfg.connectivity,
                                   cfg.negative_point, keypoints, objects[i].cell_px)
        if prompt is not None:
            kept.append(i)
            prompts.append(prompt)
    return kept, prompts


def segment_objects(segmenter: PromptableSegmenter, embedding: Any,
                    objects: Sequence[ObjectMap], cfg: PromptConfig, sam_cfg: SamConfig,
                    stats: DecodeStats | None = None) -> list[Candidate]:
    """All refinement rounds for the objects of one view; returns its candidates.
    ``sam_cfg`` goes with every decoder call (multimask, mask_threshold, decoder).

    Masks smaller than ``cfg.min_mask_area_px`` (and empty masks) yield no candidate, but
    still count as found for the masked-attention rounds.
    """
    stats = stats if stats is not None else DecodeStats()
    candidates: list[Candidate] = []
    remaining = [obj.attention for obj in objects]            # maps with found areas zeroed

    def collect(batch: SegmentationBatch, indices: Sequence[int],
                prompts: Sequence[PointPrompt], rnd: int) -> None:
        for k, i in enumerate(indices):
            mask = batch.masks[k]
            remaining[i] = suppress_attention(remaining[i], [mask])
            area = int(mask.sum())
            if area == 0 or area < cfg.min_mask_area_px:
                continue
            score = detection_score(float(batch.iou_predictions[k]), objects[i].attention, mask)
            candidates.append(Candidate(objects[i].label, score, encode_rle(mask), area,
                                        prompts[k].points, prompts[k].labels, rnd))

    alive, prompts = _sample(remaining, objects, range(len(objects)), cfg)
    if not prompts:
        return candidates
    batch = _decode(segmenter, embedding, prompts, None, sam_cfg, stats)     # round 0
    rnd = 0
    if cfg.refinement_rounds >= 1:                                           # round 1: cascade
        batch = _decode(segmenter, embedding, prompts, batch.low_res_logits, sam_cfg, stats)
        rnd = 1
    collect(batch, alive, prompts, rnd)
    for rnd in range(2, cfg.refinement_rounds + 1):                          # masked attention
        alive, prompts = _sample(remaining, objects, alive, cfg)
        if not prompts:
            break
        collect(_decode(segmenter, embedding, prompts, None, sam_cfg, stats), alive, prompts,
                rnd)
    return candidates
