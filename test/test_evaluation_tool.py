"""The whole offline chain: CODA-layout dataset -> bag -> replay -> vlsam-evaluate."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from vlsam_ros.offline.datasets import coda_dataset as cd
from vlsam_ros.core.config import from_flat
from vlsam_ros.core.masks import box_from_mask
from vlsam_ros.core.results import Detection, FrameResult
from vlsam_ros.offline.evaluation import evaluate as ev_tool
from vlsam_ros.offline.replay import replay_bag as rb
from vlsam_ros.offline.datasets.dataset_to_bag import dataset_to_bag
from vlsam_ros.offline.datasets.make_demo_dataset import CATEGORIES, make_demo_dataset

CFG = from_flat({"device": "cpu", "cameras": ["/cam_front/image_raw"]})


class OraclePipeline:
    """Returns the ground-truth masks of whichever dataset image it is given (looked up by
    the pixels' hash), labelled with the category name; frames in ``drop`` get nothing."""

    def __init__(self, dataset: cd.CodaDataset, drop: tuple[int, ...] = ()) -> None:
        coco = COCO()
        coco.dataset = dataset.ground_truth
        coco.createIndex()
        names = {c["id"]: c["name"] for c in CATEGORIES}
        self.by_hash = {}
        for frame in dataset.frames:
            dets = []
            if frame.image_id not in drop:
                for ann in coco.imgToAnns[frame.image_id]:
                    mask = coco.annToMask(ann).astype(bool)
                    dets.append(Detection(names[ann["category_id"]], 0.9, mask,
                                          box_from_mask(mask), np.zeros((0, 2), np.float32),
                                          np.zeros((0,), np.int8)))
            key = hashlib.sha1(cd.read_frame_rgb(frame).tobytes()).hexdigest()
            self.by_hash[key] = tuple(dets)

    def run(self, image: np.ndarray) -> FrameResult:
        return FrameResult(self.by_hash[hashlib.sha1(image.tobytes()).hexdigest()], "oracle",
                           0.0, 0.0, 0.0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain") / "coda"
    make_demo_dataset(root, num_frames=8, width=64, height=48, seed=5)
    ds = cd.load_coda_dataset(root)
    bag = dataset_to_bag(ds, root.parent / "in_bag")
    return ds, bag


def test_oracle_through_bag_scores_perfect_recall(demo, tmp_path):
    ds, bag = demo
    rb.replay_bag(bag, tmp_path / "out", OraclePipeline(ds), CFG,
                  rb.ReplayOptions(progress=False))
    report = ev_tool.evaluate(ds.annotation_path, tmp_path / "eval", bag=tmp_path / "out",
                              lvis=False)
    assert report["overall"]["mAR"] == pytest.approx(1.0)
    assert report["overall"]["AR50"] == report["overall"]["AR75"] == pytest.approx(1.0)
    assert report["frames_without_results"] == []
    assert set(report["per_supercategory"]) == {"common", "novel"}
    for name in ("report.json", "recall_vs_iou.png", "detections.json"):
        assert (tmp_path / "eval" / name).is_file()
    # Scoring the extracted detections JSON gives the same numbers.
    again = ev_tool.evaluate(ds.annotation_path, tmp_path / "eval2",
                             detections_path=tmp_path / "eval" / "detections.json")
    assert again["overall"] == report["overall"]


def test_missing_frames_count_as_nothing_found(demo, tmp_path, caplog):
    ds, bag = demo
    gt_ids_with_objects = sorted({a["image_id"] for a in ds.ground_truth["annotations"]})
    drop = gt_ids_with_objects[0]
    oracle = OraclePipeline(ds, drop=(drop,))
    rb.replay_bag(bag, tmp_path / "out", oracle, CFG, rb.ReplayOptions(progress=False))
    report = ev_tool.evaluate(ds.annotation_path, tmp_path / "eval", bag=tmp_path / "out")
    n_gt = len(ds.ground_truth["annotations"])
    n_dropped = sum(1 for a in ds.ground_truth["annotations"] if a["image_id"] == drop)
    assert report["overall"]["mAR"] == pytest.approx((n_gt - n_dropped) / n_gt)


def test_lvis_style_from_bag_with_category_names(demo, tmp_path):
    ds, bag = demo
    gt = json.loads(ds.annotation_path.read_text())
    for cat in gt["categories"]:
        cat["frequency"] = "r"
    gt_path = tmp_path / "lvis_gt.json"
    gt_path.write_text(json.dumps(gt))
    rb.replay_bag(bag, tmp_path / "out", OraclePipeline(ds), CFG,
                  rb.ReplayOptions(progress=False))
    report = ev_tool.evaluate(gt_path, tmp_path / "eval", bag=tmp_path / "out",
                              frame_index_bag=bag, lvis=True)
    lvis = report["lvis_style"]
    assert lvis["AP"]["bbox"] == pytest.approx(1.0)
    assert lvis["AP"]["segm"] == pytest.approx(1.0)


def test_cli_errors(demo, tmp_path, capsys):
    ds, bag = demo
    # the input bag has images, no DetectionArray topic
    assert ev_tool.main(["--gt", str(ds.annotation_path), "--bag", str(bag), "--out",
                         str(tmp_path / "e")]) == 2
    assert "no DetectionArray topic" in capsys.readouterr().err
    assert ev_tool.main(["--gt", str(tmp_path / "nope.json"), "--detections",
                         str(tmp_path / "d.json"), "--out", str(tmp_path / "e")]) == 2
    assert "nope.json: file not found" in capsys.readouterr().err
