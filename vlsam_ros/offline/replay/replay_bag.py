"""Offline replay: runs the pipeline on every frame of a rosbag2 and writes a bag of results.

Reads a rosbag2 (mcap or sqlite3) with ``rosbags``, decodes every message of the chosen
camera topics with the node's decoder (``vlsam_ros.ros.images.decode_image_msg``), runs
the pipeline on each one (no frame is skipped for speed; frames are processed in log-time
order), and writes the results with the node's own conversion (``vlsam_ros.ros.detections``)
to an output bag:

* ``<camera ns>/<node>/detections`` (``vlsam_ros/msg/DetectionArray``), one per input frame,
  e.g. ``/cam_front/vlsam/detections`` for ``/cam_front/image_raw`` (the live node's names,
  ``vlsam_ros.ros.camera_topics``);
* ``<camera ns>/<node>/overlay`` (``sensor_msgs/Image`` rgb8) with ``--overlay``;
* ``<camera ns>/<node>/replay_skipped`` (``std_msgs/String``), one per input frame that could
  not be decoded (unknown encoding, wrong size...): ``"<sec>.<nanosec> <frame_id>: <reason>"``.

With ``tracking.mode`` flow or memory, every frame is followed (track ids) and discovery
(the pipeline) runs on the first frame of each camera and then every
``tracking.replay_discovery_every`` frames of it, a frame count, so runs stay reproducible;
its answer is applied on the same frame (``core.tracking.two_rate.OfflineTracking``).

Every output message keeps the source header (stamp and frame_id) and is logged at the
source message's log time. The output bag's ``custom_data`` keeps the input's (the frame
index of ``vlsam-dataset-to-bag``) and adds ``vlsam_ros.replay``: per topic, frames read,
DetectionArrays written and frames skipped.

**Determinism.** The default ``--timing zero`` writes 0.0 into the wall-clock fields
``vlm_ms``, ``segment_ms``, ``total_ms`` and ``latency_ms``, so that two runs with the same
bag, config and models are byte-identical (every bag file, metadata included: rosbags
writes no wall-clock time into either storage format). ``--timing measured`` keeps the
pipeline's measured times (``latency_ms`` is then the processing time of the frame, since a
replayed stamp has no relation to the wall clock); the output is then not reproducible.
Throughput is printed at the end either way (and written by ``--stats FILE``).

**Bad input.** A bag that cannot be opened, or that breaks while being read (truncated),
stops the replay with an error naming the bag and how far it got; the results written so
far are kept in ``OUT_BAG.partial``. An mcap cut short (what a crashed recorder leaves: no
summary or footer) is the exception: its complete messages are replayed
(``vlsam_ros.offline.replay.mcap_salvage``) and the summary says how many could not be read
(exit 3).
A topic that is not in the bag, or is not an image topic, is an error listing the bag's
image topics. A frame the decoder (or the pipeline's
input check) rejects is a logged skip by default (``--on-bad-frame skip``), recorded on the
``replay_skipped`` topic and counted in the summary; ``--on-bad-frame error`` stops instead.
The cheap checks (input bag and topics, output path, ``--stats`` folder, configuration) run
before any model is loaded. Exit status: 0 success, 2 error, 3 success but some frames were
skipped, 130 interrupted (the summary line says what ``OUT_BAG.partial`` holds).

Usage::

    vlsam-replay-bag IN_BAG OUT_BAG [--config config/vlsam.yaml] [--profile NAME|FILE]
        [--set key=value ...]
        [--topics /cam_front/image_raw ...] [--overlay] [--storage mcap|sqlite3]
        [--node-name vlsam] [--timing zero|measured] [--on-bad-frame skip|error]
        [--stats stats.json] [--no-progress]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from vlsam_ros.ros import detections, images
from vlsam_ros.offline.replay.bag_io import (DETECTION_ARRAY_TYPE, BagError, iter_messages,
                                             open_reader, open_writer, read_custom_data,
                                             vlsam_typestore)
from vlsam_ros.ros.camera_topics import CameraTopics, camera_topics
from vlsam_ros.core.config import ConfigError, VlsamConfig
from vlsam_ros.core.config_files import load_config, parse_set_flags
from vlsam_ros.core.errors import InvalidImageError
from vlsam_ros.core.results import FrameResult
from vlsam_ros.tools.cli import (ToolParser, check_input, check_new_output, check_output_parent,
                                 run_tool, write_text_atomically)
from vlsam_ros.tools.config_options import add_config_options, config_text, list_keys_text

LOG = logging.getLogger("vlsam_ros.replay")

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
STRING_TYPE = "std_msgs/msg/String"
SKIPPED_OUTPUT = "replay_skipped"
REPLAY_INFO_KEY = "vlsam_ros.replay"
TIMING_MODES = ("zero", "measured")
BAD_FRAME_POLICIES = ("skip", "error")
EXIT_OK, EXIT_ERROR, EXIT_SKIPPED = 0, 2, 3


class FramePipeline(Protocol):
    """What replay needs of ``vlsam_ros.core.pipeline.Pipeline`` (with tracking also its
    ``segmenter``)."""

    def run(self, image: np.ndarray) -> FrameResult: ...


class ReplayError(RuntimeError):
    """Replay cannot go on; the message says why (bag, topic or frame named)."""


@dataclasses.dataclass(frozen=True)
class ReplayOptions:
    """How to replay. ``topics`` None means the configuration's ``cameras``."""

    topics: tuple[str, ...] | None = None
    node_name: str = "vlsam"
    overlay: bool = False
    storage: str | None = None  # None: the input bag's storage
    timing: str = "zero"
    on_bad_frame: str = "skip"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.timing not in TIMING_MODES:
            raise ValueError(f"timing={self.timing!r}: must be one of {TIMING_MODES}")
        if self.on_bad_frame not in BAD_FRAME_POLICIES:
            raise ValueError(f"on_bad_frame={self.on_bad_frame!r}: must be one of "
                             f"{BAD_FRAME_POLICIES}")


