"""A cancelled frame stops at its next safe point (core/cancellation.py), with the tiny real
models: between generated tokens, between the VLM's layers in a prefill or the image
encoding, inside the SAM image encoder (also in its worker thread), and between SAM decoder
calls. An uncancelled token changes nothing."""

from __future__ import annotations

import re

import numpy as np
import pytest

from vlsam_ros.core import cancellation
from vlsam_ros.core.cancellation import CancellationToken, FrameCancelled
from oracle import PlantedVlm, make_scene
from vlsam_ros.core.pipeline import Pipeline, build_pipeline
from vlsam_ros.core.segmenter.sam_adapter import _encoder_blocks

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def street_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, (97, 131, 3), dtype=np.uint8)
    image[40:80, 20:70] = (200, 30, 30)
    image[10:30, 90:120] = (30, 200, 200)
    return image


@pytest.fixture(scope="module")
def pipeline(tiny_config):
    return build_pipeline(tiny_config(vlm__max_new_tokens=48, prompts__refinement_rounds=2,
                                      sam__overlap_encoder=False))


def test_token_keeps_its_first_reason_and_checks_only_inside_its_context():
    token = CancellationToken()
    cancellation.check("outside")  # no current token: never raises
    with cancellation.active(token):
        cancellation.check("not yet cancelled")
        token.cancel("SIGINT received")
        token.cancel("shutdown")
        with pytest.raises(FrameCancelled, match="SIGINT received: frame dropped here"):
            cancellation.check("here")
    cancellation.check("outside again")
    assert token.reason == "SIGINT received" and token.cancelled_at is not None


def test_an_uncancelled_token_changes_nothing(pipeline, street_image):
    plain = pipeline.run(street_image)
    with_token = pipeline.run(street_image, cancel=CancellationToken())
    assert plain.description == with_token.description
    assert [(d.label, d.box_xyxy, d.score) for d in plain.detections] == [
        (d.label, d.box_xyxy, d.score) for d in with_token.detections]


def test_cancel_during_generation_stops_at_the_next_token(pipeline, street_image):
    token = CancellationToken()
    steps = []

    def count_steps(module, args, kwargs):
        steps.append(1)
        if len(steps) == 3:  # the third decoder call: the stop request comes now
            token.cancel("test stop")

    handle = pipeline.vlm.language_model().register_forward_pre_hook(count_steps,
                                                                     with_kwargs=True)
    try:
        with pytest.raises(FrameCancelled) as info:
            pipeline.run(street_image, cancel=token)
    finally:
        handle.remove()
    # The decoder ran 3 times (a shared-prefix prefill may be one of them, outside
    # generate); the stop came with the 3rd and not one decoder step followed it, of the 48
    # tokens allowed.
    assert len(steps) == 3
    assert re.fullmatch(r"during VLM generation after [1-3] new token\(s\)", info.value.where)


def _cancel_run(pipeline, image, module, stop_on_call: int, watched):
    """Runs a frame whose stop is requested in ``module``'s ``stop_on_call``-th forward
    pre-hook; counts the forwards of each module in ``watched`` that completed after it.
    Returns (FrameCancelled, {watched index: forwards completed after the stop})."""
    token = CancellationToken()
    calls, after = [], {i: 0 for i in range(len(watched))}

    def stop(mod, args):
        calls.append(1)
        if len(calls) == stop_on_call:
            token.cancel("test stop")

    def count(i):
        def hook(mod, args, output):
            after[i] += token.cancelled
        return hook

    handles = [module.register_forward_pre_hook(stop)]
    handles += [m.register_forward_hook(count(i)) for i, m in enumerate(watched)]
    try:
        with pytest.raises(FrameCancelled) as info:
            pipeline.run(image, cancel=token)
    finally:
        for handle in handles:
            handle.remove()
    assert len(calls) == stop_on_call
    return info.value, after


