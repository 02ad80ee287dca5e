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
   with ``vlm.share_image_prefix`` true (A) and false (B): one untimed frame of each, then
   ``--repeats`` timed frames of each interleaved A,B,B,A,A,B,... (the machine may be shared:
   both arms see the same disturbances). ``prefix_sharing_speedup`` is the median of the
   per-repeat ratios unshared / shared of the VLM stage (min and max printed too); the
   per-arm numbers printed are those of its median repeat. ``--questions N`` and
   ``--views 1`` (tiles off) reduce the recipe to fit the CPU; the reductions are printed.
   The paper profile generates its rephrasings with the VLM; random weights write no
   questions, so the hand-written ``ensemble.questions`` are used (``question_source=config``).

Prints per-stage ms (``FrameResult.stage_ms``), the vision tower's time, calls and images per
frame (forward hooks), the VLM stage's parts (``vlm_parts_ms``: processor, prefix prefill,
generate, maps, language model = prefill + generate - vision tower), the load average before
and after, image tokens per view, process peak RSS, the capture peak bytes of 10 prompts / 1
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
    """Wall time, process CPU time and calls of the vision tower (pre/post forward hooks)."""

    def __init__(self, tower):
        self.seconds = self.cpu_seconds = 0.0
        self.calls = self.images = 0
        self._t0 = self._c0 = 0.0
        tower.register_forward_pre_hook(self._pre, with_kwargs=True)
        tower.register_forward_hook(self._post)

    def _pre(self, module, args, kwargs):
        import torch

        pixels = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
        self.images += int(pixels.shape[0])
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def _post(self, module, args, output):
        self.seconds += time.perf_counter() - self._t0
        self.cpu_seconds += time.process_time() - self._c0
        self.calls += 1

    def take(self) -> dict:
        out = {"ms": round(self.seconds * 1e3, 1), "cpu_ms": round(self.cpu_seconds * 1e3, 1),
               "calls": self.calls, "images": self.images}
        self.seconds = self.cpu_seconds = 0.0
        self.calls = self.images = 0
        return out


class PartTimer:
    """Wall and process CPU time (``<name>_cpu``) of named calls, by wrapping them (bench
    only; the core is not changed): ``describe`` (the whole VLM stage),
    ``processor`` (``_inputs``: tokenising + image preprocessing), ``prefix_prefill``
    (prefix sharing: each image's prefix run once, vision tower included), ``generate``
    (the one ``generate`` call; unshared: vision tower and full prefill included) and
    ``maps`` (the attention method on every row's capture)."""

    def __init__(self):
        self.ms: dict[str, float] = {}

    def wrap(self, owner, attr: str, name: str) -> None:
        inner = getattr(owner, attr)

        def timed(*args, **kwargs):
            t, c = time.perf_counter(), time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - t) * 1e3
                cpu = f"{name}_cpu"
                self.ms[cpu] = self.ms.get(cpu, 0.0) + (time.process_time() - c) * 1e3

        setattr(owner, attr, timed)

    def take(self) -> dict:
        out = {k: round(v, 1) for k, v in self.ms.items()}
        self.ms = {}
        return out


