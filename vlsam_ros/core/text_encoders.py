"""Free-text labels -> categories by the cosine similarity of text embeddings.

Used by the LVIS-style evaluation (``lvis_evaluation.py``), where the VLM's open-vocabulary
labels must be matched to a fixed category list, as the paper does with CLIP text
embeddings. Any object with ``encode(texts) -> float32 (N, D)`` is a :class:`TextEncoder`.
No ROS import.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np


class TextEncoder(Protocol):
    """Anything that embeds strings: returns float32 (N, D), one row per text."""

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class HashingTextEncoder:
    """Deterministic, dependency-free encoder: hashed character n-grams of the lower-cased,
    space-padded text, L2-normalised.

    It only measures spelling overlap, not meaning ("puppy" is far from "dog"): use it for
    tests and as a last resort; pass a real sentence or CLIP text encoder for real scores.
    """

    def __init__(self, dim: int = 512, ngram: int = 3) -> None:
        if dim < 1 or ngram < 1:
            raise ValueError("dim and ngram must be positive")
        self.dim = dim
        self.ngram = ngram

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            padded = f" {' '.join(text.lower().split())} "
            for i in range(max(1, len(padded) - self.ngram + 1)):
                gram = padded[i:i + self.ngram].encode()
                digest = hashlib.blake2b(gram, digest_size=8).digest()
                out[row, int.from_bytes(digest, "little") % self.dim] += 1.0
            norm = np.linalg.norm(out[row])
            if norm > 0:
                out[row] /= norm
        return out


class TransformersTextEncoder:
    """Mean-pooled, L2-normalised token embeddings of a local Hugging Face text model
    (e.g. a folder holding sentence-transformers/all-MiniLM-L6-v2). Never downloads:
    ``model_path`` must be a folder on disk."""

    def __init__(self, model_path: str | Path, device: str = "cpu", max_length: int = 32):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = Path(model_path)
        if not path.is_dir():
            raise FileNotFoundError(f"text encoder folder not found: {path}")
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.device = device
        self.max_length = max_length

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        batch = self.tokenizer(list(texts), padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state  # (N, T, D)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (N, D)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.float().cpu().numpy()


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"text encoder must return (N, D) embeddings, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def map_labels_to_categories(labels: Sequence[str], categories: Sequence[Mapping[str, Any]],
                             encoder: TextEncoder, template: str = "a {}",
                             min_similarity: float | None = None,
                             ) -> list[tuple[int | None, float]]:
    """Maps each free-text label to the category whose ``template.format(name)`` embedding
    has the highest cosine similarity with ``template.format(label)``.

    Category names use spaces for underscores (LVIS writes ``traffic_cone``). Returns one
    ``(category_id, similarity)`` per label; ``category_id`` is None when the best similarity
    is below ``min_similarity``. Ties go to the first category in list order.
    """
    if not categories:
        raise ValueError("no categories to map labels to")
    if not labels:
        return []
    names = [template.format(str(c["name"]).replace("_", " ")) for c in categories]
    cat_emb = _unit_rows(encoder.encode(names))  # (C, D)
    lab_emb = _unit_rows(encoder.encode([template.format(label) for label in labels]))  # (N, D)
    if cat_emb.shape[1] != lab_emb.shape[1]:
        raise ValueError("text encoder returned embeddings of different widths")
    sim = lab_emb @ cat_emb.T  # (N, C) cosine similarities
    best = np.argmax(sim, axis=1)
    out: list[tuple[int | None, float]] = []
    for row, col in enumerate(best):
        s = float(sim[row, col])
        cid = categories[col]["id"] if min_similarity is None or s >= min_similarity else None
        out.append((cid, s))
    return out
