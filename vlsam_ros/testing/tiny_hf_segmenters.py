"""Tiny SAM 2.1 / EdgeTAM / SAM-HQ / SAM 3 image segmenters with seeded random weights,
saved like real checkpoints (``save_pretrained``: config, weights and processor), so that
the production loaders (``segmenter.hf_sam.load_hf_sam``, ``segmenter.concept.
load_concept_segmenter``) load them exactly as they load real weights.

The architectures are transformers' own at a 256-pixel input (252 for SAM 3's 14-pixel
patches) with narrow encoders: the SAM 2 Hiera backbone and the SAM 3 ViT of the tiny video
trackers (``tiny_video_trackers``), EdgeTAM's own RepViT-M1 backbone (timm, full width), a
2-layer ViT for SAM-HQ, one-layer DETR stages and a 2-layer CLIP text encoder over a
word-level tokenizer for SAM 3. ``published_segmenter_config`` gives the published
architectures (1024-pixel input) for benchmarks. Their masks
are meaningless; shapes, dtypes, processors and the loading path are the real ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlsam_ros.testing.synthetic.tiny_video_trackers import _hiera, tiny_video_tracker_config

TINY_SEGMENTER_BACKENDS = ("sam2", "edgetam", "sam_hq")
"""``sam.backend`` values the tiny builder covers (plus ``sam3`` for concept mode)."""

SIDE = 256
"""Input side of the tiny SAM 2 / EdgeTAM / SAM-HQ models, pixels."""

SAM3_WORDS = ("car", "cone", "box", "person", "truck", "dog", "tree", "sign", "bag", "bus",
              "a", "the", "red", "blue", "traffic", "light")
"""Vocabulary of the tiny SAM 3 tokenizer (unknown words map to <unk>)."""


def tiny_segmenter_config(backend: str) -> Any:
    """The tiny transformers config of ``backend`` (TINY_SEGMENTER_BACKENDS or 'sam3')."""
    from transformers import EdgeTamConfig, Sam2Config, Sam3Config, SamHQConfig

    if backend == "sam2":
        return Sam2Config(vision_config=_hiera(SIDE), prompt_encoder_config={"image_size": SIDE})
    if backend == "edgetam":
        return EdgeTamConfig(vision_config=_repvit(SIDE),
                             prompt_encoder_config={"image_size": SIDE})
    if backend == "sam_hq":
        grid = SIDE // 16
        return SamHQConfig(
            vision_config={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                           "mlp_dim": 128, "image_size": SIDE, "patch_size": 16,
                           "output_channels": 256, "global_attn_indexes": [1],
                           "window_size": 4},
            prompt_encoder_config={"image_size": SIDE, "patch_size": 16,
                                   "image_embedding_size": grid},
            mask_decoder_config={"vit_dim": 64})
    if backend == "sam3":
        vision = tiny_video_tracker_config("sam3").vision_config.to_dict()
        small = {"num_layers": 1, "intermediate_size": 256}
        return Sam3Config(vision_config=vision,
                          text_config={"model_type": "clip_text_model", "hidden_size": 64,
                                       "intermediate_size": 128, "num_hidden_layers": 2,
                                       "num_attention_heads": 2, "projection_dim": 64,
                                       "vocab_size": len(SAM3_WORDS) + 4,
                                       "max_position_embeddings": 32, "pad_token_id": 0,
                                       "bos_token_id": 1, "eos_token_id": 2},
                          geometry_encoder_config=small, detr_encoder_config=small,
                          detr_decoder_config={**small, "num_queries": 16},
                          mask_decoder_config={"num_upsampling_stages": 3})
    raise ValueError(f"unknown backend {backend!r}; expected one of "
                     f"{TINY_SEGMENTER_BACKENDS + ('sam3',)}")


def _repvit(size: int) -> dict[str, Any]:
    """EdgeTAM's vision config: timm's RepViT-M1 (random weights, nothing downloaded) with
    the feature grids of a ``size``-pixel input."""
    from transformers import TimmWrapperConfig

    backbone = TimmWrapperConfig(architecture="repvit_m1", num_labels=1, model_args={
        "in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3]})
    return {"model_type": "edgetam_vision_model", "backbone_config": backbone.to_dict(),
            "backbone_feature_sizes": [[size // 4] * 2, [size // 8] * 2, [size // 16] * 2]}


def published_segmenter_config(backend: str) -> Any:
    """The published architecture of ``backend`` at its 1024-pixel input: SAM 2.1
    hiera-tiny (transformers' Sam2Config defaults), EdgeTAM (RepViT-M1), SAM-HQ vit_b
    (SamHQConfig defaults). Random weights; for timing, not for masks."""
    from transformers import EdgeTamConfig, Sam2Config, SamHQConfig

    if backend == "sam2":
        return Sam2Config()
    if backend == "edgetam":
        return EdgeTamConfig(vision_config=_repvit(1024))
    if backend == "sam_hq":
        return SamHQConfig()
    raise ValueError(f"unknown backend {backend!r}; expected one of {TINY_SEGMENTER_BACKENDS}")


def build_published_segmenter(backend: str, seed: int = 0) -> torch.nn.Module:
    """``published_segmenter_config(backend)`` built with weights drawn from ``seed``."""
    from transformers import EdgeTamModel, Sam2Model, SamHQModel

    classes = {"sam2": Sam2Model, "edgetam": EdgeTamModel, "sam_hq": SamHQModel}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return classes[backend](published_segmenter_config(backend)).eval()


def _sam3_tokenizer() -> Any:
    """A word-level fast tokenizer over SAM3_WORDS, padded to the right like CLIP's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    vocab.update({w: i + 4 for i, w in enumerate(SAM3_WORDS)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>", padding_side="right")


def tiny_processor(backend: str, side: int = SIDE) -> Any:
    """The processor saved with the tiny ``backend`` model, sized to its input (``side``
    pixels; 1024 for the published SAM 2 / EdgeTAM / SAM-HQ architectures)."""
    from transformers import (Sam2ImageProcessor, Sam2Processor, Sam3ImageProcessor,
                              Sam3Processor, SamHQProcessor, SamImageProcessor)

    low = side // 4
    if backend in ("sam2", "edgetam"):
        return Sam2Processor(image_processor=Sam2ImageProcessor(
            size={"height": side, "width": side}, mask_size={"height": low, "width": low}))
    if backend == "sam_hq":
        return SamHQProcessor(image_processor=SamImageProcessor(
            size={"longest_edge": side}, pad_size={"height": side, "width": side},
            mask_size={"longest_edge": low}, mask_pad_size={"height": low, "width": low}))
    if backend == "sam3":
        side = int(tiny_segmenter_config("sam3").vision_config.backbone_config.image_size)
        return Sam3Processor(image_processor=Sam3ImageProcessor(
            size={"height": side, "width": side}), tokenizer=_sam3_tokenizer())
    raise ValueError(f"unknown backend {backend!r}")


def build_tiny_segmenter(backend: str, seed: int = 0) -> torch.nn.Module:
    """The tiny ``backend`` model in eval mode with weights drawn from ``seed`` (the global
    torch RNG is left untouched)."""
    from transformers import EdgeTamModel, Sam2Model, Sam3Model, SamHQModel

    classes = {"sam2": Sam2Model, "edgetam": EdgeTamModel, "sam_hq": SamHQModel,
               "sam3": Sam3Model}
    config = tiny_segmenter_config(backend)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return classes[backend](config).eval()


def save_tiny_segmenter(backend: str, out_dir: Path, seed: int = 0) -> Path:
    """Builds the tiny ``backend`` model and writes it with its processor into ``out_dir``
    (save_pretrained layout, as published checkpoints are). Returns ``out_dir``."""
    out_dir = Path(out_dir)
    build_tiny_segmenter(backend, seed).save_pretrained(out_dir)
    tiny_processor(backend).save_pretrained(out_dir)
    return out_dir
