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

With prefix sharing (``AttentionRecorder.shared_prefix`` set for a ``generate`` call) both
run the attention over each image's prefix keys, held once, plus the rows' own keys
(``prefix_attention.py``) and record the own positions only.

The recorder is attached to the language model's attention modules only for the duration
of ``capturing(...)``; nothing global changes except the one-time registration of the two
function names with transformers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from vlsam_ros.core.vlm.prefix_attention import SharedPrefixKV, shared_prefix_attention

CAPTURE_IMPLEMENTATION = "vlsam_capture"
REFERENCE_IMPLEMENTATION = "vlsam_reference"

# (layer_idx, query (B, H, q, d), key (B, KV, k, d)) -> (query, key). Applied before the
# attention is computed and recorded; tests use it to plant known attention.
QKHook = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

_RECORDER_ATTR = "_vlsam_recorder"


@dataclass
class PrefixCapture:
    """The capture of one prompt prefix prefilled once (batch 1) and shared by several
    batch rows (prefix sharing: every prompt of one image starts with the same tokens).

    ``queries[l]``: (H, L, d); ``keys[l]``: (KV, L, d); ``probs[l]``: (H, L, L) float32
    (reference mode only; empty in fast mode), positions 0..L-1 of every sharing row.
    ``users``: rows that still reference it; the recorder frees it when the last one is
    released. Held once, however many rows share it.
    """

    queries: list[torch.Tensor]
    keys: list[torch.Tensor]
    probs: list[torch.Tensor]
    users: int = 0

    def __len__(self) -> int:
        t = self.queries[0] if self.queries else self.probs[0]
        return int(t.shape[1])

    def nbytes(self) -> int:
        return sum(_nbytes(t) for t in (*self.queries, *self.keys, *self.probs))


