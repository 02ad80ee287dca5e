"""vlsam-label: labels many bags on a Ray cluster (or a local Ray), one detections bag per
input bag, byte-identical to ``vlsam-replay-bag``'s, resumable.

Inputs are bags (rosbag2 folders, or ``.mcap`` / ``.db3`` files), folders searched for bags,
glob patterns, or CODA-layout dataset folders (read like the bag ``vlsam-dataset-to-bag
--compressed`` makes of them: ``dataset_source``). Each output bag is
``OUT_DIR/<input bag name>``, with the content and layout of ``vlsam-replay-bag IN_BAG
OUT_DIR/<name>`` (same options). A bag appears there only once complete; until then its
work is in ``OUT_DIR/<name>.partial`` (checkpoint), and running the same command again
skips finished bags and resumes the others from their last complete frame.

Ray: ``--address`` or ``RAY_ADDRESS`` joins a running cluster (``ray start --head``; see
README); without them a local Ray starts in this process, bound to 127.0.0.1. One actor
per ``--gpus-per-actor`` GPUs (fractions share a GPU) or per ``--cpus-per-actor`` CPUs
(``--actors auto``: as many as the cluster holds), each with its own pipeline; each actor
gets at most ``--in-flight`` frames at a time. A frame whose actor dies is labelled again by
another; the summary lists the retries.

Exit status: 0 every bag labelled (or already done), 2 error (arguments, configuration,
models; or some bag failed, the others finished: see the summary), 3 done but some frames
were skipped or unreadable, 130 interrupted (checkpoints kept; run again to resume).

Usage::

    vlsam-label BAG|FOLDER|GLOB ... --out OUT_DIR [--config FILE] [--profile NAME|FILE]
        [--set key=value ...] [--topics ...] [--overlay] [--storage mcap|sqlite3]
        [--node-name vlsam] [--timing zero|measured] [--on-bad-frame skip|error]
        [--address ADDR] [--actors N|auto] [--cpus-per-actor 1] [--gpus-per-actor 0]
        [--in-flight 2] [--batch 1] [--num-cpus N] [--num-gpus N] [--object-store-mb 200]
        [--summary FILE] [--no-progress]
"""

from __future__ import annotations

import glob
import json
import logging
from pathlib import Path
from typing import Sequence

from vlsam_ros.offline.labelling.actor_pool import PoolError, PoolSettings
from vlsam_ros.offline.labelling.dataset_source import is_dataset
from vlsam_ros.offline.labelling.label_bags import LabelJob, check_config, label_bags
from vlsam_ros.offline.labelling.ray_session import RaySettings
from vlsam_ros.offline.replay.bag_io import BagError
from vlsam_ros.offline.replay.replay_options import (
    add_replay_arguments,
    replay_options_from_args,
    ReplayError,
)
from vlsam_ros.tools.cli import (
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    ToolError,
    ToolParser,
    check_input,
    check_output_parent,
    positive_float,
    positive_int,
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

BAG_FILE_SUFFIXES = (".mcap", ".db3")
_GLOB_CHARS = "*?["


def _is_bag_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "metadata.yaml").is_file() or any(
        p.suffix in BAG_FILE_SUFFIXES for p in path.iterdir() if p.is_file()))


def _bags_under(folder: Path) -> list[Path]:
    """Bag folders, CODA-layout datasets and loose bag files under ``folder`` (not inside a
    bag or dataset), sorted."""
    if _is_bag_folder(folder) or is_dataset(folder):
        return [folder]
    found: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            found += _bags_under(entry)
        elif entry.suffix in BAG_FILE_SUFFIXES:
            found.append(entry)
    return found


def find_bags(inputs: Sequence[str]) -> list[Path]:
    """The input bags named by paths, folders (searched) and glob patterns, in the order
    given, each once. ToolError for an input that names no bag."""
    bags: list[Path] = []
    for text in inputs:
        paths = ([Path(p) for p in sorted(glob.glob(text))]
                 if any(c in text for c in _GLOB_CHARS) else [Path(text)])
        if not paths:
            raise ToolError(f"input {text!r}: no file or folder matches")
        found: list[Path] = []
        for path in paths:
            check_input(path, "input")
            if path.is_file():
                if path.suffix not in BAG_FILE_SUFFIXES:
                    raise ToolError(f"input {path}: not a bag (.mcap or .db3 file, or a "
                                    "rosbag2 folder)")
                found.append(path)
            else:
                found += _bags_under(path)
        if not found:
            raise ToolError(f"input {text!r}: no bag found (a rosbag2 folder has a "
                            "metadata.yaml or .mcap/.db3 files; a dataset folder has "
                            "corner_case.json)")
        bags += [p for p in found if p.resolve() not in {b.resolve() for b in bags}]
    return bags


def label_jobs(bags: list[Path], out_dir: Path) -> list[LabelJob]:
    """One job per bag, output named after the bag (folder name, or file name without its
    suffix). ToolError when two bags would get the same output name or an input lies in
    the output folder."""
    jobs: dict[str, LabelJob] = {}
    out = out_dir.resolve()
    for bag in bags:
        if out == bag.resolve() or out in bag.resolve().parents:
            raise ToolError(f"input {bag} is inside the output folder {out_dir}")
        name = bag.name if bag.is_dir() else bag.stem
        if name in jobs:
            raise ToolError(f"inputs {jobs[name].source} and {bag} would both write "
                            f"{out_dir / name}; label them into separate output folders")
        jobs[name] = LabelJob(bag, name, dataset=is_dataset(bag))
    return list(jobs.values())


