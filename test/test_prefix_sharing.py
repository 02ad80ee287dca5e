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
from vlsam_ros.core.vlm import BACKENDS, hf_backend, prefix_sharing
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
    images, questions = batch
    counter = _TowerCounter(vlm.model)
    try:
        _describe(vlm, images, questions, share=True)
        shared = (counter.calls, counter.rows)
        counter.reset()
        _describe(vlm, images, questions, share=False)
        full_rows = counter.rows
        counter.reset()
        # What the two distinct images cost the tower on their own (one row each).
        _describe(vlm, images[:2], questions[:2], share=False)
        distinct_rows = counter.rows
    finally:
        counter.remove()
    assert shared == (2, distinct_rows)
    assert full_rows > distinct_rows


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