@dataclasses.dataclass
class TopicStats:
    """Counts for one camera topic."""

    frames: int = 0
    detection_arrays: int = 0
    skipped: int = 0
    detections: int = 0


@dataclasses.dataclass
class ReplaySummary:
    """What a replay did; times in seconds (wall clock, not written to the bag)."""

    out_bag: Path
    topics: dict[str, TopicStats]
    wall_s: float
    pipeline_s: float
    truncated_input: str | None = None  # what a cut mcap input lost (mcap_salvage)
    unreadable: int | None = 0  # messages of the replayed topics lost to the cut (None: ?)

    @property
    def frames(self) -> int:
        return sum(t.frames for t in self.topics.values())

    @property
    def skipped(self) -> int:
        return sum(t.skipped for t in self.topics.values())

    def as_dict(self) -> dict[str, Any]:
        frames = self.frames
        return {"out_bag": str(self.out_bag), "frames": frames, "skipped": self.skipped,
                "topics": {k: dataclasses.asdict(v) for k, v in self.topics.items()},
                "wall_s": self.wall_s, "pipeline_s": self.pipeline_s,
                "frames_per_s": frames / self.wall_s if self.wall_s > 0 else None,
                "overhead_s": self.wall_s - self.pipeline_s,
                "overhead_per_frame_ms": (1000 * (self.wall_s - self.pipeline_s) / frames
                                          if frames else None),
                "truncated_input": self.truncated_input, "unreadable": self.unreadable}


def _storage_of(bag: Path) -> str:
    files = [p.suffix for p in bag.iterdir()] if bag.is_dir() else [bag.suffix]
    return "sqlite3" if ".db3" in files else "mcap"


