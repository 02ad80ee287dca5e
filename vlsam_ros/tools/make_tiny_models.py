"""Builds tiny, seeded, randomly initialised models and saves them like real checkpoints.

The node and every tool load them through the production loaders, so tests and the demo
exercise the same code path a vehicle uses with real weights. Their outputs (labels,
masks) are meaningless: the weights are random.

Usage: ``vlsam-make-tiny-models OUT_DIR`` (default ``models/tiny``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence


def sam_checkpoint_name(sam_type: str) -> str:
    return f"sam_{sam_type}.pt"


def make_tiny_models(out_dir: str | Path, families: Sequence[str] = ("llava",),
                     sam_types: Sequence[str] = ("vit_t",), seed: int = 0) -> Path:
    """Writes ``OUT_DIR/<family>/`` for each VLM family and ``OUT_DIR/sam_<type>.pt``."""
    from vlsam_ros.core.segmenter.tiny import save_tiny_sam
    from vlsam_ros.core.vlm.tiny import save_tiny_vlm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for family in families:
        save_tiny_vlm(family, out / family, seed=seed)
    for sam_type in sam_types:
        save_tiny_sam(sam_type, out / sam_checkpoint_name(sam_type), seed=seed)
    return out


def tiny_model_overrides(model_dir: str | Path, family: str = "llava",
                         sam_type: str = "vit_t") -> dict[str, Any]:
    """Dotted config overrides that point a CPU config at models made by make_tiny_models."""
    model_dir = Path(model_dir)
    return {
        "device": "cpu",
        "vlm.family": family,
        "vlm.model": str(model_dir / family),
        "vlm.dtype": "float32",
        "vlm.max_new_tokens": 16,
        "sam.type": sam_type,
        "sam.checkpoint": str(model_dir / sam_checkpoint_name(sam_type)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default="models/tiny")
    parser.add_argument("--families", nargs="+", default=["llava"])
    parser.add_argument("--sam-types", nargs="+", default=["vit_t"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = make_tiny_models(args.out_dir, args.families, args.sam_types, args.seed)
    print(f"tiny random models written to {out} (random weights: labels are meaningless)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
