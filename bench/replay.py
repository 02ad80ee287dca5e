"""Replay throughput and the replay tool's overhead over bare pipeline calls.

For each pipeline, the same N frames (generated street scenes, rgb8 in an mcap bag) go
through (a) a bare loop of ``pipeline.run(rgb)`` on frames already in memory and (b)
``vlsam_ros.offline.replay.replay_bag.replay_bag`` (read, decode, run, convert, serialise, write).
Printed: frames/s of both, the overhead per frame = (replay wall - bare wall) / N, and the
in-run overhead = (replay wall - time spent inside pipeline.run during the replay) / N,
which does not suffer from load changes between the two runs on a shared machine.

Pipelines: ``null`` (returns a fixed one-detection FrameResult: the tool's own cost),
``tiny`` (the production loaders on the tiny random LLaVA + MobileSAM of
``vlsam-make-tiny-models``). Numbers are wall-clock on this machine; compare ratios.

Usage: python bench/replay.py [--frames 20] [--size 64x48] [--models DIR] [--pipelines null tiny]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from vlsam_ros.core.config import from_flat
from vlsam_ros.offline.datasets.coda_dataset import load_coda_dataset, read_frame_rgb
from vlsam_ros.core.results import Detection, FrameResult
from vlsam_ros.offline.replay import replay_bag as rb
from vlsam_ros.offline.datasets.dataset_to_bag import dataset_to_bag
from vlsam_ros.offline.datasets.make_demo_dataset import make_demo_dataset
from vlsam_ros.testing.make_tiny_models import make_tiny_models, tiny_model_overrides


class NullPipeline:
    """Returns one fixed detection covering the top-left quarter: no model cost at all."""

    def run(self, image: np.ndarray) -> FrameResult:
        h, w = image.shape[:2]
        mask = np.zeros((h, w), dtype=bool)
        mask[: h // 2, : w // 2] = True
        det = Detection("object", 0.5, mask, (0, 0, w // 2, h // 2),
                        np.array([[1.5, 1.5]], np.float32), np.array([1], np.int8))
        return FrameResult((det,), "object", 0.0, 0.0, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--size", default="64x48", help="WIDTHxHEIGHT of the frames")
    parser.add_argument("--models", help="tiny model folder (built into a temp dir if absent)")
    parser.add_argument("--pipelines", nargs="+", default=["null", "tiny"],
                        choices=["null", "tiny"])
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_demo_dataset(tmp / "coda", args.frames, width, height, seed=0)
        ds = load_coda_dataset(tmp / "coda")
        bag = dataset_to_bag(ds, tmp / "in")
        frames = [read_frame_rgb(f) for f in ds.frames]
        for name in args.pipelines:
            if name == "null":
                cfg = from_flat({"device": "cpu"})
                pipeline = NullPipeline()
            else:
                from vlsam_ros.core.pipeline import build_pipeline

                models = Path(args.models) if args.models else make_tiny_models(tmp / "models")
                cfg = from_flat(tiny_model_overrides(models))
                pipeline = build_pipeline(cfg)
                pipeline.run(frames[0])  # warm-up (lazy inits, allocator)
            t0 = time.perf_counter()
            for rgb in frames:
                pipeline.run(rgb)
            bare = time.perf_counter() - t0
            t0 = time.perf_counter()
            summary = rb.replay_bag(bag, tmp / f"out_{name}", pipeline, cfg,
                                    rb.ReplayOptions(progress=False))
            replay = time.perf_counter() - t0
            n = summary.frames
            in_run = summary.wall_s - summary.pipeline_s  # same run: immune to load drift
            print(f"{name:5s} {width}x{height} N={n}: bare {n / bare:8.2f} frames/s, "
                  f"replay {n / replay:8.2f} frames/s; overhead vs bare run "
                  f"{1000 * (replay - bare) / n:8.2f} ms/frame (replay/bare = "
                  f"{replay / bare:.3f}); in-run overhead (replay wall - time inside "
                  f"pipeline.run) {1000 * in_run / n:6.2f} ms/frame = "
                  f"{100 * in_run / summary.wall_s:.2f} % of replay wall")


if __name__ == "__main__":
    main()
