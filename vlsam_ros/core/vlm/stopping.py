"""Stopping ``generate`` between tokens when the frame's cancellation token is cancelled.

``generation_stop_kwargs()`` returns the extra ``generate`` keyword arguments for the token
of the running frame (``vlsam_ros.core.cancellation.current()``), or nothing without one;
``raise_if_generation_cancelled()`` turns a generation that stopped for that reason into
``FrameCancelled``, so a cut-off answer is never parsed as if it were complete.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from vlsam_ros.core import cancellation


class CancelGeneration(StoppingCriteria):
    """Ends every sequence of the batch at the next step once ``token`` is cancelled; counts
    the steps taken so the log can say how far generation got."""

    def __init__(self, token: cancellation.CancellationToken) -> None:
        self.token = token
        self.steps = 0

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any
                 ) -> torch.BoolTensor:
        self.steps += 1
        return torch.full((input_ids.shape[0],), self.token.cancelled, dtype=torch.bool,
                          device=input_ids.device)


def generation_stop_kwargs() -> dict[str, Any]:
    """``{"stopping_criteria": ...}`` for the current frame's token, else ``{}``."""
    token = cancellation.current()
    if token is None:
        return {}
    return {"stopping_criteria": StoppingCriteriaList([CancelGeneration(token)])}


def raise_if_generation_cancelled(gen_kwargs: dict[str, Any]) -> None:
    """After ``generate``: FrameCancelled when the frame's token was cancelled meanwhile."""
    for criterion in gen_kwargs.get("stopping_criteria", ()):
        if isinstance(criterion, CancelGeneration):
            criterion.token.raise_if_cancelled(
                f"during VLM generation after {criterion.steps} new token(s)")
