"""Benchmark of the segmentation side: batched SAM decoding and a full-recipe frame.

1. ``batched_decode_speedup``: time of the per-object loop (K calls of the package's stock
   mask decoder, one prompt each) divided by the time of the pipeline's one batched
   factored decoder call with all K prompts (MobileSAM vit_t, seeded random weights, same
   image embedding; median over repeats, after a warm-up). The two same-decoder ratios
   (loop / batched with the stock decoder, and with the factored one) are printed beside
   it, so the share of batching and of the factored evaluation can be told apart, and
   ``speedup_bound_from_tail``: the per-object loop time over the time of the decoder work
   that is nonlinear in each prompt's own data (an upper bound for any exact batching).
2. Per-stage times of one full-recipe frame (tiles + question ensemble + refinement) with
   the tiny random models (VLM + vit_t) loaded through the production loaders.

Usage: ``PYTHONPATH=. python bench/segment.py [--objects 16] [--repeats 5] [--device cpu]
[--threads N] [--questions 10] [--skip-recipe]``.
The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
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


@torch.inference_mode()
def _per_prompt_tail(model: torch.nn.Module, objects: int) -> None:
    """The decoder work no batching can share: after the first transposed convolution every
    step (LayerNorm2d, GELU, second transposed convolution, GELU, hypernetwork dot product)
    is nonlinear in a per-prompt input, on 64*128*128 + 32*256*256 values per prompt. Runs
    the factored decoder's own tail for ``objects`` prompts in its CPU chunk size, so
    stock_loop_ms / its time bounds what any exact batched decoder can gain."""
    from vlsam_ros.core.segmenter.factored_decoder import per_prompt_upscaling_tail
    from vlsam_ros.core.segmenter.sam_adapter import CPU_DECODER_CHUNK

    upscaling = model.mask_decoder.output_upscaling
    mid, out = upscaling[3].weight.shape[:2]
    generator = torch.Generator().manual_seed(0)
    grid = (64, 64)
    for start in range(0, objects, CPU_DECODER_CHUNK):
        k = min(CPU_DECODER_CHUNK, objects - start)
        first = torch.randn(k, grid[0] * grid[1], 4, mid, generator=generator)
        per_prompt_upscaling_tail(upscaling, first, torch.ones(k, out), grid)


def bench_decoder(model_dir: Path, objects: int, repeats: int, device: str,
                  image: np.ndarray) -> dict:
    """Times the decoding of ``objects`` point-pair prompts on one image embedding.

    - stock_loop: one call of the package's MaskDecoder per object (sam.decoder=stock), the
      per-object loop the batched call replaces;
    - stock_batched: one stock call with all prompts;
    - factored_loop: one factored call per object (image-side cache built once per loop);
    - factored_batched: one factored call with all prompts (the pipeline's path), the
      image-side cache built inside the timed call.
    Every variant includes the prompt encoder and the postprocessing to full-resolution
    masks, as ``SamSegmenter.segment`` does.
    """
    from vlsam_ros.core.config import SamConfig, from_flat
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

    def fresh():
        """The same embedding without a cached image side."""
        return dataclasses.replace(embedding, decoder_cache={})

    def batched():
        return seg.segment(fresh(), points, labels)

    def loop():
        emb = fresh()
        return [seg.segment(emb, points[i:i + 1], labels[i:i + 1]) for i in range(objects)]

    times = {}
    outputs = {}
    for decoder in ("stock", "factored"):
        seg.configure(SamConfig(decoder=decoder))
        outputs[decoder] = batched()
        loop()                                                        # warm-up
        times[f"{decoder}_batched_ms"] = _median_ms(batched, repeats)
        times[f"{decoder}_loop_ms"] = _median_ms(loop, repeats)
    seg.configure(SamConfig())
    tail_ms = _median_ms(lambda: _per_prompt_tail(seg.model, objects), repeats)
    encoder_ms = _median_ms(lambda: seg.embed(image), max(1, repeats // 2))
    stock, factored = outputs["stock"], outputs["factored"]
    mask_pixels_differing = int((stock.masks != factored.masks).sum())
    return {"objects": objects, **{k: round(v, 1) for k, v in times.items()},
            "batched_decode_speedup": round(times["stock_loop_ms"]
                                            / times["factored_batched_ms"], 2),
            "speedup_same_decoder_factored": round(times["factored_loop_ms"]
                                                   / times["factored_batched_ms"], 2),
            "speedup_same_decoder_stock": round(times["stock_loop_ms"]
                                                / times["stock_batched_ms"], 2),
            "per_prompt_tail_ms": round(tail_ms, 1),
            "speedup_bound_from_tail": round(times["stock_loop_ms"] / tail_ms, 2),
            "factored_vs_stock_max_abs_logit_diff": float(np.abs(
                stock.low_res_logits - factored.low_res_logits).max()),
            "factored_vs_stock_mask_pixels_differing": mask_pixels_differing,
            "vit_t_encoder_ms": round(encoder_ms, 1)}


def bench_full_recipe(model_dir: Path, device: str, image: np.ndarray, questions: int,
                      frames: int) -> dict:
    from vlsam_ros.core.config import from_flat
    from vlsam_ros.core.pipeline import build_pipeline
    from vlsam_ros.testing.make_tiny_models import tiny_model_overrides

    values = tiny_model_overrides(model_dir)
    values.update({"device": device, "ensemble.tiles": True,
                   "ensemble.num_questions": questions, "prompts.refinement_rounds": 2})
    start = time.perf_counter()
    pipe = build_pipeline(from_flat(values))
    build_ms = (time.perf_counter() - start) * 1e3
    per_frame = []
    for _ in range(frames):
        result = pipe.run(image)
        per_frame.append({**{k: round(v, 1) for k, v in result.stage_ms.items()},
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

    from vlsam_ros.testing.make_tiny_models import make_tiny_models

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
