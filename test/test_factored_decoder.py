"""The factored mask decoder computes what the packages' stock MaskDecoder computes."""

from __future__ import annotations

import copy
import functools
import types

import numpy as np
import pytest
import torch

from vlsam_ros.core.config import SamConfig
from vlsam_ros.core.segmenter.factored_decoder import build_image_side_cache, decode_best_masks
from vlsam_ros.core.segmenter.sam_adapter import SamSegmenter, build_sam_model, _import_package

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GRID = 64          # SAM's embedding grid side
CHANNELS = 256     # SAM's decoder width


def _redraw(module: torch.nn.Module, weight_std: float) -> None:
    """Re-draws weights from N(0, weight_std), biases from N(0, 0.1) and norm scales from
    N(1, 0.1), so no bias or affine term is zero. With weight_std = 0.2 the decoder's
    attention rows put 0.4-0.9 of their mass on one key on average (checked with forward
    hooks), which exercises the softmaxes far from uniform."""
    for sub in module.modules():
        if isinstance(sub, torch.nn.LayerNorm) or type(sub).__name__ == "LayerNorm2d":
            sub.weight.data.normal_(1.0, 0.1)
            sub.bias.data.normal_(0.0, 0.1)
        elif isinstance(sub, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d,
                              torch.nn.Embedding)):
            sub.weight.data.normal_(0.0, weight_std)
            if getattr(sub, "bias", None) is not None:
                sub.bias.data.normal_(0.0, 0.1)


@functools.lru_cache(maxsize=None)
def _decoder_parts(package: str, seed: int, weight_std: float | None) -> types.SimpleNamespace:
    """A package's own PromptEncoder + MaskDecoder (SAM's standard decoder hyper-parameters)
    with seeded weights, re-drawn by :func:`_redraw` when ``weight_std`` is given. Built once
    per argument set; tests only read it."""
    modeling = _import_package(f"{package}.modeling")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        prompt_encoder = modeling.PromptEncoder(
            embed_dim=CHANNELS, image_embedding_size=(GRID, GRID), input_image_size=(1024, 1024),
            mask_in_chans=16)
        decoder = modeling.MaskDecoder(
            num_multimask_outputs=3, transformer_dim=CHANNELS, iou_head_depth=3,
            iou_head_hidden_dim=256,
            transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=CHANNELS,
                                                   mlp_dim=2048, num_heads=8))
        if weight_std is not None:
            _redraw(decoder, weight_std)
            _redraw(prompt_encoder, weight_std)
    return types.SimpleNamespace(prompt_encoder=prompt_encoder.eval(), mask_decoder=decoder.eval())


def _stock_best(parts, features, sparse, dense, multimask):
    low_res, iou = parts.mask_decoder(image_embeddings=features,
                                      image_pe=parts.prompt_encoder.get_dense_pe(),
                                      sparse_prompt_embeddings=sparse,
                                      dense_prompt_embeddings=dense, multimask_output=multimask)
    rows = torch.arange(iou.shape[0])
    best = iou.argmax(dim=1)
    return low_res[rows, best][:, None], iou[rows, best]


def _prompts(k: int, seed: int, with_masks: bool):
    generator = torch.Generator().manual_seed(seed)
    coords = torch.rand(k, 2, 2, generator=generator) * 1024
    labels = torch.tensor([[1, 0]] * k)
    labels[::3, 1] = -1                                             # padding points
    masks = torch.randn(k, 1, 256, 256, generator=generator) * 3 if with_masks else None
    return coords, labels, masks


def _in_double(parts) -> types.SimpleNamespace:
    """A float64 copy of the decoder, with the prompt encoder's dense positional encoding
    and no-mask embedding (the only prompt-encoder parts the decoders read) in float64."""
    pe = parts.prompt_encoder.get_dense_pe().double()
    prompt_encoder = types.SimpleNamespace(
        get_dense_pe=lambda: pe,
        no_mask_embed=copy.deepcopy(parts.prompt_encoder.no_mask_embed).double())
    return types.SimpleNamespace(prompt_encoder=prompt_encoder,
                                 mask_decoder=copy.deepcopy(parts.mask_decoder).double())


def _max_error(outputs, reference) -> float:
    return max(float((a.double() - b).abs().max()) for a, b in zip(outputs, reference))


_CASES = [pytest.param(package, std, with_masks, True, id=f"{package}-{name}-{prompt}")
          for package in ("segment_anything", "mobile_sam")
          for std, name in ((None, "default-init"), (0.2, "peaked"))
          for with_masks, prompt in ((False, "points"), (True, "points+mask"))]
_CASES += [pytest.param("mobile_sam", 0.2, with_masks, False,
                        id=f"mobile_sam-peaked-{prompt}-single-mask")
           for with_masks, prompt in ((False, "points"), (True, "points+mask"))]


