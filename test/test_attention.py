"""The attention equations (method.md section 2) on small hand-computed tensors, and the
fast blockwise path against the reference on random queries and keys."""

from __future__ import annotations

import itertools

import pytest
import torch

from vlsam_ros.core import attention as A

S0 = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
S1 = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.1, 0.1, 0.8]], dtype=torch.float64)
PROBS = torch.stack([S0, S1])


def test_meanmax_head_weights_by_hand():
    # row maxima: head 0 -> 1, .5, .5 ; head 1 -> 1, .9, .8
    torch.testing.assert_close(A.meanmax_head_weights(PROBS),
                               torch.tensor([2 / 3, 0.9], dtype=torch.float64))


def test_meanmax_max_over_image_keys_only():
    keys = torch.tensor([False, True, True])
    # head 0 -> 0, .5, .5 ; head 1 -> 0, .1, .8 (row 0 sees no image key: contributes 0)
    torch.testing.assert_close(A.meanmax_head_weights(PROBS, keys),
                               torch.tensor([1 / 3, 0.3], dtype=torch.float64))


def test_aggregate_heads_is_weighted_mean():
    w = torch.tensor([2 / 3, 0.9], dtype=torch.float64)
    expected = (2 / 3 * S0 + 0.9 * S1) / 2
    torch.testing.assert_close(A.aggregate_heads(PROBS, w), expected)
    assert A.aggregate_heads(PROBS, w)[2, 2].item() == pytest.approx((2 / 3 * 0.5 + 0.9 * 0.8) / 2)


def test_column_regularization_by_hand():
    counts = A.causal_column_counts(4)
    torch.testing.assert_close(counts, torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64))
    # 1 - (L0 - 1) / N
    factors = A.column_regularization(counts)
    torch.testing.assert_close(factors, torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    s = torch.ones(4, 4, dtype=torch.float64).tril()
    torch.testing.assert_close(A.regularize_columns(s, factors)[3], factors)


def test_attention_flow_by_hand():
    s1 = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    s2 = torch.tensor([[1.0, 0.0], [0.2, 0.8]], dtype=torch.float64)
    # (I + S2) @ (I + S1) = [[2,0],[.2,1.8]] @ [[2,0],[.5,1.5]]
    torch.testing.assert_close(A.attention_flow([s1, s2], row_normalize=False),
                               torch.tensor([[4.0, 0.0], [1.3, 2.7]], dtype=torch.float64))
    # row-normalised factors [[1,0],[.1,.9]] @ [[1,0],[.25,.75]]
    torch.testing.assert_close(A.attention_flow([s1, s2], row_normalize=True),
                               torch.tensor([[1.0, 0.0], [0.325, 0.675]], dtype=torch.float64))


def test_object_rows_average_multi_token_names():
    m = torch.arange(16, dtype=torch.float64).reshape(4, 4)
    rows = A.object_rows(m, [[1], [2, 3]])
    torch.testing.assert_close(rows, torch.stack([m[1], (m[2] + m[3]) / 2]))
    torch.testing.assert_close(A.row_selector([[1], [2, 3]], 4, torch.float64) @ m, rows)
    with pytest.raises(ValueError):
        A.row_selector([[4]], 4)


def test_minmax_and_constant_grid():
    g = torch.tensor([[1.0, 3.0], [2.0, 5.0]])
    torch.testing.assert_close(A.minmax_normalize(g), torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.count_nonzero(A.minmax_normalize(torch.full((2, 2), 7.0))) == 0


def test_upsample_hits_cell_centres_and_respects_the_box():
    grid = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.0, 0.0]])
    up = A.upsample_to_image(grid, (9, 9), (0.0, 0.0, 9.0, 9.0))
    assert up.shape == (9, 9) and up.dtype == torch.float32
    # pixel (r, c) = (1, 4) has centre (4.5, 1.5) = centre of cell (0, 1) (3 px cells)
    assert up[1, 4].item() == pytest.approx(1.0)
    assert up[7, 1].item() == pytest.approx(0.5)
    assert up[2, 4].item() == pytest.approx(2 / 3)       # bilinear: 1/3 of the way to row 1
    # a grid covering only x in [2, 8) of a 10-wide image (centre crop): outside is 0
    up = A.upsample_to_image(torch.ones(2, 2), (4, 10), (2.0, 0.0, 8.0, 4.0))
    assert torch.all(up[:, :2] == 0) and torch.all(up[:, 8:] == 0) and torch.all(up[:, 2:8] == 1)


def test_object_map_peaks_at_the_selected_token():
    row = torch.zeros(20, dtype=torch.float64)
    grid_index = torch.arange(4, 16).reshape(3, 4)     # image tokens at positions 4..15
    row[grid_index[2, 1]] = 3.0
    row[0] = 100.0                                      # a text token: never on the map
    m = A.object_map(row, grid_index, (30, 40), (0.0, 0.0, 40.0, 30.0))
    r, c = divmod(int(m.argmax()), 40)
    assert (r // 10, c // 10) == (2, 1)
    assert 0.9 < m.max().item() <= 1.0 and m.min().item() == 0.0   # normalised, then upsampled


def _random_layers(seed, layers=3, heads=4, kv=2, n=11, d=8):
    g = torch.Generator().manual_seed(seed)
    qs = [torch.randn(heads, n, d, generator=g) * 2 for _ in range(layers)]
    ks = [torch.randn(kv, n, d, generator=g) * 2 for _ in range(layers)]
    return qs, ks


def _probs(q, k, scale):
    group = q.shape[0] // k.shape[0]
    k = k.repeat_interleave(group, dim=0)
    logits = (q @ k.transpose(1, 2)) * scale
    n = q.shape[1]
    logits = logits.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
    return torch.softmax(logits.double(), dim=-1)


@pytest.mark.parametrize("weighting, image_keys, regularize, row_normalize, use_flow",
                         list(itertools.product(["meanmax", "mean"], [False, True],
                                                [False, True], [False, True], [True, False])))
def test_fast_blockwise_rows_equal_reference(weighting, image_keys, regularize, row_normalize,
                                             use_flow):
    qs, ks = _random_layers(seed=7)
    scale = [0.35, 0.35, 0.35]
    n = qs[0].shape[1]
    image_mask = torch.zeros(n, dtype=torch.bool)
    image_mask[2:7] = True
    objects = [[9], [8, 10]]
    opts = dict(head_weighting=weighting, image_key_mask=image_mask,
                meanmax_image_keys_only=image_keys, regularize=regularize,
                row_normalize=row_normalize, use_flow=use_flow)
    ref = A.reference_object_rows([_probs(q, k, s) for q, k, s in zip(qs, ks, scale)],
                                  objects, **opts)
    for block in (1, 3, 64):
        fast = A.object_flow_rows(qs, ks, A.row_selector(objects, n, torch.float64), scale,
                                  query_block=block, **opts)
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-7)


def test_blockwise_head_weights_equal_meanmax_on_full_probs():
    qs, ks = _random_layers(seed=3, layers=1)
    w, lse = A.blockwise_head_weights(qs[0], ks[0], 0.5, query_block=4)
    probs = _probs(qs[0], ks[0], 0.5)
    torch.testing.assert_close(w.double(), A.meanmax_head_weights(probs), rtol=1e-5, atol=1e-6)
    assert lse.shape == (4, 11)
