"""Benchmark: VL-SAM attention capture vs plain SDPA generation vs eager output_attentions.

Usage: ``.venv/bin/python bench/attention.py [--quick]``

A random LLaVA-1.5-architecture model (CLIP tower + Llama) generates ``--new-tokens`` tokens
for one image, three ways:

* ``plain``: the backend's ``generate`` with SDPA, no capture (the floor);
* ``ours``: ``describe()`` with ``attention.capture = 'fast'``: SDPA + cached queries/keys,
  then the regularised, MeanMax-weighted flow for the object rows in query blocks, maps;
* ``eager``: the same ``generate`` with eager attention and ``output_attentions=True``.

Time: each variant runs interleaved ``--repeats`` times in one process; the minimum per
variant is used (least disturbed by other load on a shared machine).
Memory: each variant runs in a fresh subprocess (glibc told to return large blocks to the
OS); a thread samples the process RSS (psutil) every 0.5 ms; extra memory = peak RSS
during the call minus RSS just before it. The capture's own cost is that minus plain
generation's: ``capture_memory_ratio = (ours - plain) / (eager - plain)``.

Two settings: 576 image tokens (336 px / 14 px patches, text hidden 1024, 8 layers, 16
heads) and 2304 image tokens (672 px, hidden 512, 8 layers, 8 heads). The last printed line
is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SETTINGS = {
    "576": dict(image_size=336, patch=14, vision_hidden=256, vision_layers=2, text_hidden=1024,
                text_layers=8, heads=16, kv_heads=16, intermediate=2816),
    "2304": dict(image_size=672, patch=14, vision_hidden=256, vision_layers=2, text_hidden=512,
                 text_layers=8, heads=8, kv_heads=8, intermediate=1408),
}
QUESTION = ("Describe this driving scene and list every object you can see, including unusual "
            "objects on or near the road. Answer with a comma-separated list of object names.")


class RssPeak:
    """Samples this process's RSS in a thread; ``peak`` is the maximum seen (bytes)."""

    def __init__(self, period_s: float = 0.0005):
        import psutil

        self._proc = psutil.Process()
        self._period = period_s
        self._stop = threading.Event()
        self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self._period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def _setup(setting: str, new_tokens: int):
    import numpy as np

    from vlsam_ros.core.config import from_flat
    from vlsam_ros.core.vlm.hf_backend import LlavaVlm
    from vlsam_ros.testing.tiny_vlm import build_tiny_vlm

    model, processor = build_tiny_vlm("llava", seed=0, **SETTINGS[setting])
    vlm = LlavaVlm(model, processor)
    cfg = from_flat({"device": "cpu", "vlm.dtype": "float32", "vlm.max_new_tokens": new_tokens,
                     "attention.capture": "fast"})
    size = SETTINGS[setting]["image_size"]
    image = np.random.default_rng(0).integers(0, 256, (size, size + size // 3, 3), np.uint8)
    return vlm, cfg, image


def _variants(vlm, cfg, image):
    """name -> zero-argument callable running that variant once."""
    import torch

    inputs = vlm._inputs([vlm._prompt(QUESTION, with_image=True)], [image])
    text_config = vlm.language_model().config

    def plain():
        return vlm._generate(inputs, cfg.vlm)

    def ours():
        return vlm.describe([image], [QUESTION], cfg.vlm, cfg.attention)

    def eager():
        previous = text_config._attn_implementation
        text_config._attn_implementation_internal = "eager"
        try:
            with torch.inference_mode():
                return vlm.model.generate(**inputs, max_new_tokens=cfg.vlm.max_new_tokens,
                                          do_sample=False, output_attentions=True,
                                          return_dict_in_generate=True,
                                          pad_token_id=vlm.tokenizer.pad_token_id)
        finally:
            text_config._attn_implementation_internal = previous

    return {"plain": plain, "ours": ours, "eager": eager}, inputs


def _trim():
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def child_memory(setting: str, variant: str, new_tokens: int) -> dict:
    """Runs in a fresh process: warm-up, then one measured call of ``variant``."""
    vlm, cfg, image = _setup(setting, new_tokens)
    run, inputs = _variants(vlm, cfg, image)
    result = run[variant]()              # warm-up (first-call allocations)
    del result
    _trim()
    import psutil

    before = psutil.Process().memory_info().rss
    with RssPeak() as peak:
        result = run[variant]()
    info = {"extra_bytes": peak.peak - before, "tokens": int(inputs["input_ids"].shape[1])}
    if variant == "ours":
        info["objects"] = len(result[0].objects)
        info["text"] = result[0].text
    return info


def measure(setting: str, new_tokens: int, repeats: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536",
               PYTHONPATH=str(REPO))
    memory = {}
    for variant in ("plain", "ours", "eager"):
        out = subprocess.run([sys.executable, __file__, "--child", setting, variant,
                              "--new-tokens", str(new_tokens)], env=env, check=True,
                             capture_output=True, text=True).stdout
        memory[variant] = json.loads(out.strip().splitlines()[-1])
    vlm, cfg, image = _setup(setting, new_tokens)
    run, _ = _variants(vlm, cfg, image)
    times: dict[str, list[float]] = {"plain": [], "ours": [], "eager": []}
    for name in times:                   # warm-up
        run[name]()
    for _ in range(repeats):
        for name in ("plain", "ours", "eager"):
            t0 = time.perf_counter()
            run[name]()
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    mib = {k: v["extra_bytes"] / 2**20 for k, v in memory.items()}
    capture_extra = mib["ours"] - mib["plain"]
    eager_extra = mib["eager"] - mib["plain"]
    return {
        "image_tokens": SETTINGS[setting]["image_size"] ** 2 // SETTINGS[setting]["patch"] ** 2,
        "sequence_tokens": memory["ours"]["tokens"] + new_tokens,
        "objects": memory["ours"]["objects"],
        "time_s": {k: round(v, 3) for k, v in best.items()},
        "extra_rss_mib": {k: round(v, 1) for k, v in mib.items()},
        "capture_time_ratio": round(best["ours"] / best["plain"], 3),
        "capture_memory_ratio": round(capture_extra / eager_extra, 3),
        "total_memory_ratio": round(mib["ours"] / mib["eager"], 3),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="576-token setting only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--child", nargs=2, metavar=("SETTING", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child_memory(args.child[0], args.child[1], args.new_tokens)))
        return 0
    import torch

    results = {}
    for setting in (["576"] if args.quick else ["576", "2304"]):
        results[setting] = measure(setting, args.new_tokens, args.repeats)
        print(f"{setting} image tokens: {json.dumps(results[setting])}", flush=True)
    main_result = results["576"]
    summary = {
        "capture_time_ratio": main_result["capture_time_ratio"],
        "capture_memory_ratio": main_result["capture_memory_ratio"],
        "torch_threads": torch.get_num_threads(),
        "new_tokens": args.new_tokens,
        "settings": results,
    }
    if "2304" in results:
        summary["capture_time_ratio_2304"] = results["2304"]["capture_time_ratio"]
        summary["capture_memory_ratio_2304"] = results["2304"]["capture_memory_ratio"]
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
