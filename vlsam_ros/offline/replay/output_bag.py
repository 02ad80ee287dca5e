"""Writes an output bag from :class:`~.frame_outputs.FrameOutput` records in source order:
the last piece of every replay path, and the only place output bag bytes are made.

Connections are added in a fixed order (per camera, in the requested order: detections,
overlay with ``--overlay``, replay_skipped), the input's ``custom_data`` is carried over
and ``vlsam_ros.replay`` (per topic: frames, DetectionArrays, skipped, detections) is added
at the end, so the same inputs and outputs give the same bytes whoever computed them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from vlsam_ros.offline.replay.bag_io import DETECTION_ARRAY_TYPE, open_writer, vlsam_typestore
from vlsam_ros.offline.replay.frame_outputs import FrameOutput, skipped_frames_topic
from vlsam_ros.offline.replay.replay_options import (
    IMAGE_TYPE,
    REPLAY_INFO_KEY,
    STRING_TYPE,
    ReplayError,
    ReplayOptions,
    TopicStats,
)
from vlsam_ros.ros.camera_topics import CameraTopics

LOG = logging.getLogger("vlsam_ros.replay")


class OutputBag:
    """A new output bag at ``path`` (must not exist) for ``cameras``.

    ``write`` takes the frames' outputs in source order, counts them per topic and applies
    ``options.on_bad_frame`` to skipped frames (a logged warning, or ReplayError naming
    ``source``); ``close`` adds the counts to ``custom_data`` and closes the bag.
    """

    def __init__(self, path: str | Path, storage: str, cameras: list[CameraTopics],
                 custom_data: dict[str, str], options: ReplayOptions,
                 source: str | Path) -> None:
        self.path = Path(path)
        self.options = options
        self.source = source
        self.stats = {cam.input: TopicStats() for cam in cameras}
        store = vlsam_typestore()
        self._writer = open_writer(self.path, storage, custom_data)
        self._conns: dict[str, Any] = {}
        for cam in cameras:  # connections in a fixed order: deterministic bag
            self._add(cam.detections, DETECTION_ARRAY_TYPE, store)
            if options.overlay:
                self._add(cam.overlay, IMAGE_TYPE, store)
            self._add(skipped_frames_topic(cam, options.node_name), STRING_TYPE, store)
        self.closed = False

    def _add(self, topic: str, msgtype: str, store: Any) -> None:
        self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=store)

    def write(self, out: FrameOutput) -> None:
        """Writes one frame's messages (the next frame in source order)."""
        st = self.stats[out.topic]
        st.frames += 1
        if out.skip_reason is not None:
            if self.options.on_bad_frame == "error":
                raise ReplayError(f"{self.source}: {out.where}: {out.skip_reason}")
            LOG.warning("skipping %s: %s", out.where, out.skip_reason)
            st.skipped += 1
        else:
            st.detection_arrays += 1
            st.detections += out.detections
        for topic, raw in out.messages:
            self._writer.write(self._conns[topic], out.log_time, raw)

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.stats.values())

    @property
    def detection_arrays(self) -> int:
        return sum(s.detection_arrays for s in self.stats.values())

    def close(self) -> None:
        """Completes the bag (adds the counts to ``custom_data``)."""
        self._writer.set_custom_data(REPLAY_INFO_KEY, json.dumps(
            {k: dataclasses.asdict(v) for k, v in self.stats.items()}, sort_keys=True))
        self.abandon()

    def abandon(self) -> None:
        """Closes the bag without the counts (what an interrupted run leaves)."""
        if not self.closed:
            self.closed = True
            self._writer.close()
