"""Hugging Face transformers backends of the VisionLanguageModel protocol.

One generic class runs prompt building, batched ``generate``, name parsing and attention
maps; each family subclass only says which model types it accepts, where its decoder is and
how its image tokens are laid out (``layouts.py``).

Attention (method.md section 2) is captured during the real ``generate`` call:

* ``attention.capture = 'fast'``: the decoder runs SDPA while queries and keys are recorded
  (``capture.py``); the object rows of the regularised, head-weighted flow are then
  recomputed in query blocks (``attention.object_flow_rows``);
* ``attention.capture = 'reference'``: eager attention, full probabilities, full flow
  matrix (``attention.reference_object_rows``).

Object token rows (``token_rows.query_rows``): the map of a name uses, for each of its generated
tokens, the query row
that *generated* that token (the position just before it), which is the attention returned
for that step by ``generate(output_attentions=True)`` and exists for every generated token
(the last generated token is never fed back). Multi-token names average their rows.

Images go through a copy of the checkpoint's processor fitted by ``vlm.image_fit`` and the
pixel budgets (``image_fit.py``: the whole frame by default); the same fitted processor
gives the token layout, so the map's grid box matches what the VLM saw.

Prefix sharing (``vlm.share_image_prefix``, ``prefix_sharing.py``): the prompts of one
image are prefilled up to and including the image tokens once (batch 1, vision tower
once), under the same capture, and ``generate`` continues every question from that cache.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch

from vlsam_ros.core import attention as attn
from vlsam_ros.core.config import AttentionConfig, VlmConfig
from vlsam_ros.core.errors import AttentionUnavailableError, ModelNotFoundError
from vlsam_ros.core.image_check import check_image
from vlsam_ros.core.results import ObjectName, VlmAnswer
from vlsam_ros.core.vlm import layouts, prefix_sharing, stopping, teacher_forcing
from vlsam_ros.core.vlm.capture import (AttentionRecorder, QKHook, RowCapture,
                                        attention_modules, capturing)
from vlsam_ros.core.vlm.forward_safe_points import add_forward_safe_points
from vlsam_ros.core.vlm.image_fit import ImageFit, fit_processor
from vlsam_ros.core.vlm.object_names import parse_object_names, token_char_spans
from vlsam_ros.core.vlm.token_rows import query_rows



MIN_IMAGE_SIDE = 2
"""Smallest image side (pixels) the backend takes: the processors resize from at least
2 x 2."""


def _checked_images(images: Sequence[Any]) -> list[np.ndarray]:
    """``images`` checked (RGB uint8 (H, W, 3), sides >= MIN_IMAGE_SIDE); InvalidImageError
    names the first bad one by its index."""
    return [check_image(im, min_side=MIN_IMAGE_SIDE, what=f"image {i}")
            for i, im in enumerate(images)]


@dataclasses.dataclass(frozen=True)
class _Sample:
    """Bookkeeping of one batch row after generate."""

    pad: int                     # left padding of the prompt
    prompt_len: int              # unpadded prompt length P
    seq_len: int                 # N = P + generated tokens fed back (first EOS included)
    text: str
    objects: tuple[ObjectName, ...]
    rows: tuple[tuple[int, ...], ...]   # per object, query rows in the unpadded sequence
    token_ids: tuple[int, ...] = ()     # generated ids up to and incl. the first EOS


class HuggingFaceVlm:
    """A transformers image-text-to-text model plus its processor.

    ``qk_hook`` (optional): applied to each decoder layer's queries and keys before the
    attention is computed; tests use it to plant known attention. None in production.
    """

    family = ""
    model_types: tuple[str, ...] = ()

    def __init__(self, model, processor, device: torch.device | str = "cpu"):
        if model.config.model_type not in self.model_types:
            raise ModelNotFoundError(
                f"vlm.family={self.family!r} expects a model of type {list(self.model_types)}, "
                f"but the weights are of type {model.config.model_type!r}; set vlm.family "
                "to match the checkpoint")
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.device = torch.device(device)
        self.qk_hook: QKHook | None = None
        # Peak bytes the attention capture held during the latest describe().
        self.last_capture_peak_bytes = 0
        self._fitted: dict[ImageFit, Any] = {}     # fitted processors per image-fit setting
        self._idefics3_marker_ids: tuple[dict[int, tuple[int, int]], int] | None = None
        add_forward_safe_points(self.model, self.language_model())  # cancellation

    # --- family hooks ----------------------------------------------------------------

    def language_model(self) -> torch.nn.Module:
        """The decoder whose attention is captured."""
        inner = self.model.model
        for name in ("language_model", "text_model"):
            if hasattr(inner, name):
                return getattr(inner, name)
        raise AttentionUnavailableError(f"{type(self.model).__name__}: decoder not found")

    def image_layout(self, ids: Sequence[int], image_hw: tuple[int, int], inputs: dict,
                     index: int, processor: Any = None) -> layouts.ImageLayout:
        """Token layout of batch row ``index`` (``ids``: its unpadded prompt ids) as prepared
        by ``processor`` (default: ``fitted_processor()``, the default image fit)."""
        processor = processor if processor is not None else self.fitted_processor()
        marker_ids = None
        if self.family == "idefics3":
            if self._idefics3_marker_ids is None:
                self._idefics3_marker_ids = layouts.idefics3_markers(self.tokenizer)
            marker_ids = self._idefics3_marker_ids
        return layouts.family_layout(self.family, ids, self.image_token_id(), image_hw,
                                     processor, inputs, index, marker_ids)

    def fitted_processor(self, vlm_cfg: VlmConfig | None = None) -> Any:
        """The processor that prepares images under ``vlm_cfg``'s image fit and budgets
        (default ``VlmConfig()``); a cached copy, the loaded processor is not modified."""
        fit = ImageFit.from_config(vlm_cfg if vlm_cfg is not None else VlmConfig())
        if fit not in self._fitted:
            self._fitted[fit] = fit_processor(self.processor, self.family, fit)
        return self._fitted[fit]

    def match_model_to(self, processor: Any) -> None:
        """Makes the model's own copy of processor settings agree with ``processor`` (only
        LLaVA-NeXT keeps one: its grid pinpoints)."""

    def image_inputs_of_row(self, inputs: dict, index: int) -> dict[str, Any]:
        """The image inputs (everything but the per-token ones) of batch row ``index``, as
        a batch of one: by default each tensor's first dimension is the batch."""
        return {k: (v[index:index + 1] if isinstance(v, torch.Tensor) else v)
                for k, v in inputs.items() if k not in prefix_sharing.TOKEN_KEYS}

    def image_token_id(self) -> int:
        cfg = self.model.config
        tid = getattr(cfg, "image_token_id", None)
        if tid is None:
            tid = getattr(cfg, "image_token_index", None)
        if tid is None:
            raise AttentionUnavailableError(f"{cfg.model_type}: config has no image token id")
        return int(tid)

    # --- protocol ----------------------------------------------------------------------

    def describe(self, images: Sequence[np.ndarray], questions: Sequence[str],
                 vlm_cfg: VlmConfig, attn_cfg: AttentionConfig) -> list[VlmAnswer]:
        """Runs ``questions[i]`` on ``images[i]`` as one batch (see VisionLanguageModel)."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        if not images:
            return []
        images = _checked_images(images)
        prompts = [self._prompt(q, with_image=True) for q in questions]
        processor = self.fitted_processor(vlm_cfg)
        self.match_model_to(processor)
        inputs = self._inputs(prompts, images, processor)
        if attn_cfg.capture == "reference":
            self._check_reference_size(inputs, vlm_cfg, attn_cfg)
        samples, rows, rec = self._generate_captured(images, inputs, vlm_cfg, attn_cfg)
        # GradCAM (attention.gradcam, core/gradcam.py): the last layer's object rows are
        # weighted by the gradient of the objects' score (one teacher-forced forward per row,
        # one backward for the batch).
        leaves = (teacher_forcing.gradcam_pass(self, images, questions,
                                               [s.token_ids for s in samples],
                                               [s.objects for s in samples], vlm_cfg, attn_cfg)
                  if attn_cfg.gradcam else [None] * len(samples))
        answers = []
        for b, (image, question, sample) in enumerate(zip(images, questions, samples)):
            hw = (int(image.shape[0]), int(image.shape[1]))
            valid_ids = inputs["input_ids"][b, sample.pad:].tolist()
            layout = self.image_layout(valid_ids, hw, inputs, b, processor)
            if sample.objects:
                flow = self._object_rows(rows[b], sample, layout, attn_cfg, rec, leaves[b])
                maps = torch.stack([attn.object_map(r, layout.grid_index, hw, layout.box_xyxy)
                                    for r in flow]).numpy().astype(np.float32)
            else:
                maps = np.zeros((0, hw[0], hw[1]), dtype=np.float32)
            rec.release(rows[b])
            answers.append(VlmAnswer(question=question, text=sample.text, objects=sample.objects,
                                     attention_maps=maps, grid_shape=layout.grid_shape,
                                     grid_box_xyxy=layout.box_xyxy,
                                     token_ids=sample.token_ids))
        self.last_capture_peak_bytes = rec.peak_bytes
        return answers

    def _generate_captured(self, images: list[np.ndarray], inputs: dict, vlm_cfg: VlmConfig,
                           attn_cfg: AttentionConfig
                           ) -> tuple[list[_Sample], list[RowCapture], AttentionRecorder]:
        """Generates the batch under the attention capture; returns per row the sample,
        its capture (positions of the unpadded sequence) and the recorder (accounting).

        With ``vlm.share_image_prefix`` each distinct image's prompt prefix (image tokens
        included; the image precedes the question in every family's prompt) is encoded and
        prefilled once and shared by its questions (``prefix_sharing``); otherwise, or when
        a batch's prompts do not share such a prefix, every row runs in full.
        """
        plan = (prefix_sharing.plan_or_warn(images, inputs, self.image_token_id(), self.family)
                if vlm_cfg.share_image_prefix else None)
        prompt_ids = inputs["input_ids"]
        with capturing(self.language_model(), attn_cfg.capture, self.qk_hook) as rec:
            if plan is None:
                sequences = self._generate(inputs, vlm_cfg)
                generated = sequences[:, prompt_ids.shape[1]:]
            else:
                generated, prefixes = prefix_sharing.generate_shared(self, plan, inputs,
                                                                     vlm_cfg, rec)
        # Bookkeeping on the unpadded sequences (prompt as processed, then generated), the
        # same for both paths.
        samples = self._samples(inputs, torch.cat([prompt_ids, generated.to(prompt_ids.device)],
                                                  dim=1), vlm_cfg)
        # The batched capture becomes one capture per row (copied once in total); each
        # row's capture is released as soon as its maps are made, so capture memory peaks
        # at about one batch and never grows with batch x batch. A shared prefix is held
        # once per image, never per row.
        if plan is None:
            rows = rec.split_rows([s.pad for s in samples])
        else:
            rows = rec.split_rows([plan.first_own(b) for b in range(len(samples))],
                                  origin=plan.prefix_width,
                                  prefixes=[prefixes[g] for g in plan.group_of])
        return samples, rows, rec

    def attend(self, images: Sequence[np.ndarray], questions: Sequence[str],
               answers: Sequence[VlmAnswer], vlm_cfg: VlmConfig,
               attn_cfg: AttentionConfig) -> list[np.ndarray]:
        """Maps of ``answers[i]``'s objects on ``images[i]`` (same size as the image the
        answer came from), its generated text fed back without generating
        (``teacher_forcing.attend``; Salience DropOut)."""
        images = _checked_images(images)
        return teacher_forcing.attend(self, images, questions, answers, vlm_cfg, attn_cfg)

    def generate_text(self, prompt: str, vlm_cfg: VlmConfig) -> str:
        """Text-only generation with the model's chat template; returns the decoded text."""
        inputs = self._inputs([self._prompt(prompt, with_image=False)], None)
        sequences = self._generate(inputs, vlm_cfg)
        generated = sequences[0, inputs["input_ids"].shape[1]:].tolist()
        return self.tokenizer.decode(self._until_eos(generated)[0], skip_special_tokens=True)

    # --- internals ---------------------------------------------------------------------

    def _prompt(self, question: str, with_image: bool) -> str:
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
        messages = [{"role": "user", "content": content}]
        if getattr(self.processor, "chat_template", None) is None:
            raise ModelNotFoundError(f"{self.family}: the processor has no chat template; use a "
                                     "chat/instruct checkpoint (processor_config or "
                                     "chat_template.jinja must define it)")
        return self.processor.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=False)

    def _inputs(self, prompts: list[str], images: list[np.ndarray] | None,
                processor: Any = None) -> dict:
        """Processor outputs on the model's device and dtype. ``processor``: the one that
        prepares the images (default ``fitted_processor()``)."""
        from PIL import Image

        processor = processor if processor is not None else self.fitted_processor()
        kwargs: dict[str, Any] = {"text": prompts, "padding": True, "return_tensors": "pt"}
        if images is not None:
            kwargs["images"] = [Image.fromarray(im) for im in images]
        batch = processor(**kwargs)
        dtype = self.model.dtype
        out = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device)
                if v.is_floating_point():
                    v = v.to(dtype)
            out[k] = v
        return out

    def _check_reference_size(self, inputs: dict, vlm_cfg: VlmConfig,
                              attn_cfg: AttentionConfig) -> None:
        """Refuses a 'reference' capture larger than ``attention.reference_max_gib``.

        It holds float32 (H, q, k) probabilities of every layer for the whole batch, then
        one row's (H, T, T) per layer again while that row's flow is formed:
        (B + 1) x layers x H x T^2 x 4 bytes at most, T = padded prompt + max_new_tokens.
        """
        text_cfg = self.language_model().config
        batch, prompt = (int(v) for v in inputs["input_ids"].shape)
        t = prompt + vlm_cfg.max_new_tokens
        layers = len(attention_modules(self.language_model()))
        need = (batch + 1) * layers * int(text_cfg.num_attention_heads) * t * t * 4
        limit = attn_cfg.reference_max_gib * 2**30
        if need > limit:
            raise AttentionUnavailableError(
                f"attention.capture='reference' would hold about {need / 2**30:.1f} GiB of "
                f"attention ({batch} prompts x {layers} layers x "
                f"{text_cfg.num_attention_heads} heads x {t}^2 tokens x 4 bytes), over "
                f"attention.reference_max_gib={attn_cfg.reference_max_gib:g}; use "
                "attention.capture='fast' (same maps, memory linear in tokens) or raise the "
                "limit")

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return set(eos if isinstance(eos, (list, tuple)) else [eos])

    def _until_eos(self, generated: list[int]) -> tuple[list[int], int]:
        """(tokens before the first EOS, number of generated tokens up to and incl. it)."""
        eos = self._eos_ids()
        for i, t in enumerate(generated):
            if t in eos:
                return generated[:i], i + 1
        return generated, len(generated)

    def _generate(self, inputs: dict, vlm_cfg: VlmConfig) -> torch.Tensor:
        gen_kwargs: dict[str, Any] = dict(max_new_tokens=vlm_cfg.max_new_tokens,
                                          do_sample=vlm_cfg.do_sample,
                                          pad_token_id=self.tokenizer.pad_token_id)
        if vlm_cfg.do_sample:
            gen_kwargs.update(temperature=vlm_cfg.temperature, top_p=vlm_cfg.top_p)
        else:
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        gen_kwargs.update(stopping.generation_stop_kwargs())  # cancellation (safe point)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.inference_mode(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(vlm_cfg.seed)
            sequences = self.model.generate(**inputs, **gen_kwargs)
        stopping.raise_if_generation_cancelled(gen_kwargs)
        return sequences

    def _samples(self, inputs: dict, sequences: torch.Tensor, vlm_cfg: VlmConfig) -> list[_Sample]:
        mask = inputs["attention_mask"]
        padded_len = mask.shape[1]
        samples = []
        for b in range(sequences.shape[0]):
            prompt_len = int(mask[b].sum())
            pad = padded_len - prompt_len
            if bool(mask[b, :pad].any()):
                raise AttentionUnavailableError("prompts must be left-padded")
            text_ids, fed = self._until_eos(sequences[b, padded_len:].tolist())
            text, spans = token_char_spans(self.tokenizer, text_ids)
            objects = parse_object_names(text, spans, cfg=vlm_cfg)
            rows = tuple(query_rows(prompt_len, o.token_span) for o in objects)
            samples.append(_Sample(pad=pad, prompt_len=prompt_len,
                                   seq_len=prompt_len + max(fed, 1) - 1, text=text,
                                   objects=tuple(objects), rows=rows,
                                   token_ids=tuple(sequences[b, padded_len:padded_len + fed]
                                                   .tolist())))
        return samples

    def _object_rows(self, row: RowCapture, sample: _Sample, layout: layouts.ImageLayout,
                     cfg: AttentionConfig, rec: AttentionRecorder,
                     leaves: teacher_forcing.GradcamLeaves | None = None) -> torch.Tensor:
        """(M, N) object rows of the flow for one batch row's capture (fast or reference);
        ``rec`` accounts the memory the row's capture takes meanwhile. ``leaves``: GradCAM
        probabilities and gradients of the last layer (``attention.gradcam``)."""
        n = sample.seq_len
        if not row.scaling:
            raise AttentionUnavailableError("no attention was captured during generate")
        key_mask = torch.zeros(n, dtype=torch.bool)
        key_mask[layout.image_positions[layout.image_positions < n]] = True
        common = dict(head_weighting=cfg.head_weighting,
                      meanmax_image_keys_only=cfg.meanmax_image_keys_only,
                      regularize=cfg.regularize, row_normalize=cfg.row_normalize,
                      use_flow=cfg.use_flow)
        top_mask = key_mask if cfg.meanmax_image_keys_only else None
        if cfg.capture == "reference":
            probs = [row.full_probs(layer, n) for layer in range(len(row.probs))]
            top = None
            if leaves is not None:      # GradCAM: last layer's rows weighted (core/gradcam.py)
                w = (attn.meanmax_head_weights(probs[-1].double(), top_mask)
                     if cfg.head_weighting == "meanmax" else torch.ones(probs[-1].shape[0]))
                top = teacher_forcing.gradcam_top(leaves, sample.rows, w, cfg)
            return attn.reference_object_rows(probs, list(sample.rows), image_key_mask=key_mask,
                                              top=top, **common)
        queries, keys = rec.sequence(row, n)
        selector = attn.row_selector(list(sample.rows), n, dtype=torch.float64,
                                     device=queries[0].device)
        top = None
        if leaves is not None:          # GradCAM: last layer's rows weighted (core/gradcam.py)
            w = (attn.blockwise_head_weights(
                queries[-1], keys[-1], row.scaling[-1], cfg.query_block,
                None if top_mask is None else top_mask.to(queries[0].device))[0]
                if cfg.head_weighting == "meanmax" else torch.ones(queries[-1].shape[0]))
            top = teacher_forcing.gradcam_top(leaves, sample.rows, w, cfg)
        return attn.object_flow_rows(queries, keys, selector, row.scaling,
                                     image_key_mask=key_mask.to(queries[0].device),
                                     query_block=cfg.query_block, top=top, **common).cpu()


