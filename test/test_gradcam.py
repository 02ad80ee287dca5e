"""GradCAM weighting (``attention.gradcam``, core/gradcam.py, core/vlm/teacher_forcing.py).

* the maths on small hand-computed tensors;
* with unit gradients the weighting is the identity (the plain method's maps come back);
* through a tiny real VLM's forward and backward passes: one backward per describe, the
  summed score's gradient equals each object's own gradient at its rows (the exactness the
  docstring claims), fast and reference capture agree, and the weighting moves the map onto
  a planted region that the plain map ranks second.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vlsam_ros.core import attention as attn
from vlsam_ros.core.config import from_flat
from vlsam_ros.core.gradcam import gradcam_layer_rows, gradcam_top_rows
from vlsam_ros.core.results import ObjectName
from vlsam_ros.core.vlm import BACKENDS, hf_backend, teacher_forcing
from vlsam_ros.testing.tiny_vlm import build_tiny_vlm

QUESTION = "Describe this driving scene."

# ---------------------------------------------------------------------------------------
# Maths on hand-computed tensors
# ---------------------------------------------------------------------------------------

# H = 2 heads, R = 1 row (position 2), N = 3 keys.
PROBS = torch.tensor([[[0.5, 0.3, 0.2]], [[0.2, 0.2, 0.6]]], dtype=torch.float64)
GRADS = torch.tensor([[[1.0, -1.0, 2.0]], [[0.0, 3.0, -2.0]]], dtype=torch.float64)
WEIGHTS = torch.tensor([2.0, 1.0], dtype=torch.float64)


def test_weighted_row_by_hand_without_regularisation():
    # plain    = 1/2 (2 [.5 .3 .2] + [.2 .2 .6])          = [.6 .4 .5], mass 1.5
    # weighted = 1/2 (2 [.5*1, 0, .2*2] + [0, .2*3, 0])   = [.5 .3 .4], mass 1.2
    # kappa = 1.5 / 1.2 = 1.25
    out = gradcam_layer_rows(PROBS, GRADS, WEIGHTS, None)
    torch.testing.assert_close(out, torch.tensor([[0.625, 0.375, 0.5]], dtype=torch.float64))


def test_weighted_row_by_hand_with_column_regularisation():
    # c = [1/3, 2/3, 1] (causal, N = 3); plain * c = [1/5, 4/15, 1/2] (mass 29/30),
    # weighted * c = [1/6, 1/5, 2/5] (mass 23/30); kappa = 29/23.
    c = attn.column_regularization(attn.causal_column_counts(3))
    out = gradcam_layer_rows(PROBS, GRADS, WEIGHTS, c)
    expected = torch.tensor([[29 / 138, 29 / 115, 58 / 115]], dtype=torch.float64)
    torch.testing.assert_close(out, expected)


def test_row_without_positive_gradient_is_zero():
    out = gradcam_layer_rows(PROBS, -GRADS.abs(), WEIGHTS, None)
    assert torch.equal(out, torch.zeros(1, 3, dtype=torch.float64))


def test_top_rows_by_hand():
    layer_rows = torch.tensor([[0.625, 0.375, 0.5], [0.25, 0.25, 0.0]], dtype=torch.float64)
    # row 2: e_2 + S = [.625 .375 1.5], sum 2.5 -> [.25 .15 .6]
    # row 1: e_1 + S = [.25 1.25 0], sum 1.5 -> [1/6 5/6 0]
    flow = gradcam_top_rows(layer_rows, [2, 1], [[2], [1, 2]], use_flow=True, row_normalize=True)
    torch.testing.assert_close(flow, torch.tensor(
        [[0.25, 0.15, 0.6], [(1 / 6 + 0.25) / 2, (5 / 6 + 0.15) / 2, 0.3]], dtype=torch.float64))
    raw = gradcam_top_rows(layer_rows, [2, 1], [[2]], use_flow=True, row_normalize=False)
    torch.testing.assert_close(raw, torch.tensor([[0.625, 0.375, 1.5]], dtype=torch.float64))
    last = gradcam_top_rows(layer_rows, [2, 1], [[1, 2]], use_flow=False, row_normalize=True)
    torch.testing.assert_close(last, torch.tensor([[0.4375, 0.3125, 0.25]], dtype=torch.float64))


@pytest.mark.parametrize("use_flow", [True, False])
@pytest.mark.parametrize("regularize", [True, False])
def test_unit_gradients_give_back_the_plain_method(use_flow, regularize):
    """G = 1 everywhere makes S'_gc = S'_reg, so the top factor equals E @ A[L] and the
    whole flow equals the plain method's (fast and reference paths with ``top``)."""
    gen = torch.Generator().manual_seed(3)
    layers, heads, kv, n, d = 3, 4, 2, 12, 8
    qs = [torch.randn(heads, n, d, generator=gen) for _ in range(layers)]
    ks = [torch.randn(kv, n, d, generator=gen) for _ in range(layers)]
    token_rows = [[9], [10, 11]]
    rows = [9, 10, 11]
    common = dict(head_weighting="meanmax", meanmax_image_keys_only=False,
                  regularize=regularize, row_normalize=True, use_flow=use_flow)
    selector = attn.row_selector(token_rows, n, dtype=torch.float64)
    plain = attn.object_flow_rows(qs, ks, selector, [d ** -0.5] * layers, image_key_mask=None,
                                  query_block=5, **common)
    w, lse = attn.blockwise_head_weights(qs[-1], ks[-1], d ** -0.5, 5)
    logits = attn._block_logits(qs[-1], ks[-1], 0, n, d ** -0.5)
    probs = torch.exp(logits - lse[..., None])[:, rows]                     # (H, R, N)
    factors = attn.column_regularization(attn.causal_column_counts(n)) if regularize else None
    top = gradcam_top_rows(gradcam_layer_rows(probs, torch.ones_like(probs), w, factors),
                           rows, token_rows, use_flow=use_flow, row_normalize=True)
    fast = attn.object_flow_rows(qs, ks, selector, [d ** -0.5] * layers, image_key_mask=None,
                                 query_block=5, top=top, **common)
    torch.testing.assert_close(fast, plain, atol=1e-6, rtol=1e-5)
    full = []
    for q, k in zip(qs, ks):
        lg = attn._block_logits(q, k, 0, n, d ** -0.5)
        full.append(torch.softmax(lg, dim=-1))
    ref = attn.reference_object_rows(full, token_rows, image_key_mask=None, top=top, **common)
    torch.testing.assert_close(ref, plain, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Through a tiny real VLM
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llava(one_torch_thread):
    model, processor = build_tiny_vlm("llava", seed=0)
    return BACKENDS["llava"](model, processor)


def _cfg(**attention):
    values = {"device": "cpu", "vlm.dtype": "float32", "vlm.max_new_tokens": 6}
    values.update({f"attention.{k}": v for k, v in attention.items()})
    return from_flat(values)


def _every_token_is_an_object(text, char_spans, **limits):
    return [ObjectName(f"token {i}", (i, i + 1)) for i in range(len(char_spans))]


def _token_pairs_are_objects(text, char_spans, **limits):
    return [ObjectName(f"pair {i}", (i, min(i + 2, len(char_spans))))
            for i in range(0, len(char_spans), 2)]


def test_one_backward_per_describe_and_per_object_exactness(llava, monkeypatch):
    """Objects of two tokens each: one backward of the summed score gives, at every
    object's rows, exactly the gradient of that object's own score."""
    monkeypatch.setattr(hf_backend, "parse_object_names", _token_pairs_are_objects)
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(2)]
    cfg = _cfg(gradcam=True)
    before = teacher_forcing.BACKWARD_CALLS
    answers = llava.describe(images, [QUESTION, "List all objects."], cfg.vlm, cfg.attention)
    assert teacher_forcing.BACKWARD_CALLS == before + 1, "one backward for the whole batch"
    answer = max(answers, key=lambda a: len(a.objects))
    assert len(answer.objects) >= 2
    image = images[answers.index(answer)]
    question = answer.question
    joint = teacher_forcing.forced_rows(llava, [image], [question], [answer.token_ids],
                                        [answer.objects], cfg.vlm, cfg.attention,
                                        capture_attention=False, gradcam=True)[0].leaves
    for obj in answer.objects:       # each object's score differentiated on its own
        alone = teacher_forcing.forced_rows(llava, [image], [question], [answer.token_ids],
                                            [[obj]], cfg.vlm, cfg.attention,
                                            capture_attention=False, gradcam=True)[0].leaves
        at = [joint.rows.tolist().index(r) for r in alone.rows.tolist()]
        assert alone.grads.abs().max() > 0
        torch.testing.assert_close(joint.grads[:, at], alone.grads, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_fast_and_reference_gradcam_agree(llava):
    """Slow (eager reference capture); the maths of both paths with ``top`` is checked in the
    default suite by test_unit_gradients_give_back_the_plain_method."""
    image = np.random.default_rng(4).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    fast = llava.describe([image], [QUESTION], _cfg(gradcam=True).vlm,
                          _cfg(gradcam=True).attention)[0]
    ref = llava.describe([image], [QUESTION], _cfg(gradcam=True, capture="reference").vlm,
                         _cfg(gradcam=True, capture="reference").attention)[0]
    plain = llava.describe([image], [QUESTION], _cfg().vlm, _cfg().attention)[0]
    assert fast.objects and fast.objects == ref.objects == plain.objects
    np.testing.assert_allclose(fast.attention_maps, ref.attention_maps, atol=2e-4)
    assert np.abs(fast.attention_maps - plain.attention_maps).max() > 0.05


# Two planted regions: in the last layer, query head 0 of every generating row attends to
# the key of cell A with probability ~0.6 and of cell B with ~0.4 (the other heads are the
# model's own). The column regularisation damps A (earlier in the sequence) below B, so the
# plain map ranks B first and A second; the name's log-probability gains more from
# attention on A than on B, and GradCAM moves the map onto A.
CELL_A, CELL_B = (1, 4), (4, 4)
PLANT_GAIN = 8.0
B_KEY_SCALE = 0.975          # logit gap 64 * (1 - 0.975) / 4 = 0.4 -> p_A / p_B = e^0.4


def _plant(prompt_len, key_a, key_b, layer_planted):
    def hook(layer, query, key):
        if layer != layer_planted:
            return query, key
        d = query.shape[-1]
        u = torch.full((d,), PLANT_GAIN / d ** 0.5, dtype=query.dtype)
        query, key = query.clone(), key.clone()
        n_keys, n_q = key.shape[2], query.shape[2]
        rows = torch.arange(n_keys - n_q, n_keys) >= prompt_len - 1
        query[:, 0, rows] = u
        key[:, 0, key_a] = u
        if key_b is not None:
            key[:, 0, key_b] = u * B_KEY_SCALE
        return query, key
    return hook


def _ranked_cells(maps, grid):
    mean = maps.mean(axis=0)
    h, w = mean.shape
    cells = mean.reshape(grid[0], h // grid[0], grid[1], w // grid[1]).mean(axis=(1, 3))
    return [divmod(int(i), grid[1]) for i in np.argsort(-cells.ravel(), kind="stable")]


def test_gradcam_moves_the_map_to_the_region_the_plain_map_ranks_second(llava, monkeypatch):
    image = np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    inputs = llava._inputs([llava._prompt(QUESTION, with_image=True)], [image])
    ids = inputs["input_ids"][0].tolist()
    layout = llava.image_layout(ids, image.shape[:2], inputs, 0)
    key_a, key_b = int(layout.grid_index[CELL_A]), int(layout.grid_index[CELL_B])
    monkeypatch.setattr(hf_backend, "parse_object_names", _every_token_is_an_object)
    llava.qk_hook = _plant(len(ids), key_a, key_b, layer_planted=1)
    try:
        plain = llava.describe([image], [QUESTION], _cfg().vlm, _cfg().attention)[0]
        weighted = llava.describe([image], [QUESTION], _cfg(gradcam=True).vlm,
                                  _cfg(gradcam=True).attention)[0]
        leaves = teacher_forcing.forced_rows(llava, [image], [QUESTION], [plain.token_ids],
                                             [plain.objects], _cfg().vlm, _cfg().attention,
                                             capture_attention=False, gradcam=True)[0].leaves
    finally:
        llava.qk_hook = None
    assert plain.text == weighted.text and len(plain.objects) >= 3
    # The plant holds: head 0 puts ~0.6 on A and ~0.4 on B in every object row.
    np.testing.assert_allclose(leaves.probs[0, :, key_a], 0.6, atol=0.01)
    np.testing.assert_allclose(leaves.probs[0, :, key_b], 0.4, atol=0.01)
    # Why A: summed over heads and rows, probability x positive gradient is larger there.
    evidence = (leaves.probs * leaves.grads.clamp(min=0)).sum(dim=(0, 1))
    assert evidence[key_a] > evidence[key_b]
    assert _ranked_cells(plain.attention_maps, layout.grid_shape)[:2] == [CELL_B, CELL_A]
    assert _ranked_cells(weighted.attention_maps, layout.grid_shape)[0] == CELL_A


# ---------------------------------------------------------------------------------------
# Oracle-segmenter ablation through the pipeline (style of test_pipeline's stage test)
# ---------------------------------------------------------------------------------------


def _cell_box(cell):
    return cell[1] * 8, cell[0] * 8, cell[1] * 8 + 8, cell[0] * 8 + 8


@pytest.mark.parametrize("distractor,plain_mar,gradcam_mar", [
    (True, 0.0, 1.0),      # built to need it: the plain map prompts the distractor
    (False, 1.0, 1.0),     # only the object is attended: recall unchanged
])
def test_gradcam_ablation_with_the_oracle_segmenter(llava, monkeypatch, distractor, plain_mar,
                                                    gradcam_mar):
    """48 x 48 scene, one 8 x 8 object per cell of LLaVA's 6 x 6 grid: the named object
    fills CELL_A, a distractor of another colour CELL_B (not annotated). The attention is
    planted as above (with the distractor: ~0.6 on A, ~0.4 on B; without: all on A)."""
    from oracle import OracleSegmenter, make_scene, scene_recall
    from vlsam_ros.core.pipeline import Pipeline

    scene = make_scene(48, 48, [("target", _cell_box(CELL_A)), ("distractor", _cell_box(CELL_B))])
    truth = dataclasses.replace(make_scene(48, 48, [("target", _cell_box(CELL_A))]),
                                image=scene.image)
    inputs = llava._inputs([llava._prompt(QUESTION, with_image=True)], [scene.image])
    ids = inputs["input_ids"][0].tolist()
    layout = llava.image_layout(ids, scene.image.shape[:2], inputs, 0)
    key_a = int(layout.grid_index[CELL_A])
    key_b = int(layout.grid_index[CELL_B]) if distractor else None
    monkeypatch.setattr(hf_backend, "parse_object_names", _every_token_is_an_object)
    llava.qk_hook = _plant(len(ids), key_a, key_b, layer_planted=1)
    mar = {}
    try:
        for gradcam in (False, True):
            # One prompt per object map, no refinement (the stage test's "prompt" stage);
            # the threshold keeps only the map's peak blob as the positive area.
            cfg = from_flat({"device": "cpu", "vlm.dtype": "float32", "vlm.max_new_tokens": 6,
                             "vlm.question": QUESTION, "prompts.refinement_rounds": 0,
                             "prompts.threshold": 0.75, "ensemble.tiles": False,
                             "ensemble.num_questions": 1, "attention.gradcam": gradcam})
            result = Pipeline(cfg, llava, OracleSegmenter()).run(scene.image)
            mar[gradcam] = scene_recall(truth, result).mAR
    finally:
        llava.qk_hook = None
    assert mar == pytest.approx({False: plain_mar, True: gradcam_mar})
