"""concept_selection: which of SAM 3's instances of a name the attention map means."""

from __future__ import annotations

import numpy as np
import pytest

from vlsam_ros.core.concept_selection import (InstanceProposals, coverage, inside_fraction,
                                              mean_attention, positive_area, select_instances)


def _box_mask(shape, x0, y0, x1, y1):
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


SHAPE = (40, 60)
LEFT, MIDDLE, RIGHT = (_box_mask(SHAPE, 2, 10, 16, 30), _box_mask(SHAPE, 22, 10, 36, 30),
                       _box_mask(SHAPE, 44, 10, 58, 30))
THREE = InstanceProposals(np.stack([LEFT, MIDDLE, RIGHT]), np.array([0.9, 0.8, 0.95],
                                                                     np.float32))


def _blob(mask, value=1.0, halo=0.3):
    """A map: ``value`` on the mask, ``halo`` on a 2-pixel ring around it, 0 elsewhere."""
    grown = np.zeros_like(mask)
    rows, cols = np.nonzero(mask)
    grown[max(rows.min() - 2, 0):rows.max() + 3, max(cols.min() - 2, 0):cols.max() + 3] = True
    return np.where(mask, value, np.where(grown, halo, 0.0)).astype(np.float32)


def test_coverage_and_mean_attention_by_hand():
    attention = np.zeros(SHAPE, np.float32)
    attention[10:30, 2:16] = 1.0                     # all of LEFT
    attention[10:20, 22:36] = 0.6                    # top half of MIDDLE
    positive = positive_area(attention, 0.5)
    assert positive.sum() == 280 + 140
    np.testing.assert_allclose(coverage(THREE.masks, positive), [280 / 420, 140 / 420, 0])
    np.testing.assert_allclose(inside_fraction(THREE.masks, positive), [1.0, 0.5, 0.0])
    np.testing.assert_allclose(mean_attention(THREE.masks, attention), [1.0, 0.3, 0.0])
    assert coverage(THREE.masks, np.zeros(SHAPE, bool)).tolist() == [0, 0, 0]
    assert mean_attention(np.zeros((1, *SHAPE), bool), attention).tolist() == [0.0]


def test_the_map_picks_the_instance_it_attends_among_several():
    chosen = select_instances(THREE, _blob(MIDDLE), 0.5, 0.2, 0.5, 8)
    assert [c.index for c in chosen] == [1]
    assert chosen[0].coverage == pytest.approx(1.0)
    assert chosen[0].mean_attention == pytest.approx(1.0)
    assert chosen[0].score == pytest.approx(0.8)     # instance score x mean attention


def test_all_instances_the_map_covers_are_kept_ranked_by_attention():
    attention = np.maximum(_blob(LEFT, 0.7), _blob(RIGHT, 1.0))
    chosen = select_instances(THREE, attention, 0.5, 0.2, 0.5, 8)
    assert [c.index for c in chosen] == [2, 0]       # right has more attention inside
    assert sum(c.coverage for c in chosen) == pytest.approx(1.0)
    assert [c.index for c in select_instances(THREE, attention, 0.5, 0.2, 0.5, 1)] == [2]


def test_too_little_coverage_or_no_positive_area_keeps_nothing():
    attention = _blob(LEFT)
    attention[10:12, 22:24] = 1.0                    # a speck on MIDDLE: 4 of 284 pixels
    assert [c.index for c in select_instances(THREE, attention, 0.5, 0.2, 0.5, 8)] == [0]
    assert [c.index for c in select_instances(THREE, attention, 0.5, 0.0, 0.5, 8)] == [0, 1]
    assert select_instances(THREE, np.full(SHAPE, 0.4, np.float32), 0.5, 0.2, 0.5, 8) == []
    assert select_instances(InstanceProposals.empty(*SHAPE), attention, 0.5, 0.2, 0.5, 8) == []
    with pytest.raises(ValueError, match="differ in size"):
        select_instances(THREE, attention[:-1], 0.5, 0.2, 0.5, 8)


def test_many_instances_under_one_broad_map_are_kept_by_lying_inside_it():
    """Ten narrow instances under one map: each holds a tenth of its positive area (under
    min_coverage) but lies wholly in it (min_inside)."""
    shape = (20, 200)
    masks = np.zeros((10, *shape), bool)
    for i in range(10):
        masks[i, 5:15, 20 * i + 2:20 * i + 18] = True
    proposals = InstanceProposals(masks, np.full(10, 0.9, np.float32))
    attention = np.zeros(shape, np.float32)
    attention[3:17, :] = 1.0
    assert len(select_instances(proposals, attention, 0.5, 0.2, 0.5, 16)) == 10
    assert select_instances(proposals, attention, 0.5, 0.2, 1.01, 16) == []
