"""A CODA-layout dataset read as a stream of camera frames, like the bag that
``vlsam-dataset-to-bag DATASET BAG --compressed`` writes (one CompressedImage per image
file, its own JPEG/PNG bytes, stamps from the frame order at 10 Hz from 1 s, the frame
index in ``custom_data``), without writing that bag: labelling a dataset gives the same
output bag as converting it and replaying the conversion.

Image files are read one at a time as frames are requested; nothing holds the dataset's
pixels. A file that is neither JPEG nor PNG gets an empty ``format`` and is then a recorded
skip (the decoder rejects it), like any undecodable frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from vlsam_ros.offline.datasets.coda_dataset import (
    ANNOTATION_FILE,
    DatasetError,
    frame_index,
    load_coda_dataset,
)
from vlsam_ros.offline.datasets.dataset_to_bag import DEFAULT_FRAME_ID, DEFAULT_TOPIC
from vlsam_ros.offline.replay.bag_io import FRAME_INDEX_KEY, frame_index_json, vlsam_typestore
from vlsam_ros.offline.replay.replay_options import COMPRESSED_TYPE, ReplayError
from vlsam_ros.offline.replay.source_frames import SourceFrame
from vlsam_ros.ros.camera_topics import camera_topics

DATASET_TOPIC = DEFAULT_TOPIC + "/compressed"
_MAGIC_FORMATS = ((b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"))


def is_dataset(path: Path) -> bool:
    """True for a folder in CODA's layout (``corner_case.json`` at its top)."""
    return path.is_dir() and (path / ANNOTATION_FILE).is_file()


class DatasetSource:
    """A dataset as a :class:`~vlsam_ros.offline.replay.source_frames.SourceBag`: same
    attributes (``cameras``, ``total``, ``custom_data``, ``storage`` mcap, ``report``
    None) and ``frames(start)``. Its one camera topic is :data:`DATASET_TOPIC`; requested
    topics other than that one are an error."""

    def __init__(self, path: str | Path, requested: Sequence[str], node_name: str) -> None:
        self.path = Path(path)
        self.requested = tuple(requested)
        self.node_name = node_name

    def __enter__(self) -> "DatasetSource":
        try:
            self.dataset = load_coda_dataset(self.path)
        except DatasetError as exc:
            raise ReplayError(str(exc)) from None
        other = [t for t in self.requested if t != DATASET_TOPIC]
        if other:
            raise ReplayError(f"{self.path}: a dataset is read as the one camera topic "
                              f"{DATASET_TOPIC!r}, not {other}: label it with --topics "
                              f"{DATASET_TOPIC}")
        self.cameras = [camera_topics(DATASET_TOPIC, self.node_name)]
        self.total = len(self.dataset.frames)
        self.custom_data = {FRAME_INDEX_KEY: frame_index_json(frame_index(self.dataset.frames))}
        self.storage = "mcap"
        self.report = None
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def frames(self, start: int = 0) -> Iterator[SourceFrame]:
        """CompressedImage frames in stamp order from ``start`` (files read one by one)."""
        store = vlsam_typestore()
        msg_class = store.types[COMPRESSED_TYPE]
        header_class = store.types["std_msgs/msg/Header"]
        time_class = store.types["builtin_interfaces/msg/Time"]
        for index, frame in enumerate(self.dataset.frames):
            if index < start:
                continue
            raw = frame.path.read_bytes()
            fmt = next((f for magic, f in _MAGIC_FORMATS if raw.startswith(magic)), "")
            stamp = frame.stamp_ns
            header = header_class(stamp=time_class(sec=stamp // 1_000_000_000,
                                                   nanosec=stamp % 1_000_000_000),
                                  frame_id=DEFAULT_FRAME_ID)
            msg = msg_class(header=header, format=fmt, data=np.frombuffer(raw, dtype=np.uint8))
            yield SourceFrame(index, DATASET_TOPIC, index + 1, COMPRESSED_TYPE, stamp,
                              bytes(store.serialize_cdr(msg, COMPRESSED_TYPE)))
