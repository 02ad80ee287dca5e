"""Cost per frame of each profile (config/profiles) and of the fast default, measured on one
frame with tiny random models on this machine.

    source scripts/ros_env.sh && python bench/profiles.py [--frames 2] [--threads 1]

Each profile's configuration is built exactly as the tools build it (schema defaults ->
config/vlsam.yaml -> profile overlay), then only the models are swapped for tiny seeded
random ones (``vlsam_ros.testing.make_tiny_models``): the VLM of the profile's own family
(``llava`` for paper, ``idefics3``/SmolVLM for edge and cpu), MobileSAM ``vit_t`` for every
profile (a random ViT-H is a 2.5 GB file; no count below depends on the SAM variant, only
the encoder's time does), ``device=cpu`` and ``float32``. The recipe (views, questions,
token budget, refinement, sampling) stays the profile's.

Per profile and frame:

* ``vlm_sequences``: (image, question) pairs in the frame's one VLM batch = views x questions;
* ``generated_tokens``: tokens generated in that batch (each sequence up to and including
  its first EOS), next to ``token_budget`` = sequences x ``vlm.max_new_tokens`` (random
  weights rarely say EOS, so they use most of the budget: an upper bound for real models);
* ``sam_prompts`` / ``decoder_calls``: SAM decoder prompts decoded and decoder calls;
* ``candidates`` (masks entering NMS) and ``detections``;
* ``frame_ms``: wall time of ``Pipeline.run`` (median over ``--frames`` after one warm-up
  frame), with the stage split; ``build_ms``: loading plus the one-off question generation;
* ``nms``: on the frame's own candidates, the merging as the pipeline does it now (one
  NMS over all views in full-frame coordinates) against the former two-stage merging (NMS
  per view in view coordinates, survivors mapped to the full frame, NMS across views):
  milliseconds (median of ``--nms-repeats``) and how many detections each keeps.

Random tiny models name few objects, so their frames give NMS little to do; the same
one-stage vs two-stage timing therefore also runs on a synthetic paper-scale workload
(``synthetic_paper_candidates``: ``--synthetic-objects`` objects, 5 views, 10 questions,
2 masks per object and question).

The weights are random: detections and candidate counts only show the pipeline's work on
such a frame, not what real models would find. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PROFILES = ("default", "edge", "cpu", "paper")   # "default": config/vlsam.yaml alone


def profile_config(profile: str, model_dir: Path):
    """The profile's configuration with its models swapped for the tiny ones."""
    from vlsam_ros.core.config_files import load_config
    from vlsam_ros.testing.make_tiny_models import tiny_model_overrides

    name = None if profile == "default" else profile
    base = load_config(ROOT / "config" / "vlsam.yaml", profile=name)
    tiny = tiny_model_overrides(model_dir, family=base.vlm.family, sam_type="vit_t")
    del tiny["vlm.max_new_tokens"]                      # keep the profile's token budget
    return load_config(ROOT / "config" / "vlsam.yaml", tiny, profile=name)


class _FrameProbe:
    """Counts generated tokens (wraps the backend's generate) and records the inputs of
    the pipeline's merging (its view -> full-frame mapping and its NMS) for one frame."""

    def __init__(self, pipe) -> None:
        import vlsam_ros.core.pipeline as pipeline_module
        from vlsam_ros.core import merging

        self.module = pipeline_module
        self.tokens: list[int] = []
        self.mapped: list[tuple] = []          # (candidate in view frame, view, full shape)
        self.nms_inputs: list[int] = []
        vlm = pipe.vlm
        generate, to_full = vlm._generate, pipeline_module._to_full_frame
        merge = merging.merge_candidates

        def counting_generate(inputs, vlm_cfg):
            sequences = generate(inputs, vlm_cfg)
            prompt = inputs["input_ids"].shape[1]
            self.tokens += [vlm._until_eos(row)[1] for row in sequences[:, prompt:].tolist()]
            return sequences

        def recording_to_full(c, view, shape):
            self.mapped.append((c, view, shape))
            return to_full(c, view, shape)

        def recording_merge(candidates, iou):
            self.nms_inputs.append(len(candidates))
            return merge(candidates, iou)

        vlm._generate = counting_generate
        pipeline_module._to_full_frame = recording_to_full
        merging.merge_candidates = recording_merge
        self._restore = lambda: (setattr(pipeline_module, "_to_full_frame", to_full),
                                 setattr(merging, "merge_candidates", merge),
                                 vars(vlm).pop("_generate", None))

    def reset(self) -> None:
        self.tokens, self.mapped, self.nms_inputs = [], [], []

    def close(self) -> None:
        self._restore()


