"""Reading the complete messages of an mcap file that was cut short (no rclpy import).

A recorder that crashes (or a copy that stops) leaves an mcap file without its summary
and footer, often in the middle of a chunk; rosbags' reader needs the footer and refuses
the file. ``SalvagedMcap`` reads such files front to back instead: schema and channel
records, messages outside chunks, and every chunk, including the readable beginning of a
chunk that was cut (uncompressed, zstd or lz4: compressed chunks are decompressed as a
stream, so the part before the cut is recovered). Only complete message records are
returned. It uses rosbags' own mcap pieces for what they cover (schema and QoS parsing,
``Connection``), and offers the small part of rosbags' ``Reader`` interface the tools use:
``connections`` (``msgcount`` = complete messages found) and ``messages(connections)``.

Messages come in file order, each chunk's messages sorted by log time (as rosbags sorts
them); recorders write chunks in time order.

``SalvageReport`` says how far the file could be read and how many messages were lost:
exactly when the bag's ``metadata.yaml`` lists the topic counts (rosbags and rosbag2 write
it when a recording is closed), otherwise at least the one message that was cut, if any.
"""

from __future__ import annotations

import dataclasses
import struct
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence

MCAP_MAGIC = b"\x89MCAP0\r\n"
OP_HEADER, OP_FOOTER, OP_SCHEMA, OP_CHANNEL, OP_MESSAGE, OP_CHUNK = 0x01, 0x02, 0x03, 0x04, \
    0x05, 0x06
_CHUNK_FIXED = struct.Struct("<QQQI")   # message start time, end time, uncompressed size, crc
_MESSAGE_FIXED = struct.Struct("<HIQQ")  # channel id, sequence, log time, publish time


class SalvageError(RuntimeError):
    """The file is not an mcap file, or not even its header and first records are readable."""


@dataclasses.dataclass
class SalvageReport:
    """How much of a cut mcap file was readable.

    files: the mcap files read; readable_bytes: where the last record of the last file
    starts that is not complete (its complete inner records were still read); total_bytes:
    that file's size; messages_read: complete messages found (all topics);
    expected: messages per topic according to metadata.yaml (None without one);
    read_per_topic: complete messages found per topic; cut_message: whether the cut fell
    inside a message record (at least one message lost even without metadata);
    damaged_chunks: compressed chunks whose stream could not be decompressed, skipped whole
    (their messages are among the lost ones, counted only with metadata.yaml).
    """

    files: list[Path]
    readable_bytes: int
    total_bytes: int
    messages_read: int
    read_per_topic: dict[str, int]
    expected: dict[str, int] | None
    cut_message: bool
    damaged_chunks: int = 0

    def lost(self, topics: Sequence[str] | None = None) -> int | None:
        """Messages of ``topics`` (default: all) that could not be read; None when unknown
        (no metadata.yaml). At least 1 is reported when the cut fell inside a message."""
        if self.expected is None:
            return None
        names = list(self.expected) if topics is None else list(topics)
        return sum(max(0, self.expected.get(t, 0) - self.read_per_topic.get(t, 0))
                   for t in names)

    def describe(self, topics: Sequence[str] | None = None) -> str:
        """One sentence for logs and summaries."""
        lost = self.lost(topics)
        if lost is None:
            amount = ("at least 1 message (cut inside a message record); how many more is "
                      "unknown without metadata.yaml") if self.cut_message else \
                "an unknown number of messages (no metadata.yaml to count them)"
        else:
            amount = f"{lost} message(s)"
        return (f"{self.files[-1]} is truncated ({self.total_bytes} bytes, ending inside "
                f"the record that starts at byte {self.readable_bytes}; no mcap summary or "
                f"footer): {self.messages_read} complete message(s) read, {amount} could not "
                f"be read" + (f"; {self.damaged_chunks} damaged compressed chunk(s) were "
                              f"skipped whole" if self.damaged_chunks else ""))


