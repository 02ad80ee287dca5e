"""Concept segmenters: every instance of a noun phrase in an image (SAM 3).

Protocol :class:`ConceptSegmenter`: ``embed`` runs the image encoder once per view;
``propose`` returns, for each name, the instances of that name (bool masks in the
embedded image's pixel frame and scores), with the thresholds of ``concept.*`` given per
call. :class:`Sam3ConceptSegmenter` implements it with transformers' ``Sam3Model`` and
``Sam3Processor``: the vision features are computed once per view, then one model call per
name on them (text encoder, DETR encoder/decoder, mask decoder), post-processed by the
processor's ``post_process_instance_segmentation`` (score = presence x classification
probability, masks = sigmoid(logits) > ``concept.mask_threshold``, resized to the image).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from vlsam_ros.core import cancellation
from vlsam_ros.core.concept_selection import InstanceProposals
from vlsam_ros.core.config import ConceptConfig, VlsamConfig
from vlsam_ros.core.device import TORCH_DTYPES, resolve_device
from vlsam_ros.core.errors import ModelLoadError
from vlsam_ros.core.segmenter.hf_sam import read_model_type

SAM3_CHECKPOINT = "facebook/sam3"
"""The published SAM 3 checkpoint in transformers format."""

SAM3_MODEL_TYPES = ("sam3", "sam3_video")
"""config.json model types Sam3Model loads (the video checkpoint holds the detector)."""


class ConceptSegmenter(Protocol):
    def embed(self, image: np.ndarray) -> Any:
        """Runs the image encoder once. image: RGB uint8 (H, W, 3). Returns a handle."""
        ...

    def propose(self, embedding: Any, names: Sequence[str],
                cfg: ConceptConfig) -> list[InstanceProposals]:
        """For each name, its instances in the embedded image (same order as ``names``)."""
        ...


def sam3_hint(path: Path) -> str:
    return (f"Download SAM 3 in transformers format, e.g. `huggingface-cli download "
            f"{SAM3_CHECKPOINT} --local-dir {path}` (a gated model: accept its licence on "
            f"the hub first), and set concept.model to that folder; or build tiny random "
            f"test weights with `vlsam-make-tiny-models --segmenters sam3`.")


def load_concept_segmenter(cfg: VlsamConfig) -> Sam3ConceptSegmenter:
    """Loads SAM 3 from the local folder ``concept.model`` on ``cfg.device``. Raises
    ModelNotFoundError for a missing folder, ModelLoadError for another model."""
    from transformers import Sam3Model, Sam3Processor

    device = resolve_device(cfg.device)
    path = Path(cfg.concept.model).expanduser()
    hint = sam3_hint(path)
    model_type = read_model_type(path, "SAM 3 concept segmenter (concept.model)", hint)
    if model_type not in SAM3_MODEL_TYPES:
        raise ModelLoadError(f"concept.model '{path}' holds a {model_type!r} model, not SAM 3 "
                             f"({', '.join(SAM3_MODEL_TYPES)}). {hint}")
    model = Sam3Model.from_pretrained(path, local_files_only=True,
                                      dtype=TORCH_DTYPES[cfg.concept.dtype])
    try:
        processor = Sam3Processor.from_pretrained(path, local_files_only=True)
    except OSError as exc:
        raise ModelLoadError(f"concept.model '{path}' has no usable Sam3Processor "
                             f"(processor and tokenizer files): {exc}. {hint}") from None
    return Sam3ConceptSegmenter(model.to(device).eval(), processor)


@dataclasses.dataclass(frozen=True)
class Sam3Embedding:
    """SAM 3's vision features of one image (batch of 1) and the image's (H, W)."""

    vision: Any
    original_size: tuple[int, int]


class Sam3ConceptSegmenter:
    """ConceptSegmenter over transformers' Sam3Model (module docstring)."""

    def __init__(self, model: torch.nn.Module, processor: Any) -> None:
        self.model = model.eval()
        self.processor = processor
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> Sam3Embedding:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"embed expects RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
        cancellation.check("before the SAM 3 image encoder")
        pixels = self.processor(images=np.ascontiguousarray(image),
                                return_tensors="pt")["pixel_values"]
        vision = self.model.get_vision_features(pixel_values=pixels.to(self.device, self.dtype))
        return Sam3Embedding(vision, (int(image.shape[0]), int(image.shape[1])))

    @torch.inference_mode()
    def propose(self, embedding: Sam3Embedding, names: Sequence[str],
                cfg: ConceptConfig) -> list[InstanceProposals]:
        out = []
        for name in names:
            cancellation.check("between SAM 3 concept calls")
            text = self.processor(text=name, return_tensors="pt")
            outputs = self.model(vision_embeds=embedding.vision,
                                 input_ids=text["input_ids"].to(self.device),
                                 attention_mask=text["attention_mask"].to(self.device))
            found = self.processor.post_process_instance_segmentation(
                outputs, threshold=cfg.score_threshold, mask_threshold=cfg.mask_threshold,
                target_sizes=[embedding.original_size])[0]
            if len(found["scores"]) == 0:   # the processor leaves an empty set unresized
                out.append(InstanceProposals.empty(*embedding.original_size))
                continue
            out.append(InstanceProposals(found["masks"].bool().cpu().numpy(),
                                         found["scores"].float().cpu().numpy()))
        return out
