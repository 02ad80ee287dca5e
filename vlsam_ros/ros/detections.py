"""Core results <-> ``vlsam_ros/DetectionArray`` messages (and optional vision_msgs).

Pixel frame as in ``vlsam_ros.core.results``: x right, y down, origin at the top-left corner.
Field meanings are documented in ``msg/Detection.msg`` and ``msg/DetectionArray.msg``.

The message classes are not imported at module import time. By default they come from the
colcon-built ``vlsam_ros.msg`` (rclpy), but any class family with the same fields works, e.g.
rosbags' typestore (:meth:`MessageTypes.from_typestore`), so offline tools can build messages
without a ROS build. Numeric sequences are handed over as numpy arrays of the field's type,
which both rclpy (converted to ``array.array``) and rosbags (serialised as is) accept.

``vision_msgs/Detection2DArray`` is optional: ``vision_msgs`` is imported only by the
functions that need it, and :func:`vision_msgs_enabled` turns the ``node.vision_msgs``
setting into an explicit yes/no (or an error when it is required but missing).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Sequence

import numpy as np

from vlsam_ros.core.masks import mask_to_rle_counts, rle_counts_to_mask
from vlsam_ros.core.results import Detection, FrameResult


@dataclasses.dataclass(frozen=True)
class MessageTypes:
    """The message classes the conversion builds (``time``: builtin_interfaces/Time)."""

    detection: type
    detection_array: type
    region_of_interest: type
    time: type | None = None

    @classmethod
    def ros(cls) -> "MessageTypes":
        """The rclpy classes (needs the colcon build of this package on the path)."""
        from builtin_interfaces.msg import Time
        from sensor_msgs.msg import RegionOfInterest
        from vlsam_ros.msg import Detection as DetectionMsg
        from vlsam_ros.msg import DetectionArray

        return cls(DetectionMsg, DetectionArray, RegionOfInterest, Time)

    @classmethod
    def from_typestore(cls, typestore: Any) -> "MessageTypes":
        """The rosbags dataclasses of a typestore in which ``vlsam_ros/msg/*`` is registered
        (e.g. ``vlsam_ros.offline.replay.bag_io.vlsam_typestore()``)."""
        types = typestore.types
        return cls(types["vlsam_ros/msg/Detection"], types["vlsam_ros/msg/DetectionArray"],
                   types["sensor_msgs/msg/RegionOfInterest"],
                   types["builtin_interfaces/msg/Time"])


# ----------------------------------------------------------------------------------------
# FrameResult -> DetectionArray
# ----------------------------------------------------------------------------------------

def ranked_detections(detections: Sequence[Detection]) -> list[Detection]:
    """Detections in publication order: descending score, ties in their given order. Every
    output (DetectionArray, Detection2DArray, overlay colours, marker ids) uses this order,
    so detection ``i`` is the same object everywhere."""
    return sorted(detections, key=lambda d: -float(d.score))


def stamp_from_ns(stamp_ns: int, time_type: type) -> Any:
    """Nanoseconds -> ``time_type(sec=..., nanosec=...)`` (a builtin_interfaces/Time class
    of the rclpy or rosbags family)."""
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return time_type(sec=sec, nanosec=nanosec)


def stamp_to_ns(stamp: Any) -> int:
    """``builtin_interfaces/Time`` -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def detection_to_msg(detection: Detection, types: MessageTypes | None = None,
                     stamp: Any = None) -> Any:
    """One core ``Detection`` -> ``vlsam_ros/Detection``.

    ``mask`` (bool (H, W)) becomes ``mask_height``/``mask_width`` and COCO uncompressed RLE
    counts (column-major, first run zeros; ``vlsam_ros.core.masks.mask_to_rle_counts``).
    ``box_xyxy`` (x1/y1 exclusive) becomes a RegionOfInterest with x_offset=x0, y_offset=y0,
    width=x1-x0, height=y1-y0. ``prompt_points`` (P, 2) is flattened to x0, y0, x1, y1, ...
    ``track_id`` is copied; ``label_stamp`` is ``label_stamp_ns`` as a Time, or ``stamp``
    (the source image's header stamp) when the detection's label is this frame's own
    (``label_stamp_ns`` None; zero when no ``stamp`` is given either).

    Raises:
        ValueError: a mask that is not 2-D, a box that is negative, inverted or outside the
            mask, or prompt points/labels whose shapes disagree.
    """
    types = types or MessageTypes.ros()
    mask = np.asarray(detection.mask)
    if mask.ndim != 2:
        raise ValueError(f"{detection.label!r}: mask must be (H, W), got shape {mask.shape}")
    height, width = mask.shape
    x0, y0, x1, y1 = (int(v) for v in detection.box_xyxy)
    if not (0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height):
        raise ValueError(f"{detection.label!r}: box {detection.box_xyxy} is not inside the "
                         f"{width}x{height} mask")
    points = np.asarray(detection.prompt_points, dtype=np.float32).reshape(-1, 2)  # (P, 2)
    labels = np.asarray(detection.prompt_labels, dtype=np.int8).reshape(-1)  # (P,)
    if points.shape[0] != labels.shape[0]:
        raise ValueError(f"{detection.label!r}: {points.shape[0]} prompt points but "
                         f"{labels.shape[0]} prompt labels")
    box = types.region_of_interest(x_offset=x0, y_offset=y0, height=y1 - y0, width=x1 - x0,
                                   do_rectify=False)
    time_type = types.time or (type(stamp) if stamp is not None else None)
    extra = {}
    if detection.label_stamp_ns is not None and time_type is not None:
        extra["label_stamp"] = stamp_from_ns(detection.label_stamp_ns, time_type)
    elif stamp is not None:
        extra["label_stamp"] = stamp
    elif time_type is not None:
        extra["label_stamp"] = time_type(sec=0, nanosec=0)
    return types.detection(
        label=str(detection.label),
        alt_labels=[str(name) for name in detection.alt_labels],
        score=float(detection.score),
        box=box,
        mask_height=height,
        mask_width=width,
        mask_rle=np.asarray(mask_to_rle_counts(np.asarray(mask, dtype=bool)), dtype=np.uint32),
        prompt_points=points.reshape(-1),
        prompt_labels=labels,
        track_id=int(detection.track_id),
        **extra,
    )


def frame_result_to_msg(result: FrameResult, header: Any, latency_ms: float,
                        types: MessageTypes | None = None) -> Any:
    """``FrameResult`` of one frame -> ``vlsam_ros/DetectionArray``.

    Args:
        result: the pipeline's output; detections are published in descending score order
            (stable for ties).
        header: the source image's ``std_msgs/Header``, used unchanged (same object).
        latency_ms: source stamp to publication, milliseconds (see :func:`latency_ms`).
        types: message classes; default the rclpy ones (:meth:`MessageTypes.ros`).
    """
    types = types or MessageTypes.ros()
    ordered = ranked_detections(result.detections)
    return types.detection_array(
        header=header,
        detections=[detection_to_msg(d, types, header.stamp) for d in ordered],
        description=str(result.description),
        vlm_ms=float(result.vlm_ms),
        segment_ms=float(result.segment_ms),
        total_ms=float(result.total_ms),
        latency_ms=float(latency_ms),
        discovery=bool(result.discovery),
    )


def latency_ms(stamp: Any, now_ns: int) -> float:
    """Milliseconds from a ``builtin_interfaces/Time`` stamp (``sec``, ``nanosec``) to
    ``now_ns`` (nanoseconds on the same clock, e.g. ``node.get_clock().now().nanoseconds``)."""
    return (int(now_ns) - (int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec))) / 1e6


# ----------------------------------------------------------------------------------------
# DetectionArray -> core types / plain dicts (tools and tests)
# ----------------------------------------------------------------------------------------

def msg_to_detection(msg: Any) -> Detection:
    """``vlsam_ros/Detection`` (rclpy or rosbags) -> core ``Detection`` with a bool (H, W)
    mask decoded from ``mask_rle``.

    Raises:
        ValueError: RLE counts that do not cover ``mask_height x mask_width`` pixels, or an
            odd number of prompt coordinates / a label count that does not match.
    """
    height, width = int(msg.mask_height), int(msg.mask_width)
    mask = rle_counts_to_mask(np.asarray(msg.mask_rle, dtype=np.int64), height, width)
    flat = np.asarray(msg.prompt_points, dtype=np.float32)
    labels = np.asarray(msg.prompt_labels, dtype=np.int8)
    if flat.size % 2 or flat.size // 2 != labels.size:
        raise ValueError(f"{msg.label!r}: {flat.size} prompt coordinates do not match "
                         f"{labels.size} prompt labels")
    box = msg.box
    x0, y0 = int(box.x_offset), int(box.y_offset)
    return Detection(label=str(msg.label), score=float(msg.score), mask=mask,
                     box_xyxy=(x0, y0, x0 + int(box.width), y0 + int(box.height)),
                     prompt_points=flat.reshape(-1, 2), prompt_labels=labels,
                     alt_labels=tuple(str(n) for n in msg.alt_labels),
                     track_id=int(msg.track_id), label_stamp_ns=stamp_to_ns(msg.label_stamp))


def msg_to_frame_result(msg: Any) -> FrameResult:
    """``vlsam_ros/DetectionArray`` -> core ``FrameResult`` (``latency_ms`` and the header
    are not part of it; read them from the message)."""
    return FrameResult(detections=tuple(msg_to_detection(d) for d in msg.detections),
                       description=str(msg.description), vlm_ms=float(msg.vlm_ms),
                       segment_ms=float(msg.segment_ms), total_ms=float(msg.total_ms),
                       discovery=bool(msg.discovery))


def msg_to_dicts(msg: Any) -> list[dict[str, Any]]:
    """``vlsam_ros/DetectionArray`` -> JSON-serialisable dicts, one per detection:
    ``label``, ``alt_labels``, ``score``, ``box_xyxy`` ([x0, y0, x1, y1], x1/y1 exclusive),
    ``segmentation`` (COCO uncompressed RLE ``{"size": [H, W], "counts": [...]}``, readable
    by pycocotools), ``prompt_points`` ([[x, y], ...]), ``prompt_labels``, ``track_id``
    and ``label_stamp_ns``."""
    out = []
    for det in msg.detections:
        box = det.box
        x0, y0 = int(box.x_offset), int(box.y_offset)
        points = np.asarray(det.prompt_points, dtype=np.float64).reshape(-1, 2)
        out.append({
            "label": str(det.label),
            "alt_labels": [str(n) for n in det.alt_labels],
            "score": float(det.score),
            "box_xyxy": [x0, y0, x0 + int(box.width), y0 + int(box.height)],
            "segmentation": {"size": [int(det.mask_height), int(det.mask_width)],
                             "counts": [int(c) for c in det.mask_rle]},
            "prompt_points": points.tolist(),
            "prompt_labels": [int(v) for v in det.prompt_labels],
            "track_id": int(det.track_id),
            "label_stamp_ns": stamp_to_ns(det.label_stamp),
        })
    return out


# ----------------------------------------------------------------------------------------
# vision_msgs/Detection2DArray (optional)
# ----------------------------------------------------------------------------------------

VISION_MSGS_SETTINGS = ("auto", "on", "off")


def vision_msgs_available() -> bool:
    """True when ``vision_msgs.msg`` can be imported (it is not on PyPI; a ROS install has it)."""
    try:
        importlib.import_module("vision_msgs.msg")
    except ImportError:
        return False
    return True


def vision_msgs_enabled(setting: str) -> bool:
    """Resolves ``node.vision_msgs``: ``"off"`` -> False, ``"auto"`` -> whether vision_msgs
    is importable, ``"on"`` -> True, or ImportError when it is not importable."""
    if setting not in VISION_MSGS_SETTINGS:
        raise ValueError(f"vision_msgs setting {setting!r}: must be one of "
                         f"{VISION_MSGS_SETTINGS}")
    if setting == "off":
        return False
    available = vision_msgs_available()
    if setting == "on" and not available:
        raise ImportError("node.vision_msgs is 'on' but the vision_msgs package cannot be "
                          "imported; install ros-<distro>-vision-msgs or set "
                          "node.vision_msgs to 'auto' or 'off'")
    return available


def frame_result_to_detection2d_array(result: FrameResult, header: Any) -> Any:
    """``FrameResult`` -> ``vision_msgs/Detection2DArray`` (header copied into the array and
    every detection).

    Each detection has one hypothesis: ``class_id`` = the free-text label, ``score`` = the
    score (alternative labels are not carried: they have no scores). ``bbox`` is centred at
    ((x0 + x1) / 2, (y0 + y1) / 2) in continuous pixel coordinates of the source image, size
    (x1 - x0, y1 - y0); ``id`` is the track id with tracking, else the detection's rank
    (0 = best). Written against vision_msgs
    4.x (Humble and later: ``bbox.center.position``, ``results[i].hypothesis``).

    Raises:
        ImportError: vision_msgs is not importable (check :func:`vision_msgs_enabled` first).
    """
    try:
        vision = importlib.import_module("vision_msgs.msg")
    except ImportError as exc:
        raise ImportError("vision_msgs/Detection2DArray requested but the vision_msgs "
                          f"package cannot be imported: {exc}") from exc
    ordered = ranked_detections(result.detections)
    array_msg = vision.Detection2DArray()
    array_msg.header = header
    detections = []
    for rank, det in enumerate(ordered):
        x0, y0, x1, y1 = (float(v) for v in det.box_xyxy)
        msg = vision.Detection2D()
        msg.header = header
        msg.id = str(det.track_id if det.track_id > 0 else rank)
        msg.bbox.center.position.x = (x0 + x1) / 2.0
        msg.bbox.center.position.y = (y0 + y1) / 2.0
        msg.bbox.size_x, msg.bbox.size_y = x1 - x0, y1 - y0
        hypothesis = vision.ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = str(det.label)
        hypothesis.hypothesis.score = float(det.score)
        msg.results = [hypothesis]
        detections.append(msg)
    array_msg.detections = detections
    return array_msg