class LlavaVlm(HuggingFaceVlm):
    """LLaVA-1.5 (``llava-hf/llava-1.5-*-hf`` and compatible)."""

    family = "llava"
    model_types = ("llava",)


class LlavaNextVlm(HuggingFaceVlm):
    """LLaVA-NeXT / LLaVA-1.6 (anyres tiles)."""

    family = "llava_next"
    model_types = ("llava_next",)

    def match_model_to(self, processor):
        """The model unpads and counts anyres features from its config's pinpoints."""
        self.model.config.image_grid_pinpoints = [list(p) for p in
                                                  processor.image_processor.image_grid_pinpoints]


class Qwen2VlVlm(HuggingFaceVlm):
    """Qwen2-VL and Qwen2.5-VL (dynamic resolution)."""

    family = "qwen2_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")

    def image_inputs_of_row(self, inputs, index):
        """Qwen2-VL flattens every image's patches into one (sum_i t*h*w, C*T*p*p)
        ``pixel_values``; row ``index`` owns the patches after those of the rows before."""
        out = super().image_inputs_of_row(inputs, index)
        counts = inputs["image_grid_thw"].prod(dim=-1).tolist()
        start = int(sum(counts[:index]))
        out["pixel_values"] = inputs["pixel_values"][start:start + int(counts[index])]
        return out


class Idefics3Vlm(HuggingFaceVlm):
    """Idefics3 and SmolVLM (image splitting into tiles plus a global image)."""

    family = "idefics3"
    model_types = ("idefics3", "smolvlm")

