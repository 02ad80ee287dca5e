"""Tiny-weights stand-ins for SAM checkpoints: the real architectures with seeded random
weights, saved as plain state dicts exactly like the official checkpoint files.

The masks such a model produces are meaningless; shapes, dtypes and the loading path are
the real ones.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlsam_ros.core.segmenter.sam_adapter import build_sam_model


def save_tiny_sam(sam_type: str, out_path: Path, seed: int = 0) -> Path:
    """Builds ``sam_type`` (vit_h/vit_l/vit_b/vit_t) with checkpoint=None and weights drawn
    from ``seed``, and saves its state dict to ``out_path``. The global torch RNG state is
    left untouched. Returns ``out_path``.

    vit_t is about 40 MB on disk; vit_b ~360 MB, vit_h ~2.5 GB (random weights are not
    smaller than real ones: it is the architecture that sets the size).
    """
    out_path = Path(out_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_sam_model(sam_type)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_path)
    return out_path
