"""LVIS-style AP over free-text labels, on top of pycocotools.

Free-text labels are mapped to the category list by the cosine
similarity of text embeddings (``"a {name}"`` by default, as the paper does with CLIP),
through any :class:`TextEncoder`; then the class-aware COCOeval computes box and mask AP
over the rare categories (``frequency == "r"``). Where images carry LVIS'
``neg_category_ids`` / ``not_exhaustive_category_ids``, predictions of categories that are
neither annotated nor listed as negative in an image are dropped before scoring (LVIS'
federated rule); the official ``lvis`` API also ignores unmatched predictions of
not-exhaustive categories, which pycocotools cannot express, so numbers can differ slightly
from the official LVIS evaluator.

Inputs are the COCO-format dicts or files of ``coda_recall.py``. No ROS import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from vlsam_ros.offline.evaluation.coda_recall import (EvaluationInputError, load_detections,
                                       load_ground_truth, run_cocoeval)
from vlsam_ros.offline.evaluation.text_encoders import TextEncoder, map_labels_to_categories


def apply_federated_rule(gt: Mapping[str, Any],
                         detections: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Drops detections whose category is neither annotated in their image nor listed in the
    image's ``neg_category_ids`` (LVIS' federated rule). Images without
    ``neg_category_ids`` keep all their detections."""
    positives: dict[int, set[int]] = {}
    for ann in gt["annotations"]:
        positives.setdefault(ann["image_id"], set()).add(ann["category_id"])
    negatives = {img["id"]: set(img["neg_category_ids"]) for img in gt["images"]
                 if "neg_category_ids" in img}
    out = []
    for det in detections:
        image_id = det["image_id"]
        if image_id not in negatives:
            out.append(dict(det))
            continue
        allowed = positives.get(image_id, set()) | negatives[image_id]
        if det["category_id"] in allowed:
            out.append(dict(det))
    return out


def mean_average_precision(precision: np.ndarray) -> float | None:
    """AP over IoU 0.50:0.95, area "all", the last maxDets, from COCOeval's ``precision``
    array (T, R, K, A, M): the mean of its valid (> -1) entries, as ``_summarize`` does.
    (``stats[0]`` itself is hard-wired to maxDets 100 in pycocotools.)"""
    values = precision[:, :, :, 0, -1]
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else None


def evaluate_lvis_style(gt_source: str | Path | Mapping[str, Any],
                        det_source: str | Path | Iterable[Mapping[str, Any]],
                        encoder: TextEncoder, frequencies: Sequence[str] = ("r",),
                        template: str = "a {}", min_similarity: float | None = None,
                        iou_types: Sequence[str] = ("bbox", "segm"),
                        max_dets: int = 300) -> dict[str, Any]:
    """Maps each detection's ``label`` to a category, then class-aware AP over the
    categories whose ``frequency`` is in ``frequencies`` (LVIS "r" = rare).

    Returns ``{"AP": {"bbox": ..., "segm": ...}, "num_categories", "num_mapped",
    "num_unmapped", "label_map": {label: [category name or None, similarity]}}``; AP is a
    fraction (IoU 0.50:0.95, area all, maxDets ``max_dets``, as LVIS uses 300) or None when
    none of the evaluated categories has ground truth. Mask AP needs a ``segmentation`` in
    every ground-truth annotation and detection.
    """
    gt = load_ground_truth(gt_source)
    dets = load_detections(det_source, gt)
    for i, det in enumerate(dets):
        if not isinstance(det.get("label"), str):
            raise EvaluationInputError(f"detections[{i}]: LVIS-style mode needs a text 'label'")
    if "segm" in iou_types:
        for i, ann in enumerate(gt["annotations"]):
            if "segmentation" not in ann:
                raise EvaluationInputError(
                    f"annotations[{i}]: mask AP needs a 'segmentation' in the ground truth")
    eval_cats = [c for c in gt["categories"] if c.get("frequency") in frequencies]
    if not eval_cats:
        raise EvaluationInputError(
            f"no category has frequency in {list(frequencies)}: nothing to evaluate")
    labels = sorted({d["label"] for d in dets})
    mapping = dict(zip(labels, map_labels_to_categories(
        labels, gt["categories"], encoder, template, min_similarity)))
    mapped = []
    for det in dets:
        cid, _ = mapping[det["label"]]
        if cid is not None:
            det = dict(det)
            det["category_id"] = cid
            mapped.append(det)
    mapped = apply_federated_rule(gt, mapped)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    unmapped = sum(1 for d in dets if mapping[d["label"]][0] is None)
    result: dict[str, Any] = {"AP": {}, "frequencies": list(frequencies),
                              "num_categories": len(eval_cats),
                              "num_detections": len(dets), "num_mapped": len(mapped),
                              "num_unmapped": unmapped,
                              "label_map": {lab: [names.get(cid) if cid is not None else None,
                                                  sim] for lab, (cid, sim) in mapping.items()}}
    cat_ids = [c["id"] for c in eval_cats]
    for iou_type in iou_types:
        ev = run_cocoeval(gt, mapped, iou_type, cat_ids=cat_ids, max_dets=(1, 10, max_dets))
        result["AP"][iou_type] = mean_average_precision(ev.eval["precision"])
    return result
