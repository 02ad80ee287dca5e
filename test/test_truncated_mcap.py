"""A truncated mcap (what a crashed recorder leaves): every complete message before the cut
is replayed, and the replay says how many messages could not be read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test_replay import (CFG, OUT_TOPIC, QUIET, BrightestBlobPipeline, read_topic, stamp_ns,
                         write_image_bag)
from vlsam_ros.offline.replay.bag_io import DETECTION_ARRAY_TYPE, open_reader, vlsam_typestore
from vlsam_ros.offline.replay import replay_bag as rb

TOPIC = "/cam_front/image_raw"


def _mcap(bag: Path) -> Path:
    return next(bag.glob("*.mcap"))


def _messages(bag: Path) -> list[tuple[int, bytes]]:
    """(log time, raw CDR) of every message of an intact bag, in order."""
    with open_reader(bag) as reader:
        return [(t, bytes(raw)) for _, t, raw in reader.messages()]


def _complete_before(raw_file: bytes, messages: list[tuple[int, bytes]], cut: int) -> list[int]:
    """Log times of the messages whose record ends at or before byte ``cut`` (uncompressed
    chunks: a message's CDR bytes are the last part of its record, found in the file)."""
    out = []
    for t, raw in messages:
        start = raw_file.find(raw)
        assert start > 0 and raw_file.find(raw, start + 1) == -1  # each frame is unique
        if start + len(raw) <= cut:
            out.append(t)
    return out


def _big_frame_bag(path: Path, n: int, compression: str | None = None) -> list[int]:
    """``n`` rgb8 frames of 320x240 (230 kB each: rosbags closes a chunk every ~5 frames)."""
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

    store = vlsam_typestore()
    Image = store.types["sensor_msgs/msg/Image"]
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    if compression == "zstd":
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    writer.open()
    conn = writer.add_connection(TOPIC, "sensor_msgs/msg/Image", typestore=store)
    rng = np.random.default_rng(7)
    stamps = []
    for i in range(n):
        stamp = 1_700_000_000_000_000_000 + i * 100_000_000
        rgb = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
        if compression:  # a quarter stays noise: chunks compress to ~1/4, unique frames
            rgb[60:] = 0
        msg = Image(header=Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9),
                                  frame_id="cam_front"), height=240, width=320,
                    encoding="rgb8", is_bigendian=0, step=960, data=rgb.reshape(-1))
        writer.write(conn, stamp, store.serialize_cdr(msg, "sensor_msgs/msg/Image"))
        stamps.append(stamp)
    writer.close()
    return stamps


def _cut(bag: Path, keep: int) -> bytes:
    data_file = _mcap(bag)
    raw = data_file.read_bytes()
    data_file.write_bytes(raw[:keep])
    return raw


@pytest.mark.parametrize("frames, keep", [
    ("small", 0.5),    # one chunk, cut in its middle: the complete records of its beginning
    ("big", 0.5),      # several chunks: complete chunks, then a cut one
    ("big", 0.31),
    ("small", None),   # only the footer is missing
])
@pytest.mark.parametrize("metadata", [True, False])  # False: the recorder never closed
def test_every_complete_message_before_the_cut_is_replayed(tmp_path, frames, keep, metadata):
    bag = tmp_path / "in"
    stamps = write_image_bag(bag, 20) if frames == "small" else _big_frame_bag(bag, 20)
    messages = _messages(bag)
    assert [t for t, _ in messages] == stamps
    size = _mcap(bag).stat().st_size
    cut = size - 1 if keep is None else int(size * keep)
    raw_file = _cut(bag, cut)
    if not metadata:
        (bag / "metadata.yaml").unlink()
    expected = _complete_before(raw_file, messages, cut)
    assert 0 < len(expected) <= 20 and (keep is None or len(expected) < 20)

    pipeline = BrightestBlobPipeline()
    summary = rb.replay_bag(bag, tmp_path / "out", pipeline, CFG, QUIET)

    out = read_topic(tmp_path / "out", OUT_TOPIC, DETECTION_ARRAY_TYPE)
    assert [stamp_ns(m) for _, m in out] == expected  # all of them, in order, none extra
    assert [t for t, _ in out] == expected
    assert pipeline.calls == len(expected) == summary.frames
    assert summary.truncated_input is not None
    assert f"{len(expected)} complete message(s) read" in summary.truncated_input
    if metadata:
        assert summary.unreadable == 20 - len(expected)
        assert f"{20 - len(expected)} message(s) could not be read" in summary.truncated_input
    else:
        assert summary.unreadable is None


def test_compressed_chunks_are_read_up_to_the_cut(tmp_path):
    bag = tmp_path / "in"
    stamps = _big_frame_bag(bag, 20, compression="zstd")
    size = _mcap(bag).stat().st_size
    _cut(bag, int(size * 0.6))
    summary = rb.replay_bag(bag, tmp_path / "out", BrightestBlobPipeline(), CFG, QUIET)
    out = [stamp_ns(m) for _, m in read_topic(tmp_path / "out", OUT_TOPIC,
                                                DETECTION_ARRAY_TYPE)]
    assert 0 < len(out) < 20
    assert out == stamps[:len(out)]  # a prefix: nothing before the cut is skipped
    assert summary.unreadable == 20 - len(out)


def test_cli_reports_what_could_not_be_read_with_exit_3(tmp_path, monkeypatch, capsys):
    bag = tmp_path / "in"
    write_image_bag(bag, 20)
    _cut(bag, int(_mcap(bag).stat().st_size * 0.5))
    monkeypatch.setattr("vlsam_ros.core.pipeline.build_pipeline",
                        lambda cfg: BrightestBlobPipeline())
    code = rb.main([str(bag), str(tmp_path / "out"), "--set", "device=cpu", "--no-progress",
                    "--stats", str(tmp_path / "stats.json")])
    assert code == rb.EXIT_SKIPPED
    printed = capsys.readouterr().out
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert f"{stats['frames']} complete message(s) read, {20 - stats['frames']} message(s) " \
           "could not be read" in printed
    assert stats["unreadable"] == 20 - stats["frames"] > 0


def test_a_file_cut_inside_its_header_is_still_an_error(tmp_path):
    bag = tmp_path / "in"
    write_image_bag(bag, 5)
    _cut(bag, 12)
    with pytest.raises(rb.BagError, match="cannot open the bag"):
        rb.replay_bag(bag, tmp_path / "out", BrightestBlobPipeline(), CFG, QUIET)
    assert not (tmp_path / "out").exists()
