"""Evaluation refuses ground truth and detections that do not cover the same images unless
told which images to score (--images), and says what is wrong; no output on error."""

from __future__ import annotations

import json

import pytest

from test_evaluation_tool import CFG, OraclePipeline
from vlsam_ros.offline.datasets import coda_dataset as cd
from vlsam_ros.offline.evaluation.coda_recall import EvaluationInputError
from vlsam_ros.offline.evaluation import evaluate as ev_tool
from vlsam_ros.offline.replay import replay_bag as rb
from vlsam_ros.offline.datasets.dataset_to_bag import dataset_to_bag
from vlsam_ros.offline.datasets.make_demo_dataset import make_demo_dataset


@pytest.fixture(scope="module")
def twelve_vs_four(tmp_path_factory):
    """A 12-image dataset, and the detections of a replay of only its first 4 frames."""
    root = tmp_path_factory.mktemp("coverage")
    make_demo_dataset(root / "full", num_frames=12, width=64, height=48, seed=11)
    full = cd.load_coda_dataset(root / "full")
    gt = json.loads(full.annotation_path.read_text())
    first4 = {img["id"] for img in gt["images"][:4]}
    part = root / "full" / "first4.json"  # same images folder, same stamps by order
    part.write_text(json.dumps({**gt, "images": gt["images"][:4], "annotations": [
        a for a in gt["annotations"] if a["image_id"] in first4]}))
    small = cd.load_coda_dataset(root / "full", annotation=part)
    bag = dataset_to_bag(small, root / "in4")
    rb.replay_bag(bag, root / "dets4", OraclePipeline(full), CFG,
                  rb.ReplayOptions(progress=False))
    return full, root / "dets4", sorted(first4)


def test_partial_detections_are_refused_by_default_with_the_difference(twelve_vs_four,
                                                                      tmp_path):
    full, dets, first4 = twelve_vs_four
    with pytest.raises(EvaluationInputError) as info:
        ev_tool.evaluate(full.annotation_path, tmp_path / "eval", bag=dets)
    message = str(info.value)
    assert "has 12 image(s) but" in message and "for 4 of them; 8 have none" in message
    assert "--images detected" in message and "--images gt" in message
    assert not (tmp_path / "eval").exists()


def test_images_gt_counts_missing_images_as_nothing_found(twelve_vs_four, tmp_path):
    full, dets, first4 = twelve_vs_four
    report = ev_tool.evaluate(full.annotation_path, tmp_path / "eval", bag=dets, images="gt")
    assert report["images_scored"] == 12 and len(report["frames_without_results"]) == 8
    n_first4 = sum(a["image_id"] in first4 for a in full.ground_truth["annotations"])
    assert report["overall"]["mAR"] == pytest.approx(n_first4 / len(
        full.ground_truth["annotations"]))


def test_images_detected_scores_only_images_with_results(twelve_vs_four, tmp_path):
    full, dets, first4 = twelve_vs_four
    report = ev_tool.evaluate(full.annotation_path, tmp_path / "eval", bag=dets,
                              images="detected")
    assert report["images_scored"] == 4 and report["images"] == "detected"
    assert report["overall"]["mAR"] == pytest.approx(1.0)  # the oracle, on its own images
    assert report["overall"]["num_images"] == 4


def test_cli_refuses_with_one_line_and_no_output_folder(twelve_vs_four, tmp_path, capsys):
    full, dets, _ = twelve_vs_four
    argv = ["--gt", str(full.annotation_path), "--bag", str(dets), "--out",
            str(tmp_path / "eval")]
    assert ev_tool.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vlsam-evaluate: error: ") and "8 have none" in err[-1]
    assert not (tmp_path / "eval").exists()
    assert ev_tool.main(argv + ["--images", "detected"]) == 0
    assert (tmp_path / "eval" / "report.json").is_file()


def test_detections_of_another_dataset_are_named(twelve_vs_four, tmp_path):
    full, _, _ = twelve_vs_four
    other = tmp_path / "other.json"
    gt = json.loads(full.annotation_path.read_text())
    gt["images"] = gt["images"][:2]
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in
                         {i["id"] for i in gt["images"]}]
    other.write_text(json.dumps(gt))
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": gt_id, "bbox": [0, 0, 4, 4], "score": 0.5}
                                for gt_id in (1, 7)]))
    with pytest.raises(EvaluationInputError, match="image_id 7 is not in the ground truth"):
        ev_tool.evaluate(other, tmp_path / "eval", detections_path=dets)
    assert not (tmp_path / "eval").exists()
