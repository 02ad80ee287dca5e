"""Prefix sharing (``vlm.share_image_prefix``): every distinct image is encoded once and its
prompt prefix prefilled once; the questions on it continue from the shared KV cache.

For every tiny family, batched with padding (questions of different lengths on one image,
two different images interleaved, a copy of an image with equal bytes, a repeated
question), the shared path gives the same text, the same objects and the same maps
(within 1e-5, float32, fast and reference capture) as running every pair in full, while
the vision tower sees each distinct image once.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pytest
import torch

from vlsam_ros.core.config import from_flat
from vlsam_ros.core.results import ObjectName
from vlsam_ros.core.vlm import BACKENDS, capture, hf_backend, prefix_attention, prefix_sharing
from vlsam_ros.core.vlm.capture import attention_modules
from vlsam_ros.testing.tiny_vlm import FAMILIES, build_tiny_vlm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTIONS = ["Describe this driving scene.", "List all objects.",
             "What objects are on the road?", "List every unusual object or animal.",
             "Describe this driving scene."]
MAP_ATOL = 1e-5


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request):
    model, processor = build_tiny_vlm(request.param, seed=0)
    return BACKENDS[request.param](model, processor)


@pytest.fixture(scope="module")
def batch():
    """Rows: image A, B, A, B, A' (A' an equal copy of A, another array object); row 4
    repeats row 0's question on the same image."""
    rng = np.random.default_rng(11)
    a = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (70, 40, 3), dtype=np.uint8)
    return [a, b, a, b, a.copy()], list(QUESTIONS)


def _cfg(share: bool, capture: str = "fast", **vlm):
    values = {"device": "cpu", "vlm.dtype": "float32", "vlm.max_new_tokens": 12,
              "vlm.share_image_prefix": share, "attention.capture": capture}
    values.update({f"vlm.{k}": v for k, v in vlm.items()})
    return from_flat(values)


def _describe(vlm, images, questions, share, capture="fast", **vlm_options):
    cfg = _cfg(share, capture, **vlm_options)
    return vlm.describe(images, questions, cfg.vlm, cfg.attention)


def _every_token_is_an_object(text, char_spans, **limits):
    return [ObjectName(f"token {i}", (i, i + 1)) for i in range(len(char_spans))]


def _vision_tower(model) -> torch.nn.Module:
    inner = model.model
    for name in ("vision_tower", "visual", "vision_model"):
        if hasattr(inner, name):
            return getattr(inner, name)
    raise AssertionError(f"{type(model).__name__}: no vision tower found")


class _TowerCounter:
    """Counts vision-tower calls and the leading dimension of their pixel input (images,
    tiles or patches, per family)."""

    def __init__(self, model):
        self.calls = 0
        self.rows = 0
        self._handle = _vision_tower(model).register_forward_pre_hook(self._hook,
                                                                      with_kwargs=True)

    def _hook(self, module, args, kwargs):
        pixels = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
        self.calls += 1
        self.rows += int(pixels.shape[0])

    def reset(self):
        self.calls = self.rows = 0

    def remove(self):
        self._handle.remove()


def test_rows_are_grouped_by_image_object_or_equal_bytes():
    a = np.zeros((4, 5, 3), np.uint8)
    b = np.ones((4, 5, 3), np.uint8)
    c = np.zeros((5, 4, 3), np.uint8)          # same bytes as a, other shape
    assert prefix_sharing.group_rows([a, b, a.copy(), c, b, a]) == [[0, 2, 5], [1, 4], [3]]