def select_cameras(reader: Any, requested: Sequence[str], node_name: str, bag: Path,
                   ) -> list[tuple[CameraTopics, list[Any]]]:
    """Resolves the requested topics against the bag: ``[(topics, connections)]``.

    Raises ReplayError for a topic that is not in the bag or not an image topic, naming
    the bag's image topics.
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
    seen: dict[str, str] = {}
    for cam, _ in out:
        if cam.detections in seen:
            raise ReplayError(f"topics {seen[cam.detections]!r} and {cam.input!r} would both "
                              f"write {cam.detections}")
        seen[cam.detections] = cam.input
    return out


class _ResultWriter:
    """Serialises one frame's outputs through the live node's conversion
    (``detections.frame_result_to_msg``), with rosbags' message classes: no rclpy
    and no colcon build needed. The message equals rclpy's (test_replay checks it); unlike
    rclpy, rosbags zeroes CDR alignment padding, which keeps the output reproducible."""

    def __init__(self, store: Any, cfg: VlsamConfig, options: ReplayOptions) -> None:
        self._store = store
        self._types = detections.MessageTypes.from_typestore(store)
        self._cfg = cfg
        self._options = options

    def detection_array(self, result: FrameResult, header: Any) -> bytes:
        """DetectionArray CDR; with timing "zero" the wall-clock fields are 0.0."""
        if self._options.timing == "zero":
            result = dataclasses.replace(result, vlm_ms=0.0, segment_ms=0.0, total_ms=0.0)
            latency = 0.0
        else:  # a replayed stamp is unrelated to the wall clock: report processing time
            latency = result.total_ms
        msg = detections.frame_result_to_msg(result, header, latency, types=self._types)
        return self._store.serialize_cdr(msg, DETECTION_ARRAY_TYPE)

    def overlay(self, rgb: np.ndarray, result: FrameResult, header: Any) -> bytes:
        """Overlay Image CDR (rgb8, unpadded), drawn by the node's ``draw_overlay``."""
        from vlsam_ros.ros.visualization import draw_overlay

        ordered = detections.ranked_detections(result.detections)  # colours as published
        pixels = draw_overlay(rgb, ordered, self._cfg.node)
        msg = images.image_msg(pixels, header, msg_type=self._store.types[IMAGE_TYPE])
        return self._store.serialize_cdr(msg, IMAGE_TYPE)


def skipped_frames_topic(cam: CameraTopics, node_name: str) -> str:
    """``<camera ns>/<node>/replay_skipped``, beside the camera's detections topic."""
    return f"{cam.namespace}/{node_name}/{SKIPPED_OUTPUT}"


def partial_path(out_bag: Path) -> Path:
    """Where an interrupted or failed replay leaves what it wrote: ``OUT_BAG.partial``."""
    return out_bag.with_name(out_bag.name + ".partial")


def check_replay_inputs(in_bag: str | Path, out_bag: str | Path, cfg: VlsamConfig,
                        options: ReplayOptions) -> None:
    """The cheap checks, done before any model is loaded: the input bag opens and has the
    requested image topics, the output bag (and its .partial) does not exist yet and can be
    created. Raises BagError, ReplayError or ToolError naming what is wrong."""
    in_bag, out_bag = Path(in_bag), Path(out_bag)
    check_new_output(out_bag, "output bag")
    if partial_path(out_bag).exists():
        raise ReplayError(f"{partial_path(out_bag)} exists (left by an earlier replay); remove "
                          "it or choose another output path")
    requested = tuple(options.topics) if options.topics else tuple(cfg.cameras)
    with open_reader(in_bag) as reader:
        select_cameras(reader, requested, options.node_name, in_bag)


