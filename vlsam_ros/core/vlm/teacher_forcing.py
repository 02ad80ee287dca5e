"""Teacher-forced forward passes of a Hugging Face VLM over text it already generated.

Two attention options need the VLM again after ``generate``, on the same text:

* GradCAM (``attention.gradcam``, ``core/gradcam.py``): the gradient of the objects' score
  (log-probability of their generated name tokens) with respect to the last decoder layer's
  attention probabilities of the objects' rows;
* Salience DropOut (``prompts.dropout_iterations``, ``core/salience_dropout.py``): the maps of
  the same objects on an image with some patches blacked out (no new generation).

One forward per (image, question) row: the prompt (question and image, through the same
fitted processor as ``describe``) followed by the generated tokens, unpadded, batch 1, no KV
cache, so every position, key and query is the one ``generate`` had (up to float rounding).

GradCAM leaves: in the LAST decoder layer only, the probabilities of the object rows R are
computed eagerly, detached and made leaves that require grad, and those rows' attention
outputs are recomputed from them (``o[r] = S[r] @ v``); every other row and layer runs as
usual. The model's parameters are frozen for the pass, so autograd records nothing below
the leaves: the graph holds the last layer's output projection and MLP (over all N
positions, as the layer computes them as one tensor; rows other than the object rows get
zero gradient), then the final norm and LM head from the first object row on, and the
log-softmax of the R object rows. Memory per prompt: about N x (2 hidden + 3 intermediate)
activations of one layer plus R x vocabulary log-probabilities plus H x R x N leaf
probabilities and their gradients, never more than one layer's worth; measured by
``bench/gradcam.py`` (``backward_graph_bytes``). All rows of a call are summed into one
score and differentiated with ONE ``torch.autograd.grad`` call (exact per object, see
``core/gradcam.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch

from vlsam_ros.core import attention as attn
from vlsam_ros.core import cancellation
from vlsam_ros.core.config import AttentionConfig, VlmConfig
from vlsam_ros.core.errors import AttentionUnavailableError
from vlsam_ros.core.gradcam import gradcam_layer_rows, gradcam_top_rows
from vlsam_ros.core.vlm import capture
from vlsam_ros.core.vlm.prefix_sharing import TOKEN_KEYS
from vlsam_ros.core.vlm.token_rows import query_rows

if TYPE_CHECKING:
    from vlsam_ros.core.vlm.capture import AttentionRecorder, RowCapture
    from vlsam_ros.core.vlm.hf_backend import HuggingFaceVlm

TEACHER_FAST = "vlsam_teacher_fast"
TEACHER_REFERENCE = "vlsam_teacher_reference"
_STATE_ATTR = "_vlsam_teacher"

# Counts torch.autograd.grad calls made for GradCAM (tests and the bench read it).
BACKWARD_CALLS = 0


@dataclasses.dataclass
class GradcamLeaves:
    """The last layer's object rows of one forced row: ``rows`` (R,) positions, ``probs``
    (H, R, N) float32 leaf probabilities, ``grads`` (H, R, N) dY/dprobs (after backward)."""

    layer: int
    rows: torch.Tensor
    probs: torch.Tensor | None = None
    grads: torch.Tensor | None = None


@dataclasses.dataclass
class ForcedRow:
    """One teacher-forced (image, question) row.

    prompt_len: P; seq_len: N = P + len(token_ids) - 1 (the last generated token is never
    fed); rows: per object, its query rows; ids: (P + len(token_ids),) prompt then generated
    ids; capture: the row's attention capture (when asked for) and its recorder; leaves:
    GradCAM leaves (when asked for).
    """

    prompt_len: int
    seq_len: int
    rows: tuple[tuple[int, ...], ...]
    ids: torch.Tensor
    inputs: dict
    capture: RowCapture | None = None
    recorder: AttentionRecorder | None = None
    leaves: GradcamLeaves | None = None


def teacher_attention_forward(module, query, key, value, attention_mask, scaling=None,
                              dropout=0.0, **kwargs):
    """The capturing attention (or plain SDPA without a recorder); in the GradCAM layer, the
    object rows' probabilities become autograd leaves and their outputs are recomputed."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rec = getattr(module, capture._RECORDER_ATTR, None)
    shared: _TeacherState | None = getattr(module, _STATE_ATTR, None)
    hook = shared.qk_hook if shared is not None else None
    q, k = hook(module.layer_idx, query, key) if hook is not None else (query, key)
    state = shared.leaves if shared is not None else None
    if rec is None:
        out, weights = sdpa_attention_forward(module, q, k, value, attention_mask,
                                              scaling=scaling, dropout=dropout, **kwargs)
    elif rec.mode == "reference":
        out, weights = capture.reference_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    else:
        out, weights = capture.capture_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    if state is None or module.layer_idx != state.layer:
        return out, weights
    if q.shape[0] != 1:
        raise AttentionUnavailableError("GradCAM leaves need a batch-1 forward")
    scale = float(scaling if scaling is not None else q.shape[-1] ** -0.5)
    groups = q.shape[1] // k.shape[1]
    keys = capture._repeat_kv(k, groups)[0].float()                       # (H, N, d)
    values = capture._repeat_kv(value, groups)[0]                          # (H, N, dv)
    rows = state.rows.to(q.device)
    logits = torch.matmul(q[0][:, rows].float(), keys.transpose(1, 2)) * scale  # (H, R, N)
    cols = torch.arange(keys.shape[1], device=q.device)
    logits = logits.masked_fill(cols[None, None, :] > rows[None, :, None], float("-inf"))
    with torch.enable_grad():
        leaf = torch.softmax(logits, dim=-1).detach().requires_grad_(True)
        rows_out = torch.matmul(leaf.to(values.dtype), values).transpose(0, 1)  # (R, H, dv)
        out = out.clone()
        out[0, rows] = rows_out.to(out.dtype)
    state.probs = leaf
    return out, weights