def _load() -> str:
    """The machine's load averages (1, 5, 15 min) and CPU count, as ``uptime`` reports."""
    import os

    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def _median(values):
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


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
    parser.add_argument("--repeats", type=int, default=3,
                        help="paper shared/unshared frames, interleaved A,B,B,A,... after one "
                             "untimed frame of each; the speedup is the median of the "
                             "per-repeat (back-to-back) ratios")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra config overrides for every run (e.g. "
                             "vlm.idefics3_longest_edge=1024)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from vlsam_ros.core.config_files import load_config
    from vlsam_ros.core.pipeline import Pipeline
    from vlsam_ros.core.segmenter import load_segmenter
    from vlsam_ros.core.vlm import BACKENDS, prefix_sharing
    from vlsam_ros.testing.published_configs import published_checkpoint
    from vlsam_ros.testing.published_vlms import build_published_vlm
    from vlsam_ros.testing.tiny_segmenters import save_tiny_sam

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

    parts = PartTimer()
    parts.wrap(vlm, "describe", "describe")
    parts.wrap(vlm, "_inputs", "processor")
    parts.wrap(vlm, "_generate", "generate")
    parts.wrap(vlm, "_object_rows", "maps")
    parts.wrap(prefix_sharing, "prefill_prefixes", "prefix_prefill")

    def run(cfg) -> dict:
        pipe = Pipeline(cfg, vlm, segmenter)
        tower.take()
        parts.take()
        t = time.perf_counter()
        result = pipe.run(frame)
        wall = (time.perf_counter() - t) * 1e3
        vt = tower.take()
        part_ms = parts.take()
        # Language model (decoder prefill + decoding): what the two generate-side calls
        # took beyond the vision tower.
        for suffix, tower_ms in (("", vt["ms"]), ("_cpu", vt["cpu_ms"])):
            part_ms["language_model" + suffix] = round(
                part_ms.get("generate" + suffix, 0.0)
                + part_ms.get("prefix_prefill" + suffix, 0.0) - tower_ms, 1)
        print(f"# {cfg.vlm.share_image_prefix=} questions={cfg.ensemble.num_questions} "
              f"vlm {result.stage_ms['vlm']:.0f} ms (cpu {part_ms['describe_cpu']:.0f} ms), "
              f"{_load()}", file=sys.stderr, flush=True)
        return {"stage_ms": {k: round(v, 1) for k, v in result.stage_ms.items()},
                "wall_ms": round(wall, 1), "vision_tower": vt, "vlm_parts_ms": part_ms,
                "detections": len(result.detections)}

    load_before = _load()
    run(default_cfg)                                   # warm-up (allocations, kernels)
    runs = {"default": run(default_cfg)}
    # Both paper arms once untimed (the first batch of a shape pays allocations that the
    # later ones do not), then interleaved A,B,B,A,A,B,... so drift and other jobs on the
    # machine hit both arms alike; every repeat is kept.
    arms = (("paper_shared", True), ("paper_unshared", False))
    for _, share in arms:
        run(paper[share])
    series: dict[str, list[dict]] = {name: [] for name, _ in arms}
    for i in range(args.repeats):
        for name, share in (arms if i % 2 == 0 else arms[::-1]):
            series[name].append(run(paper[share]))
    load_after = _load()
    for name, rs in series.items():            # the median-VLM-stage repeat stands for the arm
        ranked = sorted(rs, key=lambda r: r["stage_ms"]["vlm"])
        runs[name] = ranked[(len(ranked) - 1) // 2]

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
    vlm_ms = {name: [r["stage_ms"]["vlm"] for r in rs] for name, rs in series.items()}
    tower_ms = {name: [r["vision_tower"]["ms"] for r in rs] for name, rs in series.items()}
    cpu_ms = {name: [r["vlm_parts_ms"]["describe_cpu"] for r in rs]
              for name, rs in series.items()}
    # Paired ratios: each repeat's unshared / shared, both measured back to back.
    paired = [u / s_ for u, s_ in zip(vlm_ms["paper_unshared"], vlm_ms["paper_shared"])]
    paired_cpu = [u / s_ for u, s_ in zip(cpu_ms["paper_unshared"], cpu_ms["paper_shared"])]
    paired_tower = [u / s_ for u, s_ in zip(tower_ms["paper_unshared"],
                                             tower_ms["paper_shared"]) if s_]
    result = {
        "checkpoint": args.checkpoint, "params_m": round(params / 1e6, 1),
        "sam": args.sam, "device": args.device, "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(), "new_tokens": args.new_tokens,
        "repeats": args.repeats, "load_before": load_before, "load_after": load_after,
        "paper_reductions": {"questions": args.questions, "views": args.views,
                             "full_paper": args.questions == 10 and args.views == 5,
                             "question_source": "config (hand-written, not generated)"},
        "build_vlm_s": round(build_vlm_s, 1), "runs": runs,
        "image_tokens_per_view": tokens,
        "paper_vlm_stage_ms_each_repeat": vlm_ms,
        "paper_vision_tower_ms_each_repeat": tower_ms,
        # Median of the paired (back-to-back) ratios; min and max show the spread.
        "prefix_sharing_speedup": round(_median(paired), 2),
        "prefix_sharing_speedup_min_max": [round(min(paired), 2), round(max(paired), 2)],
        # The same ratio in process CPU time of describe() (less sensitive to other jobs on
        # the machine; only the VLM's own work when sam.overlap_encoder=false).
        "paper_vlm_cpu_ms_each_repeat": cpu_ms,
        "prefix_sharing_speedup_cpu": round(_median(paired_cpu), 2),
        "vision_tower_shrink": round(_median(paired_tower), 2) if paired_tower else None,
        "vision_tower_images": {name: runs[name]["vision_tower"]["images"]
                                for name, _ in arms},
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
