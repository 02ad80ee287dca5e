"""SAM's mask decoder for K prompts on one image, evaluated with shared and factored work.

It computes the same function as ``MaskDecoder.forward`` of segment_anything / mobile_sam
(the two packages ship the same decoder) followed by the adapter's choice of one mask per
prompt, but reorders the arithmetic:

1. **Prompt-independent image work is done once per image.** Without a mask prompt every
   prompt starts from the same image state ``src = image embedding + no-mask embedding``,
   so layer 1's image-side projections (token->image keys and values, image->token
   queries) are computed once and cached on the embedding (:class:`ImageSideCache`), for
   every decoder call on that image (refinement rounds, questions, tiles share one cache
   per view).
2. **Few-token factoring.** Each prompt has only T tokens (5 output tokens + its points,
   T = 8 for a positive/negative pair plus SAM's padding point) and H = 8 heads, so
   H*T = 64 is smaller than the 128-wide attention projections of the N = 4096 image
   tokens. Projections of the image side are therefore moved onto the tokens:
   - token->image: ``q_h k_h^T = (q_h W_k,h) (x + pe)^T + const`` (the per-row constant
     cancels in the softmax) and ``P_h v_h = (P_h x) W_v,h^T + b_v,h`` (rows of P sum to 1);
   - image->token: ``q_h k_h^T = (x + pe) (W_q,h^T k_h^T) + b_q,h k_h^T`` and
     ``out_proj(concat_h A_h v_h) = sum_h A_h (v_h W_o,h^T) + b_o``.
   Each N-sized product then costs N*C*H*T instead of N*C*D multiply-adds.
3. **The upscaling runs as per-position matrix products.** Both transposed convolutions
   have kernel = stride = 2, so each is a (C_in -> 4*C_out) linear map per input pixel;
   LayerNorm2d and GELU act per output pixel. They run in a space-to-depth layout and only
   the chosen mask of each prompt is formed and rearranged to (256, 256).
4. **Prompts are processed in chunks** (``chunk`` prompts at a time) so the per-prompt image
   states (N*C floats each) stay cache-sized instead of growing with K.

The results equal the stock decoder up to float rounding (summation order differs); the
tests compare both on real architectures. Frames: the image grid is SAM's 64x64 embedding
grid, flattened row-major (N = 64*64); masks are SAM's low-resolution 256x256 logits in the
padded 1024x1024 input frame, as the stock decoder returns them.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class ImageSideCache:
    """Prompt-independent decoder tensors of one image embedding (no mask prompt).

    src: float (1, N, C), image embedding plus SAM's no-mask dense embedding; N = h*w grid
        cells row-major, C = 256 channels.
    pe: float (1, N, C), SAM's dense positional encoding of the grid.
    keys, values: float (1, H, N, d), layer 1 token->image key/value projections of
        ``src + pe`` and ``src`` (H heads of d channels).
    image_queries: float (1, N, H*d), layer 1 image->token query projection of ``src + pe``.
    """

    src: torch.Tensor
    pe: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    image_queries: torch.Tensor


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, L, H*d) -> (B, H, L, d)."""
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, d) -> (B, L, H*d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _softmax_short_last(x: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last axis (the T tokens), written out: max, exp, normalise.
    Same function as torch.softmax, which is several times slower on CPU when the last axis
    has only T ~ 8 entries. Overwrites ``x``."""
    x = x.sub_(x.amax(dim=-1, keepdim=True)).exp_()
    return x.div_(x.sum(dim=-1, keepdim=True))


def _linear_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x @ weight + bias`` over the last axis as one fused matrix product.
    x: (..., I); weight: (I, O); bias: (O,). Returns (..., O)."""
    flat = torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight)
    return flat.view(*x.shape[:-1], weight.shape[1])


def _grid_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C), row-major grid cells."""
    return x.flatten(2).transpose(1, 2)


def build_image_side_cache(model: nn.Module, features: torch.Tensor) -> ImageSideCache:
    """Computes the prompt-independent part of the decoder for one image.

    model: a segment_anything / mobile_sam ``Sam``. features: float (1, C, h, w) image
    embedding from ``model.image_encoder``.
    """
    prompt_encoder = model.prompt_encoder
    layer = model.mask_decoder.transformer.layers[0]
    no_mask = prompt_encoder.no_mask_embed.weight                       # (1, C)
    src = _grid_tokens(features) + no_mask[:, None, :]                  # (1, N, C)
    pe = _grid_tokens(prompt_encoder.get_dense_pe())                    # (1, N, C)
    to_image = layer.cross_attn_token_to_image
    to_token = layer.cross_attn_image_to_token
    with_pe = src + pe
    return ImageSideCache(
        src=src, pe=pe,
        keys=_heads(to_image.k_proj(with_pe), to_image.num_heads),
        values=_heads(to_image.v_proj(src), to_image.num_heads),
        image_queries=to_token.q_proj(with_pe))


def _token_to_image(attn: nn.Module, queries: torch.Tensor, image_keys: torch.Tensor,
                    image_values: torch.Tensor) -> torch.Tensor:
    """Tokens attend to the image, factored onto the tokens (module docstring, 2).

    queries: (K, T, C) tokens plus their positional embedding. image_keys: (B, N, C) image
    state plus positional encoding; image_values: (B, N, C) image state; B is 1 or K.
    Returns the attention output (K, T, C), as ``attn(q=queries, k=image_keys,
    v=image_values)``.
    """
    heads = attn.num_heads
    q = _heads(attn.q_proj(queries), heads)                              # (K, H, T, d)
    k_count, _, tokens, depth = q.shape
    channels = image_keys.shape[-1]
    w_k = attn.k_proj.weight.view(heads, depth, channels) / math.sqrt(depth)  # (H, d, C)
    w_v = attn.v_proj.weight.view(heads, depth, channels)
    q_image = torch.einsum("khtd,hdc->khtc", q, w_k).reshape(k_count, heads * tokens, channels)
    scores = torch.matmul(q_image, image_keys.transpose(1, 2))           # (K, H*T, N)
    probs = torch.softmax(scores, dim=-1)
    mixed = torch.matmul(probs, image_values).view(k_count, heads, tokens, channels)
    out = torch.einsum("khtc,hdc->khtd", mixed, w_v) + attn.v_proj.bias.view(heads, 1, depth)
    return attn.out_proj(_merge_heads(out))


def _token_to_cached_image(attn: nn.Module, queries: torch.Tensor, keys: torch.Tensor,
                           values: torch.Tensor) -> torch.Tensor:
    """Tokens attend to a shared, already projected image. queries: (K, T, C); keys,
    values: (1, H, N, d). Returns (K, T, C)."""
    q = _heads(attn.q_proj(queries), attn.num_heads)                     # (K, H, T, d)
    scores = torch.matmul(q / math.sqrt(q.shape[-1]), keys.transpose(2, 3))
    out = torch.matmul(torch.softmax(scores, dim=-1), values)            # (K, H, T, d)
    return attn.out_proj(_merge_heads(out))


def _image_to_token(attn: nn.Module, token_keys: torch.Tensor, token_values: torch.Tensor,
                    image_queries: torch.Tensor, projected: bool) -> torch.Tensor:
    """The image attends to the tokens, with the value and output projections folded onto
    the tokens (module docstring, 2).

    token_keys: (K, T, C) tokens plus positional embedding; token_values: (K, T, C).
    image_queries: with ``projected`` the cached query projection (1, N, D) of the shared
    image (D = H*d); else the image state plus positional encoding (B, N, C), B 1 or K.
    Returns (K, N, C), as ``attn(q=image_queries, k=token_keys, v=token_values)``.
    """
    heads = attn.num_heads
    k = _heads(attn.k_proj(token_keys), heads)                           # (K, H, T, d)
    v = _heads(attn.v_proj(token_values), heads)
    k_count, _, tokens, depth = k.shape
    channels = attn.out_proj.weight.shape[0]
    k = k / math.sqrt(depth)
    if projected:
        # Block-diagonal (D, H*T) per prompt: one matrix product gives every head's scores
        # already laid out as (N, H, T).
        eye = torch.eye(heads, dtype=k.dtype, device=k.device)
        folded = torch.einsum("khtd,hg->khdgt", k, eye).reshape(k_count, heads * depth,
                                                                heads * tokens)
        scores = torch.matmul(image_queries, folded)                     # (K, N, H*T)
    else:
        w_q = attn.q_proj.weight.view(heads, depth, channels)            # (H, d, C)
        folded = torch.einsum("hdc,khtd->kcht", w_q, k).reshape(k_count, channels,
                                                                  heads * tokens)
        bias = torch.einsum("hd,khtd->kht", attn.q_proj.bias.view(heads, depth), k)
        scores = torch.matmul(image_queries, folded)                     # (K, N, H*T)
        scores.add_(bias.reshape(k_count, 1, heads * tokens))
    probs = _softmax_short_last(scores.view(k_count, -1, heads, tokens))
    w_o = attn.out_proj.weight.view(channels, heads, depth)              # (C, H, d)
    values_out = torch.einsum("khtd,chd->khtc", v, w_o).reshape(k_count, heads * tokens,
                                                                channels)
    return torch.baddbmm(attn.out_proj.bias, probs.view(k_count, -1, heads * tokens),
                         values_out)


def _two_way_transformer(transformer: nn.Module, tokens: torch.Tensor,
                         cache: ImageSideCache | None, src: torch.Tensor,
                         pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TwoWayTransformer.forward, factored. tokens: (K, T, C) output + prompt tokens;
    src: (B, N, C) initial image state (B = 1 with ``cache``, else K); pe: (1, N, C).
    Returns processed tokens (K, T, C) and image state (K, N, C)."""
    point_embedding = tokens
    queries, keys = tokens, src
    for index, layer in enumerate(transformer.layers):
        cached = cache is not None and index == 0
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + point_embedding
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)

        q = queries + point_embedding
        if cached:
            attn_out = _token_to_cached_image(layer.cross_attn_token_to_image, q,
                                              cache.keys, cache.values)
        else:
            keys_pe = keys + pe
            attn_out = _token_to_image(layer.cross_attn_token_to_image, q, keys_pe, keys)
        queries = layer.norm2(queries + attn_out)
        queries = layer.norm3(queries + layer.mlp(queries))

        q = queries + point_embedding
        if cached:
            attn_out = _image_to_token(layer.cross_attn_image_to_token, q, queries,
                                       cache.image_queries, projected=True)
        else:
            attn_out = _image_to_token(layer.cross_attn_image_to_token, q, queries,
                                       keys_pe, projected=False)
        keys = layer.norm4(attn_out.add_(keys))

    q = queries + point_embedding
    attn_out = _token_to_image(transformer.final_attn_token_to_image, q, keys + pe, keys)
    queries = transformer.norm_final_attn(queries + attn_out)
    return queries, keys


