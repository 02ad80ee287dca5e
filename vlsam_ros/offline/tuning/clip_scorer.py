"""The tuner's image-text scorer with a transformers CLIP model (``CLIPModel``) read from a
local folder in ``save_pretrained`` layout (weights, config, tokenizer, image processor).

Nothing is downloaded: a missing or unusable folder is a ModelNotFoundError /
ModelLoadError that says what to get and where to put it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vlsam_ros.core.device import resolve_device
from vlsam_ros.core.errors import ModelLoadError, ModelNotFoundError

SUGGESTED_CLIP = "openai/clip-vit-base-patch32"


def missing_clip_message(folder: Path) -> str:
    return (f"CLIP model folder {folder} not found. The tuner's contrastive reward needs a "
            f"CLIP checkpoint in save_pretrained layout; on a machine with internet access "
            f"run `hf download {SUGGESTED_CLIP} --local-dir models/clip-vit-base-patch32` "
            "(any CLIPModel checkpoint works), copy the folder here and pass it with --clip")


class ClipScorer:
    """``ImageTextScorer`` (reward.py): s(image, text) = cosine of CLIP's projected image and
    text embeddings, in [-1, 1]. Images are RGB uint8 (H, W, 3) of any size (the
    checkpoint's image processor resizes them)."""

    def __init__(self, model: Any, processor: Any, device: str = "cpu", batch_size: int = 16,
                 name: str = "clip") -> None:
        self.model = model.eval()
        self.processor = processor
        self.device = device
        self.batch_size = batch_size
        self.name = name
        self._text_emb: dict[str, Any] = {}  # unit text embedding per text, made once

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu", batch_size: int = 16
             ) -> "ClipScorer":
        """Loads model and processor from ``folder`` (local files only) onto ``device``."""
        from transformers import AutoProcessor, CLIPModel

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(missing_clip_message(folder) if not folder.exists() else
                                     f"{folder} has no config.json: not a save_pretrained "
                                     f"model folder. {missing_clip_message(folder)}")
        try:
            model = CLIPModel.from_pretrained(folder, local_files_only=True)
            processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"{folder}: cannot load a CLIP model and processor "
                                 f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); "
                                 f"expected a CLIPModel checkpoint such as {SUGGESTED_CLIP}"
                                 ) from None
        torch_device = resolve_device(device)  # DeviceUnavailableError, never a fallback
        return cls(model.to(torch_device), processor, str(torch_device), batch_size,
                   name=f"clip:{folder.name}")

    def similarity(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
        import torch

        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        if not images:
            return np.zeros(0, dtype=np.float64)
        new = sorted(set(texts) - self._text_emb.keys())
        with torch.inference_mode():
            if new:  # the tuner scores the same few label texts in every trial
                tok = self.processor(text=new, return_tensors="pt", padding=True,
                                     truncation=True)
                emb = _unit(_features(self.model.get_text_features(
                    **{k: v.to(self.device) for k, v in tok.items()})))
                self._text_emb.update(zip(new, emb))
            out = []
            for start in range(0, len(images), self.batch_size):
                chunk = [np.ascontiguousarray(im) for im in images[start:start + self.batch_size]]
                pix = self.processor(images=chunk, return_tensors="pt")["pixel_values"]
                img_emb = _unit(_features(self.model.get_image_features(
                    pixel_values=pix.to(self.device))))
                txt = torch.stack([self._text_emb[t] for t in texts[start:start + len(chunk)]])
                out.append((img_emb * txt).sum(-1).double().cpu().numpy())
        return np.concatenate(out)


def _features(out: Any) -> Any:
    """The projected embeddings: transformers 5 returns a model output whose pooler_output
    holds them, older versions the tensor itself."""
    return getattr(out, "pooler_output", out)


def _unit(x: Any) -> Any:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
