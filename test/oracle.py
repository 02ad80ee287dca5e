"""Test doubles for the pipeline: generated scenes with known masks, an oracle segmenter
and a fake VLM that returns planted attention maps (design.md section 6.3).

* ``make_scene``: rectangles of unique colours on a textured-free background; each object
  knows its name and full-frame mask.
* ``OracleSegmenter``: implements PromptableSegmenter; for each prompt it returns the
  true region under the first positive point (the connected region of that pixel's colour).
* ``OracleConceptSegmenter``: implements ConceptSegmenter (SAM 3's concept segmentation);
  for each name it returns the planted instances of that name in the view (their regions
  found by colour), except names it is told to miss.
* ``PlantedVlm``: implements VisionLanguageModel; for each (image, question) it finds which
  view of the scene the image is (full image or a corner tile), names the objects a
  coarse-grid VLM could see there, and returns per name the coarse map of its instances
  (cell-averaged on a grid x grid patch grid, min-max normalised, bilinearly upsampled).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import cv2
import numpy as np

from vlsam_ros.core.config import AttentionConfig, SamConfig, VlmConfig
from vlsam_ros.offline.evaluation.coda_recall import (class_agnostic_recall, coco_result,
                                                     load_ground_truth)
from vlsam_ros.core.results import FrameResult, ObjectName, VlmAnswer
from vlsam_ros.core.segmenter.base import (LOW_RES_MASK_SIZE, SAM_MASK_PROMPT_FRAME,
                                          SegmentationBatch)

BACKGROUND = (40, 40, 40)


@dataclasses.dataclass(frozen=True)
class SceneObject:
    name: str
    mask: np.ndarray                     # bool (H, W), full frame
    box_xyxy: tuple[int, int, int, int]  # x1/y1 exclusive


@dataclasses.dataclass(frozen=True)
class Scene:
    image: np.ndarray                    # RGB uint8 (H, W, 3)
    objects: tuple[SceneObject, ...]


def make_scene(height: int, width: int,
               objects: Sequence[tuple[str, tuple[int, int, int, int]]], seed: int = 0) -> Scene:
    """Rectangles (name, (x0, y0, x1, y1)) with x1/y1 exclusive, each in its own colour."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    out = []
    used = {BACKGROUND}
    for name, (x0, y0, x1, y1) in objects:
        colour = BACKGROUND
        while colour in used:
            colour = tuple(int(v) for v in rng.integers(60, 256, 3))
        used.add(colour)
        image[y0:y1, x0:x1] = colour
        mask = np.zeros((height, width), dtype=bool)
        mask[y0:y1, x0:x1] = True
        out.append(SceneObject(name, mask, (x0, y0, x1, y1)))
    return Scene(image, tuple(out))


@dataclasses.dataclass
class OracleSegmenter:
    """PromptableSegmenter double: the true region (same colour, 4-connected) under the
    first positive point of each prompt; with ``union_of_positives`` the union of the
    regions under every positive point (as SAM covers all its positive points). Records
    every call."""

    iou_prediction: float = 0.9
    union_of_positives: bool = False
    embed_calls: int = 0
    calls: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    sam_cfg: SamConfig | None = None       # the settings of the latest segment call
    mask_prompt_frame = SAM_MASK_PROMPT_FRAME  # its mask prompts are SAM-shaped logits

    def embed(self, image: np.ndarray) -> np.ndarray:
        self.embed_calls += 1
        return image.copy()

    def segment(self, embedding: np.ndarray, points: np.ndarray, labels: np.ndarray,
                mask_logits: np.ndarray | None = None, boxes: np.ndarray | None = None,
                *, sam_cfg: SamConfig) -> SegmentationBatch:
        self.sam_cfg = sam_cfg
        self.calls.append({"k": points.shape[0], "mask_logits": mask_logits is not None,
                           "points": points.copy(), "labels": labels.copy()})
        masks = []
        for pts, labs in zip(points, labels):
            positives = np.flatnonzero(labs == 1)
            mask = np.zeros(embedding.shape[:2], dtype=bool)
            for k in positives if self.union_of_positives else positives[:1]:
                x, y = pts[int(k)]
                row, col = int(np.floor(y)), int(np.floor(x))
                same = np.all(embedding == embedding[row, col], axis=-1).astype(np.uint8)
                _, comp = cv2.connectedComponents(same, connectivity=4)
                mask |= comp == comp[row, col]
            masks.append(mask)
        masks = np.stack(masks)
        low = np.stack([cv2.resize(m.astype(np.float32), (LOW_RES_MASK_SIZE,) * 2,
                                   interpolation=cv2.INTER_NEAREST) for m in masks])
        return SegmentationBatch(masks=masks,
                                 iou_predictions=np.full(len(masks), self.iou_prediction,
                                                         dtype=np.float32),
                                 low_res_logits=(low[:, None] * 20 - 10).astype(np.float32))


