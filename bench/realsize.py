"""Benchmark: one 1600x900 frame through the real Pipeline with VLM and SAM at PUBLISHED size.

Usage (CPU, what was run here)::

    OMP_NUM_THREADS=2 .venv/bin/python bench/realsize.py --sam vit_t --questions 2 --views 1
    .venv/bin/python bench/realsize.py --sam vit_b ...

GPU path (documented, NOT run in this project: no GPU was available)::

    .venv/bin/python bench/realsize.py --device cuda --checkpoint llava-hf/llava-1.5-7b-hf \\
        --sam vit_h --dtype float16

Nothing is downloaded: the VLM is ``published_vlms.build_published_vlm(--checkpoint)`` (the
published architecture from ``published_vlm_configs.json``, random seeded weights, real
tensors) and SAM is ``segment_anything``'s / MobileSAM's architecture with random weights
written as a state dict (``testing.tiny_segmenters.save_tiny_sam``) and loaded by
``load_segmenter``.

Fixed generation length: the builder zeroes the LM-head rows of end-of-sequence and of every
token outside the object vocabulary, so each answer runs exactly ``vlm.max_new_tokens``
(``--new-tokens``) tokens whatever the random weights are; the cost does not depend on them.

Runs, in one process, after one warm-up frame:

1. ``default``: schema defaults (1 view, 1 question, greedy);
2. ``paper``: the paper profile's settings (tiles -> 5 views, 10 questions, sampling at
   0.8 / top-p 0.1, 2 refinement rounds) with the VLM/SAM replaced by the ones built here,
   once with ``vlm.share_image_prefix`` true and once false. ``--questions N`` and
   ``--views 1`` (tiles off) reduce it to fit the CPU; the reductions are printed. The paper
   profile generates its rephrasings with the VLM; random weights write no questions, so the
   hand-written ``ensemble.questions`` are used (``question_source=config``).

Prints per-stage ms (``FrameResult.stage_ms``), the vision tower's time per frame (forward
hooks), image tokens per view, process peak RSS, the capture peak bytes of 10 prompts / 1
prompt (``HuggingFaceVlm.last_capture_peak_bytes``), and a last JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FRAME_HW = (900, 1600)
DTYPES = ("float32", "float16", "bfloat16")


class TowerTimer:
    """Wall time and calls of the vision tower (pre/post forward hooks)."""

    def __init__(self, tower):
        self.seconds = 0.0
        self.calls = self.images = 0
        self._t0 = 0.0
        tower.register_forward_pre_hook(self._pre, with_kwargs=True)
        tower.register_forward_hook(self._post)

    def _pre(self, module, args, kwargs):
        import torch

        pixels = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
        self.images += int(pixels.shape[0])
        self._t0 = time.perf_counter()

    def _post(self, module, args, output):
        self.seconds += time.perf_counter() - self._t0
        self.calls += 1

    def take(self) -> dict:
        out = {"ms": round(self.seconds * 1e3, 1), "calls": self.calls, "images": self.images}
        self.seconds, self.calls, self.images = 0.0, 0, 0
        return out


def _vision_tower(model):
    inner = getattr(model, "model", model)
    for name in ("vision_model", "vision_tower", "visual"):
        if hasattr(inner, name):
            return getattr(inner, name)
    raise AttributeError(f"no vision tower found on {type(model).__name__}")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def _image_tokens(vlm, cfg, image, question: str) -> int:
    inputs = vlm._inputs([vlm._prompt(question, with_image=True)], [image],
                         vlm.fitted_processor(cfg.vlm))      # the pixel budgets of cfg
    ids = [int(t) for t in inputs["input_ids"][0]]
    return sum(1 for t in ids if t == vlm.image_token_id())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="HuggingFaceTB/SmolVLM-256M-Instruct")
    parser.add_argument("--sam", default="vit_t", choices=("vit_t", "vit_b", "vit_l", "vit_h"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--questions", type=int, default=10, choices=range(1, 11),
                        help="paper run: questions per view (paper: 10)")
    parser.add_argument("--views", type=int, default=5, choices=(1, 5),
                        help="paper run: 5 = full frame + 4 tiles (paper), 1 = tiles off")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1,
                        help="paper shared/unshared frames, interleaved; the run with the "
                             "smallest VLM stage is kept (least disturbed by other load)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra config overrides for every run (e.g. "
                             "vlm.idefics3_longest_edge=1024)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from vlsam_ros.core.config_files import load_config
    from vlsam_ros.core.pipeline import Pipeline
    from vlsam_ros.core.segmenter import load_segmenter
    from vlsam_ros.testing.tiny_segmenters import save_tiny_sam
    from vlsam_ros.core.vlm import BACKENDS
    from vlsam_ros.testing.published_configs import published_checkpoint
    from vlsam_ros.testing.published_vlms import build_published_vlm

    ckpt = published_checkpoint(args.checkpoint)
    t0 = time.perf_counter()
    model, processor = build_published_vlm(args.checkpoint, getattr(torch, args.dtype), seed=0)
    model = model.to(args.device)
    vlm = BACKENDS[ckpt.family](model, processor)
    build_vlm_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    tower = TowerTimer(_vision_tower(model))

    tmp = tempfile.TemporaryDirectory(prefix="vlsam-realsize-")
    sam_path = save_tiny_sam(args.sam, Path(tmp.name) / f"sam_{args.sam}.pth", seed=0)
    extra = dict(kv.split("=", 1) for kv in args.set)
    common = {"device": args.device, "vlm.family": ckpt.family, "vlm.model": args.checkpoint,
              "vlm.dtype": args.dtype, "vlm.max_new_tokens": args.new_tokens,
              "sam.type": args.sam, "sam.checkpoint": str(sam_path), **extra}
    default_cfg = load_config(overrides=common)
    segmenter = load_segmenter(default_cfg)
    paper_over = {**common, "ensemble.num_questions": args.questions,
                  "ensemble.question_source": "config", "ensemble.tiles": args.views == 5}
    paper = {share: load_config(profile="paper",
                                overrides={**paper_over, "vlm.share_image_prefix": share})
             for share in (True, False)}
    frame = np.random.default_rng(0).integers(0, 256, (*FRAME_HW, 3), dtype=np.uint8)

    def run(cfg) -> dict:
        pipe = Pipeline(cfg, vlm, segmenter)
        tower.take()
        t = time.perf_counter()
        result = pipe.run(frame)
        wall = (time.perf_counter() - t) * 1e3
        return {"stage_ms": {k: round(v, 1) for k, v in result.stage_ms.items()},
                "wall_ms": round(wall, 1), "vision_tower": tower.take(),
                "detections": len(result.detections)}

    run(default_cfg)                                   # warm-up (allocations, kernels)
    runs = {"default": run(default_cfg)}
    for _ in range(args.repeats):
        for name, share in (("paper_shared", True), ("paper_unshared", False)):
            r = run(paper[share])
            if name not in runs or r["stage_ms"]["vlm"] < runs[name]["stage_ms"]["vlm"]:
                runs[name] = r

    # Attention-capture memory: 10 prompts vs 1 prompt in one describe() of the full frame.
    cap_cfg = paper[True]
    qs = list(cap_cfg.ensemble.questions)[:10]
    qs = (qs * 10)[:10]
    vlm.describe([frame], qs[:1], cap_cfg.vlm, cap_cfg.attention)
    one = vlm.last_capture_peak_bytes
    vlm.describe([frame] * 10, qs, cap_cfg.vlm, cap_cfg.attention)
    ten = vlm.last_capture_peak_bytes

    tile = frame[:FRAME_HW[0] // 2, :FRAME_HW[1] // 2]
    tokens = {"full_frame": _image_tokens(vlm, default_cfg, frame, qs[0]),
              "corner_tile": _image_tokens(vlm, default_cfg, tile, qs[0])}
    vlm_shared = runs["paper_shared"]["stage_ms"]["vlm"]
    vlm_unshared = runs["paper_unshared"]["stage_ms"]["vlm"]
    vt_s, vt_u = (runs[k]["vision_tower"]["ms"] for k in ("paper_shared", "paper_unshared"))
    result = {
        "checkpoint": args.checkpoint, "params_m": round(params / 1e6, 1),
        "sam": args.sam, "device": args.device, "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(), "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "paper_reductions": {"questions": args.questions, "views": args.views,
                             "full_paper": args.questions == 10 and args.views == 5,
                             "question_source": "config (hand-written, not generated)"},
        "build_vlm_s": round(build_vlm_s, 1), "runs": runs,
        "image_tokens_per_view": tokens,
        "prefix_sharing_speedup": round(vlm_unshared / vlm_shared, 2),
        "vision_tower_shrink": round(vt_u / vt_s, 2) if vt_s else None,
        "capture_peak_bytes": {"1_prompt": one, "10_prompts": ten},
        "capture_memory_batch_ratio": round(ten / one, 2) if one else None,
        "peak_rss_mib": round(_peak_rss_mib(), 1),
        "overrides": extra,
    }
    for k, v in result.items():
        print(f"{k}: {v}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