def time_nms(mapped: list[tuple], iou: float, repeats: int) -> dict:
    """One-stage (now) vs two-stage (before) merging of ``mapped`` = [(candidate in its
    view's frame, view, full-frame shape)], each including the view -> full-frame mapping."""
    import vlsam_ros.core.pipeline as pipeline_module

    from vlsam_ros.core import merging

    merge, to_full = merging.merge_candidates, pipeline_module._to_full_frame
    by_view: dict[tuple, list] = {}
    for c, view, shape in mapped:
        by_view.setdefault((view.x0, view.y0, view.width, view.height), []).append(
            (c, view, shape))

    def one_stage():
        return merge([to_full(c, v, s) for c, v, s in mapped], iou)

    def two_stage():
        survivors = []
        for items in by_view.values():
            _, view, shape = items[0]
            survivors += [to_full(c, view, shape) for c in merge([c for c, _, _ in items], iou)]
        return merge(survivors, iou)

    out = {"candidates": len(mapped), "views": len(by_view)}
    for name, fn in (("one_stage", one_stage), ("two_stage", two_stage)):
        kept = fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        out[f"{name}_ms"] = round(statistics.median(times), 1)
        out[f"{name}_detections"] = len(kept)
    return out


def synthetic_paper_candidates(height: int, width: int, objects: int, questions: int,
                               masks_per_object: int, seed: int = 0) -> list[tuple]:
    """A paper-scale merging workload without real models: ``objects`` rectangles in the
    frame; every view (full + 4 corner tiles) that holds an object's centre proposes it
    once per question and refinement mask, each time jittered by up to 6 % of its size
    (so the proposals of one object overlap with IoU well above 0.5, as repeated answers
    do), clipped to the view and in the view's coordinates, with a random score."""
    import numpy as np

    from vlsam_ros.core.masks import encode_rle
    from vlsam_ros.core.refinement import Candidate
    from vlsam_ros.core.tiles import make_views

    rng = np.random.default_rng(seed)
    views = make_views(height, width, True)
    boxes = []
    for _ in range(objects):
        w, h = rng.integers(width // 20, width // 4), rng.integers(height // 20, height // 4)
        x0, y0 = rng.integers(0, width - w), rng.integers(0, height - h)
        boxes.append((int(x0), int(y0), int(x0 + w), int(y0 + h)))
    out = []
    points, labels = np.zeros((2, 2), np.float32), np.array([1, 0], np.int8)
    for view in views:
        for x0, y0, x1, y1 in boxes:
            cx, cy = (x0 + x1) / 2 - view.x0, (y0 + y1) / 2 - view.y0
            if not (0 <= cx < view.width and 0 <= cy < view.height):
                continue
            for _ in range(questions * masks_per_object):
                jx, jy = 0.06 * (x1 - x0), 0.06 * (y1 - y0)
                bx0, bx1 = (int(np.clip(v - view.x0 + rng.uniform(-jx, jx), 0, view.width))
                            for v in (x0, x1))
                by0, by1 = (int(np.clip(v - view.y0 + rng.uniform(-jy, jy), 0, view.height))
                            for v in (y0, y1))
                mask = np.zeros((view.height, view.width), dtype=bool)
                mask[by0:max(by1, by0 + 1), bx0:max(bx1, bx0 + 1)] = True
                out.append((Candidate("object", float(rng.uniform(0.1, 1.0)), encode_rle(mask),
                                      int(mask.sum()), points, labels, 0),
                            view, (height, width)))
    return out


def bench_profile(profile: str, model_dir: Path, image, frames: int, nms_repeats: int) -> dict:
    from vlsam_ros.core.pipeline import build_pipeline

    cfg = profile_config(profile, model_dir)
    start = time.perf_counter()
    pipe = build_pipeline(cfg)
    build_ms = (time.perf_counter() - start) * 1e3
    questions = len(pipe.questions())
    views = 5 if cfg.ensemble.tiles else 1
    probe = _FrameProbe(pipe)
    try:
        pipe.run(image)                                  # warm-up
        runs = []
        for _ in range(frames):
            probe.reset()
            start = time.perf_counter()
            result = pipe.run(image)
            runs.append(((time.perf_counter() - start) * 1e3, dict(result.stage_ms),
                         len(result.detections), list(probe.tokens)))
    finally:
        probe.close()
    nms = time_nms(probe.mapped, cfg.ensemble.nms_iou, nms_repeats)
    frame_ms = statistics.median(r[0] for r in runs)
    stages, detections, tokens = runs[-1][1], runs[-1][2], runs[-1][3]
    return {
        "profile": profile, "vlm_family": cfg.vlm.family, "views": views,
        "questions": questions, "vlm_sequences": len(tokens),
        "generated_tokens": sum(tokens),
        "token_budget": views * questions * cfg.vlm.max_new_tokens,
        "sam_prompts": int(stages["prompts"]), "decoder_calls": int(stages["decoder_calls"]),
        "candidates": nms["candidates"], "detections": detections,
        "frame_ms": round(frame_ms, 1),
        "stage_ms": {k: round(stages[k], 1) for k in ("vlm", "encoder", "decoder",
                                                      "prompts_merge", "total")},
        "build_ms": round(build_ms, 1), "refinement_rounds": cfg.prompts.refinement_rounds,
        "do_sample": cfg.vlm.do_sample, "nms": nms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES))
    parser.add_argument("--frames", type=int, default=2, help="timed frames per profile")
    parser.add_argument("--nms-repeats", type=int, default=5)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--synthetic-objects", type=int, nargs="*", default=[8, 16],
                        help="object counts of the synthetic paper-scale merging workloads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from segment import _street_image

    from vlsam_ros.core.config_files import load_config
    from vlsam_ros.testing.make_tiny_models import make_tiny_models

    families = sorted({load_config(None, profile=None if p == "default" else p).vlm.family
                       for p in args.profiles})
    image = _street_image(args.height, args.width, seed=0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vlsam_bench_profiles_") as tmp:
        model_dir = make_tiny_models(Path(tmp), families=families, sam_types=("vit_t",))
        for profile in args.profiles:
            row = bench_profile(profile, model_dir, image, args.frames, args.nms_repeats)
            rows.append(row)
            print(f"{profile}: {row}", flush=True)
    synthetic = []
    for objects in args.synthetic_objects:
        mapped = synthetic_paper_candidates(args.height, args.width, objects, 10, 2)
        synthetic.append({"objects": objects, "questions": 10, "masks_per_object": 2,
                          **time_nms(mapped, 0.5, args.nms_repeats)})
        print(f"synthetic paper-scale merging: {synthetic[-1]}", flush=True)
    print("\n| profile | views x questions = VLM sequences | generated tokens (budget) | "
          "SAM prompts | frame ms (tiny models) | NMS one-stage / two-stage ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['profile']} | {r['views']} x {r['questions']} = {r['vlm_sequences']} | "
              f"{r['generated_tokens']} ({r['token_budget']}) | {r['sam_prompts']} | "
              f"{r['frame_ms']:.0f} | {r['nms']['one_stage_ms']} / {r['nms']['two_stage_ms']} |")
    print(json.dumps({"profiles": rows, "synthetic_nms": synthetic,
                      "image": [args.height, args.width],
                      "torch_threads": torch.get_num_threads(),
                      "cpu": platform.processor() or platform.machine()}))


if __name__ == "__main__":
    main()
