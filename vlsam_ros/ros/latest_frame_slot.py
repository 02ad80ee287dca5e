"""Newest-frame-only hand-over from camera callbacks to the one worker thread.

A camera callback only stores its message in that camera's slot, replacing any frame the
worker has not taken yet (which is then counted as dropped). The worker takes frames with
``FrameSlots.take``, serving the cameras round-robin over those that hold a fresh frame, so
a slow model never builds a backlog and no camera starves another.

No ROS import: the slots hold any Python object.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class SlotCounts:
    """Cumulative counts of one camera's slot.

    ``received``: frames put; ``taken``: frames handed to the worker; ``dropped``: frames
    replaced by a newer one before the worker took them (stale frames, never processed).
    Always ``received == taken + dropped + (1 if a frame is waiting else 0)``.
    """

    received: int
    taken: int
    dropped: int


class LatestFrameSlot:
    """Holds at most one frame: the newest. Not thread-safe on its own (``FrameSlots`` locks)."""

    def __init__(self) -> None:
        self._frame: Any = None
        self._has_frame = False
        self._received = 0
        self._taken = 0
        self._dropped = 0

    @property
    def has_frame(self) -> bool:
        return self._has_frame

    def put(self, frame: Any) -> bool:
        """Stores ``frame``; returns True when it replaced an untaken (now dropped) frame."""
        replaced = self._has_frame
        self._frame = frame
        self._has_frame = True
        self._received += 1
        if replaced:
            self._dropped += 1
        return replaced

    def take(self) -> Any:
        """Returns the newest frame and empties the slot; raises LookupError when empty."""
        if not self._has_frame:
            raise LookupError("the slot holds no frame")
        frame, self._frame, self._has_frame = self._frame, None, False
        self._taken += 1
        return frame

    def counts(self) -> SlotCounts:
        return SlotCounts(self._received, self._taken, self._dropped)


SlotObserver = Callable[[str, int, Any], None]
"""``observer(event, camera_index, frame)`` with event ``"put"`` or ``"take"``; called under the
slots' lock, so the events of all cameras arrive in one total order (used by tests to prove
that every taken frame was the newest one of its camera at that moment)."""


class FrameSlots:
    """One ``LatestFrameSlot`` per camera, a lock, and round-robin hand-over to one worker."""

    def __init__(self, num_cameras: int, observer: SlotObserver | None = None) -> None:
        if num_cameras < 1:
            raise ValueError(f"num_cameras={num_cameras}: need at least one camera")
        self._slots = [LatestFrameSlot() for _ in range(num_cameras)]
        self._cond = threading.Condition()
        self._next = 0  # camera index the round-robin scan starts from
        self._closed = False
        self._observer = observer

    def __len__(self) -> int:
        return len(self._slots)

    def put(self, camera_index: int, frame: Any) -> bool:
        """Stores the newest frame of a camera and wakes the worker. Returns True when an
        untaken frame was dropped. Frames put after ``close()`` are ignored (returns False)."""
        with self._cond:
            if self._closed:
                return False
            replaced = self._slots[camera_index].put(frame)
            if self._observer is not None:
                self._observer("put", camera_index, frame)
            self._cond.notify()
            return replaced

    def take(self, timeout_s: float | None = None) -> tuple[int, Any] | None:
        """Waits for a fresh frame and returns ``(camera_index, frame)``.

        Cameras are scanned starting after the one served last, so with every camera busy
        they are served in turn. Returns None on timeout or once ``close()`` was called.
        """
        with self._cond:
            while True:
                if self._closed:
                    return None
                n = len(self._slots)
                for offset in range(n):
                    index = (self._next + offset) % n
                    slot = self._slots[index]
                    if slot.has_frame:
                        frame = slot.take()
                        self._next = (index + 1) % n
                        if self._observer is not None:
                            self._observer("take", index, frame)
                        return index, frame
                if not self._cond.wait(timeout_s):
                    return None

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def close(self) -> None:
        """Drops waiting frames' hand-over and wakes the worker so that it can exit."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def counts(self) -> list[SlotCounts]:
        """Counts per camera, in camera order."""
        with self._cond:
            return [slot.counts() for slot in self._slots]
