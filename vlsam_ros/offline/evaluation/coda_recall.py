"""Class-agnostic recall (CODA protocol) on top of pycocotools, and its inputs and outputs.

No ROS import. Inputs are COCO-format dicts (or JSON files):

* ground truth: ``{"images": [{"id", "file_name", "width", "height"}, ...],
  "annotations": [{"id", "image_id", "category_id", "bbox": [x, y, w, h], ...}, ...],
  "categories": [{"id", "name", "supercategory"?, "frequency"?}, ...]}``;
* detections: a list of COCO result dicts ``{"image_id", "bbox": [x, y, w, h], "score",
  "segmentation"?: RLE, "label"?: free text}``.

Boxes are ``[x, y, width, height]`` in pixels of the image (x right, y down, origin at the
top-left corner of the top-left pixel), as in COCO.

**CODA protocol (method.md section 7).** Every ground-truth and predicted ``category_id``
is set to 1 and pycocotools' COCOeval runs the ``bbox`` evaluation with its default
parameters (IoU 0.50:0.05:0.95, maxDets 1/10/100). Then

* ``mAR``  = ``stats[8]`` (AR over IoU 0.50:0.95, area all, maxDets 100),
* ``AR1``  = ``stats[6]``, ``AR10`` = ``stats[7]``,
* ``AR50`` = ``eval["recall"][0, 0, 0, -1]`` and ``AR75`` = ``eval["recall"][5, 0, 0, -1]``
  (IoU index 0 and 5, the single collapsed category, area "all", maxDets 100),
* ``recall_vs_iou`` = ``eval["recall"][:, 0, 0, -1]`` for the ten IoU thresholds.

All recalls are fractions in [0, 1] (the paper prints them times 100). When the ground
truth has no object at all, COCOeval has nothing to recall and the figures are ``None``.

**Per category.** Predictions carry no category (open vocabulary), so recall for a group
of original categories (one CODA category name, or a supercategory such as "common" /
"novel") is the class-agnostic evaluation of *all* predictions against the ground truth
restricted to that group's annotations. A prediction that would have matched an object of
another group may then match an object of this group instead, exactly as pycocotools does
when run on the filtered file.

LVIS-style AP over free-text labels is in ``lvis_ap.py``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from vlsam_ros.core.masks import rle_to_json

IOU_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.linspace(0.5, 0.95, 10))
"""The ten IoU thresholds of COCOeval (0.50:0.05:0.95), index 0 = 0.50, index 5 = 0.75."""

AGNOSTIC_CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


class EvaluationInputError(ValueError):
    """Ground truth or detections are malformed; the message names the file and entry."""


# ----------------------------------------------------------------------------------------
# Loading and validation
# ----------------------------------------------------------------------------------------

def _read_json(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise EvaluationInputError(f"{path}: file not found") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise EvaluationInputError(f"{path}: not valid JSON: {exc}") from None


def _check_box(box: Any, where: str) -> list[float]:
    if (not isinstance(box, (list, tuple)) or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
        raise EvaluationInputError(f"{where}: 'bbox' must be [x, y, width, height] numbers, "
                                   f"got {box!r}")
    if box[2] < 0 or box[3] < 0 or not all(math.isfinite(v) for v in box):
        raise EvaluationInputError(f"{where}: 'bbox' {box!r} has a negative or non-finite size")
    return [float(v) for v in box]


def load_ground_truth(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Reads and validates a COCO ground-truth file or dict; returns a normalised deep copy.

    Missing optional fields get COCO's defaults: ``iscrowd`` 0 and ``area`` = box width x
    height (pycocotools needs ``area`` for its area ranges). Raises EvaluationInputError
    naming the file and the entry on anything malformed: missing keys, duplicate ids,
    annotations of unknown images or categories.
    """
    name = str(source) if isinstance(source, (str, Path)) else "<ground truth>"
    data = _read_json(Path(source)) if isinstance(source, (str, Path)) else copy.deepcopy(
        dict(source))
    if not isinstance(data, dict):
        raise EvaluationInputError(f"{name}: expected a JSON object with images, annotations "
                                   "and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise EvaluationInputError(f"{name}: missing list {key!r}")
    image_ids: set[int] = set()
    for i, img in enumerate(data["images"]):
        where = f"{name}: images[{i}]"
        if not isinstance(img, dict) or not isinstance(img.get("id"), int):
            raise EvaluationInputError(f"{where}: needs an integer 'id'")
        if img["id"] in image_ids:
            raise EvaluationInputError(f"{where}: duplicate image id {img['id']}")
        image_ids.add(img["id"])
    cat_ids: set[int] = set()
    for i, cat in enumerate(data["categories"]):
        where = f"{name}: categories[{i}]"
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(
                cat.get("name"), str):
            raise EvaluationInputError(f"{where}: needs an integer 'id' and a string 'name'")
        if cat["id"] in cat_ids:
            raise EvaluationInputError(f"{where}: duplicate category id {cat['id']}")
        cat_ids.add(cat["id"])
    ann_ids: set[int] = set()
    for i, ann in enumerate(data["annotations"]):
        where = f"{name}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise EvaluationInputError(f"{where}: expected an object")
        for key in ("id", "image_id", "category_id"):
            if not isinstance(ann.get(key), int):
                raise EvaluationInputError(f"{where}: needs an integer {key!r}")
        if ann["id"] in ann_ids:
            raise EvaluationInputError(f"{where}: duplicate annotation id {ann['id']}")
        ann_ids.add(ann["id"])
        if ann["image_id"] not in image_ids:
            raise EvaluationInputError(f"{where}: image_id {ann['image_id']} is not in images")
        if ann["category_id"] not in cat_ids:
            raise EvaluationInputError(
                f"{where}: category_id {ann['category_id']} is not in categories")
        ann["bbox"] = _check_box(ann.get("bbox"), where)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
    return data


def load_detections(source: str | Path | Iterable[Mapping[str, Any]],
                    gt: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Reads and validates COCO result dicts (a JSON list file or an iterable).

    Each needs ``image_id`` (int), ``bbox`` ``[x, y, w, h]`` and ``score``; ``category_id``,
    ``segmentation`` (RLE) and ``label`` are optional. With ``gt``, an ``image_id`` that is
    not in the ground truth raises EvaluationInputError (pycocotools would only assert).
    """
    name = str(source) if isinstance(source, (str, Path)) else "<detections>"
    data = _read_json(Path(source)) if isinstance(source, (str, Path)) else [
        dict(d) for d in source]
    if not isinstance(data, list):
        raise EvaluationInputError(f"{name}: expected a JSON list of detections")
    known = {img["id"] for img in gt["images"]} if gt is not None else None
    out = []
    for i, det in enumerate(data):
        where = f"{name}: detections[{i}]"
        if not isinstance(det, dict):
            raise EvaluationInputError(f"{where}: expected an object")
        if not isinstance(det.get("image_id"), int):
            raise EvaluationInputError(f"{where}: needs an integer 'image_id'")
        if known is not None and det["image_id"] not in known:
            raise EvaluationInputError(
                f"{where}: image_id {det['image_id']} is not in the ground truth")
        score = det.get("score")
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(
                score):
            raise EvaluationInputError(f"{where}: needs a finite number 'score'")
        det = copy.deepcopy(det)
        det["bbox"] = _check_box(det.get("bbox"), where)
        out.append(det)
    return out


# ----------------------------------------------------------------------------------------
# pycocotools plumbing
# ----------------------------------------------------------------------------------------

def _coco_from_dict(dataset: Mapping[str, Any]):
    """A pycocotools COCO object over an in-memory dataset, without its prints."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dict(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _coco_results(coco_gt, detections: list[dict[str, Any]], iou_type: str):
    """COCO.loadRes for a non-empty list; an empty result set otherwise (loadRes would fail
    on an empty list with an IndexError)."""
    if detections:
        if iou_type == "segm":
            missing = [i for i, d in enumerate(detections) if "segmentation" not in d]
            if missing:
                raise EvaluationInputError(
                    f"detections[{missing[0]}]: mask AP needs a 'segmentation' in every "
                    f"detection ({len(missing)} lack one)")
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes(copy.deepcopy(detections))
    return _coco_from_dict({"images": coco_gt.dataset["images"], "annotations": [],
                            "categories": copy.deepcopy(coco_gt.dataset["categories"])})


def run_cocoeval(gt: Mapping[str, Any], detections: list[dict[str, Any]], iou_type: str,
                  cat_ids: Sequence[int] | None = None, max_dets: Sequence[int] = (1, 10, 100)):
    """Runs COCOeval evaluate/accumulate/summarize quietly and returns it."""
    from pycocotools.cocoeval import COCOeval

    coco_gt = _coco_from_dict(gt)
    coco_dt = _coco_results(coco_gt, detections, iou_type)
    ev = COCOeval(coco_gt, coco_dt, iou_type)
    ev.params.maxDets = list(max_dets)
    if cat_ids is not None:
        ev.params.catIds = list(cat_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def collapse_categories(gt: Mapping[str, Any],
                        detections: Sequence[Mapping[str, Any]],
                        keep_category_ids: Iterable[int] | None = None,
                        ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Class-agnostic copies: every ``category_id`` becomes 1 (method.md section 7).

    With ``keep_category_ids``, only ground-truth annotations of those original categories
    are kept (per-category recall); all detections are always kept.
    """
    keep = None if keep_category_ids is None else set(keep_category_ids)
    anns = []
    for ann in gt["annotations"]:
        if keep is None or ann["category_id"] in keep:
            ann = dict(ann)
            ann["category_id"] = AGNOSTIC_CATEGORY["id"]
            anns.append(ann)
    agnostic_gt = {k: v for k, v in gt.items() if k not in ("annotations", "categories")}
    agnostic_gt.update(annotations=anns, categories=[dict(AGNOSTIC_CATEGORY)])
    dets = []
    for det in detections:
        det = dict(det)
        det["category_id"] = AGNOSTIC_CATEGORY["id"]
        dets.append(det)
    return agnostic_gt, dets


# ----------------------------------------------------------------------------------------
# Class-agnostic recall
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RecallResult:
    """Class-agnostic recall figures, fractions in [0, 1]; ``None`` where nothing to recall.

    ``recall_vs_iou`` has one entry per threshold of :data:`IOU_THRESHOLDS` (maxDets 100).
    """

    mAR: float | None
    AR50: float | None
    AR75: float | None
    AR1: float | None
    AR10: float | None
    recall_vs_iou: tuple[float | None, ...]
    num_gt: int
    num_images: int
    num_detections: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _none_if_missing(value: float) -> float | None:
    """COCOeval writes -1 where no ground truth exists."""
    return None if value < 0 else float(value)


def class_agnostic_recall(gt: Mapping[str, Any], detections: Sequence[Mapping[str, Any]],
                          keep_category_ids: Iterable[int] | None = None) -> RecallResult:
    """CODA scoring (method.md section 7) of validated ground truth and detections.

    See the module docstring for the exact pycocotools indices. ``keep_category_ids``
    restricts the ground truth to some original categories (per-category recall).
    """
    agnostic_gt, dets = collapse_categories(gt, detections, keep_category_ids)
    ev = run_cocoeval(agnostic_gt, dets, "bbox")
    recall = ev.eval["recall"]  # (T=10 IoU, K=1 category, A=4 areas, M=3 maxDets)
    curve = tuple(_none_if_missing(recall[t, 0, 0, -1]) for t in range(len(IOU_THRESHOLDS)))
    return RecallResult(
        mAR=_none_if_missing(ev.stats[8]), AR50=curve[0], AR75=curve[5],
        AR1=_none_if_missing(ev.stats[6]), AR10=_none_if_missing(ev.stats[7]),
        recall_vs_iou=curve, num_gt=len(agnostic_gt["annotations"]),
        num_images=len(agnostic_gt["images"]), num_detections=len(dets))


def category_groups(gt: Mapping[str, Any], key: str) -> dict[str, list[int]]:
    """Original category ids grouped by a category field (``"name"`` or ``"supercategory"``).

    Categories that lack the field are left out; insertion order follows ``categories``.
    """
    groups: dict[str, list[int]] = {}
    for cat in gt["categories"]:
        value = cat.get(key)
        if isinstance(value, str) and value:
            groups.setdefault(value, []).append(cat["id"])
    return groups


def evaluate_coda(gt_source: str | Path | Mapping[str, Any],
                  det_source: str | Path | Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Full CODA-style report: overall class-agnostic recall, then per category name and
    per supercategory (CODA's "common" / "novel"), as a JSON-ready dict."""
    gt = load_ground_truth(gt_source)
    dets = load_detections(det_source, gt)
    report: dict[str, Any] = {
        "protocol": "class-agnostic COCOeval bbox (all category_id = 1), maxDets 100; "
                    "mAR = stats[8], AR50/AR75 = recall[0/5, 0, 0, -1], AR1 = stats[6], "
                    "AR10 = stats[7]; fractions in [0, 1]",
        "iou_thresholds": list(IOU_THRESHOLDS),
        "overall": class_agnostic_recall(gt, dets).as_dict(),
    }
    for key, title in (("name", "per_category"), ("supercategory", "per_supercategory")):
        groups = category_groups(gt, key)
        report[title] = {group: class_agnostic_recall(gt, dets, ids).as_dict()
                         for group, ids in groups.items()}
    return report


def write_report(report: Mapping[str, Any], path: str | Path) -> Path:
    """Writes the report as indented JSON (keys in insertion order) and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def plot_recall_vs_iou(report: Mapping[str, Any], path: str | Path,
                       title: str = "Class-agnostic recall vs IoU threshold") -> Path:
    """PNG of recall (maxDets 100) against the IoU threshold: the overall curve plus one
    curve per supercategory. Uses matplotlib's Agg backend (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    thresholds = report["iou_thresholds"]
    curves = [("all", report["overall"])] + list(report.get("per_supercategory", {}).items())
    for name, result in curves:
        ys = [np.nan if v is None else v for v in result["recall_vs_iou"]]
        mar = result["mAR"]
        label = f"{name} (mAR {mar * 100:.1f})" if mar is not None else f"{name} (no objects)"
        ax.plot(thresholds, ys, marker="o", label=label)
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("recall (maxDets 100)")
    ax.set_ylim(0.0, 1.0)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


# ----------------------------------------------------------------------------------------
# Core results -> COCO result dicts
# ----------------------------------------------------------------------------------------

def coco_result(image_id: int, label: str, score: float, box_xyxy: Sequence[float],
                rle: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One class-agnostic COCO result dict: the one place they are built.

    ``box_xyxy`` is (x0, y0, x1, y1) pixels with x1/y1 exclusive, so width = x1 - x0.
    ``rle`` (a COCO RLE, compressed or uncompressed), when given, becomes the
    ``segmentation`` in its JSON form (``masks.rle_to_json``).
    """
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    det: dict[str, Any] = {"image_id": int(image_id), "category_id": AGNOSTIC_CATEGORY["id"],
                           "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score),
                           "label": label}
    if rle is not None:
        det["segmentation"] = rle_to_json(rle)
    return det

