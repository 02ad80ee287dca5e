"""SAM 2.1 / EdgeTAM / SAM-HQ through transformers (segmenter/hf_sam.py), random tiny
weights saved and loaded like real checkpoints.

For each backend the adapter's masks, logits and predicted IoUs equal the transformers
model's own forward on the processor's inputs for the same points and boxes (batched and
one prompt at a time, with and without a mask prompt), and save -> load through the
production loader gives identical outputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlsam_ros.core.config import SamConfig, from_flat
from vlsam_ros.core.errors import ModelLoadError, ModelNotFoundError
from vlsam_ros.core.segmenter import load_segmenter
from vlsam_ros.core.segmenter.hf_sam import HF_SAM_FAMILIES, HfSamSegmenter
from vlsam_ros.testing.tiny_hf_segmenters import (TINY_SEGMENTER_BACKENDS,
                                                  build_tiny_segmenter, save_tiny_segmenter,
                                                  tiny_processor)

IMAGE_SHAPE = (90, 131)


def _cfg(folder, backend, **extra):
    return from_flat({"device": "cpu", "sam.backend": backend, "sam.model": str(folder),
                      **extra})


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (*IMAGE_SHAPE, 3), dtype=np.uint8)
    img[20:60, 30:90] = (250, 30, 30)
    return img


@pytest.fixture(scope="module", params=TINY_SEGMENTER_BACKENDS)
def loaded(request, tmp_path_factory, image):
    """(backend, folder, segmenter loaded by load_segmenter, embedding of ``image``)."""
    backend = request.param
    folder = save_tiny_segmenter(backend, tmp_path_factory.mktemp(backend), seed=0)
    segmenter = load_segmenter(_cfg(folder, backend))
    return backend, folder, segmenter, segmenter.embed(image)


def _prompts(k, seed=0):
    """K prompts: a positive and a negative point (every third with the negative as
    padding), a box around the positive point."""
    rng = np.random.default_rng(seed)
    height, width = IMAGE_SHAPE
    points = np.stack([rng.uniform(0, width, (k, 2)), rng.uniform(0, height, (k, 2))],
                      axis=-1).astype(np.float32)
    labels = np.tile(np.array([1, 0]), (k, 1))
    labels[::3, 1] = -1
    x, y = points[:, 0, 0], points[:, 0, 1]
    boxes = np.stack([np.maximum(x - 20, 0), np.maximum(y - 15, 0),
                      np.minimum(x + 20, width), np.minimum(y + 15, height)],
                     axis=-1).astype(np.float32)
    return points, labels, boxes


def _reference(segmenter, image, points, labels, boxes, sam_cfg, mask_logits=None):
    """The transformers model's own forward on the processor's inputs for ONE image:
    points given to the processor in its index frame (pixel x - 0.5 / scale, see hf_sam),
    boxes as corners. Returns (low-res logits (K, 1, S, S), IoU (K,), full logits (K, H, W))
    of the highest-IoU candidate per prompt. With ``mask_logits`` every prompt is run alone
    (the model takes one mask prompt per image)."""
    processor, model = segmenter.processor, segmenter.model
    height, width = image.shape[:2]
    if mask_logits is not None:
        rows = [_one_with_mask(segmenter, image, points[i], labels[i],
                               None if boxes is None else boxes[i], mask_logits[i], sam_cfg)
                for i in range(len(points))]
        return tuple(torch.cat(parts) for parts in zip(*rows))
    scale = _scale(processor, segmenter, height, width)
    index_points = points - 0.5 / np.array(scale, np.float32)
    inputs = processor(images=image, input_points=[index_points.tolist()],
                       input_labels=[labels.tolist()],
                       input_boxes=None if boxes is None else [boxes.tolist()],
                       return_tensors="pt")
    extra = {"hq_token_only": sam_cfg.hq_token_only} if segmenter.family.intermediate else {}
    with torch.inference_mode():
        out = model(**{k: v for k, v in inputs.items()
                       if k not in ("original_sizes", "reshaped_input_sizes")},
                    multimask_output=sam_cfg.multimask, **extra)
    return _best_and_full(segmenter, inputs, out.pred_masks[0], out.iou_scores[0])


def _one_with_mask(segmenter, image, points, labels, box, mask, sam_cfg):
    processor, model = segmenter.processor, segmenter.model
    height, width = image.shape[:2]
    scale = _scale(processor, segmenter, height, width)
    index_points = points - 0.5 / np.array(scale, np.float32)
    inputs = processor(images=image, input_points=[[index_points.tolist()]],
                       input_labels=[[labels.tolist()]],
                       input_boxes=None if box is None else [[box.tolist()]],
                       return_tensors="pt")
    extra = {"hq_token_only": sam_cfg.hq_token_only} if segmenter.family.intermediate else {}
    with torch.inference_mode():
        out = model(**{k: v for k, v in inputs.items()
                       if k not in ("original_sizes", "reshaped_input_sizes")},
                    input_masks=torch.from_numpy(mask[None]), multimask_output=sam_cfg.multimask,
                    **extra)
    return _best_and_full(segmenter, inputs, out.pred_masks[0], out.iou_scores[0])


def _scale(processor, segmenter, height, width):
    """(s_x, s_y) of the processor: its reshaped input size over the image size."""
    sizes = processor(images=np.zeros((height, width, 3), np.uint8), return_tensors="pt")
    if "reshaped_input_sizes" in sizes:
        in_h, in_w = (int(v) for v in sizes["reshaped_input_sizes"][0])
    else:
        in_h, in_w = sizes["pixel_values"].shape[-2:]
    return in_w / width, in_h / height


def _best_and_full(segmenter, inputs, masks, iou):
    best = iou.argmax(dim=1)
    rows = torch.arange(len(iou))
    low, best_iou = masks[rows, best][:, None], iou[rows, best]
    args = [low[None], inputs["original_sizes"]]
    if "reshaped_input_sizes" in inputs:
        args.append(inputs["reshaped_input_sizes"])
    full = segmenter.processor.post_process_masks(*args, binarize=False)[0][:, 0]
    return low, best_iou, full


def _assert_matches(batch, reference, sam_cfg, rows=slice(None)):
    low, iou, full = (t[rows] for t in reference)
    np.testing.assert_allclose(batch.low_res_logits, low.numpy(), rtol=0, atol=2e-5)
    np.testing.assert_allclose(batch.iou_predictions, iou.numpy(), rtol=0, atol=2e-6)
    expected = (full > sam_cfg.mask_threshold).numpy()
    near = (full - sam_cfg.mask_threshold).abs().numpy() < 1e-4
    assert np.array_equal(batch.masks[~near], expected[~near])
    assert batch.masks.shape == expected.shape and batch.masks.dtype == bool


@pytest.mark.parametrize("multimask,with_boxes", [(True, False), (False, True)])
def test_adapter_equals_the_models_own_forward(loaded, image, multimask, with_boxes):
    backend, _, segmenter, embedding = loaded
    sam_cfg = SamConfig(multimask=multimask, mask_threshold=0.5)
    points, labels, boxes = _prompts(4, seed=1)
    boxes = boxes if with_boxes else None
    reference = _reference(segmenter, image, points, labels, boxes, sam_cfg)
    batched = segmenter.segment(embedding, points, labels, boxes=boxes, sam_cfg=sam_cfg)
    _assert_matches(batched, reference, sam_cfg)
    for i in range(len(points)):                                    # one prompt at a time
        single = segmenter.segment(embedding, points[i:i + 1], labels[i:i + 1],
                                   boxes=None if boxes is None else boxes[i:i + 1],
                                   sam_cfg=sam_cfg)
        _assert_matches(single, reference, sam_cfg, slice(i, i + 1))


def test_mask_prompts_equal_the_models_own_forward(loaded, image):
    """The refinement round: each prompt with its own low-res logits as mask prompt, in
    one batched call, equals the model run on that prompt alone with input_masks."""
    backend, _, segmenter, embedding = loaded
    sam_cfg = SamConfig()
    points, labels, boxes = _prompts(3, seed=2)
    first = segmenter.segment(embedding, points, labels, sam_cfg=sam_cfg)
    side = segmenter.input_side // 4
    assert first.low_res_logits.shape == (3, 1, side, side)
    refined = segmenter.segment(embedding, points, labels, first.low_res_logits, boxes,
                                sam_cfg=sam_cfg)
    reference = _reference(segmenter, image, points, labels, boxes, sam_cfg,
                           mask_logits=first.low_res_logits)
    _assert_matches(refined, reference, sam_cfg)
    assert not np.allclose(refined.low_res_logits, first.low_res_logits)


def test_save_load_gives_identical_outputs(loaded, image):
    """The in-memory seeded build and the folder loaded by load_segmenter: same weights,
    bit-identical outputs."""
    backend, _, segmenter, embedding = loaded
    in_memory = HfSamSegmenter(build_tiny_segmenter(backend, seed=0), tiny_processor(backend),
                               HF_SAM_FAMILIES[backend])
    expected, got = in_memory.model.state_dict(), segmenter.model.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    points, labels, boxes = _prompts(3, seed=3)
    a = in_memory.segment(in_memory.embed(image), points, labels, boxes=boxes,
                          sam_cfg=SamConfig())
    b = segmenter.segment(embedding, points, labels, boxes=boxes, sam_cfg=SamConfig())
    assert np.array_equal(a.masks, b.masks)
    assert np.array_equal(a.low_res_logits, b.low_res_logits)
    assert np.array_equal(a.iou_predictions, b.iou_predictions)


def test_no_prompts_and_bad_shapes(loaded):
    _, _, segmenter, embedding = loaded
    out = segmenter.segment(embedding, np.zeros((0, 2, 2), np.float32), np.zeros((0, 2), int),
                            sam_cfg=SamConfig())
    assert out.masks.shape == (0, *IMAGE_SHAPE) and out.iou_predictions.shape == (0,)
    with pytest.raises(ValueError, match="points must be"):
        segmenter.segment(embedding, np.zeros((2, 2), np.float32), np.ones((2,), int),
                          sam_cfg=SamConfig())
    with pytest.raises(ValueError, match="boxes must be"):
        segmenter.segment(embedding, np.zeros((2, 1, 2), np.float32), np.ones((2, 1), int),
                          boxes=np.zeros((1, 4), np.float32), sam_cfg=SamConfig())


@pytest.mark.parametrize("backend", sorted(HF_SAM_FAMILIES))
def test_missing_folder_says_what_to_download(tmp_path, backend):
    with pytest.raises(ModelNotFoundError) as err:
        load_segmenter(_cfg(tmp_path / "nope", backend))
    message = str(err.value)
    assert HF_SAM_FAMILIES[backend].checkpoints[0] in message
    assert "sam.model" in message and "nope" in message and "huggingface-cli download" in message


def test_folder_of_another_family_is_a_clear_error(loaded):
    backend, folder, _, _ = loaded
    other = "sam_hq" if backend != "sam_hq" else "sam2"
    with pytest.raises(ModelLoadError, match=f"sam.backend: {backend}"):
        load_segmenter(_cfg(folder, other))


def test_mask_prompt_frame_follows_the_processor(loaded, image):
    """A mask turned into a mask prompt in the segmenter's frame lands where the model's own
    logits for that region lie: the square stretch for SAM 2 / EdgeTAM, SAM's padded square
    for SAM-HQ (checked against the processor's own upsampling of those logits)."""
    from vlsam_ros.core.tracking.followers import mask_to_low_res_logits

    backend, _, segmenter, embedding = loaded
    side, square = segmenter.mask_prompt_frame
    assert square == (backend != "sam_hq")
    mask = np.zeros(IMAGE_SHAPE, bool)
    mask[10:50, 20:100] = True
    prompt = mask_to_low_res_logits(mask, 10.0, side, square)
    back = segmenter.upsample(torch.from_numpy(prompt[None]), embedding)[0].numpy() > 0
    assert (back != mask).mean() < 0.03


def test_make_tiny_models_writes_loadable_segmenters(tmp_path):
    from vlsam_ros.testing.make_tiny_models import make_tiny_models
    from vlsam_ros.tools.cli import ToolError

    out = make_tiny_models(tmp_path / "models", families=(), sam_types=(),
                           segmenters=("edgetam",))
    segmenter = load_segmenter(_cfg(out / "edgetam", "edgetam"))
    assert isinstance(segmenter, HfSamSegmenter) and segmenter.family.backend == "edgetam"
    with pytest.raises(ToolError, match="unknown segmenter"):
        make_tiny_models(tmp_path / "other", families=(), sam_types=(), segmenters=("sam4",))
    assert not (tmp_path / "other").exists()