def register_teacher_functions() -> None:
    """Registers the teacher-forced attention (fast and reference) with transformers."""
    capture.register_attention_pair(TEACHER_FAST, teacher_attention_forward,
                                    TEACHER_REFERENCE, teacher_attention_forward)


@dataclasses.dataclass
class _TeacherState:
    qk_hook: capture.QKHook | None
    leaves: GradcamLeaves | None


@contextlib.contextmanager
def _teacher_attention(language_model: torch.nn.Module, mode: str,
                       leaves: GradcamLeaves | None,
                       qk_hook: capture.QKHook | None) -> Iterator[None]:
    """Switches the decoder to the teacher-forced attention for the ``with`` body (inside
    ``capture.capturing`` when queries/keys are recorded too)."""
    register_teacher_functions()
    modules = capture.attention_modules(language_model)
    config = language_model.config
    previous = config._attn_implementation
    config._attn_implementation_internal = TEACHER_REFERENCE if mode == "reference" \
        else TEACHER_FAST
    state = _TeacherState(qk_hook, leaves)
    for m in modules:
        setattr(m, _STATE_ATTR, state)
    try:
        yield
    finally:
        config._attn_implementation_internal = previous
        for m in modules:
            if hasattr(m, _STATE_ATTR):
                delattr(m, _STATE_ATTR)


