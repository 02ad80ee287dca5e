"""Cancellation safe points inside the VLM's long forward passes.

Generation stops between generated tokens (``stopping.py``). Two passes run long without
such a boundary: the vision encoder over the image(s), and the prefill over the prompt
(with ``vlm.share_image_prefix`` the shared image prefix is one forward pass over hundreds
to thousands of tokens per view). :func:`add_forward_safe_points` puts a safe point
(``cancellation.check``) before every layer of both, so a cancelled frame stops within one
layer. Single-token generation steps are left to the stopping criterion, which counts the
tokens for the log.
"""

from __future__ import annotations

from typing import Any

import torch

from vlsam_ros.core import cancellation

LAYER_STACK_NAMES = ("layers", "blocks")
"""Names of the ModuleLists that hold a transformer's layers (transformers' decoders and
CLIP/SigLIP encoders: ``layers``; Qwen2-VL's vision tower: ``blocks``)."""


def layer_stacks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """Every layer of every ModuleList named in LAYER_STACK_NAMES below ``module``, in
    module order, each once."""
    layers: dict[int, torch.nn.Module] = {}
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in LAYER_STACK_NAMES:
            for layer in sub:
                layers.setdefault(id(layer), layer)
    return list(layers.values())


def add_forward_safe_points(model: torch.nn.Module, language_model: torch.nn.Module) -> int:
    """Registers the safe points on ``model``: before each decoder layer of
    ``language_model`` while it processes more than one token (a prefill), and before each
    layer of the rest of ``model`` (the vision encoder). Returns how many layers got one."""
    decoder_layers = layer_stacks(language_model)
    decoder_ids = {id(layer) for layer in decoder_layers}
    image_layers = [layer for layer in layer_stacks(model) if id(layer) not in decoder_ids]
    for index, layer in enumerate(decoder_layers):
        layer.register_forward_pre_hook(_prefill_safe_point(index, len(decoder_layers)),
                                        with_kwargs=True)
    for layer in image_layers:
        layer.register_forward_pre_hook(_image_safe_point)
    return len(decoder_layers) + len(image_layers)


def _prefill_safe_point(index: int, count: int):
    where = f"during the VLM's prompt prefill (before decoder layer {index + 1} of {count})"

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if isinstance(hidden, torch.Tensor) and hidden.dim() >= 2 and hidden.shape[-2] > 1:
            cancellation.check(where)

    return hook


def _image_safe_point(module: torch.nn.Module, args: tuple) -> None:
    cancellation.check("during the VLM's image encoding")
