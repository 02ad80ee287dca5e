"""Benchmark of the segmentation side: batched SAM decoding and a full-recipe frame.

1. ``batched_decode_speedup``: time of K single-prompt decoder calls divided by the time
   of one decoder call with all K prompts (MobileSAM vit_t, seeded random weights, same
   image embedding; median over repeats, after a warm-up).
2. Per-stage times of one full-recipe frame (tiles + question ensemble + refinement) with
   the tiny random models (VLM + vit_t) loaded through the production loaders.

Usage: ``PYTHONPATH=. python bench/segment.py [--objects 16] [--repeats 5] [--device cpu]
[--threads N] [--questions 10] [--skip-recipe]``.
The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _street_image(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    for _ in range(12):
        x0, y0 = rng.integers(0, width - 40), rng.integers(0, height - 40)
        w, h = rng.integers(15, 120), rng.integers(15, 90)
        image[y0:y0 + h, x0:x0 + w] = rng.integers(80, 256, 3)
    return image


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_decoder(model_dir: Path, objects: int, repeats: int, device: str,
                  image: np.ndarray) -> dict:
    from vlsam_ros.core.config import from_flat
    from vlsam_ros.core.segmenter import load_segmenter

    cfg = from_flat({"device": device, "sam.type": "vit_t",
                     "sam.checkpoint": str(model_dir / "sam_vit_t.pt")})
    seg = load_segmenter(cfg)
    embedding = seg.embed(image)
    rng = np.random.default_rng(0)
    h, w = image.shape[:2]
    points = np.stack([rng.uniform(0, w, (objects, 2)), rng.uniform(0, h, (objects, 2))],
                      axis=-1).astype(np.float32)                    # (K, 2, 2)
    labels = np.tile(np.array([1, 0]), (objects, 1))

    def batched():
        seg.segment(embedding, points, labels)

    def loop():
        for i in range(objects):
            seg.segment(embedding, points[i:i + 1], labels[i:i + 1])

    batched(), loop()                                                 # warm-up
    batched_ms = _median_ms(batched, repeats)
    loop_ms = _median_ms(loop, repeats)
    encoder_ms = _median_ms(lambda: seg.embed(image), max(1, repeats // 2))
    return {"objects": objects, "loop_ms": round(loop_ms, 1), "batched_ms": round(batched_ms, 1),
            "batched_decode_speedup": round(loop_ms / batched_ms, 2),
            "vit_t_encoder_ms": round(encoder_ms, 1)}


def bench_full_recipe(model_dir: Path, device: str, image: np.ndarray, questions: int,
                      frames: int) -> dict:
    from vlsam_ros.core.config import from_flat
    from vlsam_ros.core.pipeline import build_pipeline
    from vlsam_ros.tools.make_tiny_models import tiny_model_overrides

    values = tiny_model_overrides(model_dir)
    values.update({"device": device, "ensemble.tiles": True,
                   "ensemble.num_questions": questions, "prompts.refinement_rounds": 2})
    start = time.perf_counter()
    pipe = build_pipeline(from_flat(values))
    build_ms = (time.perf_counter() - start) * 1e3
    per_frame = []
    for _ in range(frames):
        result = pipe.run(image)
        per_frame.append({**{k: round(v, 1) for k, v in pipe.last_stage_ms.items()},
                          "detections": len(result.detections)})
    return {"questions": questions, "views": 5, "build_ms_incl_question_generation":
            round(build_ms, 1), "frames": per_frame}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--questions", type=int, default=10, help="paper: 10")
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--skip-recipe", action="store_true",
                        help="only the decoder measurement")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from vlsam_ros.tools.make_tiny_models import make_tiny_models

    torch.manual_seed(0)
    image = _street_image(args.height, args.width, seed=0)
    with tempfile.TemporaryDirectory(prefix="vlsam_bench_") as tmp:
        model_dir = make_tiny_models(Path(tmp), families=("llava",), sam_types=("vit_t",))
        decoder = bench_decoder(model_dir, args.objects, args.repeats, args.device, image)
        print(f"decoder: {decoder}", flush=True)
        recipe = None
        if not args.skip_recipe:
            recipe = bench_full_recipe(model_dir, args.device, image, args.questions,
                                       args.frames)
            for i, frame in enumerate(recipe["frames"]):
                print(f"full-recipe frame {i}: {frame}", flush=True)
    summary = {"batched_decode_speedup": decoder["batched_decode_speedup"],
               "decoder": decoder, "full_recipe": recipe,
               "image": [args.height, args.width], "device": args.device,
               "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or
               platform.machine()}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
