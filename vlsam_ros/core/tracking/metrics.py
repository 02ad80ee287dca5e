"""Identity and mask metrics of a tracked sequence against ground truth (CLEAR MOT and
identity scores, computed with the maintained ``motmetrics`` package).

Per frame, a ground-truth object and a hypothesis (track) can match when their mask IoU is
at least ``match_iou``; motmetrics then runs its assignment with distance 1 - IoU. Scores:

* MOTA = 1 - (misses + false positives + identity switches) / ground-truth object-frames;
* IDF1 = 2 IDTP / (2 IDTP + IDFP + IDFN) over the best one-to-one identity mapping;
* identity switches: a ground-truth object matched to a different track than last time;
* per object: frames visible, frames matched, and mean mask IoU over the matched frames.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from vlsam_ros.core.masks import mask_iou


@dataclasses.dataclass(frozen=True)
class LabelledMasks:
    """The objects of one frame: ids int (N,) and bool masks (N, H, W), same order."""

    ids: np.ndarray
    masks: np.ndarray

    @classmethod
    def empty(cls, height: int, width: int) -> "LabelledMasks":
        return cls(np.zeros(0, np.int64), np.zeros((0, height, width), bool))


@dataclasses.dataclass(frozen=True)
class ObjectScore:
    """One ground-truth object over the sequence."""

    name: str
    frames_visible: int
    frames_matched: int
    mean_iou: float          # over matched frames; nan when never matched


@dataclasses.dataclass(frozen=True)
class TrackingScores:
    mota: float
    idf1: float
    id_switches: int
    misses: int
    false_positives: int
    ground_truth_count: int  # ground-truth object-frames
    recall: float
    precision: float
    fragmentations: int
    mostly_tracked: int
    per_object: dict[int, ObjectScore]

    @property
    def mean_iou(self) -> float:
        """Mean over objects (matched at least once) of their mean matched mask IoU."""
        values = [o.mean_iou for o in self.per_object.values() if o.frames_matched]
        return float(np.mean(values)) if values else float("nan")

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["per_object"] = {str(k): dataclasses.asdict(v) for k, v in self.per_object.items()}
        out["mean_iou"] = self.mean_iou
        return out


def score_tracking(truth: Sequence[LabelledMasks], tracked: Sequence[LabelledMasks],
                   match_iou: float = 0.5,
                   names: Mapping[int, str] | None = None) -> TrackingScores:
    """Scores ``tracked`` (track ids and masks per frame) against ``truth`` (object ids
    and visible masks per frame), frame by frame (module docstring)."""
    import motmetrics

    if len(truth) != len(tracked):
        raise ValueError(f"{len(truth)} ground-truth frames but {len(tracked)} tracked ones")
    acc = motmetrics.MOTAccumulator(auto_id=True)
    for gt, hyp in zip(truth, tracked):
        if len(gt.ids) and len(hyp.ids):
            iou = mask_iou(gt.masks, hyp.masks)
        else:
            iou = np.zeros((len(gt.ids), len(hyp.ids)))
        distance = np.where(iou >= match_iou, 1.0 - iou, np.nan)
        acc.update([int(i) for i in gt.ids], [int(i) for i in hyp.ids], distance)
    host = motmetrics.metrics.create()
    summary = host.compute(acc, metrics=["mota", "idf1", "num_switches", "num_misses",
                                         "num_false_positives", "num_objects", "recall",
                                         "precision", "num_fragmentations",
                                         "mostly_tracked"], name="seq")
    row = summary.loc["seq"]
    events = acc.mot_events
    matched = events[events["Type"].isin(["MATCH", "SWITCH"])]
    per_object = {}
    visible: dict[int, int] = {}
    for gt in truth:
        for i in gt.ids:
            visible[int(i)] = visible.get(int(i), 0) + 1
    for oid, count in sorted(visible.items()):
        rows = matched[matched["OId"] == oid]
        ious = 1.0 - rows["D"].to_numpy(dtype=np.float64)
        per_object[oid] = ObjectScore((names or {}).get(oid, str(oid)), count, len(rows),
                                      float(ious.mean()) if len(rows) else float("nan"))
    return TrackingScores(mota=float(row["mota"]), idf1=float(row["idf1"]),
                          id_switches=int(row["num_switches"]), misses=int(row["num_misses"]),
                          false_positives=int(row["num_false_positives"]),
                          ground_truth_count=int(row["num_objects"]),
                          recall=float(row["recall"]), precision=float(row["precision"]),
                          fragmentations=int(row["num_fragmentations"]),
                          mostly_tracked=int(row["mostly_tracked"]), per_object=per_object)
