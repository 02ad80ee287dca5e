"""Tiny SAM 2-family video trackers with seeded random weights, saved like real
checkpoints (``save_pretrained``), for tests: the real architectures of transformers'
Sam2VideoModel, EdgeTamVideoModel and Sam3TrackerVideoModel at a 256-pixel input (252 for
SAM 3's 14-pixel patches), narrow backbones and one memory-attention layer. Their masks
are meaningless; shapes, dtypes, the memory bank and the loading path are the real ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TINY_FAMILIES = ("sam2", "edgetam", "sam3")


def _hiera(size: int) -> dict[str, Any]:
    return {"model_type": "sam2_vision_model",
            "backbone_config": {"model_type": "sam2_hiera_det_model", "image_size": [size, size],
                                "hidden_size": 32, "embed_dim_per_stage": [32, 64, 128, 256],
                                "blocks_per_stage": [1, 1, 2, 1],
                                "num_attention_heads_per_stage": [1, 1, 2, 2],
                                "window_size_per_stage": [8, 4, 4, 4],
                                "global_attention_blocks": [3]},
            "backbone_channel_list": [256, 128, 64, 32],
            "backbone_feature_sizes": [[size // 4] * 2, [size // 8] * 2, [size // 16] * 2]}


def tiny_video_tracker_config(family: str) -> Any:
    """The tiny config of ``family`` (one of TINY_FAMILIES)."""
    from transformers import EdgeTamVideoConfig, Sam2VideoConfig, Sam3TrackerVideoConfig

    if family == "sam2":
        size = 256
        return Sam2VideoConfig(vision_config=_hiera(size),
                               prompt_encoder_config={"image_size": size},
                               image_size=size, memory_attention_rope_feat_sizes=[size // 16] * 2,
                               memory_attention_num_layers=1,
                               memory_attention_feed_forward_hidden_size=256)
    if family == "edgetam":
        size = 256
        return EdgeTamVideoConfig(vision_config=_hiera(size),
                                  prompt_encoder_config={"image_size": size}, image_size=size,
                                  memory_attention_rope_feat_sizes=[size // 16] * 2,
                                  memory_attention_rope_k_sizes=[size // 64] * 2,
                                  memory_attention_num_layers=1,
                                  memory_attention_mlp_hidden_size=256)
    if family == "sam3":
        size, grid = 252, 18
        vision = {"model_type": "sam3_vision_model",
                  "backbone_feature_sizes": [[grid * 4] * 2, [grid * 2] * 2, [grid] * 2],
                  "backbone_config": {"model_type": "sam3_vit_model", "hidden_size": 64,
                                      "intermediate_size": 128, "num_hidden_layers": 2,
                                      "num_attention_heads": 2, "image_size": size,
                                      "patch_size": 14, "window_size": 6,
                                      "global_attn_indexes": [1], "pretrain_image_size": size}}
        return Sam3TrackerVideoConfig(vision_config=vision,
                                      prompt_encoder_config={"image_size": size}, image_size=size,
                                      memory_attention_rope_feat_sizes=[grid] * 2,
                                      memory_attention_num_layers=1,
                                      memory_attention_feed_forward_hidden_size=256)
    raise ValueError(f"unknown family {family!r}; expected one of {TINY_FAMILIES}")


def save_tiny_video_tracker(family: str, out_dir: Path, seed: int = 0) -> Path:
    """Builds the tiny ``family`` tracker with weights drawn from ``seed`` (the global torch
    RNG is left untouched) and saves it with save_pretrained into ``out_dir``."""
    from transformers import EdgeTamVideoModel, Sam2VideoModel, Sam3TrackerVideoModel

    classes = {"sam2": Sam2VideoModel, "edgetam": EdgeTamVideoModel,
               "sam3": Sam3TrackerVideoModel}
    config = tiny_video_tracker_config(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = classes[family](config).eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    return out_dir