@dataclass
class RowCapture:
    """What the attention method needs of ONE batch row, cut out of the batched capture.

    Positions are those of the row's unpadded sequence (0 = first prompt token; padding is
    never kept). With ``prefix`` (prefix sharing) positions 0..L-1 are the shared prefix's
    and the tensors below hold positions L.. only; without it they hold every position.

    ``queries[l]``: (H, T_own, d) query rows of layer l in sequence order.
    ``keys[l]``: (KV, T_own, d) keys of layer l.
    ``probs[l]``: list of (H, q_t, k_t) float32 probabilities per forward call, rows in
    sequence order, columns = positions 0..k_t-1 (reference mode only; empty in fast mode).
    ``scaling[l]``: the softmax scale layer l used.
    Every own tensor is this row's own storage (no view into the batch), so dropping the
    object frees the row's capture; the prefix is shared, never copied per row.
    """

    queries: list[torch.Tensor]
    keys: list[torch.Tensor]
    probs: list[list[torch.Tensor]]
    scaling: list[float]
    prefix: PrefixCapture | None = None
    joined_bytes: int = 0   # transient prefix + own copies made by AttentionRecorder.sequence

    def nbytes(self) -> int:
        """Bytes of the row's own tensors (the shared prefix is not counted)."""
        return (sum(_nbytes(t) for t in self.queries) + sum(_nbytes(t) for t in self.keys)
                + sum(_nbytes(t) for chunks in self.probs for t in chunks))

    def sequence(self, n: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer (H, n, d) queries and (KV, n, d) keys of positions [0, n): views of the
        row's tensors, or (with a shared prefix) the prefix and the row's own rows joined,
        a transient copy that lives while this row's maps are made."""
        if self.prefix is None:
            return [q[:, :n] for q in self.queries], [k[:, :n] for k in self.keys]
        p = self.prefix
        return ([torch.cat([pq, q], dim=1)[:, :n] for pq, q in zip(p.queries, self.queries)],
                [torch.cat([pk, k], dim=1)[:, :n] for pk, k in zip(p.keys, self.keys)])

    def full_probs(self, layer: int, n: int) -> torch.Tensor:
        """(H, n, n) float32 probabilities of ``layer`` over positions [0, n), stitched from
        the prefix block (if shared) and the row's per-call chunks (each (H, q_t, k_t))."""
        chunks = ([self.prefix.probs[layer]] if self.prefix is not None else []) \
            + list(self.probs[layer])
        total = sum(c.shape[1] for c in chunks)
        full = torch.zeros((chunks[0].shape[0], total, total), dtype=torch.float32)
        row = 0
        for c in chunks:
            q, k = c.shape[1], c.shape[2]
            full[:, row:row + q, :k] = c.float().cpu()
            row += q
        return full[:, :n, :n]


def _nbytes(t: torch.Tensor) -> int:
    """Bytes of the storage ``t`` keeps alive (a view counts its whole base tensor)."""
    return t.untyped_storage().nbytes()


@dataclass
class AttentionRecorder:
    """What one ``generate`` call left behind, per language-model layer (with prefix
    sharing, each batch-1 prefix prefill before it is moved out by ``take_prefix`` first).

    ``queries[l]``: list of (B, H, q_t, d) tensors, one per forward call, in order.
    ``keys[l]``: the last (B, KV, k, d) key tensor seen (all positions so far).
    ``probs[l]``: list of (B, H, q_t, k_t) float32 probabilities (reference mode only).
    ``scaling[l]``: the softmax scale the layer used.

    Memory accounting: ``held_bytes`` is what the recorder (and, after ``split_rows``, the
    rows it handed out and not yet released) references right now; ``peak_bytes`` its
    maximum over the recorder's life. Keys are counted although they are the KV cache's
    own tensors, because the recorder keeps them alive after ``generate``.
    """

    mode: str  # 'fast' | 'reference'
    qk_hook: QKHook | None = None
    queries: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    probs: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    scaling: dict[int, float] = field(default_factory=dict)
    held_bytes: int = 0
    peak_bytes: int = 0
    # Set while a prefix-sharing ``generate`` runs: the image prefixes' keys and values (one
    # copy per image); the attention then runs over prefix + own keys (prefix_attention.py)
    # and the recorded keys are the rows' own positions only.
    shared_prefix: SharedPrefixKV | None = None
    # Layout position of the recorded keys' first column: 0, or (prefix sharing) the
    # shared layout's prefix width W, the prefix's keys being held apart.
    key_origin: int = 0

    def num_layers(self) -> int:
        return len(self.scaling)

    def layer_queries(self, layer: int) -> torch.Tensor:
        """(B, H, T, d): every recorded query row of ``layer`` in sequence order."""
        return torch.cat(self.queries[layer], dim=2)

    def _account(self, delta: int) -> None:
        self.held_bytes += delta
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)

    def record_query(self, layer: int, query: torch.Tensor) -> None:
        self.queries.setdefault(layer, []).append(query)
        self._account(_nbytes(query))

    def record_key(self, layer: int, key: torch.Tensor) -> None:
        old = self.keys.get(layer)
        self.keys[layer] = key
        # The new key tensor exists before the cache drops the old one: count both first.
        self._account(_nbytes(key))
        if old is not None:
            self._account(-_nbytes(old))

    def record_probs(self, layer: int, probs: torch.Tensor) -> None:
        self.probs.setdefault(layer, []).append(probs)
        self._account(_nbytes(probs))

    def take_prefix(self) -> PrefixCapture:
        """Moves what one batch-1 prefill left (one forward call per layer) into a
        ``PrefixCapture`` and empties the recorder for the next call; the bytes stay
        accounted until the prefix's last user is released."""
        layers = sorted(self.scaling)
        queries, keys, probs = [], [], []
        for l in layers:
            q_chunks = self.queries.pop(l, [])
            p_chunks = self.probs.pop(l, [])
            key = self.keys.pop(l, None)
            if len(q_chunks) > 1 or len(p_chunks) > 1:
                raise RuntimeError("take_prefix expects the capture of exactly one forward call")
            for chunk, out in ((q_chunks, queries), (p_chunks, probs)):
                if chunk:
                    if chunk[0].shape[0] != 1:
                        raise RuntimeError("take_prefix expects a batch-1 prefill")
                    out.append(chunk[0][0])
            if key is not None:
                keys.append(key[0])
        return PrefixCapture(queries, keys, probs)

    def split_rows(self, first_own: Sequence[int], origin: int = 0,
                   prefixes: Sequence[PrefixCapture | None] | None = None
                   ) -> list[RowCapture]:
        """Cuts the batched capture into one ``RowCapture`` per batch row and drops the
        batched tensors, layer by layer, so the whole capture is copied once in total (never
        once per row) and the peak stays at about one batch plus one layer. The recorder is
        empty afterwards; call ``release(row)`` when a row's maps are made.

        Positions below are those of the batched (padded) layout the recorded calls ran on.
        ``origin``: the layout position of the first recorded query (0, or the length of
        the cache the calls continued from). ``first_own[b]``: row b's first position that
        is its own (not padding, not the shared prefix); from there to the end every
        position of the row is valid (left padding, or padding between a shared prefix and
        the row's suffix). ``prefixes[b]``: row b's shared prefix, occupying the layout
        positions ``[origin - len(prefix), origin)``, or None (then positions before
        ``first_own[b]`` are padding). The recorded keys start at layout position
        ``self.key_origin``. Rows keep only their own positions.
        """
        batch = len(first_own)
        prefixes = list(prefixes) if prefixes is not None else [None] * batch
        layers = sorted(self.scaling)
        rows = [RowCapture([], [], [], [self.scaling[l] for l in layers], prefix=pre)
                for pre in prefixes]
        for pre in prefixes:
            if pre is not None:
                pre.users += 1
        # Probability columns each row keeps: its prefix block, then its own positions.
        columns = [torch.arange(origin - len(pre), origin) if pre is not None
                   else torch.zeros(0, dtype=torch.long) for pre in prefixes]
        for l in layers:
            chunks = self.queries.pop(l, [])
            key = self.keys.pop(l, None)
            prob_chunks = self.probs.pop(l, [])
            for b, row in enumerate(rows):
                start = first_own[b]
                if chunks:
                    own, pos = [], origin
                    for c in chunks:                                 # (B, H, q_t, d)
                        r0 = max(0, start - pos)
                        if r0 < c.shape[2]:
                            own.append(c[b, :, r0:])
                        pos += c.shape[2]
                    q = torch.cat(own, dim=1)                        # (H, T_own, d), a copy
                    row.queries.append(q)
                    self._account(_nbytes(q))
                if key is not None:
                    k = key[b, :, start - self.key_origin:].clone()  # (KV, T_own, d)
                    row.keys.append(k)
                    self._account(_nbytes(k))
                if prob_chunks:
                    p, pos = [], origin
                    for c in prob_chunks:                            # (B, H, q_t, k_t)
                        r0 = max(0, start - pos)
                        if r0 < c.shape[2]:
                            cols = torch.cat([columns[b],
                                              torch.arange(start, c.shape[3])]).to(c.device)
                            p.append(c[b, :, r0:].index_select(-1, cols))  # a copy
                        pos += c.shape[2]
                    row.probs.append(p)
                    self._account(sum(_nbytes(t) for t in p))
            self._account(-sum(_nbytes(c) for c in chunks)
                          - (_nbytes(key) if key is not None else 0)
                          - sum(_nbytes(c) for c in prob_chunks))
            del chunks, key, prob_chunks
        return rows

    def sequence(self, row: RowCapture, n: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``row.sequence(n)``, accounting the transient copy that joins a shared prefix to
        the row's own positions (held until ``release(row)``)."""
        queries, keys = row.sequence(n)
        if row.prefix is not None:
            joined = sum(_nbytes(t) for t in (*queries, *keys))
            row.joined_bytes += joined
            self._account(joined)
        return queries, keys

    def release(self, row: RowCapture) -> None:
        """Accounts for a row whose tensors the caller is about to drop; frees the row's
        shared prefix with its last user."""
        self._account(-row.nbytes() - row.joined_bytes)
        row.joined_bytes = 0
        row.queries.clear()
        row.keys.clear()
        row.probs.clear()
        pre, row.prefix = row.prefix, None
        if pre is not None:
            pre.users -= 1
            if pre.users == 0:
                self._account(-pre.nbytes())
                pre.queries.clear()
                pre.keys.clear()
                pre.probs.clear()


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, KV, n, d) -> (B, KV * groups, n, d), query head h using key head h // groups."""
    if groups == 1:
        return x
    b, kv, n, d = x.shape
    return x[:, :, None].expand(b, kv, groups, n, d).reshape(b, kv * groups, n, d)


