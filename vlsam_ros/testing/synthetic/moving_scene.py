"""Moving scenes with ground truth for the tracker: textured objects that move, cross,
occlude each other and reappear, enter and leave the image, seen by a panning camera.

Frame (t = 0 ... num_frames - 1, stamp t / fps) is rendered from a world picture: world
point (X, Y) appears at image pixel (X - cx(t), Y - cy(t)), where the camera offset
c(t) = (pan_x sin(2 pi t / period_x), pan_y sin(2 pi t / period_y)) (ego-motion, rounded
to whole pixels). Objects are painted back to front by depth (larger depth = nearer);
the ground truth of a frame is the id of the object visible at each pixel (0 =
background), hence each object's visible mask. Every object carries its own fixed random
texture, so sparse optical flow has something to follow; the background is textured too.

:func:`default_moving_scene` is the scene of the tracker's tests and benchmark: 6 objects
in 120 frames of 240 x 320 at 10 Hz:

* car and truck drive towards each other and cross; the truck (nearer) hides the car
  completely for about 7 frames, then the car reappears;
* a pedestrian walks behind a traffic cone (partial occlusion);
* a dog enters from the left and leaves on the right; a ball enters from the top and
  leaves on the left;
* the traffic cone stands still in the world (moves only with the camera).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import cv2
import numpy as np

NS_PER_S = 1_000_000_000


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One object: name, shape ('rect' or 'ellipse'), size (width, height) in pixels,
    depth (larger is nearer the camera), RGB base colour, and a path of (frame, x, y)
    world positions of its centre, linearly interpolated; it exists from the first to the
    last key frame."""

    object_id: int
    name: str
    shape: str
    size: tuple[int, int]
    depth: int
    colour: tuple[int, int, int]
    path: tuple[tuple[float, float, float], ...]

    def centre(self, frame: int) -> tuple[float, float] | None:
        """World centre (x, y) at ``frame``, None where the object does not exist."""
        frames = [p[0] for p in self.path]
        if frame < frames[0] or frame > frames[-1]:
            return None
        if len(self.path) == 1:
            return self.path[0][1], self.path[0][2]
        x = float(np.interp(frame, frames, [p[1] for p in self.path]))
        y = float(np.interp(frame, frames, [p[2] for p in self.path]))
        return x, y


@dataclasses.dataclass(frozen=True)
class CameraMotion:
    """Ego-motion: offset (pan_x sin(2 pi t / period_x), pan_y sin(2 pi t / period_y))."""

    pan_x: float
    pan_y: float
    period_x: float
    period_y: float

    def offset(self, frame: int) -> tuple[int, int]:
        return (int(round(self.pan_x * math.sin(2 * math.pi * frame / self.period_x))),
                int(round(self.pan_y * math.sin(2 * math.pi * frame / self.period_y))))


@dataclasses.dataclass(frozen=True)
class SceneFrame:
    """One rendered frame: image RGB uint8 (H, W, 3); ids int16 (H, W), the id of the
    object visible at each pixel (0 background); stamp_ns its capture time."""

    index: int
    image: np.ndarray
    ids: np.ndarray
    stamp_ns: int

    def visible_ids(self, min_pixels: int = 1) -> list[int]:
        """Ids of the objects with at least ``min_pixels`` visible pixels, ascending."""
        counts = np.bincount(self.ids.reshape(-1).astype(np.int64))
        return [i for i in range(1, len(counts)) if counts[i] >= min_pixels]

    def mask(self, object_id: int) -> np.ndarray:
        """bool (H, W) visible mask of an object."""
        return self.ids == object_id


@dataclasses.dataclass(frozen=True)
class MovingScene:
    """A rendered sequence and its objects (by id)."""

    frames: tuple[SceneFrame, ...]
    objects: dict[int, SceneObject]
    fps: float

    def names(self) -> dict[int, str]:
        return {k: o.name for k, o in self.objects.items()}


