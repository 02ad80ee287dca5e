"""Track records of the tracker: live tracks, lost ones, and the id source.

Stamps are integer nanoseconds of the frames' capture times (the image header's stamp in
the node and in replay). Masks are bool (H, W) in the source image's pixel frame; the
per-frame history keeps them as compressed COCO RLE (``vlsam_ros.core.masks``).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import itertools
import threading

import numpy as np

from vlsam_ros.core.masks import Rle, encode_rle


class TrackIdSource:
    """Hands out track ids 1, 2, 3, ... Thread-safe; one source shared by every camera's
    tracker makes ids unique across cameras for the run."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def next_id(self) -> int:
        with self._lock:
            return next(self._counter)


@dataclasses.dataclass
class Track:
    """One followed object.

    label / alt_labels / score: from the discovery answer that last confirmed it, which
    was computed on the frame stamped ``label_stamp_ns``. mask: bool (H, W) on the frame
    stamped ``stamp_ns`` (the newest followed frame). prompt_points float32 (P, 2) and
    prompt_labels int8 (P,): the prompt that produced ``mask``. iou_prediction, stability:
    the segmenter's quality of ``mask``. frames_followed: follow steps survived (age).
    missed_discoveries: consecutive discovery answers that did not confirm it. new: not
    followed yet since it started, was revived or re-anchored. history: (stamp, mask RLE)
    of recent frames, oldest first, bounded by ``tracking.history_frames``.
    """

    track_id: int
    label: str
    alt_labels: tuple[str, ...]
    score: float
    label_stamp_ns: int
    born_stamp_ns: int
    mask: np.ndarray
    stamp_ns: int
    prompt_points: np.ndarray
    prompt_labels: np.ndarray
    iou_prediction: float = 1.0
    stability: float = 1.0
    frames_followed: int = 0
    missed_discoveries: int = 0
    new: bool = True
    history: collections.deque = dataclasses.field(default_factory=collections.deque)

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def remember(self, stamp_ns: int, mask: np.ndarray, max_frames: int) -> None:
        """Stores the mask of the frame stamped ``stamp_ns`` in the history (in stamp
        order; replacing an entry of the same stamp), keeping the newest ``max_frames``."""
        rle = encode_rle(mask)
        stamps = [s for s, _ in self.history]
        index = bisect.bisect_left(stamps, stamp_ns)
        if index < len(stamps) and stamps[index] == stamp_ns:
            self.history[index] = (stamp_ns, rle)
        else:
            self.history.insert(index, (stamp_ns, rle))
        while len(self.history) > max_frames:
            self.history.popleft()

    def mask_at(self, stamp_ns: int) -> Rle | None:
        """The mask RLE of the newest history frame at or before ``stamp_ns`` (the object
        as the tracker saw it at that time); the oldest kept one when the history starts
        later; None without history."""
        if not self.history:
            return None
        best = self.history[0][1]
        for stamp, rle in self.history:
            if stamp > stamp_ns:
                break
            best = rle
        return best

    def existed_at(self, stamp_ns: int) -> bool:
        """Whether the track was already followed at ``stamp_ns``."""
        return self.born_stamp_ns <= stamp_ns


@dataclasses.dataclass
class LostTrack:
    """A track that the follower lost; kept ``tracking.lost_memory_s`` for revival.

    centre: (x, y) of its last mask; lost_stamp_ns: the frame where it was lost; reason:
    which loss rule fired. The ``track`` keeps its last mask and history.
    """

    track: Track
    lost_stamp_ns: int
    centre: tuple[float, float]
    reason: str


def mask_centre(mask: np.ndarray) -> tuple[float, float]:
    """Centroid (x, y) in continuous pixel coordinates of a non-empty bool (H, W) mask."""
    rows, cols = np.nonzero(mask)
    return float(cols.mean() + 0.5), float(rows.mean() + 0.5)