def actor_count(text: str) -> int:
    """argparse type: ``auto`` (0) or a whole number >= 1."""
    return 0 if text == "auto" else positive_int(text)


def non_negative_float(text: str) -> float:
    """argparse type: 0 or a positive number."""
    return 0.0 if text.strip() in ("0", "0.0") else positive_float(text)


def build_parser() -> ToolParser:
    parser = ToolParser(
        prog="vlsam-label", description=__doc__.splitlines()[0],
        epilog="Exit status: 0 ok, 2 error (arguments, configuration, models, or some bag "
               "failed while the others finished), 3 ok but some frames were skipped or "
               "unreadable, 130 interrupted (checkpoints kept: run again to resume).")
    parser.add_argument("inputs", nargs="*", metavar="BAG|FOLDER|GLOB",
                        help="input bags (rosbag2 folders, .mcap/.db3 files), folders to "
                             "search for bags, or glob patterns (quoted)")
    parser.add_argument("--out", help="output folder (created if missing; one bag per "
                                      "input, named after it)")
    add_config_source_options(parser)
    add_replay_arguments(parser)
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else "
                                          "a local Ray in this process on 127.0.0.1)")
    parser.add_argument("--actors", type=actor_count, default=0, metavar="N|auto",
                        help="pipeline actors (default auto: as many as the cluster's GPUs "
                             "or CPUs hold at the per-actor sizes)")
    parser.add_argument("--cpus-per-actor", type=positive_float, default=1.0,
                        help="CPUs reserved per actor (default 1)")
    parser.add_argument("--gpus-per-actor", type=non_negative_float, default=0.0,
                        help="GPUs per actor (default 0; 1 = one actor per GPU, 0.5 = two "
                             "actors share a GPU); use with --set device=cuda")
    parser.add_argument("--in-flight", type=positive_int, default=2,
                        help="calls (of --batch frames) queued per actor at most (default "
                             "2): backpressure")
    parser.add_argument("--batch", type=positive_int, default=1,
                        help="frames per actor call (default 1; more saves Ray round trips "
                             "when a frame takes milliseconds)")
    parser.add_argument("--frame-retries", type=positive_int, default=2,
                        help="times a frame is sent again after its actor died (default 2)")
    parser.add_argument("--actor-restarts", type=int, default=4,
                        help="dead actors replaced at most (default 4)")
    parser.add_argument("--num-cpus", type=positive_int,
                        help="local Ray only: CPUs it may use (default: all)")
    parser.add_argument("--num-gpus", type=int, help="local Ray only: GPUs it may use "
                                                     "(default: all it finds)")
    parser.add_argument("--object-store-mb", type=positive_int, default=200,
                        help="local Ray only: object store size in MiB (default 200)")
    parser.add_argument("--checkpoint-every", type=positive_float, default=2.0,
                        help="seconds between checkpoint syncs to disk (default 2)")
    parser.add_argument("--summary", help="write the summary as JSON to this file")
    add_config_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.list_keys:
        print(list_keys_text())
        return EXIT_OK
    if not args.print_config and (not args.inputs or args.out is None):
        parser.error("the following arguments are required: BAG|FOLDER|GLOB, --out")

    def body() -> int:
        cfg = config_from_source_options(args)
        if args.print_config:
            print(config_text(cfg, args.node_name, "vlsam-label"), end="")
            return EXIT_OK
        check_config(cfg)
        out_dir = Path(args.out)
        if out_dir.exists() and not out_dir.is_dir():
            raise ToolError(f"--out {out_dir}: not a folder")
        check_output_parent(out_dir, "--out folder")
        jobs = label_jobs(find_bags(args.inputs), out_dir)
        if args.summary:
            check_output_parent(Path(args.summary), "--summary file")
        options = replay_options_from_args(args)
        pool = PoolSettings(args.actors, args.cpus_per_actor, args.gpus_per_actor,
                            args.in_flight, args.batch, args.frame_retries,
                            max(0, args.actor_restarts))
        ray_settings = RaySettings(args.address, args.num_cpus, args.num_gpus,
                                   args.object_store_mb)
        from vlsam_ros.core.pipeline import build_pipeline

        summary = label_bags(jobs, out_dir, build_pipeline, cfg, options, pool, ray_settings,
                             args.checkpoint_every)
        for line in summary.lines():
            print(line)
        if args.summary:
            write_text_atomically(args.summary, json.dumps(summary.as_dict(), indent=2) + "\n")
        if summary.failed:
            return EXIT_USAGE
        partial = summary.skipped or any(b.truncated_input for b in summary.bags)
        return EXIT_PARTIAL if partial else EXIT_OK

    return run_tool("vlsam-label", body, (BagError, ReplayError, PoolError))


if __name__ == "__main__":
    raise SystemExit(main())
