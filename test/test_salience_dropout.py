"""Salience DropOut (``prompts.dropout_iterations`` / ``dropout_patches``,
core/salience_dropout.py, ``HuggingFaceVlm.attend``).

* the maths on small hand-computed arrays, and the iteration on a stub VLM;
* a tiny real VLM: the teacher-forced re-run reproduces ``describe``'s maps exactly, and a
  dropped cell is black exactly in the processed image's patch of that cell (LLaVA padded to
  a square: the grid box is not the image);
* a planted two-part object (a pole hides its middle): the plain map finds one part, the
  summed map both (map level, and as recall with the oracle segmenter through the pipeline).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from oracle import OracleSegmenter, make_scene, scene_recall
from vlsam_ros.core.config import ConfigError, from_flat
from vlsam_ros.core.pipeline import Pipeline
from vlsam_ros.core.results import ObjectName, VlmAnswer
from vlsam_ros.core.salience_dropout import (black_out, cell_means, complete_maps, normalized_sum,
                                             pixel_cells, select_patches)

# ---------------------------------------------------------------------------------------
# Maths on hand-computed arrays
# ---------------------------------------------------------------------------------------


def test_pixel_cells_whole_image_and_cropped_box():
    cells = pixel_cells((4, 6), (2, 3), None)               # 2 x 2 pixels per cell
    assert cells.tolist() == [[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2],
                              [3, 3, 4, 4, 5, 5], [3, 3, 4, 4, 5, 5]]
    # A centre crop: the grid covers x in [1, 5) only; pixel x has centre x + 0.5.
    crop = pixel_cells((2, 6), (1, 2), (1.0, 0.0, 5.0, 2.0))
    assert crop.tolist() == [[-1, 0, 0, 1, 1, -1], [-1, 0, 0, 1, 1, -1]]


def test_cell_means_by_hand():
    values = np.array([[1.0, 3.0, 5.0, 7.0, 0.0, 0.0]])
    cells = np.array([[-1, 0, 0, 1, 1, 1]])
    np.testing.assert_allclose(cell_means(values, cells, 3), [4.0, 7 / 3, -np.inf])


def test_select_patches_ties_and_exhaustion():
    salience = np.array([0.2, 0.9, 0.5, 0.9, -np.inf])
    first = select_patches(salience, np.zeros(5, bool), 2)
    assert first.tolist() == [False, True, False, True, False]      # tie: lower index first
    second = select_patches(salience, first, 2)
    assert second.tolist() == [True, True, True, True, False]       # never a cell without pixels
    assert select_patches(salience, second, 2).tolist() == second.tolist()


def test_black_out_by_hand():
    image = np.full((2, 4, 3), 200, np.uint8)
    cells = np.array([[0, 0, 1, -1], [0, 0, 1, -1]])
    out = black_out(image, np.array([False, True]), cells)
    assert out[..., 0].tolist() == [[200, 200, 0, 200], [200, 200, 0, 200]]
    assert image.min() == 200, "the input is not modified"


def test_normalized_sum_by_hand():
    a = np.array([[[0.0, 1.0, 0.5]], [[1.0, 1.0, 1.0]]])   # two objects, 1 x 3 maps
    b = np.array([[[1.0, 0.5, 0.0]], [[1.0, 1.0, 1.0]]])
    out = normalized_sum([a, b])                            # sums [1, 1.5, .5] and constant 2
    np.testing.assert_allclose(out, [[[0.5, 1.0, 0.0]], [[0.0, 0.0, 0.0]]])
    assert out.dtype == np.float32


@dataclasses.dataclass
class StubVlm:
    """attend(): each object's map is 1 where the pixel is not black, else 0."""

    calls: list = dataclasses.field(default_factory=list)

    def attend(self, images, questions, answers, vlm_cfg, attn_cfg):
        self.calls.append([im.copy() for im in images])
        return [np.repeat((im.sum(-1) > 0).astype(np.float32)[None], len(a.objects), axis=0)
                for im, a in zip(images, answers)]


def _answer(maps, grid=(1, 2)):
    return VlmAnswer(question="q", text="thing", objects=(ObjectName("thing", (0, 1)),),
                     attention_maps=np.asarray(maps, np.float32), grid_shape=grid)