@pytest.mark.parametrize("package,weight_std,with_masks,multimask", _CASES)
def test_factored_equals_stock_decoder(package, weight_std, with_masks, multimask):
    """In float64 the two agree to 1e-9 of the logit scale (the algebra is exact); in float32
    the factored decoder's rounding error against that float64 reference is of the stock
    decoder's own size (summation order differs, nothing else)."""
    parts = _decoder_parts(package, seed=3, weight_std=weight_std)
    features = torch.randn(1, CHANNELS, GRID, GRID, generator=torch.Generator().manual_seed(4))
    coords, labels, masks = _prompts(3, seed=5, with_masks=with_masks)
    double = _in_double(parts)
    with torch.inference_mode():
        sparse, dense = parts.prompt_encoder(points=(coords, labels), boxes=None, masks=masks)
        stock = _stock_best(parts, features, sparse, dense, multimask)
        reference = _stock_best(double, features.double(), sparse.double(), dense.double(),
                                multimask)
        scale = float(reference[0].abs().max())
        runs = [(double, features.double(), sparse.double(), dense.double(), 2)]
        runs += [(parts, features, sparse, dense, chunk) for chunk in (2, 64)]  # 2: partial
        for model, feats, sp, dn, chunk in runs:
            cache = None if with_masks else build_image_side_cache(model, feats)
            factored = decode_best_masks(model, feats, sp, dn if with_masks else None,
                                         multimask, cache, chunk)
            assert factored[0].shape == stock[0].shape
            assert factored[1].shape == stock[1].shape
            if feats.dtype == torch.float64:
                tol = 1e-9 * scale
            else:                                # float32: no worse than the stock rounding
                tol = 3 * _max_error(stock, reference) + 1e-6 * scale
            assert _max_error(factored, reference) <= tol, (chunk, feats.dtype)
    if weight_std is not None:                  # large logits: the re-drawn weights took effect
        assert scale > 10


def test_no_prompts_gives_empty_outputs():
    parts = _decoder_parts("mobile_sam", seed=0, weight_std=None)
    features = torch.zeros(1, CHANNELS, GRID, GRID)
    with torch.inference_mode():
        logits, iou = decode_best_masks(parts, features, torch.zeros(0, 3, CHANNELS), None,
                                        True, build_image_side_cache(parts, features), 2)
    assert logits.shape == (0, 1, 256, 256) and iou.shape == (0,)


def test_missing_cache_without_mask_prompts_is_an_error():
    parts = _decoder_parts("mobile_sam", seed=0, weight_std=None)
    with pytest.raises(ValueError, match="image-side cache"):
        decode_best_masks(parts, torch.zeros(1, CHANNELS, GRID, GRID),
                          torch.zeros(1, 3, CHANNELS), None, True, None, 2)


@pytest.fixture(scope="module")
def segmenter():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_sam_model("vit_t")
    return SamSegmenter(model)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (121, 203, 3), dtype=np.uint8)
    img[30:80, 40:150] = (20, 220, 40)
    return img


def _point_prompts(k, seed=0):
    rng = np.random.default_rng(seed)
    points = np.stack([rng.uniform(0, 203, (k, 2)), rng.uniform(0, 121, (k, 2))], axis=-1)
    return points.astype(np.float32), np.tile(np.array([1, 0]), (k, 1))


@pytest.mark.parametrize("with_logits", [False, True])
def test_segmenter_factored_equals_stock(segmenter, image, with_logits):
    """Through SamSegmenter.segment (prompt encoding, postprocessing to full resolution):
    the same masks except where the stock logit is within rounding of the threshold."""
    embedding = segmenter.embed(image)
    points, labels = _point_prompts(6, seed=2)
    logits = None
    if with_logits:
        logits = np.random.default_rng(3).normal(0, 3, (6, 1, 256, 256)).astype(np.float32)
    stock = segmenter.segment(embedding, points, labels, logits,
                              sam_cfg=SamConfig(decoder="stock"))
    factored = segmenter.segment(embedding, points, labels, logits,
                                 sam_cfg=SamConfig(decoder="factored", decoder_chunk=4))
    np.testing.assert_allclose(factored.low_res_logits, stock.low_res_logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(factored.iou_predictions, stock.iou_predictions, rtol=0,
                               atol=1e-6)
    full = segmenter.model.postprocess_masks(torch.from_numpy(stock.low_res_logits),
                                             embedding.input_size, embedding.original_size)
    near_threshold = (full[:, 0].abs() < 1e-4).numpy()
    assert np.array_equal(factored.masks[~near_threshold], stock.masks[~near_threshold])
    assert ("image_side" in embedding.decoder_cache) == (not with_logits)


def test_image_side_cache_is_built_once_and_reused(segmenter, image):
    embedding = segmenter.embed(image)
    assert embedding.decoder_cache == {}
    points, labels = _point_prompts(3, seed=4)
    first = segmenter.segment(embedding, points, labels, sam_cfg=SamConfig())
    cache = embedding.decoder_cache["image_side"]
    again = segmenter.segment(embedding, points[1:], labels[1:], sam_cfg=SamConfig())
    assert embedding.decoder_cache["image_side"] is cache
    np.testing.assert_allclose(again.low_res_logits, first.low_res_logits[1:], rtol=0, atol=1e-5)
    other = segmenter.embed(image[::-1].copy())
    segmenter.segment(other, points, labels, sam_cfg=SamConfig())
    assert other.decoder_cache["image_side"] is not cache


@pytest.mark.parametrize("decoder", ["factored", "stock"])
def test_segment_without_prompts(segmenter, image, decoder):
    out = segmenter.segment(segmenter.embed(image), np.zeros((0, 2, 2), np.float32),
                            np.zeros((0, 2), int), sam_cfg=SamConfig(decoder=decoder))
    assert out.masks.shape == (0, *image.shape[:2])
    assert out.iou_predictions.shape == (0,) and out.low_res_logits.shape == (0, 1, 256, 256)
