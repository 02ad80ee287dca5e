"""Reading and validating a corner-case dataset in CODA's layout. No ROS import.

Layout (CODA base-val, or any COCO-format dataset laid out the same way)::

    ROOT/
      corner_case.json     COCO: images, annotations (bbox, segmentation), categories
      images/<file_name>   one file per ``images[i].file_name`` (ROOT/<file_name> also works)

Each frame gets a timestamp, in integer nanoseconds since the epoch:

* ``"order"``: the order of ``images`` in the JSON, ``start_s + i / rate_hz``;
* ``"metadata"``: from the image entry's ``timestamp`` field when present, else from the
  file name: nuScenes names end in ``__<CHANNEL>__<16-digit microseconds>``, ONCE names are
  ``<13-digit milliseconds>``. Numbers are read by their count of integer digits: up to 10
  digits are seconds (a float may carry the fraction), 13 milliseconds, 16 microseconds,
  19 nanoseconds. KITTI names (``000123.png``) carry no time: use ``"order"`` for them.
  Frames are then sorted by stamp; two frames with the same stamp are an error (the stamp
  identifies the frame when detections are matched back to images).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vlsam_ros.offline.evaluation.coda_recall import EvaluationInputError, load_ground_truth

ANNOTATION_FILE = "corner_case.json"
IMAGE_DIR = "images"
STAMP_SOURCES = ("order", "metadata")

_NUSCENES_STAMP = re.compile(r"__([A-Z0-9_]+)__(\d{16})$")
_DIGITS_ONLY = re.compile(r"^(\d+)$")
_UNIT_BY_DIGITS = {13: 1_000_000, 16: 1_000, 19: 1}  # integer digits -> ns per unit


class DatasetError(EvaluationInputError):
    """The dataset is malformed or incomplete; the message names the file and the entry."""


@dataclasses.dataclass(frozen=True)
class DatasetFrame:
    """One image of the dataset, in bag order.

    ``width``/``height`` are the sizes the JSON states (pixels); ``stamp_ns`` is the frame's
    time in nanoseconds since the epoch.
    """

    index: int
    image_id: int
    file_name: str
    path: Path
    width: int
    height: int
    stamp_ns: int


@dataclasses.dataclass(frozen=True)
class CodaDataset:
    """A validated dataset: the normalised COCO ground truth and its frames in time order."""

    root: Path
    annotation_path: Path
    ground_truth: dict[str, Any]
    frames: tuple[DatasetFrame, ...]


def number_to_ns(value: float | int | str, where: str) -> int:
    """A timestamp number to nanoseconds, its unit chosen by its count of integer digits
    (see the module docstring). Raises DatasetError naming ``where`` when ambiguous."""
    text = str(value).strip()
    match = re.fullmatch(r"(\d+)(?:\.(\d*))?", text)
    if match is None:
        raise DatasetError(f"{where}: timestamp {value!r} is not a non-negative number")
    integer, fraction = match.group(1), match.group(2) or ""
    digits = len(integer.lstrip("0")) or 1
    if digits <= 10:
        frac_ns = int((fraction + "0" * 9)[:9])
        return int(integer) * 1_000_000_000 + frac_ns
    if digits in _UNIT_BY_DIGITS and not fraction.strip("0"):
        return int(integer) * _UNIT_BY_DIGITS[digits]
    raise DatasetError(f"{where}: cannot tell the unit of timestamp {value!r} ({digits} integer "
                       "digits; expected <= 10 for seconds, 13 ms, 16 us or 19 ns)")


def stamp_from_metadata(image: dict[str, Any], where: str) -> int:
    """The frame time (ns) from an image entry's ``timestamp`` or its file name."""
    if "timestamp" in image:
        return number_to_ns(image["timestamp"], f"{where} 'timestamp'")
    stem = Path(str(image.get("file_name", ""))).stem
    nuscenes = _NUSCENES_STAMP.search(stem)
    if nuscenes is not None:
        return number_to_ns(nuscenes.group(2), where)
    once = _DIGITS_ONLY.match(stem)
    if once is not None and len(once.group(1)) in (13, 16, 19):
        return number_to_ns(once.group(1), where)
    raise DatasetError(
        f"{where}: no timestamp in the entry and none in the file name {image.get('file_name')!r} "
        "(nuScenes '..__CAM_FRONT__<us>' or ONCE '<ms>' names carry one; KITTI names do not): "
        "use stamps from the frame order instead")


