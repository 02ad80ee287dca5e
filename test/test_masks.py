"""Boxes from masks, mask IoU, mask NMS and COCO RLE, cross-checked against pycocotools."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as mask_utils

from vlsam_ros.core.merging import mask_nms, merge_labels
from vlsam_ros.core.masks import (box_from_mask, decode_rle, encode_rle, mask_iou,
                                  mask_to_rle_counts, rle_box,
                                  rle_counts_to_mask, rle_to_json)


def _rect(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.mark.parametrize("box", [(0, 0, 1, 1), (3, 2, 9, 5), (0, 0, 11, 7), (10, 6, 11, 7)])
def test_box_from_mask_is_tight_with_exclusive_end(box):
    mask = _rect(7, 11, *box)
    assert box_from_mask(mask) == box
    assert rle_box(encode_rle(mask)) == box


def test_box_from_mask_spans_disjoint_parts():
    mask = _rect(20, 30, 2, 3, 4, 5) | _rect(20, 30, 25, 10, 27, 19)
    assert box_from_mask(mask) == (2, 3, 27, 19)


def test_box_from_empty_mask_raises():
    with pytest.raises(ValueError, match="empty"):
        box_from_mask(np.zeros((4, 4), dtype=bool))


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (5, 7), (64, 33)])
@pytest.mark.parametrize("fill", ["empty", "full", "random", "first_pixel"])
def test_rle_counts_match_pycocotools(shape, fill):
    rng = np.random.default_rng(0)
    mask = {"empty": np.zeros(shape, bool), "full": np.ones(shape, bool),
            "random": rng.random(shape) < 0.4, "first_pixel": np.eye(*shape, dtype=bool)}[fill]
    counts = mask_to_rle_counts(mask)
    assert sum(counts) == mask.size
    # pycocotools compresses our uncompressed counts to exactly its own encoding of the mask.
    ours = mask_utils.frPyObjects({"size": list(shape), "counts": counts}, *shape)
    assert ours["counts"] == mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]
    np.testing.assert_array_equal(rle_counts_to_mask(counts, *shape), mask)


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_rle_counts_roundtrip_property(mask):
    counts = mask_to_rle_counts(mask)
    assert all(c >= 0 for c in counts) and all(c > 0 for c in counts[1:])
    np.testing.assert_array_equal(rle_counts_to_mask(counts, *mask.shape), mask)
    np.testing.assert_array_equal(decode_rle(encode_rle(mask)), mask)


def test_rle_counts_are_column_major():
    mask = np.array([[1, 1], [0, 0]], dtype=bool)     # column-major: 1,0,1,0
    assert mask_to_rle_counts(mask) == [0, 1, 1, 1, 1]


def test_rle_counts_of_wrong_total_raise():
    with pytest.raises(ValueError, match="sum to 5"):
        rle_counts_to_mask([2, 3], 2, 3)


def test_mask_iou_matches_brute_force():
    rng = np.random.default_rng(1)
    a = rng.random((4, 13, 17)) < 0.5
    b = rng.random((3, 13, 17)) < 0.3
    b[0] = False                                        # empty mask: IoU 0
    expected = np.array([[(x & y).sum() / max((x | y).sum(), 1) for y in b] for x in a])
    np.testing.assert_allclose(mask_iou(a, b), expected, atol=1e-12)


def test_mask_nms_keeps_best_and_records_suppressed():
    h, w = 20, 20
    masks = [_rect(h, w, 0, 0, 10, 10),      # 0: A
             _rect(h, w, 0, 0, 10, 9),       # 1: ~A (IoU 0.9)
             _rect(h, w, 12, 12, 20, 20),    # 2: B
             _rect(h, w, 0, 0, 10, 4)]       # 3: part of A (IoU 0.44 with mask 1)
    groups = mask_nms([encode_rle(m) for m in masks], np.array([0.5, 0.9, 0.3, 0.2]), 0.5)
    assert [(g.keep, g.suppressed) for g in groups] == [(1, (0,)), (2, ()), (3, ())]


def test_mask_nms_threshold_is_strict_and_ties_keep_input_order():
    masks = [_rect(8, 8, 0, 0, 4, 8), _rect(8, 8, 0, 0, 8, 8)]   # IoU exactly 0.5
    rles = [encode_rle(m) for m in masks]
    assert len(mask_nms(rles, np.array([1.0, 1.0]), 0.5)) == 2
    groups = mask_nms(rles, np.array([1.0, 1.0]), 0.49)
    assert [(g.keep, g.suppressed) for g in groups] == [(0, (1,))]


def test_merge_labels_dedupes_and_excludes_kept():
    assert merge_labels("car", ["Car", "vehicle", "truck", "vehicle ", ""]) == ("vehicle", "truck")


def test_rle_to_json_is_one_form_for_compressed_and_uncompressed_input():
    mask = np.zeros((7, 5), bool)
    mask[1:3, 2:5] = True           # off-centre, not square: a transposed RLE would differ
    mask[5, 0] = True
    from_compressed = rle_to_json(encode_rle(mask))
    from_uncompressed = rle_to_json({"size": [7, 5], "counts": mask_to_rle_counts(mask)})
    assert from_compressed == from_uncompressed
    assert from_compressed["size"] == [7, 5] and isinstance(from_compressed["counts"], str)
    json_round_trip = {"size": from_compressed["size"],
                       "counts": from_compressed["counts"].encode("ascii")}
    np.testing.assert_array_equal(mask_utils.decode(json_round_trip).astype(bool), mask)