@contextlib.contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """Parameters do not require grad meanwhile (autograd records only what follows the
    leaves); restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def forced_inputs(vlm: HuggingFaceVlm, image: np.ndarray, question: str,
                  token_ids: Sequence[int], vlm_cfg: VlmConfig) -> tuple[dict, int, torch.Tensor]:
    """Model inputs of prompt + generated tokens (the last one not fed), batch 1, unpadded.

    Returns (inputs, P, ids) with ids (P + len(token_ids),) the full id sequence.
    """
    processor = vlm.fitted_processor(vlm_cfg)
    vlm.match_model_to(processor)
    inputs = vlm._inputs([vlm._prompt(question, with_image=True)], [image], processor)
    prompt = inputs["input_ids"]
    p = int(prompt.shape[1])
    fed = torch.tensor([list(token_ids[:-1])], dtype=prompt.dtype, device=prompt.device)
    for key in TOKEN_KEYS:
        src = inputs.get(key)
        if src is None:
            continue
        tail = fed if key == "input_ids" else torch.full_like(fed, 1 if key == "attention_mask"
                                                              else 0, dtype=src.dtype)
        inputs[key] = torch.cat([src, tail.to(src.dtype)], dim=1)
    ids = torch.cat([prompt[0], torch.tensor(list(token_ids), dtype=prompt.dtype,
                                             device=prompt.device)])
    return inputs, p, ids


def forced_rows(vlm: HuggingFaceVlm, images: Sequence[np.ndarray], questions: Sequence[str],
                token_ids: Sequence[Sequence[int]], objects: Sequence[Sequence],
                vlm_cfg: VlmConfig, attn_cfg: AttentionConfig, *, capture_attention: bool,
                gradcam: bool) -> list[ForcedRow]:
    """Teacher-forced forward of every row; with ``gradcam`` ONE backward over all rows.

    ``token_ids[b]``: row b's generated ids (up to and including the first EOS);
    ``objects[b]``: its ObjectNames (token spans index ``token_ids[b]``).
    ``capture_attention``: record queries/keys (or probabilities, reference mode) as
    ``describe`` does, for maps. Rows without generated tokens or objects are returned
    without capture or leaves.
    """
    global BACKWARD_CALLS
    lm = vlm.language_model()
    last = len(capture.attention_modules(lm)) - 1
    out: list[ForcedRow] = []
    scores = []
    with _frozen(vlm.model), torch.no_grad():
        for b, (image, question, ids_b, objs) in enumerate(zip(images, questions, token_ids,
                                                               objects)):
            cancellation.check(f"before teacher-forced forward {b + 1} of {len(images)}")
            inputs, p, ids = forced_inputs(vlm, image, question, ids_b, vlm_cfg)
            n = p + len(ids_b) - 1
            rows = tuple(query_rows(p, o.token_span) for o in objs)
            row = ForcedRow(p, n, rows, ids, inputs)
            out.append(row)
            if not ids_b or not objs:
                continue
            used = sorted({r for rs in rows for r in rs})
            leaves = (GradcamLeaves(last, torch.tensor(used, dtype=torch.long))
                      if gradcam else None)
            with contextlib.ExitStack() as stack:
                rec = (stack.enter_context(capture.capturing(lm, attn_cfg.capture, vlm.qk_hook))
                       if capture_attention else None)
                stack.enter_context(_teacher_attention(
                    lm, attn_cfg.capture if capture_attention else "fast", leaves, vlm.qk_hook))
                with torch.enable_grad() if gradcam else contextlib.nullcontext():
                    first = used[0]
                    result = vlm.model(**inputs, use_cache=False, logits_to_keep=n - first)
                    if gradcam:
                        logits = result.logits[0]                        # (n - first, V)
                        at = torch.tensor(used, device=logits.device)
                        logp = torch.log_softmax(logits[at - first].float(), dim=-1)  # (R, V)
                        targets = ids[at + 1].to(logp.device)
                        scores.append(logp[torch.arange(len(used)), targets].sum())
            if rec is not None:
                row.capture = rec.split_rows([0])[0]
                row.recorder = rec
            row.leaves = leaves
    if gradcam and scores:
        leaf_list = [r.leaves.probs for r in out if r.leaves is not None]
        if any(t is None for t in leaf_list):
            raise AttentionUnavailableError("GradCAM: the last decoder layer did not run the "
                                            "teacher-forced attention")
        BACKWARD_CALLS += 1
        grads = torch.autograd.grad(torch.stack(scores).sum(), leaf_list)
        for r, g in zip([r for r in out if r.leaves is not None], grads):
            r.leaves.grads = g.detach()
            r.leaves.probs = r.leaves.probs.detach()
    return out


def gradcam_top(leaves: GradcamLeaves, token_rows: Sequence[Sequence[int]],
                head_weights: torch.Tensor, cfg: AttentionConfig) -> torch.Tensor:
    """(M, N) objects' rows after the GradCAM-weighted last layer (``core/gradcam.py``)."""
    n = leaves.probs.shape[-1]
    factors = (attn.column_regularization(attn.causal_column_counts(n)) if cfg.regularize
               else None)
    layer_rows = gradcam_layer_rows(leaves.probs.cpu(), leaves.grads.cpu(), head_weights.cpu(),
                                    factors)
    return gradcam_top_rows(layer_rows, leaves.rows.tolist(), token_rows,
                            use_flow=cfg.use_flow, row_normalize=cfg.row_normalize)


