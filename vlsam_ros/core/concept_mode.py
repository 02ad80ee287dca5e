"""Concept mode for one view (``concept.enabled``): SAM 3 proposes every instance of each
object name, the object's attention map chooses among them (``concept_selection``), and
the objects left without an instance go on to the point-prompted path
(``refinement.segment_objects``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import numpy as np

from vlsam_ros.core.concept_selection import select_instances
from vlsam_ros.core.config import ConceptConfig
from vlsam_ros.core.masks import encode_rle
from vlsam_ros.core.refinement import Candidate, ObjectMap
from vlsam_ros.core.segmenter.concept import ConceptSegmenter


@dataclasses.dataclass
class ConceptStats:
    """Concept work over a frame: instances kept, objects handed to the point path, and
    milliseconds in ``propose``."""

    kept: int = 0
    fallbacks: int = 0
    concept_ms: float = 0.0


def concept_candidates(segmenter: ConceptSegmenter, embedding: Any,
                       objects: Sequence[ObjectMap], cfg: ConceptConfig, min_area_px: int,
                       stats: ConceptStats | None = None
                       ) -> tuple[list[Candidate], list[ObjectMap]]:
    """Candidates from SAM 3's instances the maps choose, and the objects with none kept
    (for the point path). One ``propose`` call for the view's distinct names. Candidates
    carry no prompt points (P = 0), round 0, and score = instance score x mean attention
    inside the mask; masks smaller than ``min_area_px`` (``prompts.min_mask_area_px``) or
    empty are not kept."""
    stats = stats if stats is not None else ConceptStats()
    names = list(dict.fromkeys(o.label for o in objects))
    if not names:
        return [], []
    start = time.perf_counter()
    proposals = dict(zip(names, segmenter.propose(embedding, names, cfg)))
    stats.concept_ms += (time.perf_counter() - start) * 1e3
    candidates: list[Candidate] = []
    rest: list[ObjectMap] = []
    for obj in objects:
        found = proposals[obj.label]
        chosen = select_instances(found, obj.attention, cfg.attention_threshold,
                                  cfg.min_coverage, cfg.min_inside, cfg.max_instances)
        kept = []
        for sel in chosen:
            mask = found.masks[sel.index]
            area = int(mask.sum())
            if area == 0 or area < min_area_px:
                continue
            kept.append(Candidate(obj.label, float(np.clip(sel.score, 0.0, 1.0)),
                                  encode_rle(mask), area, np.zeros((0, 2), np.float32),
                                  np.zeros((0,), np.int8), 0))
        if kept:
            candidates.extend(kept)
            stats.kept += len(kept)
        else:
            rest.append(obj)
            stats.fallbacks += 1
    return candidates, rest
