"""vlsam-tune: label-free tuning of the method's run-time parameters on unlabelled frames.

    vlsam-tune OUT_PARAMS.yaml (--images FOLDER | --bag BAG [--topics T ...]) --clip FOLDER
        [--params-file config/vlsam.yaml] [--profile NAME|FILE] [--set key=value ...]
        [--space space.yaml] [--trials 50] [--seed 0] [--every 1] [--max-frames 20]
        [--checkpoint FILE] [--text-template "a photo of a {}."] [--vlm-cache-gib 2]
        [--node-name vlsam] [--no-progress]
    vlsam-tune --print-space | --list-keys | --print-config [config options]

Loads the VLM and SAM of the configuration (params file, then profile, then ``--set``,
as every tool) once, then runs a seeded random search (``search.py``) over the search space
(``search_space.py``; ``--print-space`` shows the default) and scores each trial with the
contrastive reward of PnP-OVSS (``reward.py``: for every detection, a CLIP model's
similarity of its name with the image kept inside the mask minus that with the image kept
outside it, summed per frame, averaged over frames). The best configuration is written as
a complete ROS 2 parameter file (the format of config/vlsam.yaml) that ``vlsam-node-runner
--params-file`` and ``ros2 launch vlsam_ros vlsam.launch.py params_file:=`` load.

Progress is a bar on stderr. Every finished trial is appended to the checkpoint (default
``OUT_PARAMS.yaml.trials.jsonl``); after an interrupt (exit 130) or a crash, the same
command resumes where it stopped and gives the same result as an uninterrupted run.
The CLIP model is read from a local folder (``--clip``); nothing is downloaded. Trials
with the same VLM and attention settings reuse the VLM's answers (``vlm_cache.py``,
``--vlm-cache-gib``), so prompt-only changes cost no VLM run.
Exit status: 0 done, 2 user error (bad arguments, configuration, frames, missing models,
an existing output, a checkpoint of another search), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from vlsam_ros.core.config_files import load_config, parse_set_flags
from vlsam_ros.offline.replay.bag_io import BagError
from vlsam_ros.offline.tuning.frames import FramesError, frames_from_bag, frames_from_folder
from vlsam_ros.offline.tuning.reward import DEFAULT_TEXT_TEMPLATE
from vlsam_ros.offline.tuning.search import CheckpointError, tune
from vlsam_ros.offline.tuning.search_space import default_space, load_space
from vlsam_ros.tools.cli import (EXIT_OK, ToolError, ToolParser, check_input, check_new_output,
                                 positive_int, run_tool, write_text_atomically)
from vlsam_ros.tools.config_options import (
    add_config_options,
    config_text,
    list_keys_text,
    profile_help,
)

PROG = "vlsam-tune"
LOG = logging.getLogger(__name__)


def build_parser() -> ToolParser:
    p = ToolParser(prog=PROG, description=__doc__.splitlines()[0],
                   formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("out", nargs="?", type=Path,
                   help="parameter file to write (must not exist)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", type=Path, help="folder of unlabelled images")
    src.add_argument("--bag", type=Path, help="rosbag2 (mcap or sqlite3) with camera topics")
    p.add_argument("--topics", nargs="+", help="camera topics of --bag (default: cameras of "
                   "the configuration)")
    p.add_argument("--clip", type=Path, help="local folder of a CLIP model (save_pretrained "
                   "layout), e.g. models/clip-vit-base-patch32")
    p.add_argument("--params-file", type=Path, help="ROS 2 parameter YAML the search starts "
                   "from (e.g. config/vlsam.yaml); schema defaults if omitted")
    p.add_argument("--profile", metavar="NAME|FILE", help=profile_help("--params-file"))
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override one parameter (repeatable)")
    p.add_argument("--space", type=Path, help="search space YAML (default: the built-in "
                   "space, see --print-space)")
    p.add_argument("--trials", type=positive_int, default=50, help="configurations to try "
                   "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the search (default: "
                   "%(default)s)")
    p.add_argument("--every", type=positive_int, default=1, help="take every N-th frame "
                   "(default: %(default)s)")
    p.add_argument("--max-frames", type=positive_int, default=20, help="most frames used "
                   "(default: %(default)s)")
    p.add_argument("--checkpoint", type=Path, help="trials file for resuming (default: "
                   "OUT.trials.jsonl)")
    p.add_argument("--text-template", default=DEFAULT_TEXT_TEMPLATE,
                   help="text scored against each mask; {} is the object name "
                   "(default: %(default)r)")
    p.add_argument("--clip-batch", type=positive_int, default=16, help="images per CLIP "
                   "forward pass (default: %(default)s)")
    p.add_argument("--vlm-cache-gib", type=float, default=2.0, help="memory for reusing "
                   "the VLM's answers between trials with the same VLM and attention "
                   "settings, GiB; 0 runs the VLM in every trial (default: %(default)s)")
    p.add_argument("--node-name", default="vlsam", help="node entry of the parameter files "
                   "read and written (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-space", action="store_true", help="print the search space (the "
                   "default, or --space) as YAML and exit")
    add_config_options(p)
    return p


def _default_pipeline(cfg: Any) -> Any:
    from vlsam_ros.core.pipeline import build_pipeline

    return build_pipeline(cfg)


def _default_scorer(folder: Path, device: str, batch: int) -> Any:
    from vlsam_ros.offline.tuning.clip_scorer import ClipScorer

    return ClipScorer.load(folder, device, batch)


def main(argv: Sequence[str] | None = None, *,
         pipeline_factory: Callable[[Any], Any] = _default_pipeline,
         scorer_factory: Callable[[Path, str, int], Any] = _default_scorer) -> int:
    """The command; the factories exist for tests (a planted pipeline, a synthetic
    scorer); production uses the defaults."""
    args = build_parser().parse_args(argv)
    return run_tool(PROG, lambda: _body(args, pipeline_factory, scorer_factory),
                    user_errors=(FramesError, CheckpointError, BagError))


def _body(args: argparse.Namespace, pipeline_factory: Callable[[Any], Any],
          scorer_factory: Callable[[Path, str, int], Any]) -> int:
    if args.list_keys:
        print(list_keys_text())
        return EXIT_OK
    space = load_space(args.space) if args.space is not None else default_space()
    if args.print_space:
        print(space.to_yaml(), end="")
        return EXIT_OK
    # Cheap checks first: configuration, inputs, outputs; then frames; then models.
    if args.params_file is not None:
        check_input(args.params_file, "--params-file", folder=False)
    cfg = load_config(args.params_file, parse_set_flags(args.overrides), args.node_name,
                      profile=args.profile)
    if args.print_config:
        print(config_text(cfg, args.node_name, PROG), end="")
        return EXIT_OK
    missing = [name for name, value in (("OUT", args.out), ("--clip", args.clip))
               if value is None]
    if args.images is None and args.bag is None:
        missing.append("--images or --bag")
    if missing:
        raise ToolError(f"missing {', '.join(missing)} (see {PROG} --help)")
    if args.topics and args.bag is None:
        raise ToolError("--topics needs --bag")
    if not args.vlm_cache_gib >= 0:
        raise ToolError(f"--vlm-cache-gib {args.vlm_cache_gib}: must be 0 or more")
    check_new_output(args.out, "output parameter file")
    checkpoint = args.checkpoint or args.out.with_name(args.out.name + ".trials.jsonl")
    check_input(args.clip, "--clip", folder=True)
    if args.images is not None:
        check_input(args.images, "--images", folder=True)
        frames = frames_from_folder(args.images, args.every, args.max_frames)
    else:
        check_input(args.bag, "--bag")
        frames = frames_from_bag(args.bag, args.topics or cfg.cameras, args.every,
                                 args.max_frames, cfg.node, args.node_name)
    scorer = scorer_factory(args.clip, cfg.device, args.clip_batch)
    pipeline = pipeline_factory(cfg)
    try:
        result, best_cfg = tune(pipeline, frames, scorer, space, args.trials, args.seed,
                                checkpoint, args.text_template, not args.no_progress,
                                int(args.vlm_cache_gib * 2**30))
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"finished trials are kept in {checkpoint}; run the same "
                                "command again to resume") from None
    from vlsam_ros.tools.write_params_yaml import params_yaml

    best = result.best
    header = (f"# Tuned by {PROG}: best of {len(result.trials)} trials (seed {args.seed}), "
              f"trial {best.index}, contrastive reward {best.reward:.6f} on {len(frames)} "
              f"frames.\n# Tuned keys: "
              + ", ".join(f"{k}={v}" for k, v in best.params.items()) + "\n")
    write_text_atomically(args.out, header + params_yaml(best_cfg, args.node_name))
    print(f"{PROG}: best reward {best.reward:.6f} (trial {best.index} of "
          f"{len(result.trials)}, {result.resumed} resumed); wrote {args.out}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