def test_iterations_by_hand_on_a_stub_vlm():
    """2 x 2 image, 1 x 2 grid (one column per cell), N = 1.
    t=1: U = [1, .5] -> drop cell 0, map = [0 1]; t=2: U = [1, 1.5] -> drop cell 1, map = 0.
    final = minmax([1 .5] + [0 1] + [0 0]) = minmax([1, 1.5]) = [0, 1]."""
    image = np.full((2, 2, 3), 100, np.uint8)
    vlm = StubVlm()
    cfg = from_flat({"device": "cpu"})
    out = complete_maps(vlm, [image], ["q"], [_answer([[[1.0, 0.5], [1.0, 0.5]]])], cfg.vlm,
                        cfg.attention, iterations=5, patches=1)
    assert len(vlm.calls) == 2, "stops once every cell is dropped"
    assert vlm.calls[0][0][..., 0].tolist() == [[0, 100], [0, 100]]
    assert vlm.calls[1][0].max() == 0
    np.testing.assert_allclose(out[0].attention_maps, [[[0.0, 1.0], [0.0, 1.0]]])
    assert out[0].text == "thing" and out[0].objects == (ObjectName("thing", (0, 1)),)


def test_a_cancelled_frame_stops_before_the_next_iteration():
    from vlsam_ros.core import cancellation

    token = cancellation.CancellationToken()
    token.cancel("stop requested")
    cfg = from_flat({"device": "cpu"})
    vlm = StubVlm()
    with cancellation.active(token), \
            pytest.raises(cancellation.FrameCancelled, match="Salience DropOut iteration 1"):
        complete_maps(vlm, [np.full((2, 2, 3), 100, np.uint8)], ["q"],
                      [_answer([[[1.0, 0.5], [1.0, 0.5]]])], cfg.vlm, cfg.attention,
                      iterations=2, patches=1)
    assert vlm.calls == []


def test_off_and_missing_attend():
    answer = _answer([[[1.0, 0.5]]])
    cfg = from_flat({"device": "cpu"})
    assert complete_maps(object(), [np.zeros((1, 2, 3), np.uint8)], ["q"], [answer], cfg.vlm,
                         cfg.attention, iterations=0, patches=1) == [answer]
    with pytest.raises(ConfigError, match="prompts.dropout_iterations=1 needs a VLM"):
        complete_maps(object(), [np.zeros((1, 2, 3), np.uint8)], ["q"], [answer], cfg.vlm,
                      cfg.attention, iterations=1, patches=1)


# ---------------------------------------------------------------------------------------
# A tiny real VLM
# ---------------------------------------------------------------------------------------

QUESTION = "Describe this driving scene."


@pytest.fixture(scope="module")
def llava(one_torch_thread):
    from vlsam_ros.core.vlm import BACKENDS
    from vlsam_ros.testing.tiny_vlm import build_tiny_vlm

    model, processor = build_tiny_vlm("llava", seed=0)
    return BACKENDS["llava"](model, processor)


def _vlm_cfg(**values):
    return from_flat({"device": "cpu", "vlm.dtype": "float32", "vlm.max_new_tokens": 8,
                      **values})


@pytest.mark.parametrize("gradcam", [False, True])
def test_teacher_forced_rerun_reproduces_describe(llava, gradcam):
    """The re-run feeds the generated ids back: same positions, same maps (with GradCAM
    too, whose own teacher-forced pass then also runs inside the re-run)."""
    image = np.random.default_rng(6).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    cfg = _vlm_cfg(**{"attention.gradcam": gradcam})
    answer = llava.describe([image], [QUESTION], cfg.vlm, cfg.attention)[0]
    assert answer.objects and answer.token_ids
    again = llava.attend([image], [QUESTION], [answer], cfg.vlm, cfg.attention)[0]
    np.testing.assert_allclose(again, answer.attention_maps, atol=1e-5)
    with pytest.raises(ValueError, match="size of the image the answer was generated on"):
        llava.attend([image[:40]], [QUESTION], [answer], cfg.vlm, cfg.attention)


