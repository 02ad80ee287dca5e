"""Prefix sharing: each distinct image is encoded once and its prompt prefix prefilled once.

The pipeline asks every question on every view, so one ``describe`` batch holds each view
image once per question. Without sharing, every (image, question) row runs the vision tower
and prefills the image tokens again (10 times per view in the paper's recipe).

Relied upon: the image comes BEFORE the question. All four supported families put the
image first in their chat templates (LLaVA-1.5 / LLaVA-NeXT ``USER: <image>\\n{question}
ASSISTANT:``; Qwen2-VL ``<|im_start|>user\\n<|vision_start|><|image_pad|>...<|vision_end|>
{question}``; Idefics3 / SmolVLM ``User:<image>... {question}<end_of_utterance>``), so the
token ids of every prompt of one image share a prefix that contains the whole image-token
run. ``plan_sharing`` checks exactly that on the processed ids at run time; if some image's
prompts do not share such a prefix (a template that puts text of the question before the
image), the WHOLE batch runs the unshared path and a warning is logged.

With sharing (``vlm.share_image_prefix``), a batch runs as:

1. rows are grouped by image (the same array object, or equal shape and bytes);
2. per group, the longest common token prefix of its prompts (at most each prompt's length
   minus one, so every row keeps a token of its own; it always contains the image tokens)
   is prefilled ONCE with batch 1 under the attention capture: the vision tower encodes the
   image once and the decoder runs the prefix once (``AttentionRecorder.take_prefix`` keeps
   its queries / keys / probabilities once for all rows of the group);
3. ONE ``generate`` call runs the rest of every prompt (question + assistant prompt,
   right-aligned) with a cache that holds only each row's own tokens; every decoder layer
   attends to its group's prefix keys/values, held ONCE per image for the whole call, plus
   the row's own keys (``prefix_attention.shared_prefix_attention``). Logically row b's
   layout is

       [pad | prefix of its image | pad | its suffix | generated tokens]

   with attention_mask 0 on both pads; ``generate`` sees the columns from W on. Position
   ids are computed over this whole layout (``position_ids``) exactly as ``generate``
   computes them for the unshared left-padded batch: the running count of unmasked tokens
   for the Llama-style decoders, Qwen2-VL's 3-D M-RoPE from its public ``get_rope_index``
   with the image grid (it skips masked tokens). So every token has the position, the
   attention and the keys it has in the unshared left-padded batch.

What holds: the same tokens at the same positions attending to the same keys, so greedy
text is identical and the maps agree to float rounding (batch-1 prefill vs a padded batch
sums in a different order; test/test_prefix_sharing.py checks 1e-5 in float32 for every
family, fast and reference capture). Sampling (``vlm.do_sample``): the prefix prefill draws
no random numbers and the one ``generate`` call has the same batch size and seed, so it
consumes the random stream exactly as the unshared call does; a sampled token can differ
only where float rounding of the logits moves a probability across the drawn value.

Memory: the image prefix's keys and values are held once per image (not per row) during
``generate``, and the attention capture holds each prefix's queries/keys once.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from vlsam_ros.core.vlm.capture import AttentionRecorder, PrefixCapture
from vlsam_ros.core.vlm.prefix_attention import SharedPrefixKV

if TYPE_CHECKING:
    from vlsam_ros.core.vlm.hf_backend import HuggingFaceVlm

_log = logging.getLogger(__name__)

# Processor outputs with one entry per token of the padded prompt (B, T); everything else
# the processor returns is per image (pixel values, grids, sizes, masks).
TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


@dataclasses.dataclass(frozen=True)
class SharingPlan:
    """How a batch shares prefixes.

    ``groups``: batch rows per distinct image, in order of first appearance.
    ``prefix_len[g]``: tokens of group g's shared prefix (L_g).
    ``group_of[b]``: the group of row b. ``pad[b]`` / ``prompt_len[b]``: row b's left
    padding and unpadded length P_b in the processor's (unshared, left-padded) batch.
    """

    groups: tuple[tuple[int, ...], ...]
    prefix_len: tuple[int, ...]
    group_of: tuple[int, ...]
    pad: tuple[int, ...]
    prompt_len: tuple[int, ...]

    @property
    def prefix_width(self) -> int:
        """W: the longest shared prefix; layout positions [0, W) hold the prefixes."""
        return max(self.prefix_len)

    def suffix_len(self, b: int) -> int:
        return self.prompt_len[b] - self.prefix_len[self.group_of[b]]

    @property
    def suffix_width(self) -> int:
        """S: the longest suffix; layout positions [W, W + S) hold the suffixes."""
        return max(self.suffix_len(b) for b in range(len(self.group_of)))

    def first_own(self, b: int) -> int:
        """Layout position of row b's first suffix token."""
        return self.prefix_width + self.suffix_width - self.suffix_len(b)