def _texture(rng: np.random.Generator, height: int, width: int, base: Sequence[int],
             amplitude: float, channels: int = 3) -> np.ndarray:
    """Base colour plus smooth random blobs and fine grain, uint8 (height, width, 3); with
    ``channels`` 1 the pattern is the same in R, G and B (grey texture)."""
    coarse = rng.normal(0.0, 1.0, (max(2, height // 6), max(2, width // 6), channels))
    blobs = cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0.0, 0.35, (height, width, channels)).astype(np.float32)
    pattern = (blobs.reshape(height, width, -1) + grain)
    out = np.asarray(base, np.float32) + amplitude * pattern
    return np.clip(out, 0, 255).astype(np.uint8)


def _shape_mask(shape: str, width: int, height: int) -> np.ndarray:
    if shape == "rect":
        return np.ones((height, width), bool)
    if shape == "ellipse":
        yy, xx = np.mgrid[0:height, 0:width]
        return (((xx + 0.5 - width / 2) / (width / 2)) ** 2
                + ((yy + 0.5 - height / 2) / (height / 2)) ** 2) <= 1.0
    raise ValueError(f"unknown shape {shape!r}")


def render_scene(objects: Sequence[SceneObject], camera: CameraMotion, num_frames: int,
                 height: int, width: int, fps: float = 10.0, seed: int = 0) -> MovingScene:
    """Renders ``num_frames`` frames of ``objects`` (module docstring). Deterministic in
    ``seed``."""
    rng = np.random.default_rng(seed)
    margin = int(math.ceil(max(abs(camera.pan_x), abs(camera.pan_y)))) + 1
    background = _texture(rng, height + 2 * margin, width + 2 * margin, (105, 105, 100), 30.0,
                          channels=1)
    sprites = {}
    for obj in objects:
        w, h = obj.size
        sprites[obj.object_id] = (_texture(rng, h, w, obj.colour, 28.0),
                                  _shape_mask(obj.shape, w, h))
    frames = []
    ordered = sorted(objects, key=lambda o: (o.depth, o.object_id))
    for t in range(num_frames):
        cx, cy = camera.offset(t)
        image = background[margin + cy:margin + cy + height,
                           margin + cx:margin + cx + width].copy()
        ids = np.zeros((height, width), np.int16)
        for obj in ordered:
            centre = obj.centre(t)
            if centre is None:
                continue
            texture, shape = sprites[obj.object_id]
            h, w = shape.shape
            x0 = int(round(centre[0] - w / 2)) - cx
            y0 = int(round(centre[1] - h / 2)) - cy
            ix0, iy0 = max(x0, 0), max(y0, 0)
            ix1, iy1 = min(x0 + w, width), min(y0 + h, height)
            if ix0 >= ix1 or iy0 >= iy1:
                continue
            local = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
            region = (slice(iy0, iy1), slice(ix0, ix1))
            inside = shape[local]
            image[region][inside] = texture[local][inside]
            ids[region][inside] = obj.object_id
        frames.append(SceneFrame(t, image, ids, int(round(t * NS_PER_S / fps))))
    return MovingScene(tuple(frames), {o.object_id: o for o in objects}, fps)


def default_moving_scene(num_frames: int = 120, seed: int = 0) -> MovingScene:
    """The tracker's test and benchmark scene (module docstring), 240 x 320 at 10 Hz.
    ``num_frames`` may shorten it (the paths are laid out for 120 frames)."""
    last = 119
    objects = [
        SceneObject(1, "car", "rect", (56, 28), 1, (200, 40, 40),
                    ((0, 50, 150), (last, 50 + 1.8 * last, 150))),
        SceneObject(2, "truck", "rect", (84, 52), 3, (40, 70, 200),
                    ((0, 300, 148), (last, 300 - 2.2 * last, 148))),
        SceneObject(3, "pedestrian", "ellipse", (16, 40), 0, (230, 200, 60),
                    ((0, 300, 95), (last, 300 - 1.3 * last, 95))),
        SceneObject(4, "dog", "ellipse", (32, 20), 2, (150, 90, 40),
                    ((15, -20, 205), (110, -20 + 3.6 * 95, 205))),
        SceneObject(5, "traffic cone", "ellipse", (22, 30), 2, (250, 120, 20),
                    ((0, 240, 100), (last, 240, 100))),
        SceneObject(6, "ball", "ellipse", (18, 18), 4, (60, 200, 90),
                    ((50, 110, -10), (105, -10, 72))),
    ]
    camera = CameraMotion(pan_x=14.0, pan_y=6.0, period_x=50.0, period_y=35.0)
    return render_scene(objects, camera, num_frames, 240, 320, fps=10.0, seed=seed)


def ground_truth(scene: MovingScene, min_pixels: int = 1):
    """Per frame, the visible objects with at least ``min_pixels`` pixels as
    ``LabelledMasks`` (object ids and visible masks), for ``core.tracking.metrics``."""
    from vlsam_ros.core.tracking.metrics import LabelledMasks

    out = []
    for frame in scene.frames:
        ids = frame.visible_ids(min_pixels)
        masks = (np.stack([frame.mask(i) for i in ids]) if ids
                 else np.zeros((0, *frame.ids.shape), bool))
        out.append(LabelledMasks(np.asarray(ids, np.int64), masks))
    return out
