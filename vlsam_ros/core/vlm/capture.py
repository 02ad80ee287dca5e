"""Capture of what the attention method needs while a VLM generates.

Two registered transformers attention functions (``AttentionInterface``) replace the
language model's attention during ``generate``:

``vlsam_capture`` (attention.capture = 'fast')
    records each layer's post-RoPE queries (every forward call: prefill, then one row per
    decoding step) and the newest keys (the KV cache already holds them), then runs the
    regular SDPA kernel. Extra memory: layers x tokens x heads x head_dim for the queries.
``vlsam_reference`` (attention.capture = 'reference')
    computes eager attention and records the full probabilities of every layer and head
    (layers x heads x tokens^2), as ``output_attentions`` would. Slow; used to prove the fast
    path right.

The recorder is attached to the language model's attention modules only for the duration
of ``capturing(...)``; nothing global changes except the one-time registration of the two
function names with transformers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

CAPTURE_IMPLEMENTATION = "vlsam_capture"
REFERENCE_IMPLEMENTATION = "vlsam_reference"

# (layer_idx, query (B, H, q, d), key (B, KV, k, d)) -> (query, key). Applied before the
# attention is computed and recorded; tests use it to plant known attention.
QKHook = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

_RECORDER_ATTR = "_vlsam_recorder"


@dataclass
class AttentionRecorder:
    """What one ``generate`` call left behind, per language-model layer.

    ``queries[l]``: list of (B, H, q_t, d) tensors, one per forward call, in order.
    ``keys[l]``: the last (B, KV, k, d) key tensor seen (all positions so far).
    ``probs[l]``: list of (B, H, q_t, k_t) float32 probabilities (reference mode only).
    ``scaling[l]``: the softmax scale the layer used.
    """

    mode: str  # 'fast' | 'reference'
    qk_hook: QKHook | None = None
    queries: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    probs: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    scaling: dict[int, float] = field(default_factory=dict)

    def num_layers(self) -> int:
        return len(self.scaling)

    def layer_queries(self, layer: int) -> torch.Tensor:
        """(B, H, T, d): every recorded query row of ``layer`` in sequence order."""
        return torch.cat(self.queries[layer], dim=2)


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, KV, n, d) -> (B, KV * groups, n, d), query head h using key head h // groups."""
    if groups == 1:
        return x
    b, kv, n, d = x.shape
    return x[:, :, None].expand(b, kv, groups, n, d).reshape(b, kv * groups, n, d)


def _prepare(module, query, key):
    rec: AttentionRecorder | None = getattr(module, _RECORDER_ATTR, None)
    if rec is not None and rec.qk_hook is not None:
        query, key = rec.qk_hook(module.layer_idx, query, key)
    return rec, query, key


def capture_attention_forward(module, query, key, value, attention_mask, scaling=None,
                              dropout=0.0, **kwargs):
    """SDPA attention that records queries and keys (``vlsam_capture``)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rec, query, key = _prepare(module, query, key)
    if rec is not None:
        layer = module.layer_idx
        rec.queries.setdefault(layer, []).append(query.detach())
        rec.keys[layer] = key.detach()
        rec.scaling[layer] = float(scaling if scaling is not None else query.shape[-1] ** -0.5)
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                  dropout=dropout, **kwargs)


def reference_attention_forward(module, query, key, value, attention_mask, scaling=None,
                                dropout=0.0, **kwargs):
    """Eager attention ``softmax(q k^T * scale + mask) v`` recording the probabilities
    (``vlsam_reference``). ``attention_mask`` is the additive float mask of eager mode."""
    rec, query, key = _prepare(module, query, key)
    scale = float(scaling if scaling is not None else query.shape[-1] ** -0.5)
    groups = query.shape[1] // key.shape[1]
    k = _repeat_kv(key, groups)
    v = _repeat_kv(value, groups)
    logits = torch.matmul(query.float(), k.float().transpose(2, 3)) * scale
    if attention_mask is not None:
        logits = logits + attention_mask[..., : k.shape[-2]].float()
    probs = torch.softmax(logits, dim=-1)
    out = torch.matmul(probs.to(v.dtype), v).transpose(1, 2).contiguous()
    if rec is not None:
        layer = module.layer_idx
        rec.probs.setdefault(layer, []).append(probs.detach())
        rec.scaling[layer] = scale
    return out, probs


def register_attention_functions() -> None:
    """Registers both functions (and their mask builders) with transformers. Idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

    AttentionInterface.register(CAPTURE_IMPLEMENTATION, capture_attention_forward)
    AttentionInterface.register(REFERENCE_IMPLEMENTATION, reference_attention_forward)
    AttentionMaskInterface.register(CAPTURE_IMPLEMENTATION, sdpa_mask)
    AttentionMaskInterface.register(REFERENCE_IMPLEMENTATION, eager_mask)


def attention_modules(language_model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention modules of a decoder (those with ``layer_idx`` and ``q_proj``)."""
    return [m for m in language_model.modules()
            if hasattr(m, "layer_idx") and hasattr(m, "q_proj")]


@contextlib.contextmanager
def capturing(language_model: torch.nn.Module, mode: str,
              qk_hook: QKHook | None = None) -> Iterator[AttentionRecorder]:
    """Switches ``language_model`` to the capturing attention for the ``with`` body.

    language_model: the decoder (a PreTrainedModel whose config is the text config).
    mode: 'fast' or 'reference'. Yields the AttentionRecorder that fills up meanwhile.
    The previous attention implementation is restored afterwards.
    """
    if mode not in ("fast", "reference"):
        raise ValueError(f"capture mode must be 'fast' or 'reference', got {mode!r}")
    register_attention_functions()
    modules = attention_modules(language_model)
    if not modules:
        raise ValueError(f"{type(language_model).__name__} has no attention modules to capture")
    rec = AttentionRecorder(mode=mode, qk_hook=qk_hook)
    config = language_model.config
    previous = config._attn_implementation
    config._attn_implementation_internal = (CAPTURE_IMPLEMENTATION if mode == "fast"
                                            else REFERENCE_IMPLEMENTATION)
    for m in modules:
        setattr(m, _RECORDER_ATTR, rec)
    try:
        yield rec
    finally:
        config._attn_implementation_internal = previous
        for m in modules:
            if hasattr(m, _RECORDER_ATTR):
                delattr(m, _RECORDER_ATTR)
