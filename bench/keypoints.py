"""LENS keypoint options of the prompt step: peak accuracy and cost.

Accuracy: a Gaussian peak (sigma in patches) planted at sub-patch positions on a 24 x 24
grid, min-max normalised and upsampled to 336 x 336 by the VLM side's own
``upsample_to_image``; the worst error (patches, max over x and y and over the positions) of
the peak pixel ('off') and of the 'quadratic' and 'gaussian' refinements.
Cost: milliseconds per ``sample_point_pair`` call on such a map with each option
(median of --repeats calls).

    .venv/bin/python bench/keypoints.py [--positions 50] [--repeats 200]

The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from vlsam_ros.core.attention import minmax_normalize, upsample_to_image
from vlsam_ros.core.prompts import (KeypointOptions, pixel_centre, sample_point_pair,
                                    subpixel_peak)

GRID, SIZE = 24, 336


def planted_map(cx: float, cy: float, sigma: float) -> np.ndarray:
    r, c = np.mgrid[0:GRID, 0:GRID]
    g = np.exp(-((c + 0.5 - cx) ** 2 + (r + 0.5 - cy) ** 2) / (2 * sigma ** 2))
    return upsample_to_image(minmax_normalize(torch.tensor(g)), (SIZE, SIZE),
                             (0.0, 0.0, float(SIZE), float(SIZE))).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=50, help="planted peak positions")
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per option")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cell = SIZE / GRID
    centres = rng.uniform(4.0, GRID - 4.0, size=(args.positions, 2))
    worst: dict[str, dict[str, float]] = {}
    for sigma in (0.7, 1.0, 1.5, 2.0):
        errors = {"off": 0.0, "quadratic": 0.0, "gaussian": 0.0}
        for cx, cy in centres:
            m = planted_map(cx, cy, sigma)
            peak = pixel_centre(int(np.argmax(m)), SIZE)
            for method in errors:
                x, y = subpixel_peak(m, peak, (cell, cell), method)
                errors[method] = max(errors[method], float(abs(x / cell - cx)),
                                     float(abs(y / cell - cy)))
        worst[f"sigma_{sigma}"] = {k: round(v, 4) for k, v in errors.items()}
        print(f"sigma {sigma} patches: worst error (patches) {worst[f'sigma_{sigma}']}")
    m = planted_map(10.3, 12.8, 1.0) + 0.8 * planted_map(15.2, 12.1, 1.0)
    m = (m / m.max()).astype(np.float32)
    cost = {}
    for name, opts in {"paper": KeypointOptions(),
                       "quadratic": KeypointOptions(subpixel="quadratic"),
                       "gaussian": KeypointOptions(subpixel="gaussian"),
                       "3_points": KeypointOptions(positive_points=3),
                       "3_points_gaussian": KeypointOptions("gaussian", 3)}.items():
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            sample_point_pair(m, 0.5, keypoints=opts, cell_px=(cell, cell))
            times.append((time.perf_counter() - t) * 1e3)
        cost[name] = round(statistics.median(times), 3)
    print(f"ms per sample_point_pair ({SIZE}x{SIZE} map): {cost}")
    print(json.dumps({"worst_error_patches": worst, "sample_ms": cost}))


if __name__ == "__main__":
    main()
