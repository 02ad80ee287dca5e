"""VL-SAM attention generation (method.md section 2) as pure tensor functions.

Notation (method.md): ``S[l][h]`` is the N x N post-softmax, causally masked attention of
layer l, head h; ``S[l][h][i, j]`` is query token i attending to key token j. Token indices
are 0-based positions of one unpadded sequence (prompt tokens, then generated tokens).

Two implementations of the same equations live here:

* the *reference* functions take full attention tensors (``(H, N, N)`` per layer) and build
  the full flow matrix; simple and slow, used by tests and by ``attention.capture =
  'reference'``;
* the *fast* functions (``blockwise_head_weights``, ``propagate_rows``, ``object_flow_rows``)
  recompute attention probabilities from cached queries and keys in blocks of query rows and
  only ever propagate the object rows, so their extra memory is O(layers x N x head_dim)
  for the cache plus O(heads x block x N) transient.

Every function is side-effect free; inputs are never modified.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------
# Reference equations on full attention tensors
# ----------------------------------------------------------------------------------------

def meanmax_head_weights(probs: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """MeanMax head importance of one layer.

    ``W[h] = (1/N) * sum_i max_{j in K_i} S[h][i, j]`` where K_i is every key (``key_mask``
    None) or only the keys j with ``key_mask[j]`` True (e.g. image tokens). A query row with
    no allowed key (all masked, or causally unseen) contributes 0 to the mean.

    probs: (H, N, N) float attention probabilities (rows sum to 1 over unmasked keys).
    key_mask: optional (N,) bool.
    Returns (H,) float.
    """
    if probs.ndim != 3 or probs.shape[1] != probs.shape[2]:
        raise ValueError(f"probs must be (H, N, N), got {tuple(probs.shape)}")
    if key_mask is None:
        return probs.amax(dim=-1).mean(dim=-1)
    if key_mask.shape != probs.shape[-1:]:
        raise ValueError(f"key_mask must be ({probs.shape[-1]},), got {tuple(key_mask.shape)}")
    masked = probs.masked_fill(~key_mask.to(torch.bool), 0.0)
    return masked.amax(dim=-1).mean(dim=-1)


def aggregate_heads(probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Head-weighted layer attention ``S'[i, j] = (1/H) * sum_h W[h] * S[h][i, j]``.

    probs: (H, N, N); weights: (H,) (MeanMax weights, or ones for a plain mean).
    Returns (N, N).
    """
    if weights.shape != probs.shape[:1]:
        raise ValueError(f"weights must be ({probs.shape[0]},), got {tuple(weights.shape)}")
    return torch.einsum("h,hij->ij", weights.to(probs.dtype), probs) / probs.shape[0]


def causal_column_counts(n: int) -> torch.Tensor:
    """Unmasked entries per column of an N x N causal mask: ``L0[j] = N - j`` (0-based j).

    Returns (N,) float64.
    """
    if n < 1:
        raise ValueError(f"sequence length must be positive, got {n}")
    return n - torch.arange(n, dtype=torch.float64)


