"""segment_objects directly: batching per round and exact-duplicate prompts."""

from __future__ import annotations

import numpy as np

from oracle import OracleSegmenter, PlantedVlm, make_scene
from vlsam_ros.core.config import PromptConfig, SamConfig
from vlsam_ros.core.masks import decode_rle
from vlsam_ros.core.refinement import DecodeStats, ObjectMap, segment_objects


def test_duplicate_prompts_are_decoded_once_and_shared():
    scene = make_scene(96, 128, [("a", (8, 8, 40, 40)), ("b", (70, 40, 120, 90))])
    maps = PlantedVlm(scene).describe([scene.image], ["q"], None, None)[0].attention_maps
    objects = [ObjectMap("a", maps[0]), ObjectMap("a again", maps[0].copy()),
               ObjectMap("b", maps[1])]
    seg = OracleSegmenter()
    stats = DecodeStats()
    found = segment_objects(seg, seg.embed(scene.image), objects,
                            PromptConfig(refinement_rounds=1), SamConfig(), stats)
    assert [c["k"] for c in seg.calls] == [2, 2]
    assert (stats.calls, stats.prompts, stats.duplicates) == (2, 4, 2)
    assert [c.label for c in found] == ["a", "a again", "b"]
    np.testing.assert_array_equal(decode_rle(found[0].rle), scene.objects[0].mask)
    np.testing.assert_array_equal(decode_rle(found[1].rle), scene.objects[0].mask)
    np.testing.assert_array_equal(decode_rle(found[2].rle), scene.objects[1].mask)
    assert all(c.round == 1 for c in found)


def test_small_masks_are_dropped_but_still_suppress_attention():
    scene = make_scene(96, 128, [("a", (8, 8, 40, 40))])
    exact = scene.objects[0].mask.astype(np.float32)          # attention exactly on the object
    seg = OracleSegmenter()
    found = segment_objects(seg, seg.embed(scene.image), [ObjectMap("a", exact)],
                            PromptConfig(refinement_rounds=3, min_mask_area_px=32 * 32 + 1),
                            SamConfig())
    assert found == []
    assert len(seg.calls) == 2, "the area was suppressed, so round 2 finds nothing to prompt"
