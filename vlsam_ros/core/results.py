"""Plain result types of the core. No ROS, no torch: numpy and builtins only.

Coordinate frame everywhere: pixels of the source image, x to the right (column), y down
(row), origin at the top-left corner of the top-left pixel; pixel (r, c) covers
[c, c+1) x [r, r+1) and its centre is (c + 0.5, r + 0.5).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ObjectName:
    """One object name parsed from the VLM's generated text.

    ``token_span`` is the half-open range [start, end) of the name's tokens, indexed in the
    generated token sequence (0 = first generated token).
    """

    name: str
    token_span: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class VlmAnswer:
    """What the VLM said about one image for one question.

    ``attention_maps`` is float32 of shape (K, H, W), one map per entry of ``objects``, min-max
    normalised to [0, 1] and upsampled to the image that was given (H x W pixels).
    ``grid_shape`` is the (rows, cols) patch grid the maps were computed on.
    ``grid_box_xyxy`` (optional) is the pixel box of the image the grid covers (cell (r, c)
    spans ``x0 + c (x1 - x0) / cols`` to ``x0 + (c + 1) (x1 - x0) / cols``, likewise in y);
    None means the whole image. ``token_ids`` (optional) are the generated token ids up to and
    including the first end-of-sequence token, so a teacher-forced re-run (Salience DropOut)
    can feed exactly the same text again.
    """

    question: str
    text: str
    objects: tuple[ObjectName, ...]
    attention_maps: np.ndarray
    grid_shape: tuple[int, int]
    grid_box_xyxy: tuple[float, float, float, float] | None = None
    token_ids: tuple[int, ...] = ()

    def patch_cell_px(self) -> tuple[float, float]:
        """(width, height) in pixels of one cell of the patch grid (``grid_box_xyxy``)."""
        rows, cols = self.grid_shape
        if self.grid_box_xyxy is None:
            h, w = self.attention_maps.shape[1:]
            return w / cols, h / rows
        x0, y0, x1, y1 = self.grid_box_xyxy
        return (x1 - x0) / cols, (y1 - y0) / rows


@dataclasses.dataclass(frozen=True)
class Detection:
    """One segmented object in the source image.

    ``mask`` is bool (H, W). ``box_xyxy`` is (x0, y0, x1, y1) in pixels with x1/y1 exclusive
    (the mask's tight extent). ``prompt_points`` is float32 (P, 2) as (x, y) pixels and
    ``prompt_labels`` int8 (P,) with 1 = positive, 0 = negative.

    With tracking (``tracking.mode`` flow/memory): ``track_id`` is the object's id, stable
    for the run and unique across cameras (>= 1; 0 = not tracked), and ``label_stamp_ns``
    the stamp (ns) of the frame whose discovery answer last gave the label (None: this
    frame's own answer, as without tracking).
    """

    label: str
    score: float
    mask: np.ndarray
    box_xyxy: tuple[int, int, int, int]
    prompt_points: np.ndarray
    prompt_labels: np.ndarray
    alt_labels: tuple[str, ...] = ()
    track_id: int = 0
    label_stamp_ns: int | None = None


@dataclasses.dataclass(frozen=True)
class FrameResult:
    """Everything the pipeline produced for one frame; times in milliseconds.

    ``discovery``: whether this frame ran discovery (the VLM); always True without
    tracking, where every frame does. ``stage_ms``: the pipeline's per-stage times and counts
    for this frame (``Pipeline.run`` lists the keys; empty when not measured, e.g. a result
    read back from a message); not part of equality."""

    detections: tuple[Detection, ...]
    description: str
    vlm_ms: float
    segment_ms: float
    total_ms: float
    discovery: bool = True
    stage_ms: dict[str, float] = dataclasses.field(default_factory=dict, compare=False)
