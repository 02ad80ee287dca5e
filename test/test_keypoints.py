"""LENS keypoint options of the prompt step (prompts.subpixel_peak, prompts.positive_points):
the maths on small hand-computed inputs, a planted Gaussian peak recovered below patch
resolution, and the oracle-segmenter ablation (each option adds recall on a scene built to
need it and leaves recall unchanged on one that does not), in the style of test_pipeline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from oracle import (
    BACKGROUND,
    OracleSegmenter,
    PlantedVlm,
    Scene,
    SceneObject,
    make_scene,
    scene_recall,
)

from vlsam_ros.core.attention import minmax_normalize, upsample_to_image
from vlsam_ros.core.config import ConfigError, from_flat
from vlsam_ros.core.pipeline import Pipeline
from vlsam_ros.core.prompts import (
    KeypointOptions,
    parabola_vertex,
    pixel_centre,
    sample_bilinear,
    sample_point_pair,
    separated_maxima,
    subpixel_peak,
)
from vlsam_ros.core.results import ObjectName, VlmAnswer

Q = "list the objects"


# ------------------------------------------------------------------ the maths, by hand

def test_parabola_vertex_by_hand():
    # f = 0.5, 1.0, 0.7: curvature 0.5 - 2 + 0.7 = -0.8; delta = (0.5 - 0.7) / (2 * -0.8)
    assert parabola_vertex(0.5, 1.0, 0.7) == pytest.approx(0.125)
    assert parabola_vertex(0.7, 1.0, 0.5) == pytest.approx(-0.125)
    assert parabola_vertex(1.0, 1.0, 1.0) == 0.0            # plateau: no strict maximum
    assert parabola_vertex(0.0, 1.0, 1.5) == 0.5            # clipped to half a step


def test_bilinear_sample_by_hand():
    image = np.array([[0.0, 1.0], [2.0, 3.0]])
    assert sample_bilinear(image, 0.5, 0.5) == 0.0          # pixel centre (0, 0)
    assert sample_bilinear(image, 1.0, 1.0) == pytest.approx(1.5)
    assert sample_bilinear(image, 1.5, 0.75) == pytest.approx(1.0 + 0.25 * 2.0)
    assert sample_bilinear(image, -5.0, 9.0) == 2.0         # border beyond the centres


def test_gaussian_fit_is_exact_on_a_sampled_gaussian():
    # g(x) = exp(-(x - 0.3)^2 / 2) at -1, 0, 1 (one pixel per cell, a 1 x 3 map).
    values = np.exp(-(np.array([-1.0, 0.0, 1.0]) - 0.3) ** 2 / 2.0)[None, :]
    x, y = subpixel_peak(values, (1.5, 0.5), (1.0, 1.0), "gaussian")
    assert (x, y) == (pytest.approx(1.8), 0.5)
    # The parabola through the values: delta = (f- - f+) / (2 (f- - 2 f0 + f+)).
    f = values[0]
    expected = 1.5 + (f[0] - f[2]) / (2 * (f[0] - 2 * f[1] + f[2]))
    assert subpixel_peak(values, (1.5, 0.5), (1.0, 1.0), "quadratic")[0] == pytest.approx(expected)
    assert subpixel_peak(values, (1.5, 0.5), (1.0, 1.0), "off") == (1.5, 0.5)


def test_separated_maxima_by_hand():
    a = np.zeros((5, 9), np.float32)
    a[2, 1], a[2, 3], a[2, 7] = 1.0, 0.8, 0.6
    area = a > 0                                             # the thresholded area
    w = a.shape[1]
    # Separation 3 px: (2,3) is 2 px from the first peak, so the next is (2,7).
    assert separated_maxima(a, area, 3, (3.0, 3.0)) == [2 * w + 1, 2 * w + 7]
    assert separated_maxima(a, area, 3, (1.5, 1.5)) == [2 * w + 1, 2 * w + 3, 2 * w + 7]
    assert separated_maxima(a, area, 1, (1.5, 1.5)) == [2 * w + 1]
    area[:, 5:] = False                                      # outside the area: never taken
    assert separated_maxima(a, area, 3, (1.5, 1.5))[:2] == [2 * w + 1, 2 * w + 3]
    assert 2 * w + 7 not in separated_maxima(a, area, 3, (1.5, 1.5))


def test_several_positive_points_then_the_negative():
    a = np.zeros((20, 40), np.float32)
    a[8:12, 4:16] = 0.7
    a[8:12, 16:36] = 0.7
    a[10, 8], a[10, 30] = 1.0, 0.9
    opts = KeypointOptions(positive_points=3, min_separation_cells=2.0)
    prompt = sample_point_pair(a, 0.5, keypoints=opts, cell_px=(4.0, 4.0))
    assert prompt.labels.tolist() == [1, 1, 1, 0]
    assert prompt.points[0].tolist() == [8.5, 10.5] and prompt.points[1].tolist() == [30.5, 10.5]
    sep = np.hypot(*(prompt.points[2] - prompt.points[:2]).T)
    assert np.all(sep >= 8.0)                                # two cells of 4 px
    single = sample_point_pair(a, 0.5)
    assert single.labels.tolist() == [1, 0] and single.points[0].tolist() == [8.5, 10.5]
    with pytest.raises(ValueError, match="cell_px"):
        sample_point_pair(a, 0.5, keypoints=opts)


def test_options_are_config_fields_off_by_default():
    cfg = from_flat({})
    assert (cfg.prompts.subpixel_peak, cfg.prompts.positive_points) == ("off", 1)
    with pytest.raises(ConfigError, match="subpixel_peak"):
        from_flat({"prompts.subpixel_peak": "cubic"})
    with pytest.raises(ConfigError, match="positive_points"):
        from_flat({"prompts.positive_points": 0})


# ------------------------------------------- planted Gaussian peak below patch resolution

def _gaussian_grid(rows: int, cols: int, centre_cells: tuple[float, float],
                   sigma_cells: float) -> torch.Tensor:
    """A Gaussian peak sampled at the cell centres of a rows x cols grid; centre (cx, cy)
    in cell units (cell c spans [c, c + 1), its centre is c + 0.5)."""
    r, c = np.mgrid[0:rows, 0:cols]
    cx, cy = centre_cells
    g = np.exp(-((c + 0.5 - cx) ** 2 + (r + 0.5 - cy) ** 2) / (2 * sigma_cells ** 2))
    return minmax_normalize(torch.tensor(g))


CENTRES = [(10.3, 12.8), (5.45, 17.1), (8.77, 3.62), (15.5, 9.25), (12.0, 12.0)]


@pytest.mark.parametrize("method", ["quadratic", "gaussian"])
@pytest.mark.parametrize("sigma", [0.7, 1.0, 1.5])
def test_subpixel_refinement_recovers_a_planted_gaussian_peak(method, sigma):
    """24 x 24 grid (LLaVA-1.5), upsampled to 336 x 336 by the VLM side's own function:
    the refined peak is within 0.1 patch of the planted one; the peak pixel is not."""
    grid, size = 24, 336
    cell = size / grid
    worst_plain = 0.0
    for cx, cy in CENTRES:
        up = upsample_to_image(_gaussian_grid(grid, grid, (cx, cy), sigma), (size, size),
                               (0.0, 0.0, float(size), float(size))).numpy()
        peak = pixel_centre(int(np.argmax(up)), size)
        x, y = subpixel_peak(up, peak, (cell, cell), method)
        assert abs(x / cell - cx) <= 0.1 and abs(y / cell - cy) <= 0.1, (cx, cy, x, y)
        worst_plain = max(worst_plain, abs(peak[0] / cell - cx), abs(peak[1] / cell - cy))
    assert worst_plain > 0.4          # the plain peak is off by up to half a patch


def test_subpixel_refinement_on_a_padded_non_square_image():
    """LLaVA-1.5 'whole' fit: a 200 x 336 frame padded to a square, so the grid box extends
    68 px above and below the image and cells are 14 px (VlmAnswer.patch_cell_px)."""
    box = (0.0, -68.0, 336.0, 268.0)
    cx, cy = 11.37, 12.64                                 # cell units of the padded square
    up = upsample_to_image(_gaussian_grid(24, 24, (cx, cy), 1.0), (200, 336), box).numpy()
    answer = VlmAnswer("q", "thing", (ObjectName("thing", (0, 1)),), up[None], (24, 24), box)
    cell = answer.patch_cell_px()
    assert cell == (14.0, 14.0)
    assert VlmAnswer("q", "", (), np.zeros((0, 200, 336)), (10, 12)).patch_cell_px() == (28, 20)
    peak = pixel_centre(int(np.argmax(up)), 336)
    x, y = subpixel_peak(up, peak, cell, "gaussian")
    assert abs(x / 14.0 - cx) <= 0.1 and abs((y + 68.0) / 14.0 - cy) <= 0.1


# ------------------------------------------------------------ oracle-segmenter ablation

@dataclasses.dataclass
class PeakedVlm:
    """VisionLanguageModel double whose maps are sums of Gaussian peaks on a grid x grid
    patch grid over the whole image (peaks: {name: [(x, y, sigma), ...]}, pixels),
    min-max normalised and upsampled by the VLM side's own ``upsample_to_image``."""

    peaks: dict[str, list[tuple[float, float, float]]]
    grid: int

    def describe(self, images: Sequence[np.ndarray], questions: Sequence[str], vlm_cfg,
                 attn_cfg) -> list[VlmAnswer]:
        answers = []
        for image, question in zip(images, questions):
            h, w = image.shape[:2]
            r, c = np.mgrid[0:self.grid, 0:self.grid]
            xs, ys = (c + 0.5) * w / self.grid, (r + 0.5) * h / self.grid
            maps = []
            for peaks in self.peaks.values():
                g = sum(np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * s ** 2))
                        for x, y, s in peaks)
                maps.append(upsample_to_image(minmax_normalize(torch.tensor(g)), (h, w),
                                              (0.0, 0.0, float(w), float(h))).numpy())
            names = list(self.peaks)
            answers.append(VlmAnswer(question, ", ".join(names),
                                     tuple(ObjectName(n, (i, i + 1)) for i, n in enumerate(names)),
                                     np.stack(maps).astype(np.float32), (self.grid, self.grid)))
        return answers

    def generate_text(self, prompt, vlm_cfg) -> str:
        return ""


