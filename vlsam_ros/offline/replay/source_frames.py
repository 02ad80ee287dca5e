"""Reading camera frames from a rosbag2 as a stream: the first piece of every replay path.

:class:`SourceBag` opens a bag (mcap or sqlite3; a cut mcap through ``mcap_salvage``),
resolves the requested camera topics and yields :class:`SourceFrame` records, one per
image message, in log-time order (the source order), without decoding them. A frame is its
raw CDR bytes plus where it came from, so it can be sent to another process cheaply.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator, Sequence

from vlsam_ros.core.config import ConfigError
from vlsam_ros.offline.replay.bag_io import iter_messages, open_reader, read_custom_data
from vlsam_ros.offline.replay.replay_options import COMPRESSED_TYPE, IMAGE_TYPE, ReplayError
from vlsam_ros.ros.camera_topics import CameraTopics, camera_topics, check_distinct_outputs


@dataclasses.dataclass(frozen=True)
class SourceFrame:
    """One image message of a replayed camera topic.

    ``index``: 0-based position in the bag's stream of replayed frames (all cameras, log-time
    order); ``topic_frame``: 1-based count within its camera topic; ``log_time``: the bag's
    log time (ns); ``raw``: the message's CDR bytes (``msgtype``: Image or CompressedImage).
    """

    index: int
    topic: str
    topic_frame: int
    msgtype: str
    log_time: int
    raw: bytes


def storage_of(bag: Path) -> str:
    """``"sqlite3"`` for a bag with a ``.db3`` file, else ``"mcap"``."""
    files = [p.suffix for p in bag.iterdir()] if bag.is_dir() else [bag.suffix]
    return "sqlite3" if ".db3" in files else "mcap"


def select_cameras(reader: Any, requested: Sequence[str], node_name: str, bag: Path,
                   ) -> list[tuple[CameraTopics, list[Any]]]:
    """Resolves the requested topics against the bag: ``[(topics, connections)]``.

    Raises ReplayError for a topic that is not in the bag or not an image topic, naming
    the bag's image topics, and for two topics that would write the same outputs.
    """
    by_topic: dict[str, list[Any]] = {}
    for conn in reader.connections:
        by_topic.setdefault(conn.topic, []).append(conn)
    image_topics = sorted(t for t, cs in by_topic.items()
                          if cs[0].msgtype in (IMAGE_TYPE, COMPRESSED_TYPE))
    out = []
    for topic in requested:
        conns = by_topic.get(topic)
        if conns is None:
            raise ReplayError(f"{bag}: topic {topic!r} is not in the bag; its image topics: "
                              f"{image_topics or 'none'}")
        types = {c.msgtype for c in conns}
        if len(types) != 1 or next(iter(types)) not in (IMAGE_TYPE, COMPRESSED_TYPE):
            raise ReplayError(f"{bag}: topic {topic!r} has type {sorted(types)}, not "
                              f"{IMAGE_TYPE} or {COMPRESSED_TYPE}; image topics: "
                              f"{image_topics or 'none'}")
        try:
            cam = camera_topics(topic, node_name)
        except ConfigError as exc:
            raise ReplayError(str(exc)) from None
        out.append((cam, conns))
    try:
        check_distinct_outputs([cam for cam, _ in out], "topics")
    except ConfigError as exc:
        raise ReplayError(str(exc)) from None
    return out


class SourceBag:
    """An opened input bag and its selected cameras (a context manager).

    Attributes after ``__enter__``: ``cameras`` (CameraTopics, in the requested order),
    ``total`` (image messages of those cameras, from the bag's index), ``custom_data``
    (the input's metadata ``custom_data``), ``storage``; ``report`` is the
    ``mcap_salvage`` report of a cut mcap, else None.
    """

    def __init__(self, path: str | Path, requested: Sequence[str], node_name: str) -> None:
        self.path = Path(path)
        self.requested = tuple(requested)
        self.node_name = node_name
        self._opened: Any = None
        self.reader: Any = None

    def __enter__(self) -> "SourceBag":
        self._opened = open_reader(self.path)
        self.reader = self._opened.__enter__()
        try:
            selected = select_cameras(self.reader, self.requested, self.node_name, self.path)
            self.custom_data = read_custom_data(self.path)
        except BaseException:
            self._opened.__exit__(None, None, None)
            raise
        self.cameras = [cam for cam, _ in selected]
        self._connections = [c for _, conns in selected for c in conns]
        self._conn_topic = {c.id: cam.input for cam, conns in selected for c in conns}
        self.total = sum(c.msgcount for c in self._connections)
        self.storage = storage_of(self.path)
        self.report = getattr(self.reader, "report", None)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._opened.__exit__(*exc)

    def frames(self, start: int = 0) -> Iterator[SourceFrame]:
        """The frames in source order, from ``index`` ``start`` on (the ones before are read
        but not returned: resuming). Raises BagError when the bag breaks midway."""
        counts = {cam.input: 0 for cam in self.cameras}
        for index, (conn, log_time, raw) in enumerate(
                iter_messages(self.reader, self._connections, self.path)):
            topic = self._conn_topic[conn.id]
            counts[topic] += 1
            if index >= start:
                yield SourceFrame(index, topic, counts[topic], conn.msgtype, log_time,
                                  bytes(raw))