def column_regularization(column_counts: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Collapse regularisation factor per column: ``c[j] = 1 - (L0[j] - 1) / N``.

    With a causal mask (``L0 = N - j``) this is ``c[j] = (j + 1) / N``: late columns keep
    their weight, the earliest columns (attended by every row) are damped.

    column_counts: (N,) unmasked entries per column; n: sequence length (default
    ``len(column_counts)``). Returns (N,) float64.
    """
    n = column_counts.shape[0] if n is None else n
    return 1.0 - (column_counts.to(torch.float64) - 1.0) / n


def regularize_columns(attention: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``S'_reg[i, j] = S'[i, j] * c[j]``. attention: (..., N, N); factors: (N,)."""
    return attention * factors.to(attention.dtype)


def residual_attention(attention: torch.Tensor, row_normalize: bool) -> torch.Tensor:
    """One rollout factor ``A = I + S'`` (N x N), optionally row-normalised:
    ``A[i, :] = (I + S')[i, :] / sum_j (I + S')[i, j]``."""
    n = attention.shape[-1]
    a = attention + torch.eye(n, dtype=attention.dtype, device=attention.device)
    if row_normalize:
        a = a / a.sum(dim=-1, keepdim=True)
    return a


def attention_flow(layers: Sequence[torch.Tensor], row_normalize: bool) -> torch.Tensor:
    """Attention flow (rollout) over all layers.

    ``F[1] = A[1]`` and ``F[l] = A[l] @ F[l-1]`` with ``A[l] = I + S'[l]`` (row-normalised
    when ``row_normalize``). layers: L tensors (N, N), first layer first (already
    head-aggregated and regularised). Returns F[L], (N, N).
    """
    if not layers:
        raise ValueError("attention_flow needs at least one layer")
    flow = residual_attention(layers[0], row_normalize)
    for s in layers[1:]:
        flow = residual_attention(s, row_normalize) @ flow
    return flow


def object_rows(matrix: torch.Tensor, token_rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """Average of the rows of each object's tokens (method.md: multi-token names average).

    matrix: (N, N) flow (or last-layer attention); token_rows: per object, the row indices.
    Returns (M, N) with M = len(token_rows).
    """
    return torch.stack([matrix[list(rows)].mean(dim=0) for rows in token_rows]) if token_rows \
        else matrix.new_zeros((0, matrix.shape[-1]))


def row_selector(token_rows: Sequence[Sequence[int]], n: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
                 ) -> torch.Tensor:
    """(M, N) matrix E with ``E[m] = mean of one-hot rows of object m`` so that
    ``E @ M == object_rows(M, token_rows)`` for any (N, N) matrix M."""
    sel = torch.zeros((len(token_rows), n), dtype=dtype, device=device)
    for m, rows in enumerate(token_rows):
        if not rows:
            raise ValueError(f"object {m} has no token rows")
        for r in rows:
            if not 0 <= r < n:
                raise ValueError(f"token row {r} outside sequence of length {n}")
            sel[m, r] += 1.0 / len(rows)
    return sel


def reference_object_rows(layer_probs: Sequence[torch.Tensor], token_rows: Sequence[Sequence[int]],
                          *, head_weighting: str, image_key_mask: torch.Tensor | None,
                          meanmax_image_keys_only: bool, regularize: bool, row_normalize: bool,
                          use_flow: bool, top: torch.Tensor | None = None) -> torch.Tensor:
    """The whole method on full attention: rows of F (or of the last layer) per object.

    layer_probs: L tensors (H, N, N), first layer first. ``top``: optional (M, N) rows
    ``E @ A[L]`` formed by the caller (GradCAM, ``gradcam.gradcam_top_rows``); the last
    layer is then not aggregated here and ``top @ F[L-1]`` (or ``top`` without flow) is
    returned. Returns (M, N) float64.
    """
    n = layer_probs[0].shape[-1]
    factors = column_regularization(causal_column_counts(n)) if regularize else None
    if top is not None:
        if not use_flow or len(layer_probs) == 1:
            return top.to(torch.float64)
        below = reference_object_rows(layer_probs[:-1], [[i] for i in range(n)],
                                      head_weighting=head_weighting,
                                      image_key_mask=image_key_mask,
                                      meanmax_image_keys_only=meanmax_image_keys_only,
                                      regularize=regularize, row_normalize=row_normalize,
                                      use_flow=True)                          # F[L-1]
        return top.to(torch.float64) @ below
    aggregated = []
    chosen = layer_probs if use_flow else layer_probs[-1:]
    for probs in chosen:
        probs = probs.to(torch.float64)
        if head_weighting == "meanmax":
            w = meanmax_head_weights(probs, image_key_mask if meanmax_image_keys_only else None)
        else:
            w = torch.ones(probs.shape[0], dtype=probs.dtype)
        s = aggregate_heads(probs, w)
        aggregated.append(regularize_columns(s, factors) if factors is not None else s)
    matrix = attention_flow(aggregated, row_normalize) if use_flow else aggregated[-1]
    return object_rows(matrix, token_rows)


# ----------------------------------------------------------------------------------------
# Fast path: probabilities recomputed from cached queries and keys, in query blocks
# ----------------------------------------------------------------------------------------

def _block_logits(q: torch.Tensor, k: torch.Tensor, r0: int, r1: int,
                  scaling: float) -> torch.Tensor:
    """Causally masked logits of query rows [r0, r1) against keys [0, r1).

    q: (H, N, d); k: (KV, N, d) with H a multiple of KV (grouped-query attention: query head
    h uses key head h // (H / KV)). Returns (H, r1 - r0, r1) float32 with -inf above the
    causal diagonal.
    """
    h, _, d = q.shape
    kv = k.shape[0]
    group = h // kv
    qb = q[:, r0:r1].float().reshape(kv, group * (r1 - r0), d)          # (KV, G*B, d)
    logits = torch.bmm(qb, k[:, :r1].float().transpose(1, 2)) * scaling   # (KV, G*B, r1)
    logits = logits.reshape(h, r1 - r0, r1)
    rows = torch.arange(r0, r1, device=q.device)[:, None]
    cols = torch.arange(r1, device=q.device)[None, :]
    return logits.masked_fill_(cols > rows, float("-inf"))


def blockwise_head_weights(q: torch.Tensor, k: torch.Tensor, scaling: float, query_block: int,
                           key_mask: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """MeanMax weights ``W[h] = (1/N) sum_i max_{j in K_i} S[h][i, j]`` and the row
    log-sum-exp, with ``S[h] = softmax_causal(q[h] k[h]^T * scaling)`` recomputed in blocks
    of ``query_block`` rows (never more than H x block x N logits at once).

    q: (H, N, d); k: (KV, N, d); key_mask: optional (N,) bool (max over those keys only).
    Returns (W (H,) float32, lse (H, N) float32).
    """
    h, n, _ = q.shape
    row_max = torch.empty((h, n), dtype=torch.float32, device=q.device)
    lse = torch.empty((h, n), dtype=torch.float32, device=q.device)
    for r0 in range(0, n, query_block):
        r1 = min(n, r0 + query_block)
        logits = _block_logits(q, k, r0, r1, scaling)                      # (H, B, r1)
        peak = logits.amax(dim=-1)                                         # (H, B), finite
        lse[:, r0:r1] = peak + torch.log(torch.exp(logits - peak[..., None]).sum(dim=-1))
        if key_mask is None:
            row_max[:, r0:r1] = peak
        else:
            allowed = key_mask[:r1].to(torch.bool)
            row_max[:, r0:r1] = logits.masked_fill(~allowed, float("-inf")).amax(dim=-1)
    weights = torch.exp(row_max - lse).mean(dim=-1)                          # exp(-inf) = 0
    return weights, lse


def propagate_rows(rows: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scaling: float, *,
                   head_weights: torch.Tensor, lse: torch.Tensor | None,
                   factors: torch.Tensor | None, identity: bool, row_normalize: bool,
                   query_block: int) -> torch.Tensor:
    """Row vectors times one layer's rollout factor: ``rows @ A``.

    ``A = I + S'_reg`` when ``identity`` (else ``S'_reg``), row-normalised when
    ``row_normalize``, with ``S'_reg[i, j] = c[j] * (1/H) sum_h W[h] S[h][i, j]``. Only the
    row blocks where ``rows`` is non-zero are recomputed.

    rows: (M, N) float64; q: (H, N, d); k: (KV, N, d); head_weights: (H,); lse: (H, N) row
    log-sum-exp from ``blockwise_head_weights`` (saves a reduction), or None to normalise
    each block itself; factors: (N,) column factors or None.
    Returns (M, N) float64.
    """
    h, n, _ = q.shape
    out = torch.zeros_like(rows)
    a = head_weights.to(torch.float32) / h
    active = rows.abs().sum(dim=0) > 0
    for r0 in range(0, n, query_block):
        r1 = min(n, r0 + query_block)
        if not bool(active[r0:r1].any()):
            continue
        logits = _block_logits(q, k, r0, r1, scaling)                      # (H, B, r1)
        probs = (torch.softmax(logits, dim=-1) if lse is None
                 else torch.exp(logits - lse[:, r0:r1, None]))
        block = torch.einsum("h,hbn->bn", a, probs).to(torch.float64)       # (B, r1)
        if factors is not None:
            block = block * factors[:r1]
        if identity:
            idx = torch.arange(r1 - r0, device=block.device)
            block[idx, idx + r0] += 1.0
        if row_normalize:
            block = block / block.sum(dim=-1, keepdim=True)
        out[:, :r1] += rows[:, r0:r1] @ block
    return out


def object_flow_rows(queries: Sequence[torch.Tensor], keys: Sequence[torch.Tensor],
                     selector: torch.Tensor, scaling: Sequence[float], *, head_weighting: str,
                     image_key_mask: torch.Tensor | None, meanmax_image_keys_only: bool,
                     regularize: bool, row_normalize: bool, use_flow: bool,
                     query_block: int, top: torch.Tensor | None = None) -> torch.Tensor:
    """Rows of the attention flow for the object tokens, from cached queries and keys.

    Equals ``reference_object_rows`` (same equations) but never forms an N x N matrix: since
    ``F[L] = A[L] @ A[L-1] @ ... @ A[1]``, the object rows are
    ``E @ F[L] = (((E @ A[L]) @ A[L-1]) ... ) @ A[1]``, a chain of row-vector products
    computed from the last layer backwards (E = ``selector``). Without flow the result is
    ``E @ S'_reg[L]``.

    queries / keys: per layer (first layer first) (H, N, d) and (KV, N, d) post-RoPE
    tensors of one unpadded sequence; scaling: per-layer softmax scale; selector: (M, N).
    ``top``: optional (M, N) rows ``E @ A[L]`` formed by the caller (GradCAM,
    ``gradcam.gradcam_top_rows``); the chain then starts below the last layer.
    Returns (M, N) float64.
    """
    n = selector.shape[-1]
    factors = (column_regularization(causal_column_counts(n)).to(selector.device)
               if regularize else None)
    key_mask = image_key_mask if meanmax_image_keys_only else None
    rows = selector.to(torch.float64)
    layer_ids = range(len(queries) - 1, -1, -1) if use_flow else [len(queries) - 1]
    if top is not None:
        rows = top.to(torch.float64).to(selector.device)
        layer_ids = range(len(queries) - 2, -1, -1) if use_flow else []
    for l in layer_ids:
        q, k = queries[l], keys[l]
        if q.shape[1] != n or k.shape[1] != n:
            raise ValueError(f"layer {l}: queries/keys cover {q.shape[1]}/{k.shape[1]} tokens, "
                             f"expected {n}")
        if head_weighting == "meanmax":
            weights, lse = blockwise_head_weights(q, k, scaling[l], query_block, key_mask)
        else:   # plain mean over heads: no pass over all rows needed
            weights, lse = torch.ones(q.shape[0], device=q.device), None
        rows = propagate_rows(rows, q, k, scaling[l], head_weights=weights, lse=lse,
                              factors=factors, identity=use_flow,
                              row_normalize=row_normalize and use_flow,
                              query_block=query_block)
    return rows


# ----------------------------------------------------------------------------------------
# Object row -> map on the image
# ----------------------------------------------------------------------------------------

def row_to_grid(row: torch.Tensor, grid_index: torch.Tensor) -> torch.Tensor:
    """Image-token columns of one row arranged on the patch grid: ``G[r, c] = row[idx[r, c]]``.

    row: (N,); grid_index: (GR, GC) int64 sequence positions of the image tokens laid out
    on the model's patch grid (multi-tile / dynamic layouts are resolved by the backend).
    Returns (GR, GC).
    """
    return row[grid_index]


def minmax_normalize(grid: torch.Tensor) -> torch.Tensor:
    """``(G - min G) / (max G - min G)`` in [0, 1]; a constant grid (no spatial
    information at all) becomes all zeros."""
    lo, hi = grid.min(), grid.max()
    if not bool(hi > lo):
        return torch.zeros_like(grid)
    return (grid - lo) / (hi - lo)


def upsample_to_image(grid: torch.Tensor, image_hw: tuple[int, int],
                      box_xyxy: tuple[float, float, float, float]) -> torch.Tensor:
    """Bilinear map of a patch grid onto the image's pixels.

    The grid covers the pixel box ``(x0, y0, x1, y1)`` of the image (it may extend beyond
    the image when the model saw a padded image, or cover only part of it after a centre
    crop); cell (r, c) is centred at ``(x0 + (c + 0.5) * (x1 - x0) / GC, y0 + ...)``.
    Pixel centres outside the box get 0 (the model never saw them).

    grid: (GR, GC) float; image_hw: (H, W). Returns (H, W) float32.
    """
    gr, gc = grid.shape
    h, w = image_hw
    x0, y0, x1, y1 = box_xyxy
    xs = (torch.arange(w, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2.0 - 1.0
    ys = (torch.arange(h, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2.0 - 1.0
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    sample_at = torch.stack([gx, gy], dim=-1)[None]                          # (1, H, W, 2)
    src = grid.to(torch.float32).cpu()[None, None]                           # (1, 1, GR, GC)
    out = F.grid_sample(src, sample_at, mode="bilinear", padding_mode="border",
                        align_corners=False)[0, 0]
    inside = (gx.abs() <= 1.0) & (gy.abs() <= 1.0)
    return out * inside


def object_map(row: torch.Tensor, grid_index: torch.Tensor, image_hw: tuple[int, int],
               box_xyxy: tuple[float, float, float, float]) -> torch.Tensor:
    """Row -> grid -> min-max normalised -> bilinearly upsampled (H, W) float32 in [0, 1]."""
    grid = minmax_normalize(row_to_grid(row.to(torch.float64), grid_index.to(row.device)))
    return upsample_to_image(grid, image_hw, box_xyxy).clamp_(0.0, 1.0)
