"""Tiny VLMs: saved like real checkpoints, loaded by the production loader, same outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlsam_ros.core.config import from_flat
from vlsam_ros.core.errors import (DeviceUnavailableError, InvalidImageError,
                                   ModelNotFoundError)
from vlsam_ros.core.vlm import BACKENDS, load_vlm
from vlsam_ros.testing.tiny_vlm import FAMILIES, build_tiny_vlm, save_tiny_vlm

QUESTIONS = ["Describe this driving scene.", "List every object."]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images():
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (40, 70, 3), dtype=np.uint8),
            rng.integers(0, 256, (64, 36, 3), dtype=np.uint8)]


def _cfg(family, model_dir, **extra):
    values = {"device": "cpu", "vlm.family": family, "vlm.model": str(model_dir),
              "vlm.dtype": "float32", "vlm.max_new_tokens": 12}
    values.update(extra)
    return from_flat(values)


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_model_loads_and_matches_in_memory(family, tmp_path):
    out = save_tiny_vlm(family, tmp_path / family, seed=0)
    cfg = _cfg(family, out)
    loaded = load_vlm(cfg)
    assert isinstance(loaded, BACKENDS[family])
    assert loaded.model.dtype == torch.float32
    model, processor = build_tiny_vlm(family, seed=0)
    in_memory = BACKENDS[family](model, processor)
    a = loaded.describe(_images(), QUESTIONS, cfg.vlm, cfg.attention)
    b = in_memory.describe(_images(), QUESTIONS, cfg.vlm, cfg.attention)
    for x, y, image in zip(a, b, _images()):
        assert x.text == y.text
        assert x.objects == y.objects
        assert x.grid_shape == y.grid_shape
        assert x.attention_maps.dtype == np.float32
        assert x.attention_maps.shape == (len(x.objects), *image.shape[:2])
        np.testing.assert_allclose(x.attention_maps, y.attention_maps, atol=1e-5)
    assert loaded.generate_text("Write a question.", cfg.vlm) == \
        in_memory.generate_text("Write a question.", cfg.vlm)


def test_same_seed_same_weights_other_seed_differs():
    a, _ = build_tiny_vlm("llava", seed=0)
    b, _ = build_tiny_vlm("llava", seed=0)
    c, _ = build_tiny_vlm("llava", seed=1)
    wa, wb, wc = (m.get_output_embeddings().weight for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)


def test_hub_id_loads_from_the_local_cache_only(tmp_path, monkeypatch):
    """A hub id already in the local Hugging Face cache loads without any network."""
    import shutil

    import huggingface_hub.constants as hub_constants

    snapshot = tmp_path / "hub" / "models--vlsam--tiny-llava" / "snapshots" / ("0" * 40)
    shutil.copytree(save_tiny_vlm("llava", tmp_path / "saved"), snapshot)
    (tmp_path / "hub" / "models--vlsam--tiny-llava" / "refs").mkdir()
    (tmp_path / "hub" / "models--vlsam--tiny-llava" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    cfg = _cfg("llava", "vlsam/tiny-llava")
    assert cfg.vlm.local_files_only
    vlm = load_vlm(cfg)
    answer = vlm.describe(_images()[:1], QUESTIONS[:1], cfg.vlm, cfg.attention)[0]
    assert answer.attention_maps.shape[1:] == (40, 70)


def test_missing_local_folder_names_model_download_and_key(tmp_path):
    cfg = _cfg("llava", tmp_path / "nothing_here")
    with pytest.raises(ModelNotFoundError) as info:
        load_vlm(cfg)
    msg = str(info.value)
    assert "nothing_here" in msg
    assert "huggingface-cli download llava-hf/llava-1.5-7b-hf" in msg
    assert "vlm.model" in msg


def test_missing_hub_id_is_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = _cfg("qwen2_vl", "someorg/not-a-cached-model")
    with pytest.raises(ModelNotFoundError) as info:
        load_vlm(cfg)
    msg = str(info.value)
    assert "huggingface-cli download someorg/not-a-cached-model" in msg
    assert "vlm.model" in msg


def test_unavailable_cuda_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = save_tiny_vlm("llava", tmp_path / "llava")
    cfg = _cfg("llava", out, device="cuda")
    with pytest.raises(DeviceUnavailableError, match="CUDA"):
        load_vlm(cfg)


def test_family_mismatch_is_reported(tmp_path):
    out = save_tiny_vlm("llava", tmp_path / "llava")
    with pytest.raises(ModelNotFoundError, match="vlm.family"):
        load_vlm(_cfg("qwen2_vl", out))


@pytest.fixture(scope="module")
def tiny_llava():
    model, processor = build_tiny_vlm("llava", seed=0)
    return BACKENDS["llava"](model, processor)


@pytest.mark.parametrize("bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32),
                                 np.zeros((10, 10, 4), np.uint8), "not an image"])
def test_invalid_image_raises(tiny_llava, bad):
    cfg = _cfg("llava", "unused")
    with pytest.raises(InvalidImageError):
        tiny_llava.describe([bad], ["q"], cfg.vlm, cfg.attention)


def test_attend_checks_every_image_like_describe(tiny_llava):
    """attend (Salience DropOut's teacher-forced re-run) refuses what describe refuses,
    naming the image by its index."""
    cfg = _cfg("llava", "unused")
    good = np.zeros((10, 10, 3), np.uint8)
    for bad in (np.zeros((1, 10, 3), np.uint8), np.zeros((10, 10, 3), np.float32)):
        with pytest.raises(InvalidImageError, match="^image 1"):
            tiny_llava.attend([good, bad], ["q", "q"], [None, None], cfg.vlm, cfg.attention)


def test_garbage_output_gives_no_objects_and_raw_text(tiny_llava, monkeypatch):
    """Whatever the model emits (here: only punctuation), the answer is well formed."""
    cfg = _cfg("llava", "unused")
    tok = tiny_llava.tokenizer
    comma = tok.convert_tokens_to_ids(",")

    def generate(**inputs):
        ids = inputs["input_ids"]
        return torch.cat([ids, torch.full((ids.shape[0], 5), comma)], dim=1)

    monkeypatch.setattr(tiny_llava, "_generate", lambda inputs, c: generate(**inputs))
    answers = tiny_llava.describe(_images(), QUESTIONS, cfg.vlm, cfg.attention)
    for ans, image in zip(answers, _images()):
        assert ans.objects == ()
        assert ans.text.replace(" ", "") == ",,,,,"
        assert ans.attention_maps.shape == (0, *image.shape[:2])


def test_immediate_eos_gives_empty_answer(tiny_llava, monkeypatch):
    cfg = _cfg("llava", "unused")
    eos = tiny_llava.tokenizer.eos_token_id
    monkeypatch.setattr(tiny_llava, "_generate", lambda inputs, c: torch.cat(
        [inputs["input_ids"], torch.full((inputs["input_ids"].shape[0], 1), eos)], dim=1))
    ans = tiny_llava.describe(_images()[:1], QUESTIONS[:1], cfg.vlm, cfg.attention)[0]
    assert ans.text == "" and ans.objects == ()
    assert ans.attention_maps.shape == (0, 40, 70)


def test_batch_equals_single_runs(tiny_llava):
    """Tiles and questions go through as one batch; each answer equals its own run."""
    cfg = _cfg("llava", "unused")
    images = _images()
    batch = tiny_llava.describe(images, QUESTIONS, cfg.vlm, cfg.attention)
    for image, question, ans in zip(images, QUESTIONS, batch):
        single = tiny_llava.describe([image], [question], cfg.vlm, cfg.attention)[0]
        assert single.text == ans.text and single.objects == ans.objects
        np.testing.assert_allclose(single.attention_maps, ans.attention_maps, atol=1e-4)