def per_prompt_upscaling_tail(upscaling: nn.Sequential, first_stage: torch.Tensor,
                              hyper: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The upscaling after its first transposed convolution: LayerNorm2d, GELU, the second
    ConvTranspose2d(kernel=stride=2) as a per-pixel matrix product, GELU, and the dot
    product with the chosen mask token's hypernetwork output.

    Every step is nonlinear in each prompt's own data, so no batching can share it (the
    bench times it as a bound). first_stage: (K, N, 4, mid) first-convolution output in the
    space-to-depth layout of :func:`_upscale_masks`; hyper: (K, C_up). Returns logits
    (K, 4h, 4w) on the (h, w) grid's 4x upsampled pixels.
    """
    _, norm, act1, conv2, act2 = upscaling
    k_count, cells, _, mid = first_stage.shape
    out = conv2.weight.shape[1]                                          # 32
    w2 = conv2.weight.permute(0, 2, 3, 1).reshape(mid, 4 * out)          # (mid, (a2 c2 o))
    x = act1(F.layer_norm(first_stage, (mid,), norm.weight, norm.bias, norm.eps))
    x = act2(_linear_rows(x, w2, conv2.bias.repeat(4)))                 # (K, N, 4, 4 * out)
    logits = torch.matmul(x.view(k_count, cells * 16, out), hyper[:, :, None])
    h, w = grid
    logits = logits.view(k_count, h, w, 2, 2, 2, 2)                     # (k, i, j, a, c, a2, c2)
    return logits.permute(0, 1, 3, 5, 2, 4, 6).reshape(k_count, 4 * h, 4 * w)


def _upscale_masks(upscaling: nn.Sequential, image_state: torch.Tensor,
                   hyper: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``hyper @ output_upscaling(image_state)`` for one mask per prompt.

    image_state: (K, N, C) on the (h, w) grid; hyper: (K, C_up) hypernetwork output of the
    chosen mask token. Returns logits (K, 4h, 4w).
    The two ConvTranspose2d(kernel=stride=2) run as per-pixel matrix products in a
    space-to-depth layout (pixel (4i + 2a + a2, 4j + 2c + c2) comes from cell (i, j),
    first-stage offset (a, c), second-stage offset (a2, c2)).
    """
    conv1 = upscaling[0]
    k_count, cells, channels = image_state.shape
    mid = conv1.weight.shape[1]                                          # 64
    w1 = conv1.weight.permute(0, 2, 3, 1).reshape(channels, 4 * mid)     # (C, (a c o))
    first = _linear_rows(image_state, w1, conv1.bias.repeat(4)).view(k_count, cells, 4, mid)
    return per_prompt_upscaling_tail(upscaling, first, hyper, grid)


