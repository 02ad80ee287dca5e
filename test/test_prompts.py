"""Attention map -> point prompts (method.md section 3) on hand-built maps."""

from __future__ import annotations

import numpy as np
import pytest

from vlsam_ros.core.prompts import largest_component, sample_point_pair, stack_prompts
from vlsam_ros.core.refinement import detection_score, suppress_attention


def _two_blobs():
    """A small bright blob (peak 1.0) and a larger dimmer blob (peak 0.8) on 0.1."""
    m = np.full((20, 30), 0.1, dtype=np.float32)
    m[2:4, 2:4] = 1.0                       # 4 px
    m[10:18, 15:27] = 0.6                   # 96 px
    m[13, 20] = 0.8
    m[19, 29] = 0.0                         # global minimum, outside both blobs
    return m


def test_positive_point_is_the_maximum_of_the_largest_component():
    prompt = sample_point_pair(_two_blobs(), threshold=0.5)
    np.testing.assert_array_equal(prompt.points, [[20.5, 13.5], [29.5, 19.5]])
    np.testing.assert_array_equal(prompt.labels, [1, 0])
    assert prompt.positive_area.sum() == 96 and prompt.positive_area[13, 20]


def test_negative_point_is_the_minimum_outside_the_positive_area():
    m = _two_blobs()
    m[19, 29] = 0.1
    m[3, 3] = 0.05                          # in the small blob: outside the positive area
    prompt = sample_point_pair(m, threshold=0.5)
    np.testing.assert_array_equal(prompt.points[1], [3.5, 3.5])
    x, y = prompt.points[1].astype(int)
    assert m[y, x] == m[~prompt.positive_area].min()


def test_nothing_above_threshold_gives_no_prompt():
    assert sample_point_pair(np.full((5, 5), 0.3, np.float32), threshold=0.5) is None


def test_negative_point_can_be_switched_off_and_is_absent_without_outside():
    assert len(sample_point_pair(_two_blobs(), 0.5, negative=False).labels) == 1
    full = sample_point_pair(np.ones((4, 4), np.float32), 0.5)
    np.testing.assert_array_equal(full.labels, [1])


@pytest.mark.parametrize("connectivity,expected_area", [(4, 3), (8, 4)])
def test_connectivity_decides_what_touches(connectivity, expected_area):
    b = np.zeros((6, 6), dtype=bool)
    b[0, 0:3] = True                                  # 3 px, 4-connected
    b[2, 2] = b[3, 3] = b[4, 4] = b[5, 5] = True      # 4 px, only diagonally connected
    assert largest_component(b, connectivity).sum() == expected_area


def test_largest_component_of_empty_is_empty():
    assert not largest_component(np.zeros((3, 3), bool)).any()


def test_ties_go_to_the_first_pixel_in_row_major_order():
    m = np.zeros((4, 4), np.float32)
    m[1, 1:3] = 1.0
    prompt = sample_point_pair(m, 0.5)
    np.testing.assert_array_equal(prompt.points, [[1.5, 1.5], [0.5, 0.5]])


def test_stack_prompts_pads_with_ignored_points():
    a = sample_point_pair(_two_blobs(), 0.5)
    b = sample_point_pair(_two_blobs(), 0.5, negative=False)
    points, labels = stack_prompts([a, b])
    assert points.shape == (2, 2, 2) and labels.shape == (2, 2)
    np.testing.assert_array_equal(labels, [[1, 0], [1, -1]])
    np.testing.assert_array_equal(points[1, 0], a.points[0])


def test_suppression_zeroes_found_masks_only():
    m = _two_blobs()
    mask = np.zeros_like(m, dtype=bool)
    mask[10:18, 15:27] = True
    out = suppress_attention(m, [mask])
    assert out[mask].max() == 0 and np.array_equal(out[~mask], m[~mask])
    assert m[13, 20] == pytest.approx(0.8), "input is not modified"
    again = sample_point_pair(out, 0.5)
    np.testing.assert_array_equal(again.points[0], [2.5, 2.5])   # the next blob


def test_score_is_predicted_iou_times_mean_attention_inside():
    m = np.zeros((4, 4), np.float32)
    m[0, :2] = [1.0, 0.5]
    mask = np.zeros((4, 4), bool)
    mask[0, :2] = True
    assert detection_score(0.8, m, mask) == pytest.approx(0.8 * 0.75)
    assert detection_score(0.8, m, np.zeros((4, 4), bool)) == 0.0
    assert detection_score(1.5, np.ones((4, 4), np.float32), mask) == 1.0
