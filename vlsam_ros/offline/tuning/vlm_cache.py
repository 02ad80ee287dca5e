"""Reuse of VLM answers across tuning trials.

A trial that changes only prompt or merging fields (threshold, rounds, keypoints, ...) gets
exactly the answers of an earlier trial with the same VLM and attention settings: the
pipeline's one ``describe`` call per frame is a function of the images, the questions,
``cfg.vlm`` and ``cfg.attention`` (sampling is reseeded per call from ``vlm.seed``). So the
tuner wraps the pipeline's VLM in ``CachedVlm``, which answers a repeated call from memory,
least recently used first out when the maps exceed ``max_bytes``. Cached maps are made
read-only, so a step that wrote into them would fail loudly instead of altering later
trials.
"""

from __future__ import annotations

import collections
import hashlib
from typing import Any, Sequence

import numpy as np


def _digest(image: np.ndarray) -> str:
    image = np.ascontiguousarray(image)
    return hashlib.sha1(f"{image.shape}|{image.dtype}|".encode() + image.tobytes()).hexdigest()


class CachedVlm:
    """VisionLanguageModel wrapper: ``describe`` answers from a cache keyed by (image
    digests, questions, vlm config, attention config); every other attribute is the
    wrapped VLM's. ``hits`` and ``misses`` count describe calls."""

    def __init__(self, vlm: Any, max_bytes: int) -> None:
        self.wrapped = vlm
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self.misses = 0
        self._entries: collections.OrderedDict[tuple, tuple[list[Any], int]] = \
            collections.OrderedDict()
        self._bytes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    def describe(self, images: Sequence[np.ndarray], questions: Sequence[str], vlm_cfg: Any,
                 attn_cfg: Any) -> list[Any]:
        key = (tuple(_digest(im) for im in images), tuple(questions), vlm_cfg, attn_cfg)
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return list(self._entries[key][0])
        self.misses += 1
        answers = self.wrapped.describe(images, questions, vlm_cfg, attn_cfg)
        size = 0
        for answer in answers:
            answer.attention_maps.setflags(write=False)
            size += answer.attention_maps.nbytes
        if size <= self.max_bytes:
            self._entries[key] = (list(answers), size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped
        return answers
