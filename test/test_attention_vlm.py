"""The attention engine through the real ``generate`` of every tiny VLM family.

* planted attention: queries and keys are forced (through the backend's qk hook, i.e. inside
  the registered attention function) so that every generated token attends to one chosen
  image token; the final map must peak on that patch, for a non-square image and for the
  multi-tile (LLaVA-NeXT anyres, Idefics3 splitting) and dynamic-resolution (Qwen2-VL)
  layouts;
* fast capture (SDPA + cached queries/keys) equals the eager reference;
* collapse: on a uniform image the unregularised flow piles onto the first image tokens,
  the regularised one does not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlsam_ros.core.config import from_flat
from vlsam_ros.core.results import ObjectName
from vlsam_ros.core.vlm import BACKENDS, hf_backend
from vlsam_ros.testing.tiny_vlm import FAMILIES, build_tiny_vlm

QUESTION = "Describe this driving scene."
PLANT_GAIN = 8.0       # |q| = |k| = 8: logit 64 / sqrt(d) dwarfs the tiny models' logits
PLANT_HEAD = 0         # one query head is planted; the others keep the generation varied


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request):
    model, processor = build_tiny_vlm(request.param, seed=0)
    return BACKENDS[request.param](model, processor)


def _cfg(**attention):
    values = {"device": "cpu", "vlm.dtype": "float32", "vlm.max_new_tokens": 10}
    values.update({f"attention.{k}": v for k, v in attention.items()})
    return from_flat(values)


def _layout(vlm, image):
    inputs = vlm._inputs([vlm._prompt(QUESTION, with_image=True)], [image])
    ids = inputs["input_ids"][0].tolist()
    return vlm.image_layout(ids, image.shape[:2], inputs, 0), len(ids)


def _plant(target: int, prompt_len: int):
    """qk hook: in query head PLANT_HEAD (and its key head), every query at or after the
    last prompt token (the rows that generate tokens) and the key at ``target`` become the
    same large vector, so those rows attend (almost) only to ``target``."""
    def hook(layer, query, key):
        d = query.shape[-1]
        u = torch.full((d,), PLANT_GAIN / d ** 0.5, dtype=query.dtype)
        query, key = query.clone(), key.clone()
        n_keys, n_q = key.shape[2], query.shape[2]
        rows = torch.arange(n_keys - n_q, n_keys) >= prompt_len - 1
        query[:, PLANT_HEAD, rows] = u
        key[:, PLANT_HEAD // (query.shape[1] // key.shape[1]), target] = u
        return query, key
    return hook


def _every_token_is_an_object(text, char_spans, **limits):
    return [ObjectName(f"token {i}", (i, i + 1)) for i in range(len(char_spans))]


def _cell_of(pixel_rc, layout):
    x0, y0, x1, y1 = layout.box_xyxy
    gr, gc = layout.grid_shape
    r, c = pixel_rc
    return int((r + 0.5 - y0) / (y1 - y0) * gr), int((c + 0.5 - x0) / (x1 - x0) * gc)


# Image sizes: non-square; for llava_next / idefics3 they produce several tiles, for
# qwen2_vl a non-square dynamic grid.
SIZES = [(60, 90), (90, 45)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("capture", ["fast", "reference"])
def test_planted_attention_peaks_at_the_chosen_patch(vlm, size, capture, monkeypatch):
    image = np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8)
    layout, prompt_len = _layout(vlm, image)
    gr, gc = layout.grid_shape
    assert gr > 1 and gc > 1
    cell = (gr - 2, gc - 2) if size[1] > size[0] else (gr - 2, 1)
    # Planting steers the random model's text, so make every generated token an "object":
    # the map of each one must peak at the planted patch.
    monkeypatch.setattr(hf_backend, "parse_object_names", _every_token_is_an_object)
    vlm.qk_hook = _plant(int(layout.grid_index[cell]), prompt_len)
    try:
        answer = vlm.describe([image], [QUESTION], _cfg(capture=capture).vlm,
                              _cfg(capture=capture).attention)[0]
    finally:
        vlm.qk_hook = None
    assert len(answer.objects) >= 2, "the tiny model should generate some tokens"
    assert answer.grid_shape == (gr, gc)
    assert answer.attention_maps.shape == (len(answer.objects), *size)
    for m in answer.attention_maps:
        peak = np.unravel_index(int(m.argmax()), m.shape)
        assert _cell_of(peak, layout) == cell


def test_multi_tile_layouts_really_have_tiles(vlm):
    """The planted test above covers tiles: LLaVA-NeXT uses its anyres grid (larger than a
    base tile), Idefics3 assembles several tiles, Qwen2-VL a size-dependent grid."""
    image = np.zeros((60, 90, 3), np.uint8)
    layout, _ = _layout(vlm, image)
    grids = {"llava": (6, 6), "llava_next": (6, 8), "qwen2_vl": (4, 6), "idefics3": (4, 6)}
    assert layout.grid_shape == grids[vlm.family]
    assert len(torch.unique(layout.grid_index)) == layout.grid_index.numel()
    assert set(layout.grid_index.flatten().tolist()) <= set(layout.image_positions.tolist())


@pytest.mark.parametrize("options", [
    dict(),
    dict(meanmax_image_keys_only=True, row_normalize=False),
    dict(head_weighting="mean", regularize=False),
    dict(use_flow=False),
])
def test_fast_capture_equals_eager_reference(vlm, options):
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (50, 80, 3), dtype=np.uint8),
              rng.integers(0, 256, (70, 40, 3), dtype=np.uint8)]
    questions = [QUESTION, "List all objects."]
    fast = vlm.describe(images, questions, _cfg(**options).vlm,
                        _cfg(capture="fast", **options).attention)
    ref = vlm.describe(images, questions, _cfg(**options).vlm,
                       _cfg(capture="reference", **options).attention)
    assert any(a.objects for a in fast)
    for a, b in zip(fast, ref):
        assert a.text == b.text and a.objects == b.objects
        np.testing.assert_allclose(a.attention_maps, b.attention_maps, atol=2e-4)


def test_regularisation_prevents_collapse_to_the_first_image_tokens(vlm):
    uniform = np.full((60, 90, 3), 128, np.uint8)
    layout, _ = _layout(vlm, uniform)
    first_row = {}
    for regularize in (False, True):
        cfg = _cfg(regularize=regularize)
        answer = vlm.describe([uniform], [QUESTION], cfg.vlm, cfg.attention)[0]
        assert answer.objects
        mean_map = answer.attention_maps.mean(axis=0)
        peak = np.unravel_index(int(mean_map.argmax()), mean_map.shape)
        # the first grid row inside the frame (row 0, unless pad-to-square puts it in padding)
        first_row[regularize] = _cell_of(peak, layout)[0] == _cell_of((0, 0), layout)[0]
        ys = np.arange(mean_map.shape[0])[:, None]
        centroid_y = float((mean_map * ys).sum() / mean_map.sum())
        if regularize:
            assert centroid_y > mean_map.shape[0] / 2
        else:
            assert centroid_y < mean_map.shape[0] / 2
    assert first_row == {False: True, True: False}


def test_batched_rows_equal_single_rows(vlm):
    """Cutting the batched capture into rows (split_rows) gives each row the maps it gets
    when it is the only prompt (left padding included)."""
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (50, 80, 3), dtype=np.uint8),
              rng.integers(0, 256, (70, 40, 3), dtype=np.uint8)]
    questions = [QUESTION, "List all objects."]
    cfg = _cfg()
    batched = vlm.describe(images, questions, cfg.vlm, cfg.attention)
    for image, question, together in zip(images, questions, batched):
        alone = vlm.describe([image], [question], cfg.vlm, cfg.attention)[0]
        assert alone.text == together.text and alone.objects == together.objects
        np.testing.assert_allclose(alone.attention_maps, together.attention_maps, atol=1e-4)


@pytest.mark.parametrize("capture", ["fast", "reference"])
def test_capture_memory_grows_linearly_with_the_prompts(vlm, capture):
    """Peak capture bytes for 10 prompts / for 1 prompt stays <= 11 (linear: the capture is
    copied once into rows, never once per row). Each row's capture is released after its
    maps, so nothing is held after describe()."""
    image = np.random.default_rng(3).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    cfg = _cfg(capture=capture)
    peaks = {}
    for n in (1, 10):
        vlm.describe([image] * n, [QUESTION] * n, cfg.vlm, cfg.attention)
        peaks[n] = vlm.last_capture_peak_bytes
    assert peaks[1] > 0
    assert peaks[10] / peaks[1] <= 11.0


def test_reference_capture_refuses_what_it_cannot_hold(vlm):
    image = np.zeros((60, 90, 3), np.uint8)
    cfg = _cfg(capture="reference", reference_max_gib=1e-6)
    with pytest.raises(hf_backend.AttentionUnavailableError,
                       match=r"GiB of attention .* attention.reference_max_gib=1e-06"):
        vlm.describe([image], [QUESTION], cfg.vlm, cfg.attention)
