"""The SAM / MobileSAM adapter with real architectures and seeded random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlsam_ros.core.config import SamConfig, from_flat
from vlsam_ros.core.errors import DeviceUnavailableError, ModelNotFoundError
from vlsam_ros.core.segmenter import load_segmenter
from vlsam_ros.core.segmenter.sam_adapter import SAM_VARIANTS, build_sam_model
from vlsam_ros.testing.tiny_segmenters import save_tiny_sam


def _cfg(checkpoint, sam_type="vit_t", **extra):
    return from_flat({"device": "cpu", "sam.type": sam_type, "sam.checkpoint": str(checkpoint),
                      **extra})


@pytest.fixture(scope="module")
def vit_t_checkpoint(tmp_path_factory):
    return save_tiny_sam("vit_t", tmp_path_factory.mktemp("sam") / "sam_vit_t.pt", seed=0)


@pytest.fixture(scope="module")
def segmenter(vit_t_checkpoint):
    return load_segmenter(_cfg(vit_t_checkpoint))


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    img[20:60, 30:90] = (250, 30, 30)
    return img


@pytest.fixture(scope="module")
def embedding(segmenter, image):
    return segmenter.embed(image)


def _prompts(k, seed=0):
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, 90, (k, 2, 2)).astype(np.float32)
    labels = np.tile(np.array([1, 0]), (k, 1))
    labels[::3, 1] = -1                                     # padding points are ignored
    return points, labels


def test_segment_shapes_and_dtypes(segmenter, embedding, image):
    points, labels = _prompts(4)
    out = segmenter.segment(embedding, points, labels, sam_cfg=SamConfig())
    assert out.masks.shape == (4, *image.shape[:2]) and out.masks.dtype == bool
    assert out.iou_predictions.shape == (4,) and out.iou_predictions.dtype == np.float32
    assert out.low_res_logits.shape == (4, 1, 256, 256)
    assert out.low_res_logits.dtype == np.float32
    again = segmenter.segment(embedding, points, labels, out.low_res_logits,
                              sam_cfg=SamConfig())
    assert again.masks.shape == out.masks.shape


@pytest.mark.parametrize("decoder", ["factored", "stock"])
@pytest.mark.parametrize("with_logits,multimask", [(False, True), (True, False)])
def test_batched_decoder_call_equals_one_call_per_object(segmenter, embedding, with_logits,
                                                         multimask, decoder):
    sam_cfg = SamConfig(multimask=multimask, decoder=decoder, decoder_chunk=3)
    k = 4
    points, labels = _prompts(k, seed=1)
    logits = None
    if with_logits:
        logits = np.random.default_rng(2).normal(0, 3, (k, 1, 256, 256)).astype(np.float32)
    batched = segmenter.segment(embedding, points, labels, logits, sam_cfg=sam_cfg)
    for i in range(k):
        single = segmenter.segment(embedding, points[i:i + 1], labels[i:i + 1],
                                   None if logits is None else logits[i:i + 1],
                                   sam_cfg=sam_cfg)
        differing = int((single.masks[0] != batched.masks[i]).sum())
        assert differing <= 0.0005 * single.masks[0].size, f"object {i}: {differing} px"
        np.testing.assert_allclose(single.iou_predictions[0], batched.iou_predictions[i],
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(single.low_res_logits[0], batched.low_res_logits[i],
                                   rtol=1e-3, atol=1e-3)


def test_saved_checkpoint_reproduces_in_memory_model(segmenter):
    """Loading through load_segmenter gives exactly the weights (so the outputs) of the
    seeded in-memory build, buffers included."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        in_memory = build_sam_model("vit_t")
    expected = in_memory.state_dict()
    loaded = segmenter.model.state_dict()
    assert expected.keys() == loaded.keys()
    assert all(torch.equal(expected[k], loaded[k]) for k in expected)


def test_tiny_sam_is_seeded(vit_t_checkpoint, tmp_path):
    other = save_tiny_sam("vit_t", tmp_path / "seed1.pt", seed=1)
    a = torch.load(vit_t_checkpoint, weights_only=True)
    b = torch.load(other, weights_only=True)
    assert a.keys() == b.keys()
    key = "mask_decoder.iou_prediction_head.layers.0.weight"
    assert not torch.equal(a[key], b[key])
    state = torch.random.get_rng_state()
    same = save_tiny_sam("vit_t", tmp_path / "seed0.pt", seed=0)
    assert torch.equal(torch.random.get_rng_state(), state), "global RNG must be untouched"
    c = torch.load(same, weights_only=True)
    assert all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("sam_type", sorted(SAM_VARIANTS))
def test_missing_checkpoint_says_what_to_download(tmp_path, sam_type):
    with pytest.raises(ModelNotFoundError) as err:
        load_segmenter(_cfg(tmp_path / "nope.pth", sam_type))
    message = str(err.value)
    assert SAM_VARIANTS[sam_type].checkpoint_file in message
    assert "sam.checkpoint" in message and "nope.pth" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_cuda_is_an_error(vit_t_checkpoint):
    cfg = from_flat({"device": "cuda", "sam.checkpoint": str(vit_t_checkpoint)})
    with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
        load_segmenter(cfg)


def test_bad_prompt_shapes_raise(segmenter, embedding):
    with pytest.raises(ValueError, match="points must be"):
        segmenter.segment(embedding, np.zeros((2, 2), np.float32), np.ones((2,), int),
                          sam_cfg=SamConfig())
    with pytest.raises(ValueError, match=r"boxes must be \(2, 4\); got \(1, 4\)"):
        segmenter.segment(embedding, np.zeros((2, 1, 2), np.float32), np.ones((2, 1), int),
                          boxes=np.zeros((1, 4), np.float32), sam_cfg=SamConfig())


@pytest.mark.slow
def test_vit_b_end_to_end(tmp_path, image):
    ckpt = save_tiny_sam("vit_b", tmp_path / "sam_vit_b.pt", seed=0)
    seg = load_segmenter(_cfg(ckpt, "vit_b"))
    points, labels = _prompts(2)
    out = seg.segment(seg.embed(image), points, labels, sam_cfg=SamConfig())
    assert out.masks.shape == (2, *image.shape[:2])
