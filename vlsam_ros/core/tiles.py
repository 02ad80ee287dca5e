"""Multi-scale views: the full image and its four corner tiles (method.md section 5).

A tile of an (H, W) image covers rows [y0, y0 + h) and columns [x0, x0 + w) with
h = ceil(H / 2) and w = ceil(W / 2); the four corners are anchored at the image corners,
so for odd sizes neighbouring tiles share the middle row/column and together they cover
every pixel. Mapping back is a pure integer offset: tile pixel (r, c) is full-image pixel
(r + y0, c + x0), a tile point (x, y) is (x + x0, y + y0).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class View:
    """A window of the full image: rows [y0, y0 + height), columns [x0, x0 + width)."""

    name: str
    x0: int
    y0: int
    width: int
    height: int

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The view's pixels of a full image (H, W, ...) (a view into ``image``, no copy)."""
        return image[self.y0:self.y0 + self.height, self.x0:self.x0 + self.width]

    def points_to_full(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) (x, y) points in the view -> the same points in the full image."""
        return np.asarray(points, dtype=np.float32) + np.array([self.x0, self.y0],
                                                               dtype=np.float32)

    def box_to_full(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) box in the view -> the same box in the full image."""
        return (box[0] + self.x0, box[1] + self.y0, box[2] + self.x0, box[3] + self.y0)

    def mask_to_full(self, mask: np.ndarray, full_shape: tuple[int, int]) -> np.ndarray:
        """bool (height, width) mask in the view -> bool full_shape (H, W) mask."""
        if mask.shape != (self.height, self.width):
            raise ValueError(f"mask of shape {mask.shape} does not match view "
                             f"{self.name} ({self.height}, {self.width})")
        full = np.zeros(full_shape, dtype=bool)
        full[self.y0:self.y0 + self.height, self.x0:self.x0 + self.width] = mask
        return full


    def touches_inner_edge(self, box: tuple[int, int, int, int],
                           full_shape: tuple[int, int]) -> bool:
        """Whether a box (x0, y0, x1, y1) in the view's frame reaches an edge of the view
        that lies inside the full image (i.e. the object may continue beyond the view)."""
        height, width = full_shape
        return ((box[0] <= 0 and self.x0 > 0)
                or (box[1] <= 0 and self.y0 > 0)
                or (box[2] >= self.width and self.x0 + self.width < width)
                or (box[3] >= self.height and self.y0 + self.height < height))


def full_view(height: int, width: int) -> View:
    """The whole image as a view."""
    return View("full", 0, 0, width, height)


def corner_tiles(height: int, width: int) -> list[View]:
    """The four ceil(H/2) x ceil(W/2) corner tiles, in the order top-left, top-right,
    bottom-left, bottom-right."""
    if height < 2 or width < 2:
        raise ValueError(f"an image of {height} x {width} pixels is too small to tile")
    th, tw = -(-height // 2), -(-width // 2)
    return [
        View("top_left", 0, 0, tw, th),
        View("top_right", width - tw, 0, tw, th),
        View("bottom_left", 0, height - th, tw, th),
        View("bottom_right", width - tw, height - th, tw, th),
    ]


def make_views(height: int, width: int, tiles: bool) -> list[View]:
    """The full image, followed by the four corner tiles when ``tiles`` is True."""
    views = [full_view(height, width)]
    if tiles:
        views.extend(corner_tiles(height, width))
    return views