def decode_best_masks(model: nn.Module, features: torch.Tensor, sparse: torch.Tensor,
                      dense: torch.Tensor | None, multimask: bool,
                      cache: ImageSideCache | None, chunk: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoder pass for K prompts on one image, keeping one mask per prompt.

    features: (1, C, h, w) image embedding. sparse: (K, P, C) prompt-encoder point
    embeddings. dense: (K, C, h, w) mask-prompt embeddings, or None without mask prompts
    (then ``cache`` must be this image's :func:`build_image_side_cache`). multimask: choose
    among SAM's 3 multimask outputs by predicted IoU, else take the single-mask output.
    chunk: prompts decoded together.
    Returns low-res logits (K, 1, 4h, 4w) and predicted IoU (K,), as the stock decoder
    followed by the per-prompt argmax.
    """
    decoder = model.mask_decoder
    if dense is None and cache is None:
        raise ValueError("decode_best_masks needs the image-side cache without mask prompts")
    grid = (int(features.shape[2]), int(features.shape[3]))
    if sparse.shape[0] == 0:
        return (features.new_zeros((0, 1, 4 * grid[0], 4 * grid[1])), features.new_zeros((0,)))
    pe = cache.pe if cache is not None else _grid_tokens(model.prompt_encoder.get_dense_pe())
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    logits_out, iou_out = [], []
    for start in range(0, sparse.shape[0], chunk):
        prompt = sparse[start:start + chunk]
        tokens = torch.cat([output_tokens.expand(prompt.shape[0], -1, -1), prompt], dim=1)
        if dense is None:
            hs, state = _two_way_transformer(decoder.transformer, tokens, cache, cache.src, pe)
        else:
            src = _grid_tokens(features) + _grid_tokens(dense[start:start + chunk])
            hs, state = _two_way_transformer(decoder.transformer, tokens, None, src, pe)
        iou = decoder.iou_prediction_head(hs[:, 0])                     # (k, 1 + M)
        if multimask:
            best = iou[:, 1:].argmax(dim=1) + 1
        else:
            best = torch.zeros(iou.shape[0], dtype=torch.long, device=iou.device)
        rows = torch.arange(iou.shape[0], device=iou.device)
        mask_tokens = hs[rows, 1 + best]                                 # (k, C)
        hyper = torch.stack([decoder.output_hypernetworks_mlps[int(m)](token)
                             for m, token in zip(best.tolist(), mask_tokens)])
        logits_out.append(_upscale_masks(decoder.output_upscaling, state, hyper, grid))
        iou_out.append(iou[rows, best])
    return torch.cat(logits_out)[:, None], torch.cat(iou_out)