def resolve_image_path(root: Path, file_name: str) -> Path | None:
    """``ROOT/images/<file_name>`` or ``ROOT/<file_name>``, whichever exists first."""
    for candidate in (root / IMAGE_DIR / file_name, root / file_name):
        if candidate.is_file():
            return candidate
    return None


def load_coda_dataset(root: str | Path, annotation: str | Path | None = None,
                      stamps: str = "order", rate_hz: float = 10.0,
                      start_s: float = 1.0) -> CodaDataset:
    """Reads ``ROOT/corner_case.json`` (or ``annotation``), checks that every image file
    exists, and assigns frame stamps (``stamps`` in :data:`STAMP_SOURCES`).

    ``root`` may also be the JSON file itself (images are then looked up beside it).
    Raises DatasetError naming the file and the entry on malformed JSON, missing images,
    missing ``file_name``/size fields, unreadable timestamps or duplicate stamps.
    """
    if stamps not in STAMP_SOURCES:
        raise ValueError(f"stamps={stamps!r}: must be one of {STAMP_SOURCES}")
    if not rate_hz > 0:
        raise ValueError(f"rate_hz={rate_hz!r}: must be positive")
    root = Path(root)
    if annotation is None and root.is_file():
        root, annotation = root.parent, root
    annotation_path = Path(annotation) if annotation is not None else root / ANNOTATION_FILE
    if not annotation_path.is_file():
        raise DatasetError(f"{annotation_path}: annotation file not found (CODA layout: "
                           f"ROOT/{ANNOTATION_FILE} beside ROOT/{IMAGE_DIR}/)")
    try:
        gt = load_ground_truth(annotation_path)
    except EvaluationInputError as exc:
        raise DatasetError(str(exc)) from None

    frames = []
    for i, image in enumerate(gt["images"]):
        where = f"{annotation_path}: images[{i}] (id {image['id']})"
        file_name = image.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise DatasetError(f"{where}: needs a string 'file_name'")
        for key in ("width", "height"):
            if not isinstance(image.get(key), int) or image[key] <= 0:
                raise DatasetError(f"{where}: needs a positive integer {key!r}")
        path = resolve_image_path(root, file_name)
        if path is None:
            raise DatasetError(f"{where}: image file {file_name!r} not found in "
                               f"{root / IMAGE_DIR} or {root}")
        if stamps == "order":
            stamp = round(start_s * 1e9) + round(i * 1e9 / rate_hz)
        else:
            stamp = stamp_from_metadata(image, where)
        frames.append(DatasetFrame(i, image["id"], file_name, path, image["width"],
                                   image["height"], stamp))
    frames.sort(key=lambda f: (f.stamp_ns, f.index))
    for a, b in zip(frames, frames[1:]):
        if a.stamp_ns == b.stamp_ns:
            raise DatasetError(f"{annotation_path}: images {a.file_name!r} and {b.file_name!r} "
                               f"have the same stamp {a.stamp_ns} ns")
    return CodaDataset(root, annotation_path, gt, tuple(frames))


def read_frame_rgb(frame: DatasetFrame) -> np.ndarray:
    """Decodes a frame's image file to RGB uint8 (H, W, 3) and checks its size against the
    JSON; raises DatasetError naming the file on unreadable data or a size mismatch."""
    bgr = cv2.imread(str(frame.path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetError(f"{frame.path}: cannot decode the image of images[{frame.index}] "
                           f"(id {frame.image_id})")
    if bgr.shape[:2] != (frame.height, frame.width):
        raise DatasetError(f"{frame.path}: image is {bgr.shape[1]}x{bgr.shape[0]} but "
                           f"images[{frame.index}] (id {frame.image_id}) says "
                           f"{frame.width}x{frame.height}")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def frame_index(frames: tuple[DatasetFrame, ...] | list[DatasetFrame]) -> list[dict[str, Any]]:
    """JSON-ready list ``[{"stamp_ns", "image_id", "file_name"}, ...]`` in bag order: the
    map from a detection message's stamp back to the ground-truth image."""
    return [{"stamp_ns": f.stamp_ns, "image_id": f.image_id, "file_name": f.file_name}
            for f in frames]


def parse_frame_index(text: str, where: str) -> dict[int, int]:
    """Inverse of :func:`frame_index` serialised as JSON: ``{stamp_ns: image_id}``."""
    try:
        entries = json.loads(text)
        return {int(e["stamp_ns"]): int(e["image_id"]) for e in entries}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: malformed frame index: {exc}") from None
