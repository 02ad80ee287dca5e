"""Benchmark: GradCAM-weighted maps (``attention.gradcam``) against the plain maps.

Usage: ``.venv/bin/python bench/gradcam.py [--quick] [--device cuda] [--repeats 3]``

A random LLaVA-1.5-architecture model (CLIP tower + Llama, 576 image tokens: 336 px / 14 px
patches, text hidden 1024, 8 layers, 16 heads; ``--quick``: 144 image tokens, hidden 512,
4 layers) describes one image twice, interleaved ``--repeats`` times in one process:

* ``plain``: ``describe()`` with the default attention (fast capture, MeanMax, flow);
* ``gradcam``: the same with ``attention.gradcam`` = true: one extra teacher-forced forward
  of the prompt + generated text and ONE backward (through the last decoder layer's
  object rows only).

Time: minimum per variant; ``time_ratio = gradcam / plain``. The gradcam run's parts are
timed too: its teacher-forced forward and its backward (``torch.autograd.grad``).
Memory: on CPU each variant runs once more in a fresh subprocess while a thread samples
the RSS (psutil, 0.5 ms); extra = peak during the call minus before it; on CUDA the peak
of ``torch.cuda.max_memory_allocated`` above the allocation before the call. Also reported:
``backward_graph_bytes``, the bytes autograd saved for the backward (saved-tensor hooks;
model weights excluded),
and ``leaf_bytes``, the leaf probabilities plus their gradients (H x R x N each).
The last printed line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.attention import QUESTION, RssPeak, _trim  # noqa: E402
from bench.attention import SETTINGS as ATTENTION_SETTINGS  # noqa: E402

SETTINGS = {
    "576": ATTENTION_SETTINGS["576"],  # the same model as bench/attention.py's 576 case
    "144": dict(image_size=168, patch=14, vision_hidden=128, vision_layers=2, text_hidden=512,
                text_layers=4, heads=8, kv_heads=8, intermediate=1024),
}


def _setup(setting: str, new_tokens: int, device: str):
    import numpy as np

    from vlsam_ros.core.config import from_flat
    from vlsam_ros.core.vlm.hf_backend import LlavaVlm
    from vlsam_ros.testing.tiny_vlm import build_tiny_vlm

    model, processor = build_tiny_vlm("llava", seed=0, **SETTINGS[setting])
    vlm = LlavaVlm(model.to(device), processor, device=device)
    cfgs = {name: from_flat({"device": device, "vlm.dtype": "float32",
                             "vlm.max_new_tokens": new_tokens, "attention.gradcam": on})
            for name, on in (("plain", False), ("gradcam", True))}
    size = SETTINGS[setting]["image_size"]
    image = np.random.default_rng(0).integers(0, 256, (size, size + size // 3, 3), np.uint8)
    return vlm, cfgs, image


def _run(vlm, cfg, image):
    return vlm.describe([image], [QUESTION], cfg.vlm, cfg.attention)


def child_memory(setting: str, variant: str, new_tokens: int, device: str) -> dict:
    """Fresh process: warm-up, then one measured call (CPU RSS or CUDA allocator peak)."""
    import torch

    vlm, cfgs, image = _setup(setting, new_tokens, device)
    _run(vlm, cfgs[variant], image)
    _trim()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        answers = _run(vlm, cfgs[variant], image)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - before
    else:
        import psutil

        before = psutil.Process().memory_info().rss
        with RssPeak() as peak:
            answers = _run(vlm, cfgs[variant], image)
        extra = peak.peak - before
    return {"extra_bytes": int(extra), "objects": len(answers[0].objects),
            "text": answers[0].text}


def _instrumented_gradcam(vlm, cfg, image, device: str) -> dict:
    """One gradcam describe with its parts timed and the backward's saved bytes counted."""
    import torch

    from vlsam_ros.core.vlm import teacher_forcing

    parts = {"forced_forward_s": 0.0, "backward_s": 0.0, "backward_calls": 0,
             "backward_graph_bytes": 0, "leaf_bytes": 0}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    real_grad = torch.autograd.grad
    real_forced = teacher_forcing.forced_rows

    def timed_grad(outputs, inputs, *args, **kwargs):
        sync()
        t0 = time.perf_counter()
        out = real_grad(outputs, inputs, *args, **kwargs)
        sync()
        parts["backward_s"] += time.perf_counter() - t0
        parts["backward_calls"] += 1
        parts["leaf_bytes"] += 2 * sum(t.numel() * t.element_size() for t in inputs)
        return out

    def timed_forced(*args, **kwargs):
        sync()
        t0 = time.perf_counter()
        out = real_forced(*args, **kwargs)
        sync()
        parts["forced_forward_s"] += time.perf_counter() - t0
        return out

    weights = {p.data_ptr() for p in vlm.model.parameters()}

    def pack(t):
        if t.data_ptr() not in weights:       # weights are not extra memory
            parts["backward_graph_bytes"] += t.numel() * t.element_size()
        return t

    torch.autograd.grad = timed_grad
    teacher_forcing.forced_rows = timed_forced
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _run(vlm, cfg, image)
    finally:
        torch.autograd.grad = real_grad
        teacher_forcing.forced_rows = real_forced
    parts["forced_forward_s"] -= parts["backward_s"]     # forced_rows includes the backward
    parts["forced_forward_s"] = round(parts["forced_forward_s"], 4)
    parts["backward_s"] = round(parts["backward_s"], 4)
    return parts