def test_plan_shares_a_prefix_holding_the_image_and_pads_between(vlm, batch):
    """The relied-upon layout: per image, the prompts share a prefix that contains every
    image token; the suffixes differ in length, so padding sits between prefix and
    suffix in the shared layout."""
    images, questions = batch
    inputs = vlm._inputs([vlm._prompt(q, with_image=True) for q in questions], images)
    plan = prefix_sharing.plan_sharing(images, inputs, vlm.image_token_id())
    assert isinstance(plan, prefix_sharing.SharingPlan), plan
    assert plan.groups == ((0, 2, 4), (1, 3))
    ids = inputs["input_ids"]
    for b in range(len(images)):
        valid = ids[b, plan.pad[b]:].tolist()
        image_pos = [i for i, t in enumerate(valid) if t == vlm.image_token_id()]
        n_pre = plan.prefix_len[plan.group_of[b]]
        assert image_pos and max(image_pos) < n_pre < len(valid)
    assert len({plan.suffix_len(b) for b in range(len(images))}) > 2
    layout = prefix_sharing.shared_layout(plan, inputs, vlm.tokenizer.pad_token_id)
    mask = layout["attention_mask"]
    assert mask.shape == (len(images), plan.prefix_width + plan.suffix_width)
    assert mask.sum(dim=1).tolist() == list(plan.prompt_len)
    assert any(not bool(mask[b, plan.prefix_width:plan.first_own(b)].any()) and
               plan.first_own(b) > plan.prefix_width for b in range(len(images)))


@pytest.mark.parametrize("capture", ["fast", "reference"])
@pytest.mark.parametrize("every_token", [False, True], ids=["parsed", "every_token"])
def test_shared_prefix_gives_the_unshared_outputs(vlm, batch, capture, every_token,
                                                  monkeypatch):
    """Same text, objects and maps (1e-5). ``every_token`` makes every generated token an
    object, so the map of every generated row is compared, not only the parsed names."""
    images, questions = batch
    if every_token:
        monkeypatch.setattr(hf_backend, "parse_object_names", _every_token_is_an_object)
    full = _describe(vlm, images, questions, share=False, capture=capture)
    shared = _describe(vlm, images, questions, share=True, capture=capture)
    assert sum(len(a.objects) for a in full) >= (5 * 8 if every_token else 5)
    for a, b in zip(full, shared):
        assert a.text == b.text and a.objects == b.objects
        assert a.grid_shape == b.grid_shape
        assert a.attention_maps.shape == b.attention_maps.shape
        np.testing.assert_allclose(b.attention_maps, a.attention_maps, atol=MAP_ATOL, rtol=0)


def test_vision_tower_runs_once_per_distinct_image(vlm, batch):
    """With sharing the tower encodes each distinct image once (one call per image);
    without, it encodes every (image, question) row's copy (one batched call)."""
    images, questions = batch
    counter = _TowerCounter(vlm.model)
    try:
        alone = []
        for image in images[:2]:               # what each distinct image costs on its own
            _describe(vlm, [image], questions[:1], share=False)
            alone.append(counter.rows)
            counter.reset()
        _describe(vlm, images, questions, share=True)
        shared = (counter.calls, counter.rows)
        counter.reset()
        _describe(vlm, images, questions, share=False)
        full = (counter.calls, counter.rows)
    finally:
        counter.remove()
    rows_a, rows_b = alone
    assert shared == (2, rows_a + rows_b)                 # rows: A, B (A' equals A)
    assert full == (1, 3 * rows_a + 2 * rows_b)           # rows: A, B, A, B, A'