def group_rows(images: Sequence[np.ndarray]) -> list[list[int]]:
    """Batch rows per distinct image: the same array object, or equal shape and bytes.
    Groups in order of first appearance; rows ascending within a group."""
    groups: list[list[int]] = []
    representatives: list[np.ndarray] = []
    by_id: dict[int, int] = {}
    for i, image in enumerate(images):
        g = by_id.get(id(image))
        if g is None:
            g = next((j for j, rep in enumerate(representatives)
                      if rep.shape == image.shape and np.array_equal(rep, image)), None)
        if g is None:
            g = len(representatives)
            representatives.append(image)
            groups.append([])
        by_id[id(image)] = g
        groups[g].append(i)
    return groups


def _common_prefix_len(rows: Sequence[Sequence[int]]) -> int:
    first = rows[0]
    n = min(len(r) for r in rows)
    for i in range(n):
        if any(r[i] != first[i] for r in rows[1:]):
            return i
    return n


def plan_sharing(images: Sequence[np.ndarray], inputs: dict,
                 image_token_id: int) -> SharingPlan | str:
    """The sharing plan of a processed batch, or the reason (str) it cannot share.

    images: the batch's images (row order); inputs: the processor's left-padded batch
    (``input_ids`` / ``attention_mask`` (B, T)); image_token_id: the placeholder token
    the image features replace. Requires, per image, a common prefix of its prompts'
    token ids that contains every image-token position (the image precedes the question).
    """
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    width = int(ids.shape[1])
    lengths = [int(m) for m in mask.sum(dim=1).tolist()]
    pads = [width - n for n in lengths]
    if any(bool(mask[b, :p].any()) for b, p in enumerate(pads)):
        return "the processor's batch is not left-padded"
    groups = group_rows(images)
    group_of = [0] * len(images)
    prefix_len = []
    for g, rows in enumerate(groups):
        valid = [ids[b, pads[b]:].tolist() for b in rows]
        common = min(_common_prefix_len(valid), min(len(v) for v in valid) - 1)
        image_end = max((i + 1 for v in valid for i, t in enumerate(v) if t == image_token_id),
                        default=0)
        if image_end == 0:
            return f"rows {rows} hold no image token (id {image_token_id})"
        if common < image_end:
            return (f"the prompts of rows {rows} share only {common} leading tokens but their "
                    f"image tokens end at {image_end}: the question does not follow the image")
        prefix_len.append(common)
        for b in rows:
            group_of[b] = g
    return SharingPlan(groups=tuple(tuple(r) for r in groups), prefix_len=tuple(prefix_len),
                       group_of=tuple(group_of), pad=tuple(pads), prompt_len=tuple(lengths))


def shared_layout(plan: SharingPlan, inputs: dict, pad_token_id: int) -> dict[str, torch.Tensor]:
    """The token-level inputs re-laid as ``[pad | prefix | pad | suffix]`` per row.

    Returns the ``TOKEN_KEYS`` present in ``inputs``, each (B, W + S) (W = prefix_width,
    S = suffix_width); ``input_ids`` holds ``pad_token_id`` and every other key 0 on pads.
    """
    w, s = plan.prefix_width, plan.suffix_width
    out = {}
    for key in TOKEN_KEYS:
        src = inputs.get(key)
        if src is None:
            continue
        fill = pad_token_id if key == "input_ids" else 0
        dst = torch.full((src.shape[0], w + s), fill, dtype=src.dtype, device=src.device)
        for b in range(src.shape[0]):
            valid = src[b, plan.pad[b]:]
            n_pre = plan.prefix_len[plan.group_of[b]]
            dst[b, w - n_pre:w] = valid[:n_pre]
            dst[b, plan.first_own(b):] = valid[n_pre:]
        out[key] = dst
    return out


def _image_level(inputs: dict) -> dict[str, Any]:
    return {k: v for k, v in inputs.items() if k not in TOKEN_KEYS}