def measure(setting: str, new_tokens: int, repeats: int, device: str) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536",
               PYTHONPATH=str(REPO))
    memory = {}
    for variant in ("plain", "gradcam"):
        out = subprocess.run([sys.executable, __file__, "--child", setting, variant,
                              "--new-tokens", str(new_tokens), "--device", device], env=env,
                             check=True, capture_output=True, text=True).stdout
        memory[variant] = json.loads(out.strip().splitlines()[-1])
    vlm, cfgs, image = _setup(setting, new_tokens, device)
    times: dict[str, list[float]] = {"plain": [], "gradcam": []}
    sync = __import__("torch").cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for name in times:
        _run(vlm, cfgs[name], image)                     # warm-up
    for _ in range(repeats):
        for name in times:
            sync()
            t0 = time.perf_counter()
            _run(vlm, cfgs[name], image)
            sync()
            times[name].append(time.perf_counter() - t0)
    parts = _instrumented_gradcam(vlm, cfgs["gradcam"], image, device)
    best = {k: min(v) for k, v in times.items()}
    mib = {k: v["extra_bytes"] / 2**20 for k, v in memory.items()}
    return {
        "device": device,
        "image_tokens": SETTINGS[setting]["image_size"] ** 2 // SETTINGS[setting]["patch"] ** 2,
        "objects": memory["plain"]["objects"],
        "time_s": {k: round(v, 4) for k, v in best.items()},
        "time_ratio": round(best["gradcam"] / best["plain"], 3),
        "extra_memory_mib": {k: round(v, 1) for k, v in mib.items()},
        "memory_ratio": round(mib["gradcam"] / mib["plain"], 3) if mib["plain"] > 0 else None,
        "gradcam_parts": parts,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="144 image tokens, smaller model")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", nargs=2, metavar=("SETTING", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child_memory(args.child[0], args.child[1], args.new_tokens,
                                      args.device)))
        return 0
    import torch

    setting = "144" if args.quick else "576"
    result = measure(setting, args.new_tokens, args.repeats, args.device)
    print(f"plain   : {result['time_s']['plain']:.4f} s  "
          f"{result['extra_memory_mib']['plain']:.1f} MiB extra")
    print(f"gradcam : {result['time_s']['gradcam']:.4f} s  "
          f"{result['extra_memory_mib']['gradcam']:.1f} MiB extra  "
          f"(forward {result['gradcam_parts']['forced_forward_s']} s, backward "
          f"{result['gradcam_parts']['backward_s']} s, "
          f"{result['gradcam_parts']['backward_calls']} backward call(s))")
    print(f"ratio   : time {result['time_ratio']}  memory {result['memory_ratio']}")
    print(json.dumps({**result, "torch_threads": torch.get_num_threads(),
                      "new_tokens": args.new_tokens}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
