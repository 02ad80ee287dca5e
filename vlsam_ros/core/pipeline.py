"""The core orchestrator: one RGB frame in, one FrameResult out (method.md sections 1-5).

Per frame:

1. views = the full image, plus its four corner tiles when ``ensemble.tiles``;
2. the questions (``questions.QuestionCache``, built once per configuration);
3. ONE ``vlm.describe`` batch over every (view, question) pair, while a worker thread runs
   the SAM image encoder once per view (``sam.overlap_encoder``);
   With ``prompts.dropout_iterations`` > 0, Salience DropOut then completes the maps
   (``salience_dropout.complete_maps``: teacher-forced re-runs on blacked-out patches);
   with ``attention.gradcam`` the VLM weights its maps by their gradients (``gradcam.py``);
4. per view, every named object of every question is prompted and refined
   (``refinement.segment_objects``: one decoder call per round for all of them); in
   concept mode (``concept.enabled``) SAM 3 first proposes every instance of each name and
   the object's map chooses among them (``concept_mode``), and only the objects left
   without an instance are prompted;
5. tile masks touching a tile edge inside the image are dropped
   (``ensemble.drop_cut_tile_masks``: cut objects; the full view segments them whole);
6. merging: ONE mask-IoU NMS (``ensemble.nms_iou``) over every candidate of every view and
   question, in full-frame coordinates, as the paper does. (NMS within each view first and
   then across views would lose a candidate suppressed in its view by one that a better
   candidate of another view removes later.) The kept detection keeps its label; the
   labels it absorbed become ``alt_labels`` (``merging.merge_candidates``). Then
   ``ensemble.min_score`` and the ``ensemble.max_detections`` best by score.

Detection score = SAM's predicted IoU x mean normalised attention inside the mask
(``refinement.detection_score``); merging keeps the highest score of its group.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import dataclasses
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from vlsam_ros.core import cancellation
from vlsam_ros.core.cancellation import CancellationToken
from vlsam_ros.core.concept_mode import ConceptStats, concept_candidates
from vlsam_ros.core.config import ConfigError, VlsamConfig, schema, to_flat
from vlsam_ros.core.image_check import check_image
from vlsam_ros.core import merging
from vlsam_ros.core.masks import box_from_mask, decode_rle, encode_rle, rle_box
from vlsam_ros.core.questions import QuestionCache
from vlsam_ros.core.refinement import Candidate, DecodeStats, ObjectMap, segment_objects
from vlsam_ros.core.results import Detection, FrameResult, VlmAnswer
from vlsam_ros.core.salience_dropout import complete_maps
from vlsam_ros.core.segmenter.base import PromptableSegmenter
from vlsam_ros.core.tiles import View, make_views

if TYPE_CHECKING:  # importing vlsam_ros.core.vlm pulls in transformers
    from vlsam_ros.core.segmenter.concept import ConceptSegmenter
    from vlsam_ros.core.vlm.base import VisionLanguageModel

LOG = logging.getLogger(__name__)

# Sections whose non-runtime fields define loaded models; the core ignores cameras/node.*.
_MODEL_SECTIONS = ("device", "vlm.", "sam.", "attention.", "prompts.", "ensemble.",
                   "concept.")


def model_fields_changed(old: VlsamConfig, new: VlsamConfig) -> list[str]:
    """Dotted names of non-runtime fields (model-defining) that differ between configs."""
    before, after = to_flat(old), to_flat(new)
    return [e.name for e in schema() if not e.runtime and e.name.startswith(_MODEL_SECTIONS)
            and before[e.name] != after[e.name]]


@dataclasses.dataclass(frozen=True)
class _ViewJob:
    view: View
    image: np.ndarray                 # RGB uint8 (view.height, view.width, 3), contiguous
    answers: tuple[VlmAnswer, ...]    # one per question


@dataclasses.dataclass(frozen=True)
class _ViewEmbedding:
    sam: Any                          # the segmenter's embedding of the view
    concept: Any                      # the concept segmenter's (concept mode), else None


class Pipeline:
    """VL-SAM on one frame at a time. Thread-safe: concurrent ``run`` calls are serialised.

    Each result's ``stage_ms`` holds the frame's stage times (ms): questions (question
    set built during this frame, else 0), vlm, encoder (SAM image encoder, all views;
    SAM 3's too in concept mode), decoder (all SAM decoder calls), concept (SAM 3's concept
    calls), prompts_merge (point sampling, scoring, NMS, mapping), total; plus the counts
    ``decoder_calls``, ``prompts`` (decoded), ``duplicate_prompts`` (exact duplicates
    decoded once), ``concept_instances`` (SAM 3 instances kept) and ``concept_fallbacks``
    (objects that took the point path in concept mode). FrameResult.segment_ms is
    encoder + decoder + concept + prompts_merge; the encoder part may overlap
    FrameResult.vlm_ms (``sam.overlap_encoder``), so vlm_ms + segment_ms can exceed
    total_ms.
    """

    def __init__(self, cfg: VlsamConfig, vlm: VisionLanguageModel,
                 segmenter: PromptableSegmenter, concept: ConceptSegmenter | None = None):
        if cfg.concept.enabled and concept is None:
            raise ConfigError("concept.enabled needs a concept segmenter (SAM 3, "
                              "load_concept_segmenter)")
        self._cfg = cfg
        self.vlm = vlm
        self.segmenter = segmenter
        self.concept = concept if cfg.concept.enabled else None
        self._questions = QuestionCache()
        self._run_lock = threading.Lock()
        if cfg.ensemble.num_questions > 1:
            self.questions()                 # generated once, here, not on the first frame

    @property
    def cfg(self) -> VlsamConfig:
        return self._cfg

    def questions(self) -> tuple[str, ...]:
        """The questions the next frame asks (built and cached on first use)."""
        cfg = self._cfg
        return self._questions.get(self.vlm, cfg.vlm, cfg.ensemble)

    def update_config(self, cfg: VlsamConfig) -> None:
        """Takes a new configuration; runtime fields apply from the next frame.

        Raises ConfigError naming the fields when a model-defining (non-runtime) field
        differs: those need a new Pipeline (build_pipeline).
        """
        changed = model_fields_changed(self._cfg, cfg)
        if changed:
            raise ConfigError(f"{', '.join(changed)}: cannot change at run time (the models "
                              "must be reloaded); build a new pipeline")
        self._cfg = cfg

    def run(self, image: np.ndarray, cancel: CancellationToken | None = None) -> FrameResult:
        """Detects and segments the objects of one RGB uint8 (H, W, 3) frame.

        Raises InvalidImageError for anything else. A frame where the VLM names nothing
        returns no detections, with the VLM's description. Once ``cancel`` is cancelled,
        the frame stops at its next safe point with FrameCancelled (``core/cancellation.py``).
        """
        start = time.perf_counter()
        with self._run_lock, cancellation.active(cancel):
            cfg = self._cfg
            check_image(image, min_side=2 if cfg.ensemble.tiles else 1)
            stages: dict[str, float] = {"questions": 0.0, "vlm": 0.0, "encoder": 0.0,
                                        "decoder": 0.0, "concept": 0.0, "prompts_merge": 0.0}
            t = time.perf_counter()
            questions = self._questions.get(self.vlm, cfg.vlm, cfg.ensemble)
            stages["questions"] = _ms(t)
            height, width = image.shape[:2]
            views = make_views(height, width, cfg.ensemble.tiles)
            crops = [np.ascontiguousarray(v.crop(image)) for v in views]
            jobs, embeddings = self._describe_and_embed(cfg, views, crops, questions, stages)
            description = jobs[0].answers[0].text
            if not cfg.sam.overlap_encoder:     # sequential: embed only views with objects
                named = [i for i, job in enumerate(jobs) if _has_objects(job)]
                embeddings = dict(zip(named, self._embed([jobs[i].image for i in named],
                                                         stages)))
            t = time.perf_counter()
            decode = DecodeStats()
            concept_stats = ConceptStats()
            candidates: list[Candidate] = []       # every view's, in full-frame coordinates
            for i, job in enumerate(jobs):
                cancellation.check(f"before segmenting view {i + 1} of {len(jobs)}")
                objects = [ObjectMap(o.name, a.attention_maps[k], a.patch_cell_px())
                           for a in job.answers for k, o in enumerate(a.objects)]
                if not objects:
                    continue
                found: list[Candidate] = []
                if self.concept is not None:
                    found, objects = concept_candidates(
                        self.concept, embeddings[i].concept, objects, cfg.concept,
                        cfg.prompts.min_mask_area_px, concept_stats)
                found += segment_objects(self.segmenter, embeddings[i].sam, objects, cfg.prompts,
                                         cfg.sam, decode)
                if cfg.ensemble.drop_cut_tile_masks:
                    found = [c for c in found
                             if not job.view.touches_inner_edge(rle_box(c.rle), (height, width))]
                candidates.extend(_to_full_frame(c, job.view, (height, width)) for c in found)
            kept = [c for c in merging.merge_candidates(candidates, cfg.ensemble.nms_iou)
                    if c.score >= cfg.ensemble.min_score]
            kept.sort(key=lambda c: -c.score)
            detections = tuple(_to_detection(c) for c in kept[:cfg.ensemble.max_detections])
            stages["decoder"] = decode.decoder_ms
            stages["concept"] = concept_stats.concept_ms
            stages["prompts_merge"] = _ms(t) - decode.decoder_ms - concept_stats.concept_ms
            total = _ms(start)
            stage_ms = {**stages, "total": total, "decoder_calls": decode.calls,
                        "prompts": decode.prompts, "duplicate_prompts": decode.duplicates,
                        "concept_instances": concept_stats.kept,
                        "concept_fallbacks": concept_stats.fallbacks}
            segment_ms = (stages["encoder"] + stages["decoder"] + stages["concept"]
                          + stages["prompts_merge"])
            return FrameResult(detections, description, stages["vlm"], segment_ms, total,
                               stage_ms=stage_ms)

    def _embed(self, images: Sequence[np.ndarray],
               stages: dict[str, float]) -> list[_ViewEmbedding]:
        t = time.perf_counter()
        out = [_ViewEmbedding(self.segmenter.embed(img),
                              None if self.concept is None else self.concept.embed(img))
               for img in images]
        stages["encoder"] += _ms(t)
        return out

    def _describe_and_embed(self, cfg: VlsamConfig, views: Sequence[View],
                            crops: Sequence[np.ndarray], questions: Sequence[str],
                            stages: dict[str, float]
                            ) -> tuple[list[_ViewJob], dict[int, Any]]:
        """One VLM batch over all (view, question) pairs; with overlap_encoder the SAM
        encoder embeds every view in a worker thread meanwhile (else nothing is embedded
        here). Returns the jobs and {view index: embedding}."""
        images = [crop for crop in crops for _ in questions]
        asked = [q for _ in crops for q in questions]
        embeddings: dict[int, Any] = {}
        if cfg.sam.overlap_encoder:
            with concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="sam-encoder") as pool:
                # The encoder thread sees this frame's cancellation token (its context).
                future = pool.submit(contextvars.copy_context().run, self._embed, crops,
                                     stages)
                t = time.perf_counter()
                answers = self.vlm.describe(images, asked, cfg.vlm, cfg.attention)
                stages["vlm"] = _ms(t)
                embeddings = dict(enumerate(future.result()))
        else:
            t = time.perf_counter()
            answers = self.vlm.describe(images, asked, cfg.vlm, cfg.attention)
            stages["vlm"] = _ms(t)
        _check_answers(answers, images)
        if cfg.prompts.dropout_iterations > 0:
            # Salience DropOut (prompts.dropout_*): black out the most attended patches,
            # re-run the VLM on the same text and sum the maps, before they become prompts.
            t = time.perf_counter()
            answers = complete_maps(self.vlm, images, asked, answers, cfg.vlm, cfg.attention,
                                    cfg.prompts.dropout_iterations, cfg.prompts.dropout_patches)
            stages["vlm"] += _ms(t)
            _check_answers(answers, images)
        nq = len(questions)
        jobs = [_ViewJob(v, crop, tuple(answers[i * nq:(i + 1) * nq]))
                for i, (v, crop) in enumerate(zip(views, crops))]
        return jobs, embeddings


def build_pipeline(cfg: VlsamConfig) -> Pipeline:
    """Loads the VLM and the segmenter named by ``cfg`` and wires them into a Pipeline."""
    from vlsam_ros.core.segmenter import load_segmenter
    from vlsam_ros.core.vlm import load_vlm

    vlm = load_vlm(cfg)
    segmenter = load_segmenter(cfg)
    concept = None
    if cfg.concept.enabled:
        from vlsam_ros.core.segmenter.concept import load_concept_segmenter

        concept = load_concept_segmenter(cfg)
    return Pipeline(cfg, vlm, segmenter, concept)


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1e3


def _has_objects(job: _ViewJob) -> bool:
    return any(a.objects for a in job.answers)


def _check_answers(answers: Sequence[VlmAnswer], images: Sequence[np.ndarray]) -> None:
    """The VLM must answer every pair, one map per object, sized to the pair's image."""
    if len(answers) != len(images):
        raise ValueError(f"the VLM returned {len(answers)} answers for {len(images)} images")
    for answer, image in zip(answers, images):
        expected = (len(answer.objects), *image.shape[:2])
        if answer.attention_maps.shape != expected:
            raise ValueError(f"the VLM returned attention maps of shape "
                             f"{answer.attention_maps.shape}, expected {expected} "
                             "(one map per object, sized to the image)")


def _to_full_frame(c: Candidate, view: View, full_shape: tuple[int, int]) -> Candidate:
    """A candidate in a view's frame -> the same candidate in the full image's frame."""
    if (view.x0, view.y0, view.height, view.width) == (0, 0, *full_shape):
        return c
    mask = view.mask_to_full(decode_rle(c.rle), full_shape)
    return dataclasses.replace(c, rle=encode_rle(mask), points=view.points_to_full(c.points))


def _to_detection(c: Candidate) -> Detection:
    mask = decode_rle(c.rle)
    return Detection(label=c.label, score=float(c.score), mask=mask,
                     box_xyxy=box_from_mask(mask), prompt_points=c.points.astype(np.float32),
                     prompt_labels=c.point_labels.astype(np.int8), alt_labels=c.alt_labels)
