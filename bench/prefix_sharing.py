"""Benchmark: VLM describe() with and without prefix sharing (``vlm.share_image_prefix``).

Usage: ``.venv/bin/python bench/prefix_sharing.py [--quick] [--views N] [--questions N]``

A random LLaVA-1.5-architecture model (CLIP tower + Llama decoder, 576 image tokens: 336 px
images, 14 px patches; sizes in ``SETTING``) answers ``--questions`` different questions on
each of ``--views`` view images in ONE describe() batch, as the pipeline asks them, twice:

* ``unshared``: every (view, question) row runs the vision tower and prefills its image
  tokens (``vlm.share_image_prefix = false``);
* ``shared``: each view is encoded once and its prompt prefix (image tokens included)
  prefilled once; the questions continue from the shared cache (the default).

Both run interleaved ``--repeats`` times in one process after a warm-up; the minimum per
variant is reported (least disturbed by other load on a shared machine). A forward hook on
the vision tower counts its calls and the images it encodes per describe(). The processor
(``_inputs``: tokenising and image preprocessing, still per row in both paths) is timed on
its own. The outputs of the two paths are compared (text, maximum map difference), and the
attention capture's peak bytes for all rows / for one prompt are reported per path
(``capture_memory_batch_ratio``). The last printed line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SETTING = dict(image_size=336, patch=14, vision_hidden=512, vision_layers=6, text_hidden=1024,
               text_layers=8, heads=16, kv_heads=8, intermediate=2816)
QUICK_SETTING = dict(image_size=336, patch=14, vision_hidden=256, vision_layers=2,
                     text_hidden=512, text_layers=4, heads=8, kv_heads=4, intermediate=1408)
QUESTIONS = (
    "Describe this driving scene and list every object you can see.",
    "List all objects on or near the road.",
    "What objects could be a hazard for the car?",
    "Name every vehicle, person and animal in the image.",
    "Which unusual objects, debris or fallen cargo are on the road?",
    "List the traffic signs, cones and barriers.",
    "What is on the road ahead? Answer with a comma-separated list.",
    "Describe the objects near the curb.",
    "List every object, including small ones far away.",
    "What can you see? Answer with object names only.",
)


def _setup(setting: dict, new_tokens: int, views: int):
    import numpy as np

    from vlsam_ros.core.config import from_flat
    from vlsam_ros.core.vlm.hf_backend import LlavaVlm
    from vlsam_ros.testing.tiny_vlm import build_tiny_vlm

    model, processor = build_tiny_vlm("llava", seed=0, **setting)
    vlm = LlavaVlm(model, processor)
    cfgs = {name: from_flat({"device": "cpu", "vlm.dtype": "float32",
                             "vlm.max_new_tokens": new_tokens, "attention.capture": "fast",
                             "vlm.share_image_prefix": share})
            for name, share in (("unshared", False), ("shared", True))}
    size = setting["image_size"]
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (size, size + size // 3, 3), np.uint8) for _ in range(views)]
    return vlm, cfgs, crops


class TowerCounter:
    """Vision-tower calls and images encoded (leading dimension of the pixel input)."""

    def __init__(self, model):
        self.calls = self.images = 0
        model.model.vision_tower.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        import torch

        pixels = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
        self.calls += 1
        self.images += int(pixels.shape[0])

    def take(self) -> dict:
        out = {"calls": self.calls, "images": self.images}
        self.calls = self.images = 0
        return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller model (smoke run)")
    parser.add_argument("--views", type=int, default=1)
    parser.add_argument("--questions", type=int, default=10, choices=range(1, 11))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    setting = QUICK_SETTING if args.quick else SETTING
    vlm, cfgs, crops = _setup(setting, args.new_tokens, args.views)
    questions = list(QUESTIONS[:args.questions])
    images = [crop for crop in crops for _ in questions]     # as the pipeline batches them
    asked = [q for _ in crops for q in questions]
    counter = TowerCounter(vlm.model)

    def run(name):
        cfg = cfgs[name]
        return vlm.describe(images, asked, cfg.vlm, cfg.attention)

    answers, towers, peaks = {}, {}, {}
    for name in cfgs:                                        # warm-up, outputs, counts
        answers[name] = run(name)
        towers[name] = counter.take()
        peaks[name] = vlm.last_capture_peak_bytes
    times: dict[str, list[float]] = {name: [] for name in cfgs}
    for _ in range(args.repeats):
        for name in cfgs:
            t0 = time.perf_counter()
            run(name)
            times[name].append(time.perf_counter() - t0)
    counter.take()
    one_prompt_peaks = {}
    for name, cfg in cfgs.items():               # capture peak of one prompt, for the ratio
        vlm.describe(images[:1], asked[:1], cfg.vlm, cfg.attention)
        one_prompt_peaks[name] = vlm.last_capture_peak_bytes
    prompts = [vlm._prompt(q, with_image=True) for q in asked]
    processor_s = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        inputs = vlm._inputs(prompts, images)
        processor_s.append(time.perf_counter() - t0)

    same_text = all(a.text == b.text and a.objects == b.objects
                    for a, b in zip(answers["unshared"], answers["shared"]))
    map_diff = max((float(np.abs(a.attention_maps - b.attention_maps).max())
                    for a, b in zip(answers["unshared"], answers["shared"])
                    if a.attention_maps.size and a.attention_maps.shape == b.attention_maps.shape),
                   default=0.0)
    best = {k: min(v) for k, v in times.items()}
    result = {
        "setting": "quick" if args.quick else "576_image_tokens",
        "views": args.views, "questions_per_view": len(questions), "rows": len(asked),
        "prompt_tokens_padded": int(inputs["input_ids"].shape[1]),
        "new_tokens": args.new_tokens, "torch_threads": torch.get_num_threads(),
        "describe_s": {k: round(v, 3) for k, v in best.items()},
        "prefix_sharing_speedup": round(best["unshared"] / best["shared"], 2),
        "processor_s": round(min(processor_s), 3),
        "vision_tower": towers,
        "capture_peak_mib": {k: round(v / 2**20, 2) for k, v in peaks.items()},
        "capture_memory_batch_ratio": {k: round(peaks[k] / one_prompt_peaks[k], 2)
                                       for k in peaks},
        "same_text_and_objects": same_text,
        "max_map_abs_diff": map_diff,
        "objects": sum(len(a.objects) for a in answers["shared"]),
    }
    for k, v in result.items():
        print(f"{k}: {v}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
