"""vlsam-label's cost over single-process replay, and its scaling from 1 to 2 actors.

The same bags (generated street scenes from ``vlsam-make-demo-dataset``, rgb8, split into
``--bags`` mcap bags of different lengths) are labelled, side by side in one run and in
turns (``--repeats``, the minimum kept):

* ``replay``: ``vlsam_ros.offline.replay.replay_bag.replay_bag`` on each bag in this process, with a
  pipeline built once;
* ``ray_1``: ``vlsam_ros.offline.labelling.label_bags`` with 1 actor (1 CPU);
* ``ray_2``: the same with 2 actors (1 CPU each);

each Ray case for every ``--batches`` size (frames per actor call; the tool's default is 1).

Every pipeline runs with one torch/OMP thread (Ray gives a 1-CPU actor one thread; the
replay here is set to the same), so the comparison is the tools' cost, not threading.
Ray times start once the actors are ready (their pipelines built), like the replay's, which
starts with a built pipeline; Ray's own start is printed separately.

Pipelines: ``standin`` (``vlsam_ros.testing.stand_in_pipeline``: a fixed CPU cost of
``--cost-ms`` per frame, one detection), ``tiny`` (the production loaders on the tiny random
LLaVA + MobileSAM of ``vlsam-make-tiny-models``; seconds per frame on a busy CPU).

Last line, JSON: ``overhead_1_actor`` = ray_1 wall / replay wall (target <= 1.10) and
``scaling_2_actors`` = ray_1 wall / ray_2 wall (throughput with 2 actors / with 1), for the
stand-in at the first batch size; every pipeline and batch size under ``by_pipeline``.

Usage: OMP_NUM_THREADS=1 python bench/label.py [--pipelines standin tiny] [--frames 60]
    [--tiny-frames 6] [--bags 3] [--size 320x240] [--cost-ms 50] [--repeats 2] [--in-flight 2]
    [--batches 1 4]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from vlsam_ros.core.config import from_flat  # noqa: E402
from vlsam_ros.offline.datasets.coda_dataset import load_coda_dataset  # noqa: E402
from vlsam_ros.offline.datasets.dataset_to_bag import dataset_to_bag  # noqa: E402
from vlsam_ros.offline.datasets.make_demo_dataset import make_demo_dataset  # noqa: E402
from vlsam_ros.offline.labelling.actor_pool import PoolSettings  # noqa: E402
from vlsam_ros.offline.labelling.label_bags import LabelJob, label_bags  # noqa: E402
from vlsam_ros.offline.labelling.ray_session import RaySettings, start_ray, stop_ray  # noqa: E402
from vlsam_ros.offline.replay import replay_bag as rb  # noqa: E402
from vlsam_ros.testing.make_tiny_models import make_tiny_models, tiny_model_overrides  # noqa: E402
from vlsam_ros.testing.stand_in_pipeline import StandInFactory  # noqa: E402

QUIET = rb.ReplayOptions(progress=False)


def make_bags(root: Path, frames: int, bags: int, width: int, height: int) -> list[Path]:
    """``bags`` mcap bags of 1, 2, 3... parts of ``frames`` generated frames in all."""
    import dataclasses

    root.mkdir(parents=True, exist_ok=True)
    make_demo_dataset(root / "coda", frames, width, height, seed=0)
    ds = load_coda_dataset(root / "coda")
    weights = list(range(1, bags + 1))
    cuts = [round(frames * sum(weights[:i]) / sum(weights)) for i in range(bags + 1)]
    out = []
    for i in range(bags):
        part = dataclasses.replace(ds, frames=tuple(ds.frames[cuts[i]:cuts[i + 1]]))
        out.append(dataset_to_bag(part, root / f"bag{i}_{frames}"))
    return out


def time_replay(bags: list[Path], out: Path, pipeline, cfg) -> float:
    t0 = time.perf_counter()
    for bag in bags:
        rb.replay_bag(bag, out / bag.name, pipeline, cfg, QUIET)
    return time.perf_counter() - t0


IN_FLIGHT = [2]


def time_ray(bags: list[Path], out: Path, factory, cfg, actors: int, batch: int) -> float:
    """Wall time of labelling, from the moment the actors are ready."""
    ready: list[float] = []
    summary = label_bags([LabelJob(b, b.name) for b in bags], out, factory, cfg, QUIET,
                         PoolSettings(actors=actors, num_cpus=1, in_flight=IN_FLIGHT[0],
                                      batch=batch),
                         on_pool=lambda pool: ready.append(time.perf_counter()))
    assert not summary.failed and summary.retries == [], summary.lines()
    return time.perf_counter() - ready[0]


def measure(name: str, bags: list[Path], tmp: Path, factory, cfg, repeats: int,
            batches: list[int]) -> dict:
    """Best walls of replay and of Ray with 1 and 2 actors per batch size; the ratios."""
    import torch

    torch.set_num_threads(1)
    pipeline = factory(cfg)
    walls: dict[str, list[float]] = {"replay": []}
    for r in range(repeats):  # in turns, so load changes hit all alike
        walls["replay"].append(time_replay(bags, tmp / f"{name}_replay{r}", pipeline, cfg))
        for b in batches:
            for actors in (1, 2):
                key = f"ray_{actors}_batch{b}"
                walls.setdefault(key, []).append(time_ray(
                    bags, tmp / f"{name}_{key}_{r}", factory, cfg, actors, b))
    best = {k: min(v) for k, v in walls.items()}
    ratios = {b: {"overhead_1_actor": best[f"ray_1_batch{b}"] / best["replay"],
                  "scaling_2_actors": best[f"ray_1_batch{b}"] / best[f"ray_2_batch{b}"]}
              for b in batches}
    return {"walls_s": walls, "best_s": best, "by_batch": ratios, **ratios[batches[0]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", nargs="+", default=["standin", "tiny"],
                        choices=["standin", "tiny"])
    parser.add_argument("--frames", type=int, default=60, help="stand-in frames in all")
    parser.add_argument("--tiny-frames", type=int, default=6, help="tiny-model frames")
    parser.add_argument("--bags", type=int, default=3)
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT of the frames")
    parser.add_argument("--cost-ms", type=float, default=50.0,
                        help="stand-in CPU cost per frame")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=2, help="frames queued per actor")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4],
                        help="frames per actor call to measure (stand-in; the first one is "
                             "the JSON's headline; the tiny models use 1)")
    parser.add_argument("--models", help="tiny model folder (built into a temp dir if absent)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    IN_FLIGHT[0] = args.in_flight
    t0 = time.perf_counter()
    started = start_ray(RaySettings(num_cpus=2, object_store_mb=200))
    ray_start_s = time.perf_counter() - t0
    results = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            for name in args.pipelines:
                if name == "standin":
                    cfg = from_flat({"device": "cpu"})
                    factory = StandInFactory(cost_s=args.cost_ms / 1000)
                    bags = make_bags(tmp / name, args.frames, args.bags, width, height)
                else:
                    from vlsam_ros.core.pipeline import build_pipeline

                    models = Path(args.models) if args.models else make_tiny_models(
                        tmp / "models")
                    cfg = from_flat({**tiny_model_overrides(models), "vlm.max_new_tokens": 4,
                                     "prompts.refinement_rounds": 0})
                    factory = build_pipeline
                    bags = make_bags(tmp / name, args.tiny_frames, args.bags, width, height)
                batches = args.batches if name == "standin" else [1]
                res = measure(name, bags, tmp, factory, cfg, args.repeats, batches)
                frames = args.frames if name == "standin" else args.tiny_frames
                b = res["best_s"]
                for n in batches:
                    print(f"{name}: {frames} frames in {len(bags)} bags, {width}x{height}, "
                          f"batch {n}: replay {frames / b['replay']:.2f} frames/s, ray 1 actor "
                          f"{frames / b[f'ray_1_batch{n}']:.2f}, ray 2 actors "
                          f"{frames / b[f'ray_2_batch{n}']:.2f}; overhead_1_actor "
                          f"{res['by_batch'][n]['overhead_1_actor']:.3f}, scaling_2_actors "
                          f"{res['by_batch'][n]['scaling_2_actors']:.3f}", flush=True)
                results[name] = {"frames": frames, **res}
    finally:
        stop_ray(started)
    first = results[args.pipelines[0]]
    print(json.dumps({"overhead_1_actor": round(first["overhead_1_actor"], 3),
                      "scaling_2_actors": round(first["scaling_2_actors"], 3),
                      "pipeline": args.pipelines[0], "ray_start_s": round(ray_start_s, 2),
                      "batch": args.batches[0] if args.pipelines[0] == "standin" else 1,
                      "by_pipeline": {k: {"by_batch": {n: {m: round(x, 3) for m, x in r.items()}
                                                       for n, r in v["by_batch"].items()},
                                          "best_s": {n: round(s, 3)
                                                     for n, s in v["best_s"].items()}}
                                      for k, v in results.items()}}))


if __name__ == "__main__":
    main()
