"""The evaluator against pycocotools COCOeval run directly on the same JSON files."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vlsam_ros.core.masks import encode_rle
from vlsam_ros.offline.evaluation import coda_recall as ev
from vlsam_ros.offline.evaluation import lvis_ap as lvis
from vlsam_ros.offline.evaluation import text_encoders as te

CODA_CATEGORIES = [
    {"id": 1, "name": "pedestrian", "supercategory": "common"},
    {"id": 2, "name": "traffic_cone", "supercategory": "common"},
    {"id": 3, "name": "dog", "supercategory": "novel"},
    {"id": 4, "name": "debris", "supercategory": "novel"},
]


def make_dataset(seed: int, num_images: int = 6, max_objects: int = 5,
                 empty_image_every: int = 0, num_dets: str = "normal",
                 duplicates: bool = False) -> tuple[dict, list]:
    """A random COCO ground truth and noisy detections around it (boxes in pixels)."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for img_id in range(1, num_images + 1):
        images.append({"id": img_id, "file_name": f"{img_id:06d}.jpg", "width": 320,
                       "height": 240})
        n = 0 if empty_image_every and img_id % empty_image_every == 0 else int(
            rng.integers(1, max_objects + 1))
        for _ in range(n):
            w, h = rng.uniform(4, 120), rng.uniform(4, 100)
            x, y = rng.uniform(0, 320 - w), rng.uniform(0, 240 - h)
            anns.append({"id": len(anns) + 1, "image_id": img_id,
                         "category_id": int(rng.integers(1, 5)), "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            if num_dets == "normal" and rng.random() < 0.8:
                jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
                box = [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]),
                       max(1.0, h + jitter[3])]
                det = {"image_id": img_id, "category_id": 1, "bbox": box,
                       "score": float(rng.random())}
                dets.append(det)
                if duplicates:
                    dets.append(dict(det, score=float(rng.random())))
        if num_dets == "normal":
            for _ in range(int(rng.integers(0, 3))):  # false positives
                dets.append({"image_id": img_id, "category_id": 1,
                             "bbox": [float(rng.uniform(0, 300)), float(rng.uniform(0, 220)),
                                      10.0, 10.0], "score": float(rng.random())})
    gt = {"images": images, "annotations": anns, "categories": CODA_CATEGORIES}
    return gt, dets