def _decompressor(compression: str) -> Any:
    """A streaming decompressor (``.decompress(bytes) -> bytes``) for a chunk's format."""
    if compression == "":
        return None
    if compression == "zstd":
        try:
            from compression import zstd  # Python >= 3.14
        except ImportError:
            from backports import zstd
        return zstd.ZstdDecompressor()
    if compression == "lz4":
        from lz4.frame import LZ4FrameDecompressor

        return LZ4FrameDecompressor()
    raise SalvageError(f"unsupported mcap chunk compression {compression!r}")


def _inner_records(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(opcode, body) of the complete records in ``data``; stops at the first cut one."""
    pos = 0
    while pos + 9 <= len(data):
        op = data[pos]
        (size,) = struct.unpack_from("<Q", data, pos + 1)
        if pos + 9 + size > len(data):
            return
        yield op, data[pos + 9:pos + 9 + size]
        pos += 9 + size


class SalvagedMcap:
    """The complete messages of one or more mcap files whose end may be missing."""

    def __init__(self, files: Sequence[Path], expected: dict[str, int] | None = None) -> None:
        from rosbags.rosbag2.storage_mcap import Schema

        self.files = [Path(f) for f in files]
        if not self.files:
            raise SalvageError("no .mcap file to read")
        self._schemas: dict[int, Schema] = {}
        self._channels: dict[int, Any] = {}   # channel id -> Connection (msgcount 0)
        self._counts: dict[int, int] = {}
        self._cut_message = False
        self._damaged_chunks = 0
        self._readable = 0
        self._total = 0
        for _ in self._scan(wanted=None):  # pass 1: connections, counts, readable extent
            pass
        self.connections = [conn._replace(msgcount=self._counts.get(cid, 0))
                            for cid, conn in sorted(self._channels.items())]
        read_per_topic: dict[str, int] = {}
        for conn in self.connections:
            read_per_topic[conn.topic] = read_per_topic.get(conn.topic, 0) + conn.msgcount
        self.report = SalvageReport(self.files, self._readable, self._total,
                                    sum(self._counts.values()), read_per_topic, expected,
                                    self._cut_message, self._damaged_chunks)

    # The interface of rosbags' Reader that the tools use.

    def messages(self, connections: Sequence[Any] | None = None
                 ) -> Iterator[tuple[Any, int, bytes]]:
        """(connection, log time ns, raw CDR) of every complete message (pass 2)."""
        wanted = None if connections is None else {c.id for c in connections}
        by_id = {c.id: c for c in self.connections}
        for channel_id, log_time, data in self._scan(wanted):
            yield by_id[channel_id], log_time, data

    def close(self) -> None:
        """Nothing stays open between calls (rosbags' Reader interface)."""

    # Scanning.

    def _scan(self, wanted: set[int] | None) -> Iterator[tuple[int, int, bytes]]:
        for path in self.files:
            with path.open("rb") as f:
                total = path.stat().st_size
                if f.read(8) != MCAP_MAGIC:
                    raise SalvageError(f"{path}: not an mcap file (bad magic)")
                yield from self._scan_file(f, path, total, wanted)

    def _scan_file(self, f: BinaryIO, path: Path, total: int, wanted: set[int] | None
                   ) -> Iterator[tuple[int, int, bytes]]:
        pos = 8
        while True:
            head = f.read(9)
            if len(head) < 9:
                break
            op = head[0]
            (size,) = struct.unpack_from("<Q", head, 1)
            if op == OP_FOOTER:
                pos = total
                break
            if op == OP_CHUNK:
                body = f.read(size)
                yield from self._chunk(body, wanted, complete=len(body) == size)
                if len(body) < size:
                    break
            else:
                body = f.read(size) if op in (OP_SCHEMA, OP_CHANNEL, OP_MESSAGE) else None
                if body is None:
                    if f.seek(size, 1) > total:
                        break
                elif len(body) < size:
                    self._cut_message |= op == OP_MESSAGE
                    break
                else:
                    yield from self._record(op, body, wanted)
            pos = f.tell()
        self._readable, self._total = min(pos, total), total

    def _chunk(self, body: bytes, wanted: set[int] | None, complete: bool
               ) -> Iterator[tuple[int, int, bytes]]:
        if len(body) < _CHUNK_FIXED.size + 4:
            return
        at = _CHUNK_FIXED.size
        (name_len,) = struct.unpack_from("<I", body, at)
        at += 4
        if len(body) < at + name_len + 8:
            return
        compression = body[at:at + name_len].decode()
        at += name_len + 8  # skip the records' (compressed) length
        payload = body[at:]
        decompressor = _decompressor(compression)
        if decompressor is not None:
            try:
                payload = decompressor.decompress(payload)
            except Exception:  # noqa: BLE001 -- a damaged stream: reported, chunk skipped
                if wanted is None:         # counted in pass 1 only (pass 2 re-reads it)
                    self._damaged_chunks += 1
                payload = b""
        found: list[tuple[int, int, bytes]] = []
        consumed = 0
        for op, record in _inner_records(payload):
            consumed += 9 + len(record)
            found.extend(self._record(op, record, wanted))
        if not complete and consumed < len(payload) and payload[consumed] == OP_MESSAGE:
            self._cut_message = True
        found.sort(key=lambda item: item[1])
        yield from found

    def _record(self, op: int, body: bytes, wanted: set[int] | None
                ) -> Iterator[tuple[int, int, bytes]]:
        if op == OP_SCHEMA:
            self._add_schema(body)
        elif op == OP_CHANNEL:
            self._add_channel(body)
        elif op == OP_MESSAGE and len(body) >= _MESSAGE_FIXED.size:
            channel_id, _, log_time, _ = _MESSAGE_FIXED.unpack_from(body)
            if channel_id not in self._channels:
                return
            if wanted is None:
                self._counts[channel_id] = self._counts.get(channel_id, 0) + 1
            elif channel_id in wanted:
                yield channel_id, log_time, bytes(body[_MESSAGE_FIXED.size:])

    def _add_schema(self, body: bytes) -> None:
        from rosbags.rosbag2.storage_mcap import Schema, read_string

        bio = BytesIO(body)
        (schema_id,) = struct.unpack("<H", bio.read(2))
        self._schemas[schema_id] = Schema(schema_id, read_string(bio), read_string(bio),
                                          read_string(bio))

    def _add_channel(self, body: bytes) -> None:
        from rosbags.interfaces import Connection, ConnectionExtRosbag2
        from rosbags.rosbag2.storage_mcap import get_msgdef, get_qos, read_bytes, read_string

        bio = BytesIO(body)
        channel_id, schema_id = struct.unpack("<HH", bio.read(4))
        topic, encoding, metadata = read_string(bio), read_string(bio), read_bytes(bio)
        schema = self._schemas.get(schema_id)
        if channel_id in self._channels or schema is None:
            return
        self._channels[channel_id] = Connection(
            channel_id, topic, schema.name, get_msgdef(schema), "", 0,
            ConnectionExtRosbag2(encoding, get_qos(metadata)), self)


def mcap_files(bag: Path) -> list[Path]:
    """The .mcap files of a bag (a folder, in name order, or a single file)."""
    if bag.is_file():
        return [bag] if bag.suffix == ".mcap" else []
    return sorted(bag.glob("*.mcap")) if bag.is_dir() else []


def expected_counts(bag: Path) -> dict[str, int] | None:
    """Messages per topic according to the bag's metadata.yaml, or None without one."""
    import yaml

    meta = bag / "metadata.yaml" if bag.is_dir() else bag.parent / "metadata.yaml"
    if not meta.is_file():
        return None
    try:
        info = yaml.safe_load(meta.read_text())["rosbag2_bagfile_information"]
        counts: dict[str, int] = {}
        for entry in info.get("topics_with_message_count") or []:
            topic = entry["topic_metadata"]["name"]
            counts[topic] = counts.get(topic, 0) + int(entry["message_count"])
        return counts
    except (yaml.YAMLError, KeyError, TypeError, ValueError):
        return None
