"""Builds tiny, seeded, randomly initialised models and saves them like real checkpoints.

The node and every tool load them through the production loaders, so tests and the demo
exercise the same code path a vehicle uses with real weights. Their outputs (labels,
masks) are meaningless: the weights are random.

Usage: ``vlsam-make-tiny-models OUT_DIR`` (default ``models/tiny``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from vlsam_ros.tools.cli import EXIT_OK, ToolError, ToolParser, run_tool, staged_output


def sam_checkpoint_name(sam_type: str) -> str:
    return f"sam_{sam_type}.pt"


def make_tiny_models(out_dir: str | Path, families: Sequence[str] = ("llava",),
                     sam_types: Sequence[str] = ("vit_t",), seed: int = 0,
                     segmenters: Sequence[str] = ()) -> Path:
    """Writes ``OUT_DIR/<family>/`` for each VLM family, ``OUT_DIR/sam_<type>.pt`` and
    ``OUT_DIR/<backend>/`` for each transformers segmenter (sam2, edgetam, sam_hq, and sam3
    for concept mode; set sam.model / concept.model to that folder).

    Unknown families or SAM types raise ToolError before anything is written. Everything is
    built in a staging folder beside ``OUT_DIR`` and moved into it only when complete (an
    existing ``OUT_DIR`` keeps its other files; rebuilt entries are replaced whole), so an
    error or an interrupt never leaves a half-built model behind.
    """
    from vlsam_ros.core.segmenter.sam_adapter import SAM_VARIANTS
    from vlsam_ros.testing.tiny_segmenters import save_tiny_sam
    from vlsam_ros.testing.tiny_vlm import FAMILIES, save_tiny_vlm

    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ToolError(f"unknown VLM famil{'y' if len(unknown) == 1 else 'ies'} "
                        f"{', '.join(unknown)}; choose from {', '.join(FAMILIES)}")
    unknown = [t for t in sam_types if t not in SAM_VARIANTS]
    if unknown:
        raise ToolError(f"unknown SAM type(s) {', '.join(unknown)}; choose from "
                        f"{', '.join(sorted(SAM_VARIANTS))}")
    from vlsam_ros.testing.tiny_hf_segmenters import (TINY_SEGMENTER_BACKENDS,
                                                      save_tiny_segmenter)

    known = TINY_SEGMENTER_BACKENDS + ("sam3",)
    unknown = [b for b in segmenters if b not in known]
    if unknown:
        raise ToolError(f"unknown segmenter(s) {', '.join(unknown)}; choose from "
                        f"{', '.join(known)}")
    out = Path(out_dir)
    with staged_output(out, merge=True) as staging:
        staging.mkdir()
        for family in families:
            save_tiny_vlm(family, staging / family, seed=seed)
        for sam_type in sam_types:
            save_tiny_sam(sam_type, staging / sam_checkpoint_name(sam_type), seed=seed)
        for backend in segmenters:
            save_tiny_segmenter(backend, staging / backend, seed=seed)
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


def build_parser() -> ToolParser:
    parser = ToolParser(prog="vlsam-make-tiny-models", description=__doc__.splitlines()[0],
                        epilog="Exit status: 0 written, 2 bad arguments or unwritable output, "
                               "130 interrupted (nothing half-built is left).")
    parser.add_argument("out_dir", nargs="?", default="models/tiny",
                        help="folder to write the models into (default: %(default)s)")
    parser.add_argument("--families", nargs="+", default=["llava"], metavar="FAMILY",
                        help="VLM families to build: llava, llava_next, qwen2_vl, idefics3 "
                             "(default: llava)")
    parser.add_argument("--sam-types", nargs="+", default=["vit_t"], metavar="TYPE",
                        help="SAM variants to build: vit_t (~40 MB), vit_b, vit_l, vit_h "
                             "(random weights are as big as real ones; default: vit_t)")
    parser.add_argument("--segmenters", nargs="*", default=[], metavar="BACKEND",
                        help="transformers segmenters to build into OUT_DIR/<backend>: sam2, "
                             "edgetam, sam_hq, sam3 (about 20-45 MB each; default: none)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed of the weights (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        out = make_tiny_models(args.out_dir, args.families, args.sam_types, args.seed,
                               args.segmenters)
        print(f"tiny random models written to {out} (random weights: labels are meaningless)")
        return EXIT_OK

    return run_tool("vlsam-make-tiny-models", body)


if __name__ == "__main__":
    raise SystemExit(main())
