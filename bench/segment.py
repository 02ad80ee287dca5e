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
3. ``backends``: per segmenter backend at its published architecture (random weights,
   1024-pixel input) and the same image: image-encoder time of ``embed`` and decoder time
   of one batched ``segment`` call for ``--objects`` point prompts (a positive/negative
   pair each) and of the same call with their logits as mask prompts (the refinement
   round), side by side: MobileSAM (vit_t), SAM vit_b (segment_anything, factored
   decoder), SAM 2.1 hiera-tiny, EdgeTAM and SAM-HQ vit_b (transformers); interleaved,
   minimum over ``--repeats // 2`` rounds.

Denormal floats are flushed to zero (``torch.set_flush_denormal``) unless
``--keep-denormals``: with random weights at transformers' initialisation, SAM-HQ's
encoder activations on an image decay to ~1e-8, their products fall below float32's normal
range, and the CPU's slow path for such numbers made its encoder 9x slower than on the same
architecture fed noise. That is an artifact of the random weights, not the architecture's
cost, which is what this benchmark times.

Usage: ``PYTHONPATH=. python bench/segment.py [--objects 16] [--repeats 5] [--device cpu]
[--threads N] [--questions 10] [--skip-recipe] [--backends vit_t vit_b sam2 edgetam sam_hq]
[--only-backends] [--keep-denormals]``.
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

    sam_cfg = SamConfig()

    def batched():
        return seg.segment(fresh(), points, labels, sam_cfg=sam_cfg)

    def loop():
        emb = fresh()
        return [seg.segment(emb, points[i:i + 1], labels[i:i + 1], sam_cfg=sam_cfg)
                for i in range(objects)]

    times = {}
    outputs = {}
    for decoder in ("stock", "factored"):
        sam_cfg = SamConfig(decoder=decoder)
        outputs[decoder] = batched()
        loop()                                                        # warm-up
        times[f"{decoder}_batched_ms"] = _median_ms(batched, repeats)
        times[f"{decoder}_loop_ms"] = _median_ms(loop, repeats)
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


def _backend_segmenter(name: str, device: str):
    """The adapter of backend ``name`` over its published architecture, random weights."""
    from vlsam_ros.core.segmenter.hf_sam import HF_SAM_FAMILIES, HfSamSegmenter
    from vlsam_ros.core.segmenter.sam_adapter import SamSegmenter, build_sam_model
    from vlsam_ros.testing.tiny_hf_segmenters import build_published_segmenter, tiny_processor

    torch.manual_seed(0)
    if name in ("vit_t", "vit_b", "vit_l", "vit_h"):
        return SamSegmenter(build_sam_model(name).to(device))
    model = build_published_segmenter(name).to(device)
    return HfSamSegmenter(model, tiny_processor(name, side=1024), HF_SAM_FAMILIES[name])


def bench_backends(names: list[str], objects: int, repeats: int, device: str,
                   image: np.ndarray) -> dict:
    """Per backend: ``embed`` time and one batched ``segment`` call's time, without and with
    mask prompts. Interleaved: every repeat times each backend in turn, and the minimum per
    backend is reported, so a load change on a shared machine hits all backends alike."""
    from vlsam_ros.core.config import SamConfig

    h, w = image.shape[:2]
    rng = np.random.default_rng(0)
    points = np.stack([rng.uniform(0, w, (objects, 2)), rng.uniform(0, h, (objects, 2))],
                      axis=-1).astype(np.float32)
    labels = np.tile(np.array([1, 0]), (objects, 1))
    sam_cfg = SamConfig()
    segmenters = {name: _backend_segmenter(name, device) for name in names}
    embeddings, logits = {}, {}
    for name, seg in segmenters.items():                                  # warm-up
        embeddings[name] = seg.embed(image)
        logits[name] = seg.segment(embeddings[name], points, labels,
                                   sam_cfg=sam_cfg).low_res_logits
    times: dict[str, dict[str, list[float]]] = {
        n: {"encoder_ms": [], "decoder_ms": [], "decoder_mask_prompt_ms": []} for n in names}
    for _ in range(repeats):
        for name, seg in segmenters.items():
            emb = embeddings[name]
            times[name]["encoder_ms"].append(_median_ms(lambda: seg.embed(image), 1))
            times[name]["decoder_ms"].append(_median_ms(
                lambda: seg.segment(emb, points, labels, sam_cfg=sam_cfg), 1))
            times[name]["decoder_mask_prompt_ms"].append(_median_ms(
                lambda: seg.segment(emb, points, labels, logits[name], sam_cfg=sam_cfg), 1))
    out = {}
    for name, seg in segmenters.items():
        out[name] = {"params_m": round(sum(p.numel() for p in seg.model.parameters()) / 1e6, 1),
                     **{k: round(min(v), 1) for k, v in times[name].items()}}
        print(f"backend {name}: {out[name]}", flush=True)
    return out


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
    parser.add_argument("--backends", nargs="*",
                        default=["vit_t", "vit_b", "sam2", "edgetam", "sam_hq"],
                        help="segmenter backends to time side by side (empty: none)")
    parser.add_argument("--only-backends", action="store_true",
                        help="only the per-backend encoder/decoder measurement")
    parser.add_argument("--keep-denormals", action="store_true",
                        help="do not flush denormal floats to zero (see the docstring)")
    args = parser.parse_args()
    torch.set_flush_denormal(not args.keep_denormals)  # before torch starts its threads
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from vlsam_ros.testing.make_tiny_models import make_tiny_models

    torch.manual_seed(0)
    image = _street_image(args.height, args.width, seed=0)
    backends = bench_backends(args.backends, args.objects, max(1, args.repeats // 2),
                              args.device, image) if args.backends else None
    if args.only_backends:
        print(json.dumps({"backends": backends, "objects": args.objects,
                          "image": [args.height, args.width], "device": args.device,
                          "torch_threads": torch.get_num_threads(),
                          "flush_denormal": not args.keep_denormals}))
        return
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
               "decoder": decoder, "full_recipe": recipe, "backends": backends,
               "image": [args.height, args.width], "device": args.device,
               "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or
               platform.machine(), "flush_denormal": not args.keep_denormals}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