def test_generation_cache_holds_no_prefix_copy(vlm, batch, monkeypatch):
    """During the shared ``generate`` every layer attends to ONE prefix key/value tensor per
    image (no batch dimension, no per-row copy) plus the rows' own keys, which never
    include the prefix (at most suffix + generated tokens)."""
    images, questions = batch
    calls = []
    real = capture.shared_prefix_attention

    def spy(query, key, value, mask, scaling, prefix, layer, **kwargs):
        calls.append((key.shape, [(t.dim(), t.data_ptr()) for t in prefix.keys[layer]],
                      [r.tolist() for r in prefix.rows], prefix.width))
        return real(query, key, value, mask, scaling, prefix, layer, **kwargs)

    monkeypatch.setattr(capture, "shared_prefix_attention", spy)
    inputs = vlm._inputs([vlm._prompt(q, with_image=True) for q in questions], images)
    plan = prefix_sharing.plan_sharing(images, inputs, vlm.image_token_id())
    _describe(vlm, images, questions, share=True)
    layers = len(attention_modules(vlm.language_model()))
    new_tokens = _cfg(True).vlm.max_new_tokens
    assert len(calls) >= layers * 2                       # prefill of the suffixes + decoding
    for key_shape, prefix_keys, rows, width in calls:
        assert key_shape[0] == len(images)
        assert key_shape[2] <= plan.suffix_width + new_tokens - 1 < width + plan.suffix_width
        assert rows == [list(g) for g in plan.groups]
        assert [d for d, _ in prefix_keys] == [3, 3]      # (KV, L_g, d): one per image
        assert len({p for _, p in prefix_keys}) == 2
        assert width == plan.prefix_width


def test_position_ids_match_what_generate_gives_the_unshared_batch(vlm, batch):
    """``prefix_sharing.position_ids`` over the shared layout equals, column for column,
    what transformers' generate computes for the unshared left-padded batch (used here as
    the oracle only; the code does not call it): (B, T) for the Llama-style decoders,
    (4, B, T) with the 3-D M-RoPE for Qwen2-VL."""
    images, questions = batch
    inputs = vlm._inputs([vlm._prompt(q, with_image=True) for q in questions], images)
    plan = prefix_sharing.plan_sharing(images, inputs, vlm.image_token_id())
    layout = prefix_sharing.shared_layout(plan, inputs, vlm.tokenizer.pad_token_id)
    with torch.inference_mode():
        ours = prefix_sharing.position_ids(vlm.model, layout, inputs)
        kwargs = {k: v for k, v in inputs.items()
                  if k != "input_ids" and not k.startswith("pixel")}
        oracle = vlm.model._prepare_position_ids_for_generation(inputs["input_ids"], kwargs)
    assert ours.dim() == oracle.dim() == (3 if vlm.family == "qwen2_vl" else 2)
    for b in range(len(images)):
        mask = layout["attention_mask"][b].bool()
        valid = inputs["attention_mask"][b].bool()
        torch.testing.assert_close(ours[..., b, :][..., mask], oracle[..., b, :][..., valid],
                                   rtol=0, atol=0)