def replay_bag(in_bag: str | Path, out_bag: str | Path, pipeline: FramePipeline,
               cfg: VlsamConfig, options: ReplayOptions = ReplayOptions()) -> ReplaySummary:
    """Replays ``in_bag`` through ``pipeline`` into the new bag ``out_bag``.

    Raises BagError (unreadable or truncated input, existing output), ReplayError (topics,
    or a bad frame with ``on_bad_frame="error"``) and lets pipeline errors propagate. On an
    error after the output was created, the output is closed and renamed
    ``OUT_BAG.partial``.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    in_bag, out_bag = Path(in_bag), Path(out_bag)
    requested = tuple(options.topics) if options.topics else tuple(cfg.cameras)
    tracking = None
    if cfg.tracking.mode != "off":  # every frame followed, discovery every K-th frame
        from vlsam_ros.core.tracking.two_rate import OfflineTracking

        tracking = OfflineTracking.for_pipeline(pipeline, cfg)
    store = vlsam_typestore()
    results = _ResultWriter(store, cfg, options)
    stats: dict[str, TopicStats] = {}
    pipeline_s = 0.0
    started = time.perf_counter()
    with open_reader(in_bag) as reader:
        cameras = select_cameras(reader, requested, options.node_name, in_bag)
        conn_to_cam = {c.id: cam for cam, conns in cameras for c in conns}
        total = sum(c.msgcount for _, conns in cameras for c in conns)
        custom = read_custom_data(in_bag)
        writer = open_writer(out_bag, options.storage or _storage_of(in_bag), custom)
        try:
            out_conns: dict[str, Any] = {}
            skipped_topics = {cam.input: skipped_frames_topic(cam, options.node_name)
                              for cam, _ in cameras}
            for cam, _ in cameras:  # connections in a fixed order: deterministic bag
                stats[cam.input] = TopicStats()
                out_conns[cam.detections] = writer.add_connection(
                    cam.detections, DETECTION_ARRAY_TYPE, typestore=store)
                if options.overlay:
                    out_conns[cam.overlay] = writer.add_connection(cam.overlay, IMAGE_TYPE,
                                                                   typestore=store)
                skipped_topic = skipped_topics[cam.input]
                out_conns[skipped_topic] = writer.add_connection(skipped_topic, STRING_TYPE,
                                                                 typestore=store)
            connections = [c for _, conns in cameras for c in conns]
            bar = tqdm(total=total, unit="frame", desc="replay", file=sys.stderr,
                       disable=not options.progress, dynamic_ncols=True)
            # The root logger's console handler (not LOG's) prints: redirecting LOG would
            # print every warning twice.
            with bar, logging_redirect_tqdm():
                for conn, log_time, raw in iter_messages(reader, connections, in_bag):
                    cam = conn_to_cam[conn.id]
                    st = stats[cam.input]
                    st.frames += 1
                    msg = store.deserialize_cdr(raw, conn.msgtype)
                    try:
                        rgb = images.decode_image_msg(msg, cfg.node)
                        t0 = time.perf_counter()
                        try:
                            if tracking is None:
                                result = pipeline.run(rgb)
                            else:
                                stamp = msg.header.stamp
                                result = tracking.step(cam.input, rgb, stamp.sec * 1_000_000_000
                                                       + stamp.nanosec)
                        finally:
                            pipeline_s += time.perf_counter() - t0
                    except InvalidImageError as exc:
                        where = (f"{cam.input} frame {st.frames} (stamp {msg.header.stamp.sec}."
                                 f"{msg.header.stamp.nanosec:09d})")
                        if options.on_bad_frame == "error":
                            raise ReplayError(f"{in_bag}: {where}: {exc}") from None
                        LOG.warning("skipping %s: %s", where, exc)
                        st.skipped += 1
                        text = (f"{msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d} "
                                f"{msg.header.frame_id}: {exc}")
                        writer.write(out_conns[skipped_topics[cam.input]], log_time,
                                     store.serialize_cdr(store.types[STRING_TYPE](data=text),
                                                         STRING_TYPE))
                        bar.update(1)
                        continue
                    writer.write(out_conns[cam.detections], log_time,
                                 results.detection_array(result, msg.header))
                    st.detection_arrays += 1
                    st.detections += len(result.detections)
                    if options.overlay:
                        writer.write(out_conns[cam.overlay], log_time,
                                     results.overlay(rgb, result, msg.header))
                    bar.update(1)
            writer.set_custom_data(REPLAY_INFO_KEY, json.dumps(
                {k: dataclasses.asdict(v) for k, v in stats.items()}, sort_keys=True))
            writer.close()
        except BaseException as exc:
            writer.close()
            partial = partial_path(out_bag)
            if partial.exists():
                raise ReplayError(f"{partial} exists; the partial output stays in {out_bag}"
                                  ) from None
            out_bag.rename(partial)
            written = sum(s.detection_arrays for s in stats.values())
            read = sum(s.frames for s in stats.values())
            if isinstance(exc, KeyboardInterrupt):  # the summary is the tool's last line
                raise KeyboardInterrupt(f"{read} of {total} frame(s) read, the {written} "
                                        f"DetectionArray(s) written so far are in "
                                        f"{partial}") from None
            LOG.error("replay stopped; the %d DetectionArray(s) written so far are in %s",
                      written, partial)
            raise
    report = getattr(reader, "report", None)  # a cut mcap read by mcap_salvage
    return ReplaySummary(out_bag, stats, time.perf_counter() - started, pipeline_s,
                         report.describe(requested) if report is not None else None,
                         report.lost(requested) if report is not None else 0)


def build_parser() -> ToolParser:
    parser = ToolParser(
        prog="vlsam-replay-bag", description=__doc__.splitlines()[0],
        epilog="Exit status: 0 ok, 2 error (bad arguments, configuration, bag or topic; "
               "checked before the models load), 3 ok but some frames were skipped or "
               "unreadable, 130 interrupted (what was written is kept in OUT_BAG.partial).")
    parser.add_argument("in_bag", nargs="?",
                        help="input rosbag2 folder (or .mcap/.db3 file); required unless "
                             "--print-config or --list-keys")
    parser.add_argument("out_bag", nargs="?", help="output bag folder (must not exist); "
                                                   "required like in_bag")
    parser.add_argument("--config", help="ROS parameter YAML (e.g. config/vlsam.yaml)")
    parser.add_argument("--profile", metavar="NAME|FILE",
                        help="profile overlay after --config, before --set: a name from "
                             "config/profiles (paper, edge, cpu) or a YAML path")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a config value, e.g. --set device=cpu (repeatable)")
    parser.add_argument("--topics", nargs="+", help="camera topics (default: cameras from "
                                                    "the config)")
    parser.add_argument("--overlay", action="store_true", help="also write overlay images")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"),
                        help="output storage (default: the input's)")
    parser.add_argument("--node-name", default="vlsam",
                        help="node name in the output topics (default vlsam)")
    parser.add_argument("--timing", choices=TIMING_MODES, default="zero",
                        help="zero (default, reproducible output) or measured timing fields")
    parser.add_argument("--on-bad-frame", choices=BAD_FRAME_POLICIES, default="skip",
                        help="undecodable frames: skip (logged, recorded) or error")
    parser.add_argument("--stats", help="write throughput and counts to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not (args.list_keys or args.print_config) and (args.in_bag is None
                                                        or args.out_bag is None):
        parser.error("the following arguments are required: in_bag, out_bag")
    if args.list_keys:
        print(list_keys_text())
        return EXIT_OK

    def body() -> int:
        if args.config is not None:
            check_input(Path(args.config), "--config", folder=False)
        cfg = load_config(args.config, parse_set_flags(args.set), profile=args.profile)
        if args.print_config:
            print(config_text(cfg, args.node_name, "vlsam-replay-bag"), end="")
            return EXIT_OK
        options = ReplayOptions(tuple(args.topics) if args.topics else None, args.node_name,
                                args.overlay, args.storage, args.timing, args.on_bad_frame,
                                not args.no_progress)
        check_replay_inputs(args.in_bag, args.out_bag, cfg, options)
        if args.stats:
            check_output_parent(Path(args.stats), "--stats file")
        from vlsam_ros.core.pipeline import build_pipeline

        pipeline = build_pipeline(cfg)
        summary = replay_bag(args.in_bag, args.out_bag, pipeline, cfg, options)
        info = summary.as_dict()
        rate = info["frames_per_s"] or 0.0
        print(f"replayed {info['frames']} frame(s) into {summary.out_bag}: {rate:.2f} "
              f"frames/s, pipeline {summary.pipeline_s:.2f} s of {summary.wall_s:.2f} s wall; "
              f"{summary.skipped} skipped")
        if summary.truncated_input is not None:
            print(f"input: {summary.truncated_input}")
        if args.stats:
            write_text_atomically(args.stats, json.dumps(info, indent=2) + "\n")
        partial_input = summary.truncated_input is not None
        return EXIT_SKIPPED if summary.skipped or partial_input else EXIT_OK

    return run_tool("vlsam-replay-bag", body, (BagError, ReplayError))


if __name__ == "__main__":
    raise SystemExit(main())
