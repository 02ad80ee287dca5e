"""VLMs at their PUBLISHED architecture with random weights, for benchmarks at real size.

``published_model_config(repo)`` builds the transformers config of a supported hub checkpoint
from the model values in ``data/published_vlm_configs.json`` (hidden sizes, layers, heads,
vocabulary size, vision tower, image size/patch, tokens per image); nothing is downloaded.
``build_published_vlm(repo, dtype, seed)`` instantiates it with real, seeded random tensors
(not the meta device, so timings are real) plus the published processor;
``save_published_vlm`` writes both so the production ``load_vlm`` can load the folder.

Tokenizer vs vocabulary: the real tokenizers are not stored here, so the processor wraps the
family's tiny word-level tokenizer (``tiny_vlm.build_tiny_tokenizer``, about 150 ids). Its ids all
lie below the published ``vocab_size`` (32064 ... 151936), so the embedding table and the LM
head keep their PUBLISHED shapes (the cost of the output projection over the full vocabulary
is real) and the rows above the tiny vocabulary are simply never produced: the LM head rows
of every token the tiny tokenizer cannot decode are zeroed (``tiny._favour_object_words``),
which also zeroes end-of-sequence, so every generation runs exactly ``max_new_tokens`` and
random weights do not change the cost. The special-token ids in the config (image token,
vision start/end, bos/eos/pad) are remapped to the tiny tokenizer's ids of the same tokens;
every shape stays the published one. Labels produced by these models are meaningless.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from vlsam_ros.testing.published_configs import (build_published_processor,
                                                  published_checkpoint)
from vlsam_ros.testing.tiny_vlm import (_IDEFICS3_TEMPLATE, _LLAVA_TEMPLATE, _QWEN2_VL_TEMPLATE,
                                     _favour_object_words, build_tiny_tokenizer)

# model_type -> (config class, model class) names in transformers.
_CLASSES = {
    "llava": ("LlavaConfig", "LlavaForConditionalGeneration"),
    "llava_next": ("LlavaNextConfig", "LlavaNextForConditionalGeneration"),
    "qwen2_vl": ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration"),
    "qwen2_5_vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration"),
    "idefics3": ("Idefics3Config", "Idefics3ForConditionalGeneration"),
}
_TEMPLATES = {"llava": _LLAVA_TEMPLATE, "llava_next": _LLAVA_TEMPLATE,
              "qwen2_vl": _QWEN2_VL_TEMPLATE, "idefics3": _IDEFICS3_TEMPLATE}
# Config keys holding token ids -> the special token they name, per family.
_TOKEN_KEYS = {
    "llava": {"image_token_index": "<image>", "image_token_id": "<image>"},
    "llava_next": {"image_token_index": "<image>", "image_token_id": "<image>"},
    "qwen2_vl": {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
                 "vision_start_token_id": "<|vision_start|>",
                 "vision_end_token_id": "<|vision_end|>"},
    "idefics3": {"image_token_id": "<image>"},
}


def _remap_token_ids(cfg: dict[str, Any], family: str, tokenizer) -> dict[str, Any]:
    """Copy of the nested config dict with every token id replaced by the tiny tokenizer's."""
    out = copy.deepcopy(cfg)
    named = {k: tokenizer.convert_tokens_to_ids(t) for k, t in _TOKEN_KEYS[family].items()}
    generic = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    for node in (out, out.get("text_config", {})):
        for key, tid in {**named, **generic}.items():
            if key in node or (key in named and node is out):
                node[key] = tid
    if family == "idefics3" or "text_config" in out:
        out.setdefault("text_config", {}).update(
            {k: v for k, v in generic.items() if v is not None})
    return out


def published_model_config(repo: str, tokenizer=None):
    """The transformers config of ``repo`` at its published architecture (no weights).

    ``tokenizer`` (default: the family's tiny tokenizer) supplies the special-token ids; all
    sizes are the fixture's values. Returns a ``PretrainedConfig`` subclass instance.
    """
    import transformers

    ckpt = published_checkpoint(repo)
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer(ckpt.family)
    config_cls, _ = _CLASSES[ckpt.model_type]
    values = _remap_token_ids(ckpt.model_config(), ckpt.family, tokenizer)
    return getattr(transformers, config_cls)(**values)


def build_published_vlm(repo: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """``(model, processor)`` of ``repo`` at its published size, random seeded weights, in
    ``dtype``, eval mode, greedy generation that never emits end-of-sequence.

    Allocates the full parameter count (e.g. ~256M for SmolVLM-256M, ~7B for LLaVA-1.5-7B:
    28 GB in float32); only build what the machine's memory holds.
    """
    import transformers

    ckpt = published_checkpoint(repo)
    tokenizer = build_tiny_tokenizer(ckpt.family)
    config = published_model_config(repo, tokenizer)
    _, model_cls = _CLASSES[ckpt.model_type]
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            model = getattr(transformers, model_cls)(config)
        finally:
            torch.set_default_dtype(previous)
        _favour_object_words(model, tokenizer)
    model = model.to(dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.do_sample = False
    processor = build_published_processor(repo, tokenizer, chat_template=_TEMPLATES[ckpt.family])
    return model.eval(), processor


def save_published_vlm(repo: str, out_dir: Path, dtype: torch.dtype = torch.float32,
                       seed: int = 0) -> Path:
    """Builds ``build_published_vlm(repo, dtype, seed)`` and saves model and processor to
    ``out_dir`` (returned); ``load_vlm`` with ``vlm.model = out_dir`` and the checkpoint's
    ``vlm.family`` loads it through the production path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = build_published_vlm(repo, dtype, seed)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