def _cfg(**values):
    base = {"device": "cpu", "vlm.question": Q, "prompts.refinement_rounds": 0,
            "ensemble.tiles": False, "ensemble.num_questions": 1,
            "ensemble.question_source": "config", "ensemble.questions": ["Which things?"]}
    base.update({k.replace("__", "."): v for k, v in values.items()})
    return from_flat(base)


def _mar(scene, vlm, cfg) -> float:
    result = Pipeline(cfg, vlm, OracleSegmenter(union_of_positives=True)).run(scene.image)
    return scene_recall(scene, result).mAR


def _bolt_scene():
    """A 6 x 6 px bolt whose attention peak lies 0.375 cell right of and above a patch
    centre (12 x 12 grid of 16 px cells): the peak pixel misses it; and a large crate."""
    scene = make_scene(192, 192, [("bolt", (91, 95, 97, 101)), ("crate", (120, 16, 184, 80))])
    vlm = PeakedVlm({"bolt": [(94.0, 98.0, 16.0)], "crate": [(152.0, 48.0, 24.0)]}, grid=12)
    return scene, vlm


def _truck_scene():
    """A truck of two parts in different colours (cab 40 px and box 60 px wide, touching;
    one ground-truth box over both) whose attention has a peak on each part."""
    h, w = 160, 240
    image = np.empty((h, w, 3), np.uint8)
    image[:] = BACKGROUND
    image[50:110, 40:80] = (200, 30, 30)
    image[50:110, 80:140] = (30, 200, 30)
    mask = np.zeros((h, w), bool)
    mask[50:110, 40:140] = True
    scene = Scene(image, (SceneObject("truck", mask, (40, 50, 140, 110)),))
    vlm = PeakedVlm({"truck": [(60.0, 80.0, 18.0), (110.0, 80.0, 18.0)]}, grid=16)
    return scene, vlm