def _prepare(module, query, key):
    """The recorder of ``module`` and the query / key after its ``qk_hook``, plus (prefix
    sharing with a hook) the hooked prefix keys per group, else None. The hook always sees
    every position's key: with a shared prefix, the keys in the shared layout."""
    rec: AttentionRecorder | None = getattr(module, _RECORDER_ATTR, None)
    prefix_keys = None
    if rec is not None and rec.qk_hook is not None:
        shared = rec.shared_prefix
        if shared is None:
            query, key = rec.qk_hook(module.layer_idx, query, key)
        else:
            query, joined = rec.qk_hook(module.layer_idx, query,
                                        shared.joined_keys(module.layer_idx, key))
            key, prefix_keys = shared.split_keys(joined)
    return rec, query, key, prefix_keys


def capture_attention_forward(module, query, key, value, attention_mask, scaling=None,
                              dropout=0.0, **kwargs):
    """SDPA attention that records queries and keys (``vlsam_capture``)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rec, query, key, prefix_keys = _prepare(module, query, key)
    if rec is not None:
        layer = module.layer_idx
        rec.record_query(layer, query.detach())
        rec.record_key(layer, key.detach())
        rec.scaling[layer] = float(scaling if scaling is not None else query.shape[-1] ** -0.5)
        if rec.shared_prefix is not None:
            out, _ = shared_prefix_attention(query, key, value, attention_mask,
                                             rec.scaling[layer], rec.shared_prefix, layer,
                                             prefix_keys=prefix_keys)
            return out, None
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                  dropout=dropout, **kwargs)


def reference_attention_forward(module, query, key, value, attention_mask, scaling=None,
                                dropout=0.0, **kwargs):
    """Eager attention ``softmax(q k^T * scale + mask) v`` recording the probabilities
    (``vlsam_reference``). ``attention_mask`` is the additive float mask of eager mode."""
    rec, query, key, prefix_keys = _prepare(module, query, key)
    scale = float(scaling if scaling is not None else query.shape[-1] ** -0.5)
    if rec is not None and rec.shared_prefix is not None:
        out, probs = shared_prefix_attention(query, key, value, attention_mask, scale,
                                             rec.shared_prefix, module.layer_idx,
                                             want_probs=True, prefix_keys=prefix_keys)
        rec.record_probs(module.layer_idx, probs)
        rec.scaling[module.layer_idx] = scale
        return out, None
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
        rec.record_probs(layer, probs.detach())
        rec.scaling[layer] = scale
    return out, probs


def register_attention_pair(fast_name: str, fast_forward, reference_name: str,
                            reference_forward) -> None:
    """Registers two attention functions with transformers: ``fast_forward`` under
    ``fast_name`` with sdpa's mask builder (boolean masks), ``reference_forward`` under
    ``reference_name`` with eager's (additive float masks). Idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

    AttentionInterface.register(fast_name, fast_forward)
    AttentionInterface.register(reference_name, reference_forward)
    AttentionMaskInterface.register(fast_name, sdpa_mask)
    AttentionMaskInterface.register(reference_name, eager_mask)


def register_attention_functions() -> None:
    """Registers the capture functions (and their mask builders) with transformers."""
    register_attention_pair(CAPTURE_IMPLEMENTATION, capture_attention_forward,
                            REFERENCE_IMPLEMENTATION, reference_attention_forward)


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