def test_cancel_during_the_shared_prefix_prefill_stops_before_the_next_decoder_layer(
        pipeline, street_image):
    """The image prefix's prefill (vlm.share_image_prefix, on by default) is one forward
    pass over every image token: it stops before its first decoder layer."""
    from vlsam_ros.core.vlm.forward_safe_points import layer_stacks

    assert pipeline.cfg.vlm.share_image_prefix
    decoder = pipeline.vlm.language_model()
    layers = layer_stacks(decoder)
    exc, after = _cancel_run(pipeline, street_image, decoder, 1, layers)
    assert exc.where == f"during the VLM's prompt prefill (before decoder layer 1 of " \
                        f"{len(layers)})"
    assert sum(after.values()) == 0, after


def test_cancel_during_the_vlm_image_encoding_stops_before_the_next_layer(pipeline,
                                                                        street_image):
    from vlsam_ros.core.vlm.forward_safe_points import layer_stacks

    decoder = pipeline.vlm.language_model()
    vision_layers = [layer for layer in layer_stacks(pipeline.vlm.model)
                     if layer not in set(layer_stacks(decoder))]
    assert len(vision_layers) > 1
    exc, after = _cancel_run(pipeline, street_image, vision_layers[0], 1,
                             vision_layers + [decoder])
    assert exc.where == "during the VLM's image encoding"
    # The first layer, already past its safe point, completed; nothing after it ran.
    assert after == {0: 1, **{i: 0 for i in range(1, len(vision_layers) + 1)}}, after


@pytest.fixture(scope="module")
def scene():
    return make_scene(97, 131, [("cone", (20, 40, 70, 80)), ("car", (90, 10, 120, 30))])


def _planted_pipeline(pipeline, scene, **cfg_values):
    """The tiny real SAM with a VLM double that always names the scene's objects (the
    random tiny VLM may name nothing), so that the SAM stages surely run."""
    from vlsam_ros.core.config import from_flat

    cfg = from_flat({"device": "cpu", "prompts.refinement_rounds": 2, **cfg_values})
    return Pipeline(cfg, PlantedVlm(scene), pipeline.segmenter)


def test_cancel_between_sam_decoder_calls(pipeline, scene, monkeypatch):
    pipe = _planted_pipeline(pipeline, scene)
    token = CancellationToken()
    calls = []
    real_segment = pipe.segmenter.segment

    def segment_then_stop(*args, **kwargs):
        calls.append(1)
        token.cancel("test stop")
        return real_segment(*args, **kwargs)

    monkeypatch.setattr(pipe.segmenter, "segment", segment_then_stop)
    with pytest.raises(FrameCancelled) as info:
        pipe.run(scene.image, cancel=token)
    assert info.value.where == "between SAM decoder calls (1 of this frame done)"
    assert len(calls) == 1  # refinement_rounds=2 makes at least 2 calls (round 0, cascade)


@pytest.mark.parametrize("overlap", [False, True])
def test_cancel_inside_the_sam_image_encoder(pipeline, scene, overlap):
    """The encoder stops between its blocks, also in the worker thread of overlap_encoder
    (which runs in a copy of the frame's context)."""
    pipe = _planted_pipeline(pipeline, scene, **{"sam.overlap_encoder": overlap})
    token = CancellationToken()
    blocks_run = []
    encoder_blocks = _encoder_blocks(pipe.segmenter.model.image_encoder)  # the safe points

    def first_block_then_stop(module, args):
        blocks_run.append(module)
        token.cancel("test stop")

    completed = []
    handles = [encoder_blocks[0].register_forward_pre_hook(first_block_then_stop)]
    handles += [block.register_forward_hook(lambda m, a, o, i=i: completed.append(i))
                for i, block in enumerate(encoder_blocks)]
    try:
        with pytest.raises(FrameCancelled) as info:
            pipe.run(scene.image, cancel=token)
    finally:
        for handle in handles:
            handle.remove()
    assert len(blocks_run) == 1 and len(encoder_blocks) > 1
    # The encoder never got past its first block: the next one was refused at its safe
    # point (sequential: the encoder's own FrameCancelled; overlapped: the encoder thread
    # stopped there, and the frame at its next safe point).
    assert completed == [0]
    if not overlap:
        assert info.value.where == "in the SAM image encoder"