def test_dropped_cell_is_black_in_that_patch_of_the_processed_image(llava):
    """60 x 90 image: the whole-frame fit pads LLaVA's input to a 90 x 90 square (15 rows
    above and below) and resizes it to 48 x 48, so the 6 x 6 grid covers the box
    (0, -15, 90, 75): the grid is not the image. Cell (2, 3) blacked out in the original
    must be black in processed patch (2, 3) (8 x 8 pixels; the inner 4 x 4 escape
    resampling blur) and nowhere else beyond two pixels of its border (bicubic resize)."""
    image = np.full((60, 90, 3), 180, np.uint8)
    cfg = _vlm_cfg()
    answer = llava.describe([image], [QUESTION], cfg.vlm, cfg.attention)[0]
    assert answer.grid_shape == (6, 6)
    assert answer.grid_box_xyxy == pytest.approx((0.0, -15.0, 90.0, 75.0))
    cells = pixel_cells(image.shape[:2], answer.grid_shape, answer.grid_box_xyxy)
    dropped = np.zeros(36, bool)
    dropped[2 * 6 + 3] = True
    processor = llava.fitted_processor(cfg.vlm)
    before = processor.image_processor(image, return_tensors="np")["pixel_values"][0]
    after = processor.image_processor(black_out(image, dropped, cells),
                                      return_tensors="np")["pixel_values"][0]
    black = processor.image_processor(np.zeros_like(image), return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(after[:, 18:22, 26:30], black[:, 18:22, 26:30], atol=1e-5)
    changed = np.abs(after - before).max(axis=0) > 1e-5
    rows, cols = np.nonzero(changed)
    assert rows.min() >= 14 and rows.max() <= 25 and cols.min() >= 22 and cols.max() <= 33


def test_complete_maps_on_the_tiny_vlm_and_through_the_pipeline(llava, monkeypatch):
    """k = 1, N = 5 on the real backend equals the equation computed step by step, and the
    pipeline runs that step (one attend batch per iteration) before prompting."""
    image = np.random.default_rng(8).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    cfg = _vlm_cfg(**{"prompts.dropout_iterations": 1, "prompts.dropout_patches": 5})
    answer = llava.describe([image], [QUESTION], cfg.vlm, cfg.attention)[0]
    cells = pixel_cells(image.shape[:2], answer.grid_shape, answer.grid_box_xyxy)
    salience = cell_means(answer.attention_maps.sum(axis=0), cells, 36)
    dropped = select_patches(salience, np.zeros(36, bool), 5)
    blacked = black_out(image, dropped, cells)
    rerun = llava.attend([blacked], [QUESTION], [answer], cfg.vlm, cfg.attention)[0]
    # Random weights barely look at the pixels, but the re-run does see the black-out.
    assert np.abs(rerun - answer.attention_maps).max() > 1e-3
    out = complete_maps(llava, [image], [QUESTION], [answer], cfg.vlm, cfg.attention, 1, 5)[0]
    np.testing.assert_allclose(out.attention_maps,
                               normalized_sum([answer.attention_maps, rerun]), atol=1e-6)
    seen = []
    real_attend = llava.attend
    monkeypatch.setattr(llava, "attend", lambda images, *a: seen.append(images) or
                        real_attend(images, *a))
    pipe_cfg = from_flat({"device": "cpu", "vlm.dtype": "float32", "vlm.max_new_tokens": 8,
                          "vlm.question": QUESTION, "ensemble.num_questions": 1,
                          "prompts.dropout_iterations": 1, "prompts.dropout_patches": 5})
    Pipeline(pipe_cfg, llava, OracleSegmenter()).run(image)
    assert len(seen) == 1 and np.array_equal(seen[0][0], blacked)


# ---------------------------------------------------------------------------------------
# A planted two-part object, map level and recall with the oracle segmenter
# ---------------------------------------------------------------------------------------

Q_MAIN = "list the objects"
GRID = 8


@dataclasses.dataclass
class PartsVlm:
    """VisionLanguageModel double whose attention reacts to what is visible, as a real VLM's
    would: each name's map is the weighted sum of its parts' coarse masks (cell-averaged on a
    GRID x GRID grid), counting only the part pixels that still show the scene's colour
    (blacked-out pixels do not), min-max normalised and bilinearly upsampled.

    parts: name -> [(part index in scene.objects, weight)].
    """

    scene: object
    parts: dict
    attend_batches: list = dataclasses.field(default_factory=list)

    def _maps(self, image):
        h, w = image.shape[:2]
        visible = np.all(image == self.scene.image, axis=-1)
        maps = []
        for parts in self.parts.values():
            cells = sum(weight * cv2.resize((self.scene.objects[i].mask & visible)
                                            .astype(np.float32), (GRID, GRID),
                                            interpolation=cv2.INTER_AREA)
                        for i, weight in parts)
            span = float(cells.max() - cells.min())
            cells = (cells - cells.min()) / span if span > 0 else np.zeros_like(cells)
            maps.append(np.clip(cv2.resize(cells, (w, h), interpolation=cv2.INTER_LINEAR),
                                0.0, 1.0))
        return np.stack(maps).astype(np.float32)

    def describe(self, images, questions, vlm_cfg, attn_cfg):
        return [VlmAnswer(question=q, text=", ".join(self.parts),
                          objects=tuple(ObjectName(n, (i, i + 1))
                                        for i, n in enumerate(self.parts)),
                          attention_maps=self._maps(im), grid_shape=(GRID, GRID))
                for im, q in zip(images, questions)]

    def attend(self, images, questions, answers, vlm_cfg, attn_cfg):
        self.attend_batches.append(len(images))
        return [self._maps(im) for im in images]

    def generate_text(self, prompt, vlm_cfg):
        return ""


def _two_part_bus():
    """128 x 128, 16 px cells. A bus seen as two parts, 3 x 3 cells each, with a pole (one
    cell wide) between them; the VLM attends the front strongly (1.0), the rear weakly
    (0.35, under the 0.5 prompt threshold). Each visible part is annotated."""
    scene = make_scene(128, 128, [("bus front", (16, 32, 64, 80)), ("pole", (64, 16, 80, 112)),
                                  ("bus rear", (80, 32, 128, 80))])
    gt = make_scene(128, 128, [("bus front", (16, 32, 64, 80)), ("bus rear", (80, 32, 128, 80))])
    gt = dataclasses.replace(gt, image=scene.image)
    return scene, gt, {"bus": [(0, 1.0), (2, 0.35)]}


def _separate_objects():
    """Three single-part objects, each fully attended: nothing for DropOut to complete."""
    scene = make_scene(128, 128, [("car", (8, 8, 56, 40)), ("cone", (80, 16, 112, 48)),
                                  ("deer", (32, 72, 96, 120))])
    return scene, scene, {"car": [(0, 1.0)], "cone": [(1, 1.0)], "deer": [(2, 1.0)]}


def _cfg(**values):
    base = {"device": "cpu", "vlm.question": Q_MAIN, "prompts.refinement_rounds": 2,
            "ensemble.tiles": False, "ensemble.num_questions": 1,
            "ensemble.question_source": "config", "prompts.dropout_patches": 9}
    base.update({k.replace("__", "."): v for k, v in values.items()})
    return from_flat(base)


def test_two_part_object_map_level():
    scene, _, parts = _two_part_bus()
    vlm = PartsVlm(scene, parts)
    cfg = _cfg(prompts__dropout_iterations=1)
    plain = vlm.describe([scene.image], [Q_MAIN], cfg.vlm, cfg.attention)
    summed = complete_maps(vlm, [scene.image], [Q_MAIN], plain, cfg.vlm, cfg.attention,
                           cfg.prompts.dropout_iterations, cfg.prompts.dropout_patches)
    front, rear = scene.objects[0].mask, scene.objects[2].mask
    threshold = cfg.prompts.threshold
    before, after = plain[0].attention_maps[0], summed[0].attention_maps[0]
    assert before[front].mean() >= threshold and before[rear].max() < threshold
    assert after[front].mean() >= threshold and after[rear].mean() >= threshold
    assert vlm.attend_batches == [1]


def _recall(scene, gt, parts, cfg):
    vlm = PartsVlm(scene, parts)
    result = Pipeline(cfg, vlm, OracleSegmenter()).run(scene.image)
    return scene_recall(gt, result).mAR, vlm


@pytest.mark.parametrize("build,plain_mar,dropout_mar", [
    (_two_part_bus, 1 / 2, 2 / 2),          # built to need it: the rear part is found
    (_separate_objects, 3 / 3, 3 / 3),      # nothing to complete: recall unchanged
])
def test_dropout_ablation_with_the_oracle_segmenter(build, plain_mar, dropout_mar):
    scene, gt, parts = build()
    off, vlm_off = _recall(scene, gt, parts, _cfg())
    on, vlm_on = _recall(scene, gt, parts, _cfg(prompts__dropout_iterations=1))
    assert (off, on) == pytest.approx((plain_mar, dropout_mar))
    assert vlm_off.attend_batches == [] and vlm_on.attend_batches == [1]