def position_ids(model, layout: dict[str, torch.Tensor], inputs: dict) -> torch.Tensor:
    """Position ids of the shared layout, as ``generate`` gives the unshared batch.

    Llama-style decoders (LLaVA, LLaVA-NeXT, Idefics3/SmolVLM): (B, W + S), the running
    count of unmasked tokens minus one (0 on pads). Qwen2-VL / Qwen2.5-VL (M-RoPE; their
    inner model has ``get_rope_index``): (4, B, W + S), the text positions above, then the
    3-D (temporal, height, width) positions from the model's public ``get_rope_index`` over
    the same ids, mask and image grids (it skips masked tokens, so the pads between prefix
    and suffix take no position).
    """
    mask = layout["attention_mask"]
    text = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    inner = getattr(model, "model", model)
    if not hasattr(inner, "get_rope_index"):
        return text
    image_level = {k: v for k, v in _image_level(inputs).items()
                   if k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")}
    vision, _ = inner.get_rope_index(layout["input_ids"],
                                     mm_token_type_ids=layout.get("mm_token_type_ids"),
                                     attention_mask=mask, **image_level)
    return torch.cat([text[None], vision.to(text.dtype)], dim=0)


def _accepts(module: torch.nn.Module, name: str) -> bool:
    return name in inspect.signature(module.forward).parameters


def prefill_prefixes(vlm: "HuggingFaceVlm", plan: SharingPlan, inputs: dict,
                     layout: dict[str, torch.Tensor], positions: torch.Tensor,
                     rec: AttentionRecorder) -> tuple[list[Any], list[PrefixCapture]]:
    """Runs each group's prefix once (batch 1, its image's pixels: the vision tower runs
    once per distinct image) under the capture ``rec``. Returns per group the KV cache
    (DynamicCache with (1, KV, L_g, d) per layer) and the captured PrefixCapture."""
    model, w = vlm.model, plan.prefix_width
    logits_kwargs = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    caches, prefixes = [], []
    for g, rows in enumerate(plan.groups):
        b0, n_pre = rows[0], plan.prefix_len[g]
        kwargs = {k: v[b0:b0 + 1, w - n_pre:w] for k, v in layout.items()}
        kwargs.update(vlm.image_inputs_of_row(inputs, b0))
        kwargs["position_ids"] = positions.narrow(-2, b0, 1)[..., w - n_pre:w]
        with torch.inference_mode():
            out = model(**kwargs, use_cache=True, **logits_kwargs)
        caches.append(out.past_key_values)
        prefixes.append(rec.take_prefix())
        del out
    return caches, prefixes


def shared_prefix_kv(plan: SharingPlan, caches: Sequence[Any]) -> SharedPrefixKV:
    """The groups' prefix caches (DynamicCache, (1, KV, L_g, d) per layer) as ONE
    ``SharedPrefixKV``: views of the prefill's own tensors, nothing copied per row."""
    layers = range(len(caches[0].layers))
    return SharedPrefixKV(
        keys=[[c.layers[layer].keys[0] for c in caches] for layer in layers],
        values=[[c.layers[layer].values[0] for c in caches] for layer in layers],
        rows=[torch.tensor(rows, dtype=torch.long) for rows in plan.groups],
        width=plan.prefix_width)


def generate_shared(vlm: "HuggingFaceVlm", plan: SharingPlan, inputs: dict, vlm_cfg,
                    rec: AttentionRecorder) -> tuple[torch.Tensor, list[PrefixCapture]]:
    """Prefix prefills plus one ``generate`` over the suffixes, all under the capture.

    The ``generate`` call sees only the suffix columns [W, W + S) of the shared layout
    (its cache holds each row's own tokens); the prefixes' keys and values are handed to
    the attention through ``rec.shared_prefix`` (one copy per image, prefix_attention.py)
    for the duration of the call. Returns the generated tokens (B, new) and each group's
    PrefixCapture. ``rec`` then holds the generate call's capture, whose queries AND keys
    start at layout position W (``split_rows(origin=W)``; ``rec.key_origin`` = W).
    """
    layout = shared_layout(plan, inputs, vlm.tokenizer.pad_token_id)
    w = plan.prefix_width
    with torch.inference_mode():
        positions = position_ids(vlm.model, layout, inputs)
    caches, prefixes = prefill_prefixes(vlm, plan, inputs, layout, positions, rec)
    rec.shared_prefix = shared_prefix_kv(plan, caches)
    rec.key_origin = w                   # generate's cache (recorded keys) starts at W
    del caches
    gen_inputs = {"input_ids": layout["input_ids"][:, w:],
                  "attention_mask": layout["attention_mask"][:, w:],
                  "position_ids": positions[..., w:].contiguous()}
    try:
        sequences = vlm._generate(gen_inputs, vlm_cfg)
    finally:
        rec.shared_prefix = None
    return sequences[:, gen_inputs["input_ids"].shape[1]:], prefixes


_warned: set[str] = set()


def plan_or_warn(images: Sequence[np.ndarray], inputs: dict, image_token_id: int,
                 family: str) -> SharingPlan | None:
    """``plan_sharing``, or None after logging (once per reason) why the batch runs
    unshared."""
    plan = plan_sharing(images, inputs, image_token_id)
    if isinstance(plan, SharingPlan):
        return plan
    if plan not in _warned:
        _warned.add(plan)
        _log.warning("%s: vlm.share_image_prefix is on but this batch cannot share image "
                     "prefixes (%s); running every prompt unshared", family, plan)
    return None