def test_two_part_attention_equals_attention_over_the_joined_keys():
    """``shared_prefix_attention`` (one prefix copy per group + own keys, padded own keys,
    grouped-query heads) equals SDPA over each row's prefix and own keys joined."""
    gen = torch.Generator().manual_seed(0)
    heads, kv, d, q, k = 6, 2, 8, 3, 5
    lengths = (7, 4)
    rows = [torch.tensor([0, 2, 3]), torch.tensor([1])]
    query = torch.randn(4, heads, q, d, generator=gen)
    key = torch.randn(4, kv, k, d, generator=gen)
    value = torch.randn(4, kv, k, d, generator=gen)
    pk = [[torch.randn(kv, n, d, generator=gen) for n in lengths]]
    pv = [[torch.randn(kv, n, d, generator=gen) for n in lengths]]
    # Own keys: row 2 has one left pad; queries are the last q own positions (causal).
    own_ok = torch.ones(4, 1, q, k, dtype=torch.bool).tril(diagonal=k - q)
    own_ok[2, :, :, 0] = False
    width = max(lengths)
    prefix = prefix_attention.SharedPrefixKV(pk, pv, rows, width)
    out, probs = prefix_attention.shared_prefix_attention(query, key, value, own_ok, 0.3,
                                                          prefix, 0, want_probs=True)
    for g, group in enumerate(rows):
        for b in group.tolist():
            keys = torch.cat([pk[0][g], key[b]], dim=1).repeat_interleave(heads // kv, dim=0)
            values = torch.cat([pv[0][g], value[b]], dim=1).repeat_interleave(heads // kv, 0)
            allowed = torch.cat([torch.ones(1, q, lengths[g], dtype=torch.bool), own_ok[b]], -1)
            want = torch.nn.functional.scaled_dot_product_attention(
                query[b], keys, values, attn_mask=allowed, scale=0.3)          # (H, q, d)
            torch.testing.assert_close(out[b], want.transpose(0, 1), rtol=0, atol=1e-6)
            weights = torch.softmax((query[b] @ keys.transpose(1, 2) * 0.3)
                                    .masked_fill(~allowed, float("-inf")), dim=-1)
            torch.testing.assert_close(probs[b, :, :, width - lengths[g]:], weights,
                                       rtol=0, atol=1e-6)
            assert not bool(probs[b, :, :, :width - lengths[g]].any())


def test_sampling_draws_the_same_text(vlm, batch):
    """The prefix prefill draws no random numbers and the one generate call has the same
    batch and seed, so sampling consumes the random stream as the unshared path does."""
    images, questions = batch
    opts = dict(do_sample=True, temperature=1.5, top_p=1.0, seed=3)
    full = _describe(vlm, images, questions, share=False, **opts)
    shared = _describe(vlm, images, questions, share=True, **opts)
    greedy = _describe(vlm, images, questions, share=True)
    assert [a.text for a in shared] == [a.text for a in full]
    assert [a.text for a in shared] != [a.text for a in greedy]


def test_shared_prefix_capture_is_held_once(vlm, batch, monkeypatch):
    """Ten questions on one image: the shared capture holds the image prefix once, so its
    peak is below the unshared one (which holds it once per question); every byte is
    released by the end of describe()."""
    images, questions = batch
    recorders = []
    real_capturing = hf_backend.capturing

    @contextlib.contextmanager
    def keep_recorder(*args, **kwargs):
        with real_capturing(*args, **kwargs) as rec:
            recorders.append(rec)
            yield rec

    monkeypatch.setattr(hf_backend, "capturing", keep_recorder)
    peaks = {}
    for share in (False, True):
        _describe(vlm, [images[0]] * 10, questions * 2, share=share)
        peaks[share] = vlm.last_capture_peak_bytes
        assert recorders[-1].held_bytes == 0
    assert 0 < peaks[True] < peaks[False]


def test_question_before_the_image_runs_unshared(vlm, batch, monkeypatch, caplog):
    """A prompt whose question precedes the image breaks the relied-upon layout: the plan
    refuses, a warning names the reason, and the batch runs every row in full."""
    images, questions = batch

    def question_first(question, with_image):
        content = [{"type": "text", "text": question}] + ([{"type": "image"}] if with_image
                                                           else [])
        return vlm.processor.apply_chat_template([{"role": "user", "content": content}],
                                                 add_generation_prompt=True, tokenize=False)

    monkeypatch.setattr(vlm, "_prompt", question_first)
    inputs = vlm._inputs([vlm._prompt(q, with_image=True) for q in questions], images)
    reason = prefix_sharing.plan_sharing(images, inputs, vlm.image_token_id())
    assert isinstance(reason, str) and "does not follow the image" in reason
    counter = _TowerCounter(vlm.model)
    try:
        with caplog.at_level(logging.WARNING, logger=prefix_sharing.__name__):
            prefix_sharing._warned.clear()
            shared = _describe(vlm, images, questions, share=True)
        tower_rows = counter.rows
        counter.reset()
        full = _describe(vlm, images, questions, share=False)
        assert counter.rows == tower_rows
    finally:
        counter.remove()
    assert "running every prompt unshared" in caplog.text
    for a, b in zip(full, shared):
        assert a.text == b.text
        np.testing.assert_array_equal(a.attention_maps, b.attention_maps)
