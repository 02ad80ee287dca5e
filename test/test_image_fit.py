"""vlm.image_fit and the per-family pixel budgets, through the tiny models' real ``generate``
and the published processors; the published-configuration fixture itself; the README's
image-token table."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_attention_vlm import QUESTION, _every_token_is_an_object, _plant

from vlsam_ros.core.config import ConfigError, VlmConfig, from_flat, parse_grid_pinpoints
from vlsam_ros.core.errors import AttentionUnavailableError
from vlsam_ros.core.vlm import BACKENDS, hf_backend, layouts
from vlsam_ros.core.vlm.image_fit import ImageFit, fit_processor, visible_fraction
from vlsam_ros.testing.published_configs import (build_published_processor,
                                                  image_token_table_markdown,
                                                  measure_image_tokens, published_checkpoint,
                                                  published_checkpoints, sources)
from vlsam_ros.testing.tiny_vlm import build_tiny_tokenizer, build_tiny_vlm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

README = Path(__file__).resolve().parents[1] / "README.md"


def _cfg(**vlm):
    values = {"device": "cpu", "vlm.dtype": "float32", "vlm.max_new_tokens": 8}
    values.update({f"vlm.{k}": v for k, v in vlm.items()})
    return from_flat(values)


def _tiny(family):
    model, processor = build_tiny_vlm(family, seed=0)
    return BACKENDS[family](model, processor)


# --- the backend ----------------------------------------------------------------------


def test_backend_fits_a_copy_and_leaves_the_loaded_processor_alone():
    vlm = _tiny("llava")
    whole = vlm.fitted_processor(_cfg().vlm)
    assert whole.image_processor.do_pad and not whole.image_processor.do_center_crop
    assert vlm.processor.image_processor.do_center_crop and not vlm.processor.image_processor.do_pad
    assert vlm.fitted_processor(_cfg(image_fit="processor").vlm) is vlm.processor
    assert vlm.fitted_processor(_cfg().vlm) is whole                 # cached per setting
    assert whole.tokenizer is vlm.processor.tokenizer


@pytest.mark.parametrize("mode", ["whole", "processor"])
def test_planted_corner_token_through_generate(mode, monkeypatch):
    """Tiny LLaVA, 40x120 frame. Whole: the grid cell over the top-left pixel exists and a
    planted attention on it peaks at the frame's top-left. Processor: the centre crop keeps
    x in [40, 80) only, so every object's map is 0 over the left and right thirds."""
    vlm = _tiny("llava")
    cfg = _cfg(image_fit=mode)
    image = np.random.default_rng(0).integers(0, 256, (40, 120, 3), dtype=np.uint8)
    processor = vlm.fitted_processor(cfg.vlm)
    inputs = vlm._inputs([vlm._prompt(QUESTION, with_image=True)], [image], processor)
    ids = inputs["input_ids"][0].tolist()
    layout = vlm.image_layout(ids, image.shape[:2], inputs, 0, processor)
    x0, y0, x1, y1 = layout.box_xyxy
    monkeypatch.setattr(hf_backend, "parse_object_names", _every_token_is_an_object)
    if mode == "whole":
        assert visible_fraction(layout.box_xyxy, image.shape[:2]) == 1.0
        gr, gc = layout.grid_shape
        cell = (int((0.5 - y0) / (y1 - y0) * gr), int((0.5 - x0) / (x1 - x0) * gc))
        vlm.qk_hook = _plant(int(layout.grid_index[cell]), len(ids))
    answer = vlm.describe([image], [QUESTION], cfg.vlm, cfg.attention)[0]
    vlm.qk_hook = None
    assert len(answer.objects) >= 2
    for m in answer.attention_maps:
        if mode == "whole":
            py, px = np.unravel_index(int(m.argmax()), m.shape)
            assert px < (x1 - x0) / layout.grid_shape[1] and py < 40 / 2
        else:
            assert visible_fraction(layout.box_xyxy, image.shape[:2]) == pytest.approx(1 / 3)
            assert m[:, :40].max() == 0.0 and m[:, 80:].max() == 0.0