def pycocotools_direct(gt_path: Path, det_path: Path, tmp: Path,
                       keep_categories: set[int] | None = None) -> dict:
    """The protocol of method.md section 7 written straight on pycocotools and files."""
    gt = json.loads(gt_path.read_text())
    gt["annotations"] = [dict(a, category_id=1) for a in gt["annotations"]
                         if keep_categories is None or a["category_id"] in keep_categories]
    gt["categories"] = [{"id": 1, "name": "object"}]
    agnostic = tmp / "agnostic_gt.json"
    agnostic.write_text(json.dumps(gt))
    dets = [dict(d, category_id=1) for d in json.loads(det_path.read_text())]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(agnostic))
        if dets:
            coco_dt = coco_gt.loadRes(dets)
        else:  # loadRes cannot take an empty list; an empty result set instead
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt["images"], "annotations": [],
                               "categories": gt["categories"]}
            coco_dt.createIndex()
        e = COCOeval(coco_gt, coco_dt, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    r = e.eval["recall"]
    return {"mAR": e.stats[8], "AR50": r[0, 0, 0, 2], "AR75": r[5, 0, 0, 2],
            "AR1": e.stats[6], "AR10": e.stats[7]}


CASES = {
    "random": dict(seed=1),
    "random_many": dict(seed=2, num_images=12, max_objects=9),
    "empty_predictions": dict(seed=3, num_dets="none"),
    "duplicate_predictions": dict(seed=4, duplicates=True),
    "images_without_objects": dict(seed=5, empty_image_every=2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_overall_recall_equals_pycocotools(case, tmp_path):
    gt, dets = make_dataset(**CASES[case])
    gt_path, det_path = tmp_path / "gt.json", tmp_path / "dets.json"
    gt_path.write_text(json.dumps(gt))
    det_path.write_text(json.dumps(dets))

    report = ev.evaluate_coda(gt_path, det_path)
    expected = pycocotools_direct(gt_path, det_path, tmp_path)

    for key, value in expected.items():
        assert report["overall"][key] == pytest.approx(value, abs=1e-12), key
    if case == "empty_predictions":
        assert report["overall"]["mAR"] == 0.0
    assert report["overall"]["num_gt"] == len(gt["annotations"])
    assert report["overall"]["recall_vs_iou"][0] == report["overall"]["AR50"]


@pytest.mark.parametrize("case", ["random", "duplicate_predictions"])
def test_per_category_and_supercategory_equal_pycocotools(case, tmp_path):
    gt, dets = make_dataset(**CASES[case])
    gt_path, det_path = tmp_path / "gt.json", tmp_path / "dets.json"
    gt_path.write_text(json.dumps(gt))
    det_path.write_text(json.dumps(dets))
    report = ev.evaluate_coda(gt_path, det_path)

    assert set(report["per_category"]) == {c["name"] for c in CODA_CATEGORIES}
    assert set(report["per_supercategory"]) == {"common", "novel"}
    for name, keep in (("dog", {3}), ("novel", {3, 4}), ("common", {1, 2})):
        table = report["per_category"] if name == "dog" else report["per_supercategory"]
        expected = pycocotools_direct(gt_path, det_path, tmp_path, keep)
        for key, value in expected.items():
            assert table[name][key] == pytest.approx(value, abs=1e-12), (name, key)


def test_hand_computed_recall():
    """Two objects, one found exactly: recall 0.5 at every IoU threshold."""
    gt = {"images": [{"id": 7, "width": 100, "height": 100}],
          "annotations": [{"id": 1, "image_id": 7, "category_id": 5, "bbox": [10, 10, 20, 20]},
                          {"id": 2, "image_id": 7, "category_id": 6, "bbox": [60, 60, 30, 30]}],
          "categories": [{"id": 5, "name": "a"}, {"id": 6, "name": "b"}]}
    dets = [{"image_id": 7, "category_id": 99, "bbox": [10, 10, 20, 20], "score": 0.9}]
    r = ev.class_agnostic_recall(ev.load_ground_truth(gt), ev.load_detections(dets))
    assert (r.mAR, r.AR50, r.AR75, r.AR1, r.AR10) == (0.5, 0.5, 0.5, 0.5, 0.5)
    assert r.recall_vs_iou == (0.5,) * 10


def test_no_ground_truth_objects_gives_none():
    gt = {"images": [{"id": 1, "width": 10, "height": 10}], "annotations": [],
          "categories": [{"id": 1, "name": "x"}]}
    r = ev.class_agnostic_recall(ev.load_ground_truth(gt), [])
    assert r.mAR is None and r.AR50 is None and r.num_gt == 0


@pytest.mark.parametrize("mutate, message", [
    (lambda gt, d: gt.pop("images"), "missing list 'images'"),
    (lambda gt, d: gt["annotations"][0].update(image_id=999), "annotations[0]: image_id 999"),
    (lambda gt, d: gt["annotations"][1].update(bbox=[1, 2, 3]), "annotations[1]: 'bbox'"),
    (lambda gt, d: d[0].update(image_id=12345), "detections[0]: image_id 12345"),
    (lambda gt, d: d[0].pop("score"), "detections[0]: needs a finite number 'score'"),
])
def test_malformed_inputs_name_the_entry(mutate, message):
    gt, dets = make_dataset(seed=1)
    mutate(gt, dets)
    with pytest.raises(ev.EvaluationInputError, match=message.replace("[", r"\[").replace(
            "]", r"\]")):
        ev.evaluate_coda(gt, dets)


def test_malformed_json_file_names_the_file(tmp_path):
    bad = tmp_path / "corner_case.json"
    bad.write_text('{"images": [')
    with pytest.raises(ev.EvaluationInputError, match="corner_case.json: not valid JSON"):
        ev.load_ground_truth(bad)


def test_report_and_plot_files(tmp_path):
    gt, dets = make_dataset(seed=1)
    report = ev.evaluate_coda(gt, dets)
    path = ev.write_report(report, tmp_path / "report.json")
    assert json.loads(path.read_text())["overall"]["mAR"] == report["overall"]["mAR"]
    png = ev.plot_recall_vs_iou(report, tmp_path / "recall_vs_iou.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_coco_result_box_and_mask():
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:9, 10:16] = True  # rows 5..8, cols 10..15
    det = ev.coco_result(3, "cone", 0.7, (10, 5, 16, 9), encode_rle(mask))
    assert det["bbox"] == [10.0, 5.0, 6.0, 4.0]
    assert det["segmentation"]["size"] == [20, 30]
    assert np.array_equal(mask_utils.decode(dict(det["segmentation"],
                                                 counts=det["segmentation"]["counts"].encode())),
                          mask)
    json.dumps(det)  # JSON-ready


# ----------------------------------------------------------------------------------------
# LVIS-style mode
# ----------------------------------------------------------------------------------------

class SynonymEncoder:
    """Deterministic toy encoder: one axis per concept, synonyms share an axis."""

    CONCEPTS = {"dog": 0, "puppy": 0, "hound": 0, "traffic cone": 1, "pylon": 1,
                "person": 2, "pedestrian": 2, "debris": 3, "rubble": 3}

    def encode(self, texts):
        out = np.zeros((len(texts), 5), dtype=np.float32)
        for i, text in enumerate(texts):
            word = text.removeprefix("a ").strip()
            out[i, self.CONCEPTS.get(word, 4)] = 1.0
        return out


def test_label_mapping_uses_the_given_encoder():
    cats = [{"id": 10, "name": "dog"}, {"id": 11, "name": "traffic_cone"},
            {"id": 12, "name": "pedestrian"}]
    mapped = te.map_labels_to_categories(["puppy", "pylon", "person"], cats, SynonymEncoder())
    assert [cid for cid, _ in mapped] == [10, 11, 12]
    hashed = te.map_labels_to_categories(["traffic cones", "dogs"], cats,
                                         te.HashingTextEncoder())
    assert [cid for cid, _ in hashed] == [11, 10]
    unmapped = te.map_labels_to_categories(["zebra"], cats, SynonymEncoder(),
                                           min_similarity=0.5)
    assert unmapped[0][0] is None


def _square_rle(h, w, x, y, s):
    m = np.zeros((h, w), dtype=np.uint8)
    m[y:y + s, x:x + s] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": [h, w], "counts": rle["counts"].decode()}


def lvis_dataset():
    cats = [{"id": 1, "name": "dog", "frequency": "r"},
            {"id": 2, "name": "traffic_cone", "frequency": "r"},
            {"id": 3, "name": "pedestrian", "frequency": "f"}]
    images = [{"id": i, "width": 64, "height": 48, "neg_category_ids": [2]} for i in (1, 2)]
    anns, dets = [], []
    for img, (cid, label, x) in [(1, (1, "puppy", 4)), (1, (3, "person", 30)),
                                 (2, (2, "pylon", 10))]:
        seg = _square_rle(48, 64, x, 8, 12)
        anns.append({"id": len(anns) + 1, "image_id": img, "category_id": cid,
                     "bbox": [x, 8, 12, 12], "area": 144, "iscrowd": 0, "segmentation": seg})
        dets.append({"image_id": img, "bbox": [x, 8, 12, 12], "score": 0.9, "label": label,
                     "segmentation": seg})
    # a wrong-category guess in image 2 that the federated rule drops (dog not verified there)
    dets.append({"image_id": 2, "bbox": [40, 30, 5, 5], "score": 0.95, "label": "hound",
                 "segmentation": _square_rle(48, 64, 40, 30, 5)})
    return {"images": images, "annotations": anns, "categories": cats}, dets


def test_lvis_style_rare_ap_perfect_and_matches_pycocotools(tmp_path):
    gt, dets = lvis_dataset()
    result = lvis.evaluate_lvis_style(gt, dets, SynonymEncoder())
    assert result["AP"]["bbox"] == pytest.approx(1.0)
    assert result["AP"]["segm"] == pytest.approx(1.0)
    assert result["label_map"]["puppy"][0] == "dog"
    assert result["num_mapped"] == 3  # the hound in image 2 is dropped by the federated rule

    # Same figure from pycocotools directly, on files with the categories already assigned.
    label_to_cat = {"puppy": 1, "pylon": 2, "person": 3, "hound": 1}
    coco_dets = [dict(d, category_id=label_to_cat[d["label"]]) for d in dets[:3]]
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        e = COCOeval(coco_gt, coco_gt.loadRes(coco_dets), "bbox")
        e.params.catIds = [1, 2]
        e.params.maxDets = [1, 10, 300]
        e.evaluate()
        e.accumulate()
        e.summarize()
    precision = e.eval["precision"][:, :, :, 0, -1]
    assert result["AP"]["bbox"] == pytest.approx(np.mean(precision[precision > -1]))


def test_lvis_style_wrong_mapping_scores_zero():
    gt, dets = lvis_dataset()
    for d in dets:
        d["label"] = "zebra"  # maps to nothing useful under the toy encoder
    result = lvis.evaluate_lvis_style(gt, dets, SynonymEncoder(), min_similarity=0.5)
    assert result["num_mapped"] == 0
    assert result["AP"]["bbox"] == 0.0


def test_transformers_text_encoder_loads_a_local_model(tmp_path):
    """A tiny random BERT saved to disk: (N, D) unit rows; identical texts map to their
    own category. (Real use: a local all-MiniLM-L6-v2 or CLIP text folder.)"""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "traffic", "cone"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=32)).save_pretrained(tmp_path)
    BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)

    encoder = te.TransformersTextEncoder(tmp_path)
    emb = encoder.encode(["a dog", "a traffic cone", "a dog"])
    assert emb.shape == (3, 32) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.allclose(emb[0], emb[2])
    cats = [{"id": 1, "name": "dog"}, {"id": 2, "name": "traffic_cone"}]
    assert [c for c, _ in te.map_labels_to_categories(["dog", "traffic cone"], cats,
                                                       encoder)] == [1, 2]
    with pytest.raises(FileNotFoundError, match="text encoder folder not found"):
        te.TransformersTextEncoder(tmp_path / "missing")
