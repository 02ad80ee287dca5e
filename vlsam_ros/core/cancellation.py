"""Cancelling the frame in progress at its next safe point (no ROS, no torch import).

A ``CancellationToken`` is handed to ``Pipeline.run(image, cancel=token)``. While the frame
runs, the token is the *current* token of that thread's context (a ``contextvars`` variable
set by :func:`active`), so the models' code can check it without every protocol method
taking an extra argument. The safe points call :func:`check` (or ask :func:`current`):

* during VLM generation, between generated tokens (a transformers stopping criterion,
  ``vlm/stopping.py``), and after ``generate`` returns;
* before each layer of the VLM's vision encoder, and before each decoder layer while it
  processes a prompt (a prefill: the shared image prefix, or the prompt) rather than one
  generated token (``vlm/forward_safe_points.py``);
* between the blocks of the SAM image encoder (also in the encoder's worker thread, which
  runs in a copy of the frame's context);
* before and between SAM decoder calls (``refinement.segment_objects``) and between views.

At a safe point a cancelled token raises :class:`FrameCancelled`, which says where the
frame was dropped; nothing of the frame is returned. Without a token (``cancel=None``) the
checks cost one context-variable lookup and never raise.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from typing import Iterator

from vlsam_ros.core.errors import VlsamError


class FrameCancelled(VlsamError):
    """The frame in progress was dropped at a safe point because a stop was requested.

    ``reason``: why the stop was requested (e.g. "shutdown"); ``where``: the safe point
    that noticed it (e.g. "during VLM generation after 12 new tokens").
    """

    def __init__(self, reason: str, where: str) -> None:
        super().__init__(f"{reason}: frame dropped {where}")
        self.reason = reason
        self.where = where


class CancellationToken:
    """A one-way flag: once cancelled it stays cancelled. Thread-safe.

    ``cancelled_at`` is the ``time.monotonic()`` of the first ``cancel`` call (None before),
    so a caller can say how long the frame took to reach a safe point.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._reason = ""
        self.cancelled_at: float | None = None

    def cancel(self, reason: str = "stop requested") -> None:
        """Requests the stop; the first reason is kept."""
        with self._lock:
            if not self._event.is_set():
                self._reason = reason
                self.cancelled_at = time.monotonic()
                self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    @property
    def reason(self) -> str:
        with self._lock:
            return self._reason

    def raise_if_cancelled(self, where: str) -> None:
        """Raises FrameCancelled (naming ``where``) when the stop was requested."""
        if self._event.is_set():
            raise FrameCancelled(self.reason, where)


_CURRENT: contextvars.ContextVar[CancellationToken | None] = contextvars.ContextVar(
    "vlsam_cancellation_token", default=None)


@contextlib.contextmanager
def active(token: CancellationToken | None) -> Iterator[None]:
    """Makes ``token`` the current token of this context for the duration of the block."""
    reset = _CURRENT.set(token)
    try:
        yield
    finally:
        _CURRENT.reset(reset)


def current() -> CancellationToken | None:
    """The token of the frame running in this context, or None."""
    return _CURRENT.get()


def check(where: str) -> None:
    """A safe point: raises FrameCancelled when the current token was cancelled."""
    token = _CURRENT.get()
    if token is not None:
        token.raise_if_cancelled(where)
