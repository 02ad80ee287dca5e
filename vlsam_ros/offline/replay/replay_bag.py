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
from typing import Any, Sequence

from vlsam_ros.core.config import VlsamConfig
from vlsam_ros.offline.replay.bag_io import BagError
from vlsam_ros.offline.replay.frame_outputs import FrameLabeller, FramePipeline
from vlsam_ros.offline.replay.output_bag import OutputBag
from vlsam_ros.offline.replay.replay_options import (
    add_replay_arguments,
    replay_options_from_args,
    REPLAY_INFO_KEY,
    ReplayError,
    ReplayOptions,
    TopicStats,
    partial_path,
)
from vlsam_ros.offline.replay.source_frames import SourceBag
from vlsam_ros.tools.cli import (
    ToolParser,
    check_new_output,
    check_output_parent,
    run_tool,
    write_text_atomically,
)
from vlsam_ros.tools.config_options import (
    add_config_options,
    add_config_source_options,
    config_from_source_options,
    config_text,
    list_keys_text,
)

LOG = logging.getLogger("vlsam_ros.replay")

EXIT_OK, EXIT_ERROR, EXIT_SKIPPED = 0, 2, 3
__all__ = ["REPLAY_INFO_KEY", "ReplayError", "ReplayOptions", "ReplaySummary", "TopicStats",
           "check_replay_inputs", "replay_bag", "main"]


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


def requested_topics(cfg: VlsamConfig, options: ReplayOptions) -> tuple[str, ...]:
    """The camera topics to replay: ``options.topics``, else the configuration's cameras."""
    return tuple(options.topics) if options.topics else tuple(cfg.cameras)


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
    with SourceBag(in_bag, requested_topics(cfg, options), options.node_name):
        pass


def _keep_partial(output: OutputBag, total: int, exc: BaseException) -> None:
    """After a failure: closes ``output`` and renames it ``OUT_BAG.partial``; an interrupt
    becomes a KeyboardInterrupt whose message says what was kept."""
    output.abandon()
    partial = partial_path(output.path)
    if partial.exists():
        raise ReplayError(f"{partial} exists; the partial output stays in {output.path}"
                          ) from None
    output.path.rename(partial)
    if isinstance(exc, KeyboardInterrupt):  # the summary is the tool's last line
        raise KeyboardInterrupt(f"{output.frames} of {total} frame(s) read, the "
                                f"{output.detection_arrays} DetectionArray(s) written so far "
                                f"are in {partial}") from None
    LOG.error("replay stopped; the %d DetectionArray(s) written so far are in %s",
              output.detection_arrays, partial)


def replay_bag(in_bag: str | Path, out_bag: str | Path, pipeline: FramePipeline,
               cfg: VlsamConfig, options: ReplayOptions | None = None) -> ReplaySummary:
    """Replays ``in_bag`` through ``pipeline`` into the new bag ``out_bag``: source frames
    (``SourceBag``) -> ``FrameLabeller`` -> ``OutputBag``, the path ``vlsam-label`` shares.

    Raises BagError (unreadable or truncated input, existing output), ReplayError (topics,
    or a bad frame with ``on_bad_frame="error"``) and lets pipeline errors propagate. On an
    error after the output was created, the output is closed and renamed
    ``OUT_BAG.partial``.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    in_bag, out_bag = Path(in_bag), Path(out_bag)
    options = options or ReplayOptions()
    labeller = FrameLabeller(pipeline, cfg, options)
    pipeline_s = 0.0
    started = time.perf_counter()
    with SourceBag(in_bag, requested_topics(cfg, options), options.node_name) as source:
        output = OutputBag(out_bag, options.storage or source.storage, source.cameras,
                           source.custom_data, options, in_bag)
        bar = tqdm(total=source.total, unit="frame", desc="replay", file=sys.stderr,
                   disable=not options.progress, dynamic_ncols=True)
        try:
            # The root logger's console handler (not LOG's) prints: redirecting LOG would
            # print every warning twice.
            with bar, logging_redirect_tqdm():
                for frame in source.frames():
                    out = labeller.label(frame)
                    pipeline_s += out.pipeline_s
                    output.write(out)
                    bar.update(1)
            output.close()
        except BaseException as exc:
            _keep_partial(output, source.total, exc)
            raise
    report = source.report  # a cut mcap read by mcap_salvage
    requested = requested_topics(cfg, options)
    return ReplaySummary(out_bag, output.stats, time.perf_counter() - started, pipeline_s,
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
    add_config_source_options(parser)
    add_replay_arguments(parser)
    parser.add_argument("--stats", help="write throughput and counts to this JSON file")
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
        cfg = config_from_source_options(args)
        if args.print_config:
            print(config_text(cfg, args.node_name, "vlsam-replay-bag"), end="")
            return EXIT_OK
        options = replay_options_from_args(args)
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
