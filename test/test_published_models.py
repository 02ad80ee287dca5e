"""VLMs at their published architecture: configs match the fixture; SmolVLM-256M runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlsam_ros.core.config import from_flat
from vlsam_ros.core.vlm import BACKENDS, load_vlm
from vlsam_ros.testing.published_configs import published_checkpoint, published_checkpoints
from vlsam_ros.testing.published_vlms import (build_published_vlm, published_model_config,
                                                 save_published_vlm)
from vlsam_ros.testing.tiny_vlm import build_tiny_tokenizer

SMALLEST = "HuggingFaceTB/SmolVLM-256M-Instruct"
# Config keys that hold token ids: remapped to the tiny tokenizer's ids on purpose.
_TOKEN_ID_KEYS = {"image_token_id", "image_token_index", "video_token_id",
                  "vision_start_token_id", "vision_end_token_id", "bos_token_id",
                  "eos_token_id", "pad_token_id"}


def _rope(config) -> dict:
    text = getattr(config, "text_config", None) or config
    return text.rope_parameters


def _lookup(config, dotted: str):
    """The value of a dotted config.json key in a built config. transformers 5 folds the
    legacy rope keys (rope_theta, rope_scaling.*) into ``rope_parameters``; flat Qwen2-VL
    text keys live in ``text_config``."""
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        if p == "rope_scaling":
            return _rope(config)["rope_type" if leaf == "type" else leaf]
        node = getattr(node, p) if not isinstance(node, dict) else node[p]
    if isinstance(node, dict):
        return node[leaf]
    if hasattr(node, leaf):
        return getattr(node, leaf)
    if leaf == "rope_theta":
        return _rope(node)["rope_theta"]
    if hasattr(node, "text_config"):
        return _lookup(node.text_config, leaf)
    raise AttributeError(f"{type(node).__name__} has no {dotted}")


@pytest.mark.parametrize("repo", list(published_checkpoints()))
def test_config_has_every_published_model_value(repo):
    ckpt = published_checkpoint(repo)
    tokenizer = build_tiny_tokenizer(ckpt.family)
    config = published_model_config(repo, tokenizer)     # a config only: no weights
    assert config.model_type == ckpt.model_type
    checked = 0
    for key, entry in ckpt.model.items():
        leaf = key.split(".")[-1]
        if leaf in _TOKEN_ID_KEYS:
            continue
        value = _lookup(config, key)
        if key.endswith("rope_scaling.type"):         # 'mrope' is the legacy spelling
            assert value in ("mrope", "default"), (key, value)
        else:
            assert value == entry.value, (repo, key, value, entry.value)
        checked += 1
    assert checked >= 10
    # The tiny tokenizer's ids fit the published vocabulary, and the image token is remapped.
    text = getattr(config, "text_config", config)
    assert len(tokenizer) < text.vocab_size
    image_id = getattr(config, "image_token_id", None) or config.image_token_index
    assert image_id == tokenizer.convert_tokens_to_ids(
        "<|image_pad|>" if ckpt.family == "qwen2_vl" else "<image>")


def _smol_image_tokens(processor) -> int:
    frame = np.zeros((900, 1600, 3), np.uint8)
    from PIL import Image
    inputs = processor(text=["<|begin_of_text|>User:<image> Describe.<end_of_utterance>\n"
                             "Assistant:"], images=[Image.fromarray(frame)], return_tensors="pt")
    return int((inputs["input_ids"][0] == processor.image_token_id).sum())


@pytest.mark.slow
def test_smolvlm_256m_builds_at_published_size_and_generates(one_torch_thread):
    model, processor = build_published_vlm(SMALLEST, torch.float32, seed=0)
    params = sum(p.numel() for p in model.parameters())
    assert 200e6 < params < 300e6, params                    # "256M"
    assert model.get_input_embeddings().weight.shape == (49280, 576)
    assert all(p.device.type == "cpu" for p in model.parameters())   # real tensors, not meta
    assert processor.image_seq_len == 64
    vlm = BACKENDS["idefics3"](model, processor)
    cfg = from_flat({"device": "cpu", "vlm.family": "idefics3", "vlm.model": SMALLEST,
                     "vlm.dtype": "float32", "vlm.max_new_tokens": 4})
    image = np.random.default_rng(0).integers(0, 256, (90, 160, 3), dtype=np.uint8)
    answer = vlm.describe([image], ["List every object."], cfg.vlm, cfg.attention)[0]
    assert answer.attention_maps.shape == (len(answer.objects), 90, 160)
    # EOS is never emitted: generation length is fixed by max_new_tokens.
    text = vlm.generate_text("Write a question.", cfg.vlm)
    assert len(processor.tokenizer(text, add_special_tokens=False)["input_ids"]) >= 4


@pytest.mark.slow
def test_smolvlm_256m_save_load_round_trip(tmp_path, one_torch_thread):
    out = save_published_vlm(SMALLEST, tmp_path / "smol", torch.float32, seed=0)
    cfg = from_flat({"device": "cpu", "vlm.family": "idefics3", "vlm.model": str(out),
                     "vlm.dtype": "float32", "vlm.max_new_tokens": 3})
    loaded = load_vlm(cfg)
    assert loaded.model.config.text_config.num_hidden_layers == 30
    assert loaded.model.get_input_embeddings().weight.shape == (49280, 576)
    model, _ = build_published_vlm(SMALLEST, torch.float32, seed=0)
    torch.testing.assert_close(loaded.model.get_output_embeddings().weight,
                               model.get_output_embeddings().weight)
    assert loaded.generate_text("Write a question.", cfg.vlm) == \
        BACKENDS["idefics3"](model, loaded.processor).generate_text("Write a question.", cfg.vlm)
