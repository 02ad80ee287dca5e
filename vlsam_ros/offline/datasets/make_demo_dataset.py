"""Generates a small synthetic street-like dataset in CODA's layout (no real data shipped).

Each frame shows sky, a road in perspective with dashed lane marks, and up to three
corner-case objects on the road: a traffic cone, a cardboard box and an animal-like blob.
Objects nearer the bottom are drawn larger and later, so they occlude farther ones; every
ground-truth mask is the object's *visible* pixels. Some frames have no object at all.

Layout written::

    OUT/corner_case.json      COCO: images, annotations (bbox, RLE segmentation, area),
                              categories with CODA-like supercategories ("common"/"novel")
                              and LVIS-like frequencies (r = rare)
    OUT/images/<file_name>    JPEG or PNG

File names cycle through the three CODA sources so every naming style is exercised:
nuScenes ``n008-...__CAM_FRONT__<us>.jpg``, ONCE ``<ms>.jpg`` and KITTI ``<6 digits>.png``
(KITTI names carry no time, so those entries get a ``timestamp`` field in seconds). All
stamps advance by ``1 / rate_hz`` from ``start_s``, so ``--stamps metadata`` and
``--stamps order`` give the same frame order.

Usage::

    vlsam-make-demo-dataset OUT [--frames 12] [--width 320] [--height 240] [--seed 0]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from vlsam_ros.core.masks import encode_rle, rle_to_json
from vlsam_ros.tools.cli import (EXIT_OK, ToolError, ToolParser, positive_int, run_tool,
                                 staged_output)

# "frequency" (LVIS' r/c/f) lets the LVIS-style mode of vlsam-evaluate run on the demo too;
# CODA itself has no such field.
CATEGORIES = (
    {"id": 1, "name": "traffic_cone", "supercategory": "common", "frequency": "f"},
    {"id": 2, "name": "cardboard_box", "supercategory": "novel", "frequency": "r"},
    {"id": 3, "name": "animal", "supercategory": "novel", "frequency": "r"},
)
EMPTY_FRAME_EVERY = 5  # every 5th frame (index 4, 9, ...) has no object
MIN_SIDE = 16         # smallest image side the scene drawing supports
MIN_VISIBLE_PX = 12    # objects occluded below this many visible pixels are not annotated


def _file_name(index: int, stamp_ns: int) -> tuple[str, dict[str, Any]]:
    """File name in the style of source ``index % 3`` and any extra JSON fields it needs."""
    style = index % 3
    if style == 0:
        return f"n008-2018-08-01-15-16-36-0400__CAM_FRONT__{stamp_ns // 1000:016d}.jpg", {}
    if style == 1:
        return f"{stamp_ns // 1_000_000:013d}.jpg", {}
    return f"{index:06d}.png", {"timestamp": f"{stamp_ns // 1_000_000_000}."
                                             f"{stamp_ns % 1_000_000_000:09d}"}


def _draw_background(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """RGB uint8 (H, W, 3) sky + grass + road in perspective; returns it and the horizon row."""
    img = np.zeros((height, width, 3), dtype=np.uint8)
    horizon = int(height * rng.uniform(0.38, 0.48))
    sky_top, sky_bottom = np.array([90, 140, 215]), np.array([190, 215, 240])
    t = np.linspace(0.0, 1.0, horizon)[:, None]
    img[:horizon] = (sky_top * (1 - t) + sky_bottom * t).astype(np.uint8)[:, None, :]
    img[horizon:] = (70, 120, 60)  # grass verge
    centre = width / 2 + rng.uniform(-0.08, 0.08) * width
    road = np.array([[centre - 0.04 * width, horizon], [centre + 0.04 * width, horizon],
                     [width * 1.1, height], [-0.1 * width, height]], dtype=np.int32)
    cv2.fillPoly(img, [road], (85, 85, 90))
    # Dashed centre line: dashes grow towards the camera.
    y = float(horizon) + 2.0
    while y < height:
        length = max(1.0, (y - horizon) * 0.25)
        y1 = min(height - 1.0, y + length)
        w0 = max(1, int((y - horizon) / height * 0.02 * width))
        cv2.line(img, (int(centre), int(y)), (int(centre), int(y1)), (235, 235, 235), w0)
        y = y1 + length
    noise = rng.normal(0, 4, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8), horizon


def _object_mask(kind: int, height: int, width: int, cx: float, base_y: float,
                 size: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Bool (H, W) silhouette of object ``kind`` standing at (cx, base_y), and its colour."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    s = size
    if kind == 1:  # traffic cone: a tall triangle
        pts = np.array([[cx, base_y - 1.6 * s], [cx + 0.55 * s, base_y],
                        [cx - 0.55 * s, base_y]], dtype=np.int32)
        cv2.fillPoly(canvas, [pts], 1)
        colour = (245, 120, 20)
    elif kind == 2:  # cardboard box: a rectangle
        cv2.rectangle(canvas, (int(cx - 0.8 * s), int(base_y - 1.1 * s)),
                      (int(cx + 0.8 * s), int(base_y)), 1, -1)
        colour = (165, 115, 60)
    else:  # animal: body ellipse, head circle, four legs
        cv2.ellipse(canvas, (int(cx), int(base_y - 0.9 * s)),
                    (max(1, int(0.9 * s)), max(1, int(0.45 * s))), 0, 0, 360, 1, -1)
        cv2.circle(canvas, (int(cx + 0.95 * s), int(base_y - 1.3 * s)), max(1, int(0.35 * s)),
                   1, -1)
        for dx in (-0.6, -0.3, 0.3, 0.6):
            cv2.line(canvas, (int(cx + dx * s), int(base_y - 0.7 * s)),
                     (int(cx + dx * s), int(base_y)), 1, max(1, int(0.15 * s)))
        colour = (60, 45, 35)
    return canvas.astype(bool), colour


def render_frame(index: int, height: int, width: int, rng: np.random.Generator,
                 ) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One scene: RGB uint8 (H, W, 3) and ``[(category_id, visible bool mask (H, W))]``."""
    img, horizon = _draw_background(height, width, rng)
    n = 0 if index % EMPTY_FRAME_EVERY == EMPTY_FRAME_EVERY - 1 else int(rng.integers(1, 4))
    placed = []
    for _ in range(n):
        base_y = rng.uniform(horizon + 0.25 * (height - horizon), height - 2)
        depth = (base_y - horizon) / (height - horizon)  # 0 at horizon, 1 at the bottom
        cx = width / 2 + rng.uniform(-0.35, 0.35) * width * depth
        size = max(2.0, depth * 0.16 * width)
        placed.append((base_y, int(rng.integers(1, 4)), cx, size))
    labels = np.zeros((height, width), dtype=np.int32)  # 0 = background, k = placed[k-1]
    kinds = []
    for k, (base_y, kind, cx, size) in enumerate(sorted(placed), start=1):  # far to near
        mask, colour = _object_mask(kind, height, width, cx, base_y, size)
        shade = rng.integers(-20, 21, 3)
        img[mask] = np.clip(np.array(colour) + shade, 0, 255).astype(np.uint8)
        if kind == 1:  # reflective stripe on the cone
            rows = np.nonzero(mask.any(axis=1))[0]
            if rows.size >= 4:
                mid = rows[rows.size // 2]
                stripe = mask.copy()
                stripe[: mid - max(1, rows.size // 10)] = False
                stripe[mid + max(1, rows.size // 10):] = False
                img[stripe] = (240, 240, 240)
        labels[mask] = k
        kinds.append(kind)
    objects = []
    for k, kind in enumerate(kinds, start=1):
        visible = labels == k
        if visible.sum() >= MIN_VISIBLE_PX:
            objects.append((kind, visible))
    return img, objects


def make_demo_dataset(out_dir: str | Path, num_frames: int = 12, width: int = 320,
                      height: int = 240, seed: int = 0, rate_hz: float = 10.0,
                      start_s: float = 1_600_000_000.0) -> Path:
    """Writes the dataset under ``out_dir`` and returns the path of ``corner_case.json``.

    The dataset is written in a staging folder and moved into ``out_dir`` when complete
    (an existing folder keeps its other files; ``images/`` and the JSON are replaced)."""
    if num_frames < 1 or width < MIN_SIDE or height < MIN_SIDE:
        raise ToolError(f"need at least one frame of at least {MIN_SIDE}x{MIN_SIDE} pixels "
                        f"(got {num_frames} frame(s) of {width}x{height})")
    with staged_output(out_dir, merge=True) as staging:
        path = _write_dataset(staging, num_frames, width, height, seed, rate_hz, start_s)
    return Path(out_dir) / path.relative_to(staging)


def _write_dataset(out: Path, num_frames: int, width: int, height: int, seed: int,
                   rate_hz: float, start_s: float) -> Path:
    (out / "images").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for index in range(num_frames):
        stamp_ns = round(start_s * 1e9) + round(index * 1e9 / rate_hz)
        file_name, extra = _file_name(index, stamp_ns)
        rgb, objects = render_frame(index, height, width, rng)
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if file_name.endswith(".jpg") else []
        if not cv2.imwrite(str(out / "images" / file_name), rgb[:, :, ::-1], params):
            raise OSError(f"cannot write {out / 'images' / file_name}")
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": width,
                       "height": height, **extra})
        for category_id, mask in objects:
            ys, xs = np.nonzero(mask)
            x0, y0 = int(xs.min()), int(ys.min())
            box = [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": category_id, "bbox": box,
                                "area": int(mask.sum()), "iscrowd": 0,
                                "segmentation": rle_to_json(encode_rle(mask))})
    gt = {"info": {"description": "vlsam_ros synthetic street scenes (CODA layout), "
                                  f"seed {seed}"},
          "images": images, "annotations": annotations, "categories": list(CATEGORIES)}
    path = out / "corner_case.json"
    path.write_text(json.dumps(gt, indent=1) + "\n")
    return path


def build_parser() -> ToolParser:
    parser = ToolParser(prog="vlsam-make-demo-dataset", description=__doc__.splitlines()[0],
                        epilog="Exit status: 0 written, 2 bad arguments or unwritable output, "
                               "130 interrupted (nothing half-written is left).")
    parser.add_argument("out_dir", help="output folder (created; images/ and "
                                        "corner_case.json in it are replaced)")
    parser.add_argument("--frames", type=positive_int, default=12,
                        help="number of images (default %(default)s)")
    parser.add_argument("--width", type=positive_int, default=320,
                        help=f"image width in pixels, at least {MIN_SIDE} (default %(default)s)")
    parser.add_argument("--height", type=positive_int, default=240,
                        help=f"image height in pixels, at least {MIN_SIDE} "
                             "(default %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed of the scenes (default %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        path = make_demo_dataset(args.out_dir, args.frames, args.width, args.height, args.seed)
        print(f"demo dataset written: {path} ({args.frames} frames)")
        return EXIT_OK

    return run_tool("vlsam-make-demo-dataset", body)


if __name__ == "__main__":
    raise SystemExit(main())
