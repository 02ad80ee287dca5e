"""Oracle models of a :class:`~vlsam_ros.testing.synthetic.moving_scene.MovingScene`, for the
tracker's tests and benchmark (design.md section 6.3, for moving scenes):

* :class:`SceneOracleSegmenter` (PromptableSegmenter): the visible region of the object
  under each prompt's first positive point, from the frame's ground-truth id map;
* :class:`ScenePlantedVlm` (VisionLanguageModel): names the objects visible in a frame and
  gives each a coarse attention map of its visible mask (cell-averaged on a ``grid`` x
  ``grid`` patch grid, min-max normalised, bilinearly upsampled), as a VLM with that patch
  grid could; the VL-SAM pipeline turns these into prompts as usual.

Both recognise a frame by its pixels (the scene's frames are distinct) and raise
ValueError for any other image. ``delay_s`` slows either down (node and bench tests of a
slow VLM).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any, Sequence

import cv2
import numpy as np

from vlsam_ros.core.results import ObjectName, VlmAnswer
from vlsam_ros.core.segmenter.base import SAM_MASK_PROMPT_FRAME, SegmentationBatch
from vlsam_ros.core.tracking.followers import mask_to_low_res_logits
from vlsam_ros.testing.synthetic.moving_scene import MovingScene, SceneFrame

ORACLE_LOGIT = 10.0
"""Magnitude of the oracle's low-resolution logits (+inside, -outside its mask)."""


def _key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


class _FrameIndex:
    def __init__(self, scene: MovingScene) -> None:
        self._frames = {_key(f.image): f for f in scene.frames}

    def find(self, image: np.ndarray) -> SceneFrame:
        frame = self._frames.get(_key(image))
        if frame is None:
            raise ValueError("image is not a frame of this scene")
        return frame


@dataclasses.dataclass(frozen=True)
class _OracleEmbedding:
    ids: np.ndarray           # int16 (H, W)


class SceneOracleSegmenter:
    """PromptableSegmenter double (module docstring). ``iou_prediction`` is reported for
    every mask; ``embed_calls`` / ``segment_calls`` / ``prompts`` count the work done."""

    mask_prompt_frame = SAM_MASK_PROMPT_FRAME  # mask prompts come as SAM-shaped logits

    def __init__(self, scene: MovingScene, iou_prediction: float = 0.9,
                 delay_s: float = 0.0) -> None:
        self._index = _FrameIndex(scene)
        self.iou_prediction = iou_prediction
        self.delay_s = delay_s
        self.embed_calls = 0
        self.segment_calls = 0
        self.prompts = 0

    def embed(self, image: np.ndarray) -> _OracleEmbedding:
        self.embed_calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        return _OracleEmbedding(self._index.find(image).ids)

    def segment(self, embedding: _OracleEmbedding, points: np.ndarray, labels: np.ndarray,
                mask_logits: np.ndarray | None = None, boxes: np.ndarray | None = None,
                *, sam_cfg: Any = None) -> SegmentationBatch:
        """sam_cfg: accepted for the protocol; the oracle has no settings."""
        self.segment_calls += 1
        self.prompts += len(points)
        ids = embedding.ids
        height, width = ids.shape
        masks = []
        for pts, labs in zip(points, labels):
            x, y = pts[int(np.flatnonzero(labs == 1)[0])]
            row = min(max(int(np.floor(y)), 0), height - 1)
            col = min(max(int(np.floor(x)), 0), width - 1)
            masks.append(ids == ids[row, col])
        masks = np.stack(masks) if masks else np.zeros((0, height, width), bool)
        logits = (np.stack([mask_to_low_res_logits(m, ORACLE_LOGIT) for m in masks])
                  if len(masks) else np.zeros((0, 1, 256, 256), np.float32))
        return SegmentationBatch(masks=masks,
                                 iou_predictions=np.full(len(masks), self.iou_prediction,
                                                         np.float32),
                                 low_res_logits=logits)


class ScenePlantedVlm:
    """VisionLanguageModel double (module docstring). An object is named when at least
    ``min_visible_cells`` patch cells' worth of it is visible. ``describe_calls`` counts
    calls."""

    def __init__(self, scene: MovingScene, grid: int = 24, min_visible_cells: float = 1.0,
                 delay_s: float = 0.0) -> None:
        self._index = _FrameIndex(scene)
        self._names = scene.names()
        self.grid = grid
        self.min_visible_cells = min_visible_cells
        self.delay_s = delay_s
        self.describe_calls = 0

    def generate_text(self, prompt: str, vlm_cfg: Any) -> str:
        return ""

    def _coarse_map(self, mask: np.ndarray) -> np.ndarray:
        height, width = mask.shape
        cells = cv2.resize(mask.astype(np.float32), (self.grid, self.grid),
                           interpolation=cv2.INTER_AREA)
        cells = (cells - cells.min()) / max(float(cells.max() - cells.min()), 1e-6)
        up = cv2.resize(cells, (width, height), interpolation=cv2.INTER_LINEAR)
        return np.clip(up, 0.0, 1.0).astype(np.float32)

    def describe(self, images: Sequence[np.ndarray], questions: Sequence[str],
                 vlm_cfg: Any, attn_cfg: Any) -> list[VlmAnswer]:
        self.describe_calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        answers = []
        for image, question in zip(images, questions):
            frame = self._index.find(image)
            height, width = frame.ids.shape
            cell_area = (height / self.grid) * (width / self.grid)
            ids = frame.visible_ids(min_pixels=int(np.ceil(self.min_visible_cells * cell_area)))
            names = [self._names[i] for i in ids]
            maps = (np.stack([self._coarse_map(frame.mask(i)) for i in ids]) if ids
                    else np.zeros((0, height, width), np.float32))
            answers.append(VlmAnswer(question=question, text=", ".join(names),
                                     objects=tuple(ObjectName(n, (k, k + 1))
                                                   for k, n in enumerate(names)),
                                     attention_maps=maps, grid_shape=(self.grid, self.grid)))
        return answers
