"""rosbag2 files through ``rosbags``: typestore, writers, the frame index. No rclpy import.

The standard messages (``sensor_msgs``, ``std_msgs``) come from rosbags' ROS 2 Kilted
typestore; this package's ``vlsam_ros/msg/Detection`` and ``DetectionArray`` are registered
into it from the ``msg/*.msg`` files (:func:`vlsam_typestore`), so tools can write and read
bags of detections without a ROS build, and the rosbags type hash (RIHS01) of each message
matches the one rosidl generates.

Frame index: a bag made from a dataset stores, in its ``metadata.yaml`` ``custom_data``
under :data:`FRAME_INDEX_KEY`, the JSON list ``[{"stamp_ns", "image_id", "file_name"}]``
that maps each frame's header stamp back to the ground-truth image. Replay copies every
``custom_data`` entry into its output bag, so evaluation can match detections to images.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sqlite3
import struct
from pathlib import Path
from typing import Any, Iterator

import yaml

LOG = logging.getLogger(__name__)

FRAME_INDEX_KEY = "vlsam_ros.frame_index"
STORAGES = ("mcap", "sqlite3")
BAG_VERSION = 9  # rosbag2 metadata version written by Jazzy and Kilted
DETECTION_ARRAY_TYPE = "vlsam_ros/msg/DetectionArray"
MSG_NAMES = ("Detection", "DetectionArray")


class BagError(RuntimeError):
    """A bag cannot be read or written: the message names the bag and what is wrong."""


def msg_dir() -> Path:
    """The folder holding ``Detection.msg`` and ``DetectionArray.msg``: the source tree's
    ``msg/`` when running in-tree, else the installed ``share/vlsam_ros/msg``."""
    in_tree = Path(__file__).resolve().parents[3] / "msg"      # <repo>/vlsam_ros/offline/replay
    if (in_tree / "DetectionArray.msg").is_file():
        return in_tree
    try:
        from ament_index_python.packages import get_package_share_directory
    except ImportError:
        raise BagError("cannot find vlsam_ros' msg/*.msg: not in the source tree and "
                       "ament_index_python is not installed") from None
    return Path(get_package_share_directory("vlsam_ros")) / "msg"


@functools.lru_cache(maxsize=1)
def vlsam_typestore():
    """rosbags' ROS 2 Kilted typestore plus ``vlsam_ros/msg/*`` (cached; read-only use)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    folder = msg_dir()
    types: dict[str, Any] = {}
    for name in MSG_NAMES:
        text = (folder / f"{name}.msg").read_text()
        types.update(get_types_from_msg(text, f"vlsam_ros/msg/{name}"))
    store.register(types)
    return store


def storage_plugin(storage: str):
    """``"mcap"`` / ``"sqlite3"`` -> rosbags StoragePlugin."""
    from rosbags.rosbag2 import StoragePlugin

    if storage not in STORAGES:
        raise BagError(f"storage {storage!r}: must be one of {STORAGES}")
    return StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3


def open_writer(path: str | Path, storage: str, custom_data: dict[str, str] | None = None):
    """An opened rosbags Writer (rosbag2 version 9) at a path that must not exist yet."""
    from rosbags.rosbag2 import Writer, WriterError

    path = Path(path)
    if path.exists():
        raise BagError(f"{path} exists already; remove it or choose another output path")
    try:
        writer = Writer(path, version=BAG_VERSION, storage_plugin=storage_plugin(storage))
    except WriterError as exc:
        raise BagError(f"{path}: {exc}") from None
    for key, value in (custom_data or {}).items():
        writer.set_custom_data(key, value)
    writer.open()
    return writer


def read_custom_data(bag: str | Path) -> dict[str, str]:
    """``custom_data`` of a bag directory's ``metadata.yaml`` (empty when absent)."""
    meta = Path(bag) / "metadata.yaml"
    if not meta.is_file():
        return {}
    try:
        info = yaml.safe_load(meta.read_text()).get("rosbag2_bagfile_information", {})
    except (yaml.YAMLError, AttributeError) as exc:
        raise BagError(f"{meta}: not a rosbag2 metadata file: {exc}") from None
    data = info.get("custom_data") or {}
    return {str(k): str(v) for k, v in data.items()}


def frame_index_json(entries: list[dict[str, Any]]) -> str:
    """Compact, key-sorted JSON of a frame index (deterministic bytes)."""
    return json.dumps(entries, sort_keys=True, separators=(",", ":"))


def _read_errors() -> tuple[type[BaseException], ...]:
    """Errors a damaged bag raises from rosbags and its storage libraries (rosbags reads
    sqlite3 through apsw) while opening or reading."""
    from rosbags.rosbag2 import ReaderError

    errors: list[type[BaseException]] = [ReaderError, sqlite3.DatabaseError, EOFError]
    try:
        import apsw
    except ImportError:  # an older rosbags that uses the standard sqlite3 module
        pass
    else:
        errors.append(apsw.Error)
    return tuple(errors)


@contextlib.contextmanager
def open_reader(path: str | Path) -> Iterator[Any]:
    """An opened rosbags rosbag2 Reader; damaged or missing bags raise BagError.

    An mcap bag cut short (what a crashed recorder leaves) is not an error: the reader is
    then a ``mcap_salvage.SalvagedMcap`` over its complete messages (it has a ``report``
    saying how many could not be read), and a warning is logged."""
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not path.exists():
        raise BagError(f"{path}: no such bag")
    try:
        reader = Reader(path)
        reader.open()
    except _read_errors() as exc:
        failure = BagError(f"{path}: cannot open the bag (truncated or corrupt?): "
                           f"{type(exc).__name__}: {exc}")
        reader = _salvage(path, failure)
    except (FileNotFoundError, KeyError, TypeError, yaml.YAMLError) as exc:
        failure = BagError(f"{path}: not a readable rosbag2 bag: {type(exc).__name__}: {exc}")
        reader = _salvage(path, failure)
    try:
        yield reader
    finally:
        reader.close()


def _salvage(path: Path, failure: BagError) -> Any:
    """For an mcap bag rosbags cannot open (cut short: no summary or footer, or no
    metadata.yaml after a crash): a ``mcap_salvage.SalvagedMcap`` over its complete
    messages, with a warning saying how many could not be read. Raises ``failure`` when
    there is no mcap file or nothing in it can be read."""
    from vlsam_ros.offline.replay.mcap_salvage import (SalvageError, SalvagedMcap, expected_counts,
                                                       mcap_files)

    files = mcap_files(path)
    if not files:
        raise failure from None
    try:
        salvaged = SalvagedMcap(files, expected_counts(path))
    except (SalvageError, OSError, ValueError, struct.error, UnicodeDecodeError):
        raise failure from None
    if not salvaged.connections:
        raise failure from None
    LOG.warning("%s; reading the complete messages before the cut", salvaged.report.describe())
    return salvaged


def iter_messages(reader: Any, connections: list[Any], bag: str | Path,
                  ) -> Iterator[tuple[Any, int, bytes]]:
    """``(connection, log_time_ns, raw_cdr)`` in log-time order; a read failure midway
    raises BagError saying how many messages were read before it."""
    count = 0
    it = reader.messages(connections=connections)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except _read_errors() as exc:
            raise BagError(f"{bag}: read failed after {count} message(s) (truncated or "
                           f"corrupt bag): {type(exc).__name__}: {exc}") from None
        count += 1
        yield item