@pytest.fixture
def street():
    """test_pipeline's street scene with coarse planted maps (no option needed)."""
    return make_scene(257, 321, [
        ("cone", (20, 30, 84, 94)), ("cone", (180, 140, 244, 204)), ("car", (120, 20, 200, 80)),
        ("rock", (280, 220, 302, 242)), ("deer", (30, 180, 90, 230))])


@pytest.mark.parametrize("method", ["quadratic", "gaussian"])
def test_subpixel_peak_adds_recall_where_the_peak_pixel_misses(method):
    scene, vlm = _bolt_scene()
    plain = _mar(scene, vlm, _cfg())
    refined = _mar(scene, vlm, _cfg(prompts__subpixel_peak=method))
    assert plain == pytest.approx(1 / 2)                 # the crate only
    assert refined == pytest.approx(2 / 2)


def test_positive_points_add_recall_on_a_two_part_object():
    scene, vlm = _truck_scene()
    plain = _mar(scene, vlm, _cfg())
    two = _mar(scene, vlm, _cfg(prompts__positive_points=2))
    # One point finds the 60 px box part: IoU 0.6 with the truck, recalled at 0.5-0.6 only.
    assert plain == pytest.approx(3 / 10)
    assert two == pytest.approx(1.0)


STACKS = {"prompt": {}, "all stages": {"prompts__refinement_rounds": 2, "ensemble__tiles": True,
                                       "ensemble__num_questions": 2}}


@pytest.mark.parametrize("stack", list(STACKS))
@pytest.mark.parametrize("option", [{"prompts__subpixel_peak": "quadratic"},
                                    {"prompts__subpixel_peak": "gaussian"},
                                    {"prompts__positive_points": 3}])
def test_options_leave_recall_unchanged_where_not_needed(street, stack, option):
    def run(**extra):
        vlm = PlantedVlm(street, hidden_unless={"deer": {"Which things?"}})
        return _mar(street, vlm, _cfg(**STACKS[stack], **extra))

    assert run(**option) == pytest.approx(run())