def test_llava_next_pinpoints_budget_reaches_processor_and_model():
    """A grid pinpoint outside the checkpoint's list is used by the processor, and the model
    (which unpads and counts features from its own config) agrees: generate runs."""
    vlm = _tiny("llava_next")
    own = [list(p) for p in vlm.model.config.image_grid_pinpoints]
    cfg = _cfg(llava_next_grid_pinpoints="32x64,64x32,64x96")
    image = np.random.default_rng(1).integers(0, 256, (60, 95, 3), dtype=np.uint8)
    answer = vlm.describe([image], [QUESTION], cfg.vlm, cfg.attention)[0]
    assert vlm.model.config.image_grid_pinpoints == [[32, 64], [64, 32], [64, 96]]
    assert answer.grid_shape == (8, 12)          # 64x96 pinpoint, 8 px patches, no unpadding
    assert vlm.processor.image_processor.image_grid_pinpoints == own   # loaded one untouched
    default = vlm.describe([image], [QUESTION], _cfg().vlm, _cfg().attention)[0]
    assert vlm.model.config.image_grid_pinpoints == own
    assert default.grid_shape != answer.grid_shape
    with pytest.raises(ConfigError, match="multiples"):
        vlm.fitted_processor(_cfg(llava_next_grid_pinpoints="30x64").vlm)


def test_qwen_pixel_range_is_intersected_with_the_checkpoint():
    vlm = _tiny("qwen2_vl")                      # tiny: 16 px per token, 256..12288 pixels
    image = np.random.default_rng(2).integers(0, 256, (90, 135, 3), dtype=np.uint8)

    def grid(**budget):
        cfg = _cfg(**budget)
        answer = vlm.describe([image], [QUESTION], cfg.vlm, cfg.attention)[0]
        return answer.grid_shape

    own = grid(qwen_max_pixels=0)
    capped = grid(qwen_max_pixels=16 * 16 * 12)
    assert own[0] * own[1] > 12 >= capped[0] * capped[1]
    assert grid(qwen_max_pixels=10**9) == own                # never above the checkpoint's
    with pytest.raises(ConfigError, match="empty"):
        vlm.fitted_processor(_cfg(qwen_min_pixels=20000).vlm)


def test_idefics3_longest_edge_caps_the_tiles():
    repo = "HuggingFaceTB/SmolVLM-256M-Instruct"
    own = measure_image_tokens(repo, (900, 1600), VlmConfig())
    capped = measure_image_tokens(repo, (900, 1600), VlmConfig(idefics3_longest_edge=1024))
    above = measure_image_tokens(repo, (900, 1600), VlmConfig(idefics3_longest_edge=4096))
    assert own[1] == (24, 32) and capped[1] == (16, 16)      # 3x4 tiles -> 2x2 tiles (+global)
    assert capped[0] == 5 * 64 and above == own


# --- Idefics3 tile markers for any grid ----------------------------------------------------


def _idefics3_processor(tokenizer, longest_edge, tile=32):
    from transformers import Idefics3ImageProcessor, Idefics3Processor

    ip = Idefics3ImageProcessor(size={"longest_edge": longest_edge},
                                max_image_size={"longest_edge": tile}, do_image_splitting=True)
    return Idefics3Processor(image_processor=ip, tokenizer=tokenizer, image_seq_len=4)


