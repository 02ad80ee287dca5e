"""Runs the pipeline on one frame and turns the result into the output bag's messages: the
middle piece of every replay path (``vlsam-replay-bag`` in one process, ``vlsam-label`` in
Ray actors), so both produce the same bytes.

A :class:`FrameOutput` holds, for one :class:`~.source_frames.SourceFrame`, the serialised
messages to write (output topic, CDR bytes; all logged at the source frame's log time), or
the skip record of a frame the decoder or the pipeline's input check rejected. Messages are
serialised with rosbags' message classes through the live node's conversion
(``vlsam_ros.ros.detections.frame_result_to_msg``): no rclpy, no colcon build; rosbags zeroes CDR
alignment padding, which keeps the output reproducible.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Protocol

import numpy as np

from vlsam_ros.core.config import VlsamConfig
from vlsam_ros.core.errors import InvalidImageError
from vlsam_ros.core.results import FrameResult
from vlsam_ros.offline.replay.bag_io import DETECTION_ARRAY_TYPE, vlsam_typestore
from vlsam_ros.offline.replay.replay_options import (
    IMAGE_TYPE,
    SKIPPED_OUTPUT,
    STRING_TYPE,
    ReplayOptions,
)
from vlsam_ros.offline.replay.source_frames import SourceFrame
from vlsam_ros.ros import detections, images
from vlsam_ros.ros.camera_topics import CameraTopics, camera_topics


class FramePipeline(Protocol):
    """What replay needs of ``vlsam_ros.core.pipeline.Pipeline`` (with tracking also its
    ``segmenter``)."""

    def run(self, image: np.ndarray) -> FrameResult: ...


@dataclasses.dataclass(frozen=True)
class FrameOutput:
    """What one source frame adds to the output bag.

    ``messages``: ``(output topic, CDR bytes)`` in write order, each logged at
    ``log_time``; for a skipped frame, the one ``replay_skipped`` String and
    ``skip_reason`` set. ``detections``: how many detections the DetectionArray holds.
    ``where``: the frame named for messages (topic, count, stamp). ``pipeline_s``: wall
    time spent in the pipeline (not written to the bag).
    """

    index: int
    topic: str
    log_time: int
    messages: tuple[tuple[str, bytes], ...]
    detections: int
    skip_reason: str | None
    where: str
    pipeline_s: float


def skipped_frames_topic(cam: CameraTopics, node_name: str) -> str:
    """``<camera ns>/<node>/replay_skipped``, beside the camera's detections topic."""
    return f"{cam.namespace}/{node_name}/{SKIPPED_OUTPUT}"


class FrameLabeller:
    """Labels frames one by one with ``pipeline``: decode, run (or, with ``tracking.mode``
    flow or memory, follow and discover every ``tracking.replay_discovery_every``-th frame
    of each camera), serialise. With tracking, frames must come in source order."""

    def __init__(self, pipeline: FramePipeline, cfg: VlsamConfig,
                 options: ReplayOptions) -> None:
        self.pipeline = pipeline
        self.cfg = cfg
        self.options = options
        self.store = vlsam_typestore()
        self._types = detections.MessageTypes.from_typestore(self.store)
        self._cameras: dict[str, CameraTopics] = {}
        self.tracking = None
        if cfg.tracking.mode != "off":  # every frame followed, discovery every K-th frame
            from vlsam_ros.core.tracking.two_rate import OfflineTracking

            self.tracking = OfflineTracking.for_pipeline(pipeline, cfg)

    def _camera(self, topic: str) -> CameraTopics:
        cam = self._cameras.get(topic)
        if cam is None:
            cam = self._cameras[topic] = camera_topics(topic, self.options.node_name)
        return cam

    def label(self, frame: SourceFrame) -> FrameOutput:
        """The frame's outputs; pipeline errors other than InvalidImageError propagate."""
        cam = self._camera(frame.topic)
        msg = self.store.deserialize_cdr(frame.raw, frame.msgtype)
        stamp = msg.header.stamp
        where = f"{frame.topic} frame {frame.topic_frame} (stamp {stamp.sec}.{stamp.nanosec:09d})"
        pipeline_s = 0.0
        try:
            rgb = images.decode_image_msg(msg, self.cfg.node)
            t0 = time.perf_counter()
            try:
                if self.tracking is None:
                    result = self.pipeline.run(rgb)
                else:
                    result = self.tracking.step(frame.topic, rgb,
                                                stamp.sec * 1_000_000_000 + stamp.nanosec)
            finally:
                pipeline_s = time.perf_counter() - t0
        except InvalidImageError as exc:
            text = f"{stamp.sec}.{stamp.nanosec:09d} {msg.header.frame_id}: {exc}"
            record = self.store.serialize_cdr(self.store.types[STRING_TYPE](data=text),
                                              STRING_TYPE)
            return FrameOutput(frame.index, frame.topic, frame.log_time,
                               ((skipped_frames_topic(cam, self.options.node_name),
                                 bytes(record)),), 0, str(exc), where, pipeline_s)
        messages = [(cam.detections, self.detection_array(result, msg.header))]
        if self.options.overlay:
            messages.append((cam.overlay, self.overlay(rgb, result, msg.header)))
        return FrameOutput(frame.index, frame.topic, frame.log_time, tuple(messages),
                           len(result.detections), None, where, pipeline_s)

    def detection_array(self, result: FrameResult, header: Any) -> bytes:
        """DetectionArray CDR; with timing "zero" the wall-clock fields are 0.0."""
        if self.options.timing == "zero":
            result = dataclasses.replace(result, vlm_ms=0.0, segment_ms=0.0, total_ms=0.0)
            latency = 0.0
        else:  # a replayed stamp is unrelated to the wall clock: report processing time
            latency = result.total_ms
        msg = detections.frame_result_to_msg(result, header, latency, types=self._types)
        return bytes(self.store.serialize_cdr(msg, DETECTION_ARRAY_TYPE))

    def overlay(self, rgb: np.ndarray, result: FrameResult, header: Any) -> bytes:
        """Overlay Image CDR (rgb8, unpadded), drawn by the node's ``draw_overlay``."""
        from vlsam_ros.ros.visualization import draw_overlay

        ordered = detections.ranked_detections(result.detections)  # colours as published
        pixels = draw_overlay(rgb, ordered, self.cfg.node)
        msg = self.store.types[IMAGE_TYPE](
            header=header, height=pixels.shape[0], width=pixels.shape[1], encoding="rgb8",
            is_bigendian=0, step=3 * pixels.shape[1], data=pixels.reshape(-1))
        return bytes(self.store.serialize_cdr(msg, IMAGE_TYPE))
