"""Corner tiles and exact mapping back to the full image, at odd sizes."""

from __future__ import annotations

import numpy as np
import pytest

from vlsam_ros.core.masks import box_from_mask
from vlsam_ros.core.tiles import corner_tiles, full_view, make_views

SIZES = [(2, 2), (3, 5), (101, 77), (480, 640), (257, 321)]


@pytest.mark.parametrize("height,width", SIZES)
def test_tiles_are_ceil_half_at_the_corners_and_cover_the_image(height, width):
    tiles = corner_tiles(height, width)
    covered = np.zeros((height, width), int)
    for t in tiles:
        assert (t.height, t.width) == (-(-height // 2), -(-width // 2))
        covered[t.y0:t.y0 + t.height, t.x0:t.x0 + t.width] += 1
    assert covered.min() >= 1
    corners = {(t.x0, t.y0, t.x0 + t.width, t.y0 + t.height) for t in tiles}
    assert (0, 0) in {(c[0], c[1]) for c in corners}
    assert (width, height) in {(c[2], c[3]) for c in corners}


@pytest.mark.parametrize("height,width", SIZES[1:])
def test_masks_boxes_and_points_map_back_exactly(height, width):
    rng = np.random.default_rng(height * width)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    for tile in corner_tiles(height, width):
        crop = tile.crop(image)
        assert crop.shape == (tile.height, tile.width, 3)
        local = rng.random((tile.height, tile.width)) < 0.1
        local[tile.height // 2, tile.width // 2] = True
        full = tile.mask_to_full(local, (height, width))
        assert full.sum() == local.sum()
        np.testing.assert_array_equal(tile.crop(full), local)
        assert tile.box_to_full(box_from_mask(local)) == box_from_mask(full)
        # A point at a tile pixel's centre lands on the centre of the same image pixel.
        r, c = np.argwhere(local)[0]
        (x, y), = tile.points_to_full(np.array([[c + 0.5, r + 0.5]]))
        assert full[int(y), int(x)] and image[int(y), int(x)].tolist() == crop[r, c].tolist()


def test_views_and_inner_edges():
    views = make_views(101, 77, tiles=True)
    assert [v.name for v in views] == ["full", "top_left", "top_right", "bottom_left",
                                       "bottom_right"]
    assert make_views(101, 77, tiles=False) == [full_view(101, 77)]
    top_left = views[1]                                  # 39 x 51 tile at (0, 0)
    assert not top_left.touches_inner_edge((0, 0, 5, 5), (101, 77))      # image corner
    assert top_left.touches_inner_edge((30, 0, 39, 5), (101, 77))        # right edge
    assert top_left.touches_inner_edge((0, 40, 5, 51), (101, 77))        # bottom edge
    bottom_right = views[4]
    assert not bottom_right.touches_inner_edge((30, 40, 39, 51), (101, 77))
    assert bottom_right.touches_inner_edge((0, 10, 5, 20), (101, 77))
    assert not views[0].touches_inner_edge((0, 0, 77, 101), (101, 77))


def test_too_small_to_tile():
    with pytest.raises(ValueError, match="too small"):
        corner_tiles(1, 5)
    with pytest.raises(ValueError, match="does not match"):
        corner_tiles(4, 4)[0].mask_to_full(np.zeros((3, 3), bool), (4, 4))