def test_idefics3_markers_are_read_from_the_vocabulary_for_any_grid():
    tok = build_tiny_tokenizer("idefics3")                   # spells <row_r_col_c> up to 6
    tok.add_special_tokens({"additional_special_tokens": [
        f"<row_{r}_col_{c}>" for r in range(1, 9) for c in range(1, 9) if r > 6 or c > 6]})
    processor = _idefics3_processor(tok, longest_edge=8 * 32)
    markers, _ = layouts.idefics3_markers(tok)
    assert (7, 8) in markers.values() and len(markers) == 64
    hw = (220, 256)                                          # -> 7 x 8 tiles of 32 px
    inputs = processor(text=["<|begin_of_text|>User:<image> hi"],
                       images=[Image.fromarray(np.zeros((*hw, 3), np.uint8))],
                       return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    layout = layouts.family_layout("idefics3", ids, processor.image_token_id, hw, processor,
                                   inputs, 0)
    assert layout.grid_shape == (7 * 2, 8 * 2)
    runs = layouts.token_runs(ids, processor.image_token_id)
    assert layout.grid_index[-1, -1] == runs[-2][1] - 1      # last tile's last token
    assert len(torch.unique(layout.grid_index)) == layout.grid_index.numel()


def test_idefics3_grid_beyond_the_vocabulary_is_a_clear_error():
    tok = build_tiny_tokenizer("idefics3")                   # no <row_1_col_7>
    processor = _idefics3_processor(tok, longest_edge=7 * 32)
    hw = (32, 224)                                           # 1 x 7 tiles
    inputs = processor(text=["<|begin_of_text|>User:<image> hi"],
                       images=[Image.fromarray(np.zeros((*hw, 3), np.uint8))],
                       return_tensors="pt")
    with pytest.raises(AttentionUnavailableError, match="lacks the marker"):
        layouts.family_layout("idefics3", inputs["input_ids"][0].tolist(),
                              processor.image_token_id, hw, processor, inputs, 0)


# --- configuration -----------------------------------------------------------------------


def test_grid_pinpoints_parse_and_errors():
    assert parse_grid_pinpoints("") == ()
    assert parse_grid_pinpoints(" 336x672, 672X336 ") == ((336, 672), (672, 336))
    for bad in ("336", "336x", "0x336", "336x672x2", "axb"):
        with pytest.raises(ConfigError):
            VlmConfig(llava_next_grid_pinpoints=bad)
    with pytest.raises(ConfigError, match="exceeds"):
        VlmConfig(qwen_min_pixels=10, qwen_max_pixels=5)
    assert ImageFit.from_config(VlmConfig()).mode == "whole"


def test_visible_fraction():
    assert visible_fraction((0, -350, 1600, 1250), (900, 1600)) == 1.0
    assert visible_fraction((350, 0, 1250, 900), (900, 1600)) == pytest.approx(0.5625)
    assert visible_fraction((0, 0, 800, 450), (900, 1600)) == pytest.approx(0.25)


def test_processor_mode_returns_the_checkpoint_processor():
    repo = "llava-hf/llava-1.5-7b-hf"
    processor = build_published_processor(repo, build_tiny_tokenizer("llava"))
    assert fit_processor(processor, "llava", ImageFit(mode="processor")) is processor
    whole = fit_processor(processor, "llava", ImageFit())
    assert type(processor.image_processor).__name__ == "CLIPImageProcessor"
    assert type(whole.image_processor).__name__ == "LlavaImageProcessor"
    assert whole.image_processor.image_mean == processor.image_processor.image_mean


# --- the published-configuration fixture -------------------------------------------------


EXPECTED_REPOS = {
    "llava-hf/llava-1.5-7b-hf", "llava-hf/llava-v1.6-mistral-7b-hf",
    "llava-hf/llava-v1.6-vicuna-7b-hf", "Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2-VL-7B-Instruct",
    "Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct",
    "HuggingFaceM4/Idefics3-8B-Llama3", "HuggingFaceTB/SmolVLM-256M-Instruct",
    "HuggingFaceTB/SmolVLM-500M-Instruct", "HuggingFaceTB/SmolVLM-Instruct"}


def test_fixture_covers_every_checkpoint_with_sourced_values():
    known = sources()
    assert set(published_checkpoints()) == EXPECTED_REPOS
    for repo, ckpt in published_checkpoints().items():
        for key, v in {**ckpt.processor, **ckpt.model}.items():
            assert v.source.startswith(repo + "/") and v.source.endswith(".json"), (repo, key)
            assert set(v.confirmed_by) <= set(known), (repo, key, v.confirmed_by)
        assert {"vision_config", "text_config"} <= set(ckpt.model_config()) \
            or ckpt.family == "qwen2_vl"
        cfg = ckpt.model_config()
        vision = cfg["vision_config"]
        assert vision["patch_size"] == 14 or ckpt.repo.startswith("HuggingFaceTB/SmolVLM-")
    assert published_checkpoint("Qwen/Qwen2-VL-7B-Instruct").value("max_pixels") == 12845056
    with pytest.raises(ValueError, match="known"):
        published_checkpoint("nobody/nothing")


@pytest.mark.parametrize("repo", sorted(EXPECTED_REPOS))
def test_published_processor_matches_the_model_geometry(repo):
    """The fixture is self-consistent: the processor's image tokens per tile equal what the
    published vision tower produces (CLIP/SigLIP patches, merges, pixel shuffle)."""
    ckpt = published_checkpoint(repo)
    m = ckpt.model_config()
    if ckpt.family in ("llava", "llava_next"):
        side = m["vision_config"]["image_size"] // m["vision_config"]["patch_size"]
        assert ckpt.value("crop_size")["height"] // ckpt.value("patch_size") == side
        assert m["image_seq_length"] == side * side
    elif ckpt.family == "qwen2_vl":
        assert ckpt.value("patch_size") == m["vision_config"]["patch_size"]
        assert ckpt.value("merge_size") == m["vision_config"]["spatial_merge_size"]
    else:
        side = m["vision_config"]["image_size"] // m["vision_config"]["patch_size"]
        assert ckpt.value("image_seq_len") == (side // m["scale_factor"]) ** 2
        assert ckpt.value("max_image_size")["longest_edge"] == m["vision_config"]["image_size"]


# --- README ----------------------------------------------------------------------------------


def test_readme_token_table_is_the_measured_one():
    text = README.read_text()
    match = re.search(r"<!-- image-token-table -->\n(.*?)\n<!-- /image-token-table -->", text,
                      re.S)
    assert match, "README.md lacks the image-token table markers"
    assert match.group(1).strip() == image_token_table_markdown().strip()
