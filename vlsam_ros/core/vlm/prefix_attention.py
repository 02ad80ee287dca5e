"""Attention over a shared prompt prefix plus each row's own keys (prefix sharing).

With ``vlm.share_image_prefix`` the prompt prefix of each distinct image (image tokens
included) is prefilled once with batch 1 (``prefix_sharing.prefill_prefixes``). Its keys and
values stay ONE copy per image, (1, KV, L_g, d) per layer, for the whole ``generate`` call:
the generation cache of the batch holds only each row's own tokens (question suffix and
generated tokens). Every decoder layer then attends, for row b of image group g, to

    [ prefix keys of g (L_g, all visible: the prefix precedes every own token) | own keys ]

with one softmax over both parts. The prefix part is one matmul per group against the
single prefix copy (queries of all rows of the group folded into the matrix rows), so the
prefix is read once per group and step instead of once per row, and never copied per row.

Numerics: logits and softmax in float32 (as eager attention), probabilities cast to the
value dtype for the weighted sum; the result equals attention over the concatenated keys
(the unshared layout) up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SharedPrefixKV:
    """The prefix keys / values of every image group, held once, and which rows use them.

    ``keys[l][g]`` / ``values[l][g]``: (KV, L_g, d) of layer l, group g (post-RoPE keys, as
    the KV cache stores them). ``rows[g]``: (n_g,) int64 batch rows of group g.
    ``width``: W, the longest prefix; recorded probabilities are laid out with group g's
    prefix at columns [W - L_g, W) and the own keys from column W (the shared layout of
    ``prefix_sharing``).
    """

    keys: list[list[torch.Tensor]]
    values: list[list[torch.Tensor]]
    rows: list[torch.Tensor]
    width: int

    def joined_keys(self, layer: int, own: torch.Tensor) -> torch.Tensor:
        """(B, KV, W + k, d): each row's prefix keys at [W - L_g, W) (zeros before) and its
        own keys ``own`` (B, KV, k, d) from W: the keys in the shared layout, a per-row copy
        made only for a ``qk_hook`` (tests), which expects every position's key."""
        b, kv, k, d = own.shape
        out = own.new_zeros((b, kv, self.width + k, d))
        out[:, :, self.width:] = own
        for g, rows in enumerate(self.rows):
            pk = self.keys[layer][g]
            out[rows.to(own.device), :, self.width - pk.shape[1]:self.width] = pk
        return out

    def split_keys(self, joined: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Inverse of ``joined_keys``: (own keys (B, KV, k, d), per group the prefix keys
        (KV, L_g, d) of the group's first row)."""
        prefix = [joined[int(rows[0]), :, self.width - self.keys[0][g].shape[1]:self.width]
                  for g, rows in enumerate(self.rows)]
        return joined[:, :, self.width:], prefix


def _own_mask(attention_mask: torch.Tensor | None, q: int, k: int,
              device: torch.device) -> torch.Tensor:
    """(B or 1, 1, q, k) additive float32 mask of the own keys: transformers' bool mask
    (True = attend) or additive float mask, or (None) causal with the queries being the
    last q of the k positions."""
    if attention_mask is None:
        rows = torch.arange(k - q, k, device=device)[:, None]
        cols = torch.arange(k, device=device)[None, :]
        allowed = (cols <= rows)[None, None]
    else:
        mask = attention_mask[..., :k]
        if mask.dtype != torch.bool:
            return mask.float()
        allowed = mask
    zero = torch.zeros((), dtype=torch.float32, device=device)
    return torch.where(allowed, zero, torch.tensor(float("-inf"), device=device))


def shared_prefix_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float,
                            prefix: SharedPrefixKV, layer: int, want_probs: bool = False,
                            prefix_keys: list[torch.Tensor] | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``softmax([q K_prefix^T | q K_own^T] * scaling + mask) [V_prefix ; V_own]``.

    query: (B, H, q, d); key / value: (B, KV, k, d), the rows' own positions (the
    generation cache); attention_mask: the own keys' mask as transformers builds it for the
    layer ((B, 1, q, >=k) bool or additive float), or None (causal, no padding).
    ``prefix_keys``: per group (KV, L_g, d) keys to use instead of ``prefix.keys[layer]``
    (a ``qk_hook`` changed them). Returns the attention output (B, q, H, d) (the layout
    attention functions return) and, with ``want_probs``, the float32 probabilities
    (B, H, q, W + k) in the shared layout (prefix of row b's group at [W - L_g, W), own keys
    from W, zeros elsewhere).
    """
    b, h, q, d = query.shape
    kv, k = key.shape[1], key.shape[2]
    group = h // kv
    own_mask = _own_mask(attention_mask, q, k, query.device)
    out = torch.empty((b, h, q, d), dtype=value.dtype, device=value.device)
    probs_out = (torch.zeros((b, h, q, prefix.width + k), dtype=torch.float32,
                             device=query.device) if want_probs else None)
    for g, rows in enumerate(prefix.rows):
        rows = rows.to(query.device)
        pk = prefix.keys[layer][g] if prefix_keys is None else prefix_keys[g]  # (KV, L, d)
        pv = prefix.values[layer][g]
        n, length = int(rows.numel()), int(pk.shape[1])
        qg = query.index_select(0, rows).float()                          # (n, H, q, d)
        # Prefix part: every row of the group against the one prefix copy, query heads of
        # one key head folded into the matrix rows: (KV, n*G*q, d) x (KV, d, L).
        q_fold = qg.reshape(n, kv, group * q, d).transpose(0, 1).reshape(kv, n * group * q, d)
        pre = torch.bmm(q_fold, pk.float().transpose(1, 2)) * scaling     # (KV, n*G*q, L)
        pre = pre.reshape(kv, n, group * q, length).transpose(0, 1)       # (n, KV, G*q, L)
        # Own part: each row against its own keys.
        kg = key.index_select(0, rows).float()                            # (n, KV, k, d)
        own = torch.matmul(qg.reshape(n, kv, group * q, d), kg.transpose(2, 3)) * scaling
        own = own.reshape(n, h, q, k)
        mask_g = own_mask if own_mask.shape[0] == 1 else own_mask.index_select(0, rows)
        own = own + mask_g
        logits = torch.cat([pre.reshape(n, h, q, length), own], dim=-1)   # (n, H, q, L + k)
        probs = torch.softmax(logits, dim=-1)
        p_pre = probs[..., :length].to(value.dtype).reshape(n, kv, group * q, length)
        p_own = probs[..., length:].to(value.dtype)
        # Prefix values: one copy, rows folded again.
        p_fold = p_pre.transpose(0, 1).reshape(kv, n * group * q, length)
        o_pre = torch.bmm(p_fold, pv).reshape(kv, n, group * q, d).transpose(0, 1)
        vg = value.index_select(0, rows)                                  # (n, KV, k, d)
        o_own = torch.matmul(p_own.reshape(n, kv, group * q, k), vg)      # (n, KV, G*q, d)
        out[rows] = (o_pre + o_own).reshape(n, h, q, d)
        if probs_out is not None:
            w = prefix.width
            probs_out[rows, :, :, w - length:w] = probs[..., :length]
            probs_out[rows, :, :, w:] = probs[..., length:]
    return out.transpose(1, 2).contiguous(), probs_out