def gradcam_pass(vlm: HuggingFaceVlm, images: Sequence[np.ndarray], questions: Sequence[str],
                 token_ids: Sequence[Sequence[int]], objects: Sequence[Sequence],
                 vlm_cfg: VlmConfig, attn_cfg: AttentionConfig) -> list[GradcamLeaves | None]:
    """GradCAM leaves and gradients of every row after ``generate`` (forward per row, one
    backward in total); None for rows without objects."""
    rows = forced_rows(vlm, images, questions, token_ids, objects, vlm_cfg, attn_cfg,
                       capture_attention=False, gradcam=True)
    return [r.leaves for r in rows]


def attend(vlm: HuggingFaceVlm, images: Sequence[np.ndarray], questions: Sequence[str],
           answers: Sequence, vlm_cfg: VlmConfig, attn_cfg: AttentionConfig
           ) -> list[np.ndarray]:
    """The maps of ``answers[b]``'s objects on ``images[b]`` with the answer's text fed back
    (teacher forcing, no generation): float32 (K_b, H_b, W_b) per row, made exactly as
    ``describe`` makes them (same capture mode, options and GradCAM setting).

    ``images[b]`` must have the size of the image the answer was generated on (its image
    tokens then sit at the same positions); ``answers[b].token_ids`` must be set.
    """
    for b, (image, a) in enumerate(zip(images, answers)):
        if tuple(a.attention_maps.shape[1:]) != tuple(image.shape[:2]) and a.objects:
            raise ValueError(f"image {b} is {image.shape[1]}x{image.shape[0]} px; teacher "
                             "forcing needs the size of the image the answer was generated on "
                             f"({a.attention_maps.shape[2]}x{a.attention_maps.shape[1]})")
        if a.objects and not a.token_ids:
            raise ValueError(f"answer {b} has objects but no token_ids; teacher forcing needs "
                             "the generated ids (HuggingFaceVlm.describe sets them)")
    rows = forced_rows(vlm, images, questions, [a.token_ids for a in answers],
                       [a.objects for a in answers], vlm_cfg, attn_cfg,
                       capture_attention=True, gradcam=attn_cfg.gradcam)
    processor = vlm.fitted_processor(vlm_cfg)
    maps = []
    for image, row in zip(images, rows):
        hw = (int(image.shape[0]), int(image.shape[1]))
        if row.capture is None:
            maps.append(np.zeros((len(row.rows), *hw), dtype=np.float32))
            continue
        layout = vlm.image_layout(row.ids[:row.prompt_len].tolist(), hw, row.inputs, 0,
                                  processor)
        try:
            flow = vlm._object_rows(row.capture, row, layout, attn_cfg, row.recorder,
                                    row.leaves)
        finally:
            row.recorder.release(row.capture)
        maps.append(torch.stack([attn.object_map(r, layout.grid_index, hw, layout.box_xyxy)
                                 for r in flow]).numpy().astype(np.float32))
    return maps
