"""What every replay path shares: the options, the error, per-topic counts and the fixed
names of the output bag (used by ``vlsam-replay-bag`` and by the Ray labeller)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
STRING_TYPE = "std_msgs/msg/String"
SKIPPED_OUTPUT = "replay_skipped"
REPLAY_INFO_KEY = "vlsam_ros.replay"
TIMING_MODES = ("zero", "measured")
BAD_FRAME_POLICIES = ("skip", "error")


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


def partial_path(out_bag: Path) -> Path:
    """Where an unfinished output bag lives: ``OUT_BAG.partial`` (replay renames a failed
    output to it; the labeller writes there and renames to ``OUT_BAG`` when complete)."""
    return out_bag.with_name(out_bag.name + ".partial")


def replay_options_from_args(args: argparse.Namespace) -> ReplayOptions:
    """``ReplayOptions`` from the options ``add_replay_arguments`` declared (plus
    ``--no-progress``)."""
    return ReplayOptions(tuple(args.topics) if args.topics else None, args.node_name,
                         args.overlay, args.storage, args.timing, args.on_bad_frame,
                         not args.no_progress)


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line form of ``ReplayOptions`` (``progress`` is ``--no-progress``), shared
    by ``vlsam-replay-bag`` and ``vlsam-label`` so both read the same options the same way."""
    parser.add_argument("--topics", nargs="+", help="camera topics (default: cameras from "
                                                    "the config)")
    parser.add_argument("--overlay", action="store_true", help="also write overlay images")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"),
                        help="output storage (default: the input bag's)")
    parser.add_argument("--node-name", default="vlsam",
                        help="node name in the output topics (default vlsam)")
    parser.add_argument("--timing", choices=TIMING_MODES, default="zero",
                        help="zero (default, reproducible output) or measured timing fields")
    parser.add_argument("--on-bad-frame", choices=BAD_FRAME_POLICIES, default="skip",
                        help="undecodable frames: skip (logged, recorded) or error (the bag "
                             "fails)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