@dataclasses.dataclass
class PlantedVlm:
    """VisionLanguageModel double with planted attention maps for one scene.

    grid: patch grid side of the simulated VLM; min_visible_cells: an object is named only
    where it covers at least this many patch cells of the view (small objects need tiles).
    hidden_unless: {name: set of questions}; such a name is only given for those questions.
    attended: {name: indices into scene.objects}; the name's map covers only those of its
    instances (default: all of them, one coarse map per name).
    rephrasings: the text generate_text returns.
    """

    scene: Scene
    grid: int = 8
    min_visible_cells: float = 1.0
    hidden_unless: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    attended: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    rephrasings: str = ""
    describe_batches: list[int] = dataclasses.field(default_factory=list)
    text_prompts: list[str] = dataclasses.field(default_factory=list)

    def generate_text(self, prompt: str, vlm_cfg: VlmConfig) -> str:
        self.text_prompts.append(prompt)
        return self.rephrasings

    def _offset(self, image: np.ndarray) -> tuple[int, int]:
        full = self.scene.image
        h, w = image.shape[:2]
        big_h, big_w = full.shape[:2]
        for y0, x0 in ((0, 0), (0, big_w - w), (big_h - h, 0), (big_h - h, big_w - w)):
            if np.array_equal(full[y0:y0 + h, x0:x0 + w], image):
                return x0, y0
        raise AssertionError("image is not the scene or one of its corner tiles")

    def _coarse_map(self, mask: np.ndarray) -> np.ndarray:
        h, w = mask.shape
        cells = cv2.resize(mask.astype(np.float32), (self.grid, self.grid),
                           interpolation=cv2.INTER_AREA)
        cells = (cells - cells.min()) / max(float(cells.max() - cells.min()), 1e-6)
        up = cv2.resize(cells, (w, h), interpolation=cv2.INTER_LINEAR)
        return np.clip(up, 0.0, 1.0).astype(np.float32)

    def describe(self, images: Sequence[np.ndarray], questions: Sequence[str],
                 vlm_cfg: VlmConfig, attn_cfg: AttentionConfig) -> list[VlmAnswer]:
        self.describe_batches.append(len(images))
        answers = []
        for image, question in zip(images, questions):
            x0, y0 = self._offset(image)
            h, w = image.shape[:2]
            cell_area = (h / self.grid) * (w / self.grid)
            per_name: dict[str, np.ndarray] = {}
            for index, obj in enumerate(self.scene.objects):
                if obj.name in self.hidden_unless and question not in self.hidden_unless[obj.name]:
                    continue
                if obj.name in self.attended and index not in self.attended[obj.name]:
                    continue
                local = obj.mask[y0:y0 + h, x0:x0 + w]
                if local.sum() < self.min_visible_cells * cell_area:
                    continue
                per_name[obj.name] = per_name.get(obj.name, np.zeros((h, w), bool)) | local
            names = list(per_name)
            maps = (np.stack([self._coarse_map(per_name[n]) for n in names]) if names
                    else np.zeros((0, h, w), np.float32))
            answers.append(VlmAnswer(question=question, text=", ".join(names),
                                     objects=tuple(ObjectName(n, (i, i + 1))
                                                   for i, n in enumerate(names)),
                                     attention_maps=maps, grid_shape=(self.grid, self.grid)))
        return answers


@dataclasses.dataclass
class OracleConceptSegmenter:
    """ConceptSegmenter double: for a name, every planted instance of it visible in the
    embedded view (its colour region there), score ``score``; nothing for names in
    ``missed``. Records the names asked per call."""

    scene: Scene
    missed: frozenset[str] = frozenset()
    score: float = 0.9
    calls: list[list[str]] = dataclasses.field(default_factory=list)

    def embed(self, image: np.ndarray) -> np.ndarray:
        return image.copy()

    def propose(self, embedding: np.ndarray, names: Sequence[str], cfg: Any) -> list[Any]:
        from vlsam_ros.core.concept_selection import InstanceProposals

        self.calls.append(list(names))
        h, w = embedding.shape[:2]
        out = []
        for name in names:
            masks = []
            if name not in self.missed:
                for obj in self.scene.objects:
                    colour = self.scene.image[obj.mask][0]
                    region = np.all(embedding == colour, axis=-1)
                    if obj.name == name and region.any():
                        masks.append(region)
            out.append(InstanceProposals(np.array(masks, bool).reshape(len(masks), h, w),
                                         np.full(len(masks), self.score, np.float32)))
        return out


def scene_recall(scene: Scene, result: FrameResult):
    """Class-agnostic box recall (CODA protocol, project evaluator) of one frame."""
    h, w = scene.image.shape[:2]
    gt = load_ground_truth({
        "images": [{"id": 1, "file_name": "scene.png", "width": w, "height": h}],
        "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                         "bbox": [o.box_xyxy[0], o.box_xyxy[1], o.box_xyxy[2] - o.box_xyxy[0],
                                  o.box_xyxy[3] - o.box_xyxy[1]],
                         "area": float(o.mask.sum())}
                        for i, o in enumerate(scene.objects)],
        "categories": [{"id": 1, "name": "object"}],
    })
    dets = [coco_result(1, d.label, d.score, d.box_xyxy) for d in result.detections]
    return class_agnostic_recall(gt, dets)
