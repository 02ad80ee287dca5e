"""The tracker of one camera: follows every live track on every frame and takes the late
answers of discovery (the VL-SAM pipeline) for older frames.

* :meth:`Tracker.follow` moves all live tracks to a new frame (one follower call: one
  image-encoder pass, one batched decoder call) and applies the loss rules
  (``association.loss_reasons``) and the age rule (``tracking.max_age_s`` since the last
  confirmation).
* :meth:`Tracker.apply_discovery` takes a discovery answer for the frame stamped
  ``stamp_ns`` (usually older than the newest followed frame):

  1. each discovered object is matched (greedy, mask IoU >= ``association_iou``) to the
     tracks as they were at ``stamp_ns`` (their mask history), lost tracks that were still
     followed then included; a match confirms the track (label, alternative labels, score,
     label stamp) and revives it if it was lost since;
  2. every other discovered object is carried from ``stamp_ns`` to the newest followed
     frame by optical flow through the kept grey frames (``motion.carry_mask_through``),
     so the delay does not lose it. There it confirms the live track it covers (IoU >=
     ``association_iou``; a second object on an already confirmed track is ignored), or
     revives the nearest lost track with the same label whose last centre is within
     ``revive_distance``, or starts a new track (at most ``max_tracks``);
  3. live tracks that existed at ``stamp_ns`` and were not confirmed count a missed
     discovery; ``max_missed_discoveries`` in a row retire them.

Not thread-safe: one thread calls follow and apply_discovery (the node's worker does).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from typing import Sequence

import numpy as np

from vlsam_ros.core.config import TrackingConfig
from vlsam_ros.core.masks import box_from_mask, encode_rle, rle_iou
from vlsam_ros.core.results import Detection, FrameResult
from vlsam_ros.core.tracking.association import greedy_match, labels_match, loss_reasons
from vlsam_ros.core.tracking.followers import Follower, FollowInput
from vlsam_ros.core.tracking.motion import FlowSettings, carry_mask_through, to_grey
from vlsam_ros.core.tracking.tracks import LostTrack, Track, TrackIdSource, mask_centre

NS_PER_S = 1_000_000_000


@dataclasses.dataclass(frozen=True)
class FollowReport:
    """What one follow step did. lost: (track id, reason); retired: ids past max_age_s."""

    stamp_ns: int
    followed: int
    lost: tuple[tuple[int, str], ...]
    retired: tuple[int, ...]
    follow_ms: float
    encoder_calls: int
    decoder_calls: int


@dataclasses.dataclass(frozen=True)
class DiscoveryReport:
    """What one discovery answer did, as (detection index, track id) pairs; detection
    indices count the detections scoring at least ``min_discovery_score`` (the others are
    dropped first). ``retired`` are track ids (missed discoveries), ``ignored`` detection
    indices (empty after being carried, duplicates of a live track, or beyond
    max_tracks)."""

    stamp_ns: int
    confirmed: tuple[tuple[int, int], ...]
    started: tuple[tuple[int, int], ...]
    revived: tuple[tuple[int, int], ...]
    retired: tuple[int, ...]
    ignored: tuple[int, ...]


class Tracker:
    """Tracks of one camera (module docstring). ``ids`` is shared by the trackers of all
    cameras so that ids are unique across them."""

    def __init__(self, cfg: TrackingConfig, follower: Follower,
                 ids: TrackIdSource | None = None) -> None:
        self._cfg = cfg
        self.follower = follower
        self.ids = ids or TrackIdSource()
        self._tracks: dict[int, Track] = {}
        self._lost: dict[int, LostTrack] = {}
        self._greys: collections.deque = collections.deque()   # (stamp_ns, grey (H, W))
        self.latest_stamp_ns: int | None = None
        self.image_shape: tuple[int, int] | None = None

    @property
    def cfg(self) -> TrackingConfig:
        return self._cfg

    def update_config(self, cfg: TrackingConfig) -> None:
        """Thresholds apply from the next call."""
        self._cfg = cfg

    @property
    def tracks(self) -> list[Track]:
        """Live tracks in id order."""
        return [self._tracks[k] for k in sorted(self._tracks)]

    @property
    def lost(self) -> list[LostTrack]:
        """Lost tracks still remembered for revival, in id order."""
        return [self._lost[k] for k in sorted(self._lost)]

    def reset(self) -> None:
        """Forgets every track and frame (e.g. when time jumps back: a new sequence)."""
        self.follower.forget(list(self._tracks) + list(self._lost))
        self._tracks.clear()
        self._lost.clear()
        self._greys.clear()
        self.latest_stamp_ns = None
        self.image_shape = None

    # ------------------------------------------------------------------ following

    def follow(self, image: np.ndarray, stamp_ns: int) -> FollowReport:
        """Moves every live track to ``image`` (RGB uint8 (H, W, 3)) stamped ``stamp_ns``.
        A stamp older than the newest one, or a new image size, resets the tracker first."""
        start = time.perf_counter()
        cfg = self._cfg
        shape = image.shape[:2]
        if (self.latest_stamp_ns is not None and stamp_ns < self.latest_stamp_ns) or \
                (self.image_shape is not None and shape != self.image_shape):
            self.reset()
        self.image_shape = shape
        grey = to_grey(image)
        prev_grey = self._greys[-1][1] if self._greys else None
        tracks = self.tracks
        out = self.follower.follow(image, grey, prev_grey,
                                   [FollowInput(t.track_id, t.mask, t.new) for t in tracks], cfg)
        reasons = loss_reasons(np.array([t.area for t in tracks], np.int64), out.masks,
                               out.iou_predictions, out.stability, out.object_scores, cfg)
        lost, retired = [], []
        for k, (track, reason) in enumerate(zip(tracks, reasons)):
            if reason is not None:
                self._lose(track, stamp_ns, reason)
                lost.append((track.track_id, reason))
                continue
            track.mask, track.stamp_ns = out.masks[k], stamp_ns
            track.prompt_points = out.prompt_points[k]
            track.prompt_labels = out.prompt_labels[k]
            track.iou_prediction = float(out.iou_predictions[k])
            track.stability = float(out.stability[k])
            track.frames_followed += 1
            track.new = False
            track.remember(stamp_ns, track.mask, cfg.history_frames)
            if stamp_ns - track.label_stamp_ns > cfg.max_age_s * NS_PER_S:
                del self._tracks[track.track_id]
                retired.append(track.track_id)
        self._greys.append((stamp_ns, grey))
        while len(self._greys) > cfg.history_frames:
            self._greys.popleft()
        self.latest_stamp_ns = stamp_ns
        forgotten = [k for k, lt in self._lost.items()
                     if stamp_ns - lt.lost_stamp_ns > cfg.lost_memory_s * NS_PER_S]
        for k in forgotten:
            del self._lost[k]
        self.follower.forget([i for i, _ in lost] + retired)
        return FollowReport(stamp_ns, len(tracks), tuple(lost), tuple(retired),
                            (time.perf_counter() - start) * 1e3, out.encoder_calls,
                            out.decoder_calls)

    def _lose(self, track: Track, stamp_ns: int, reason: str) -> None:
        del self._tracks[track.track_id]
        centre = mask_centre(track.mask) if track.mask.any() else (math.nan, math.nan)
        self._lost[track.track_id] = LostTrack(track, stamp_ns, centre, reason)

    # ------------------------------------------------------------------ discovery

    def apply_discovery(self, result: FrameResult, stamp_ns: int) -> DiscoveryReport:
        """Takes discovery's answer for the frame stamped ``stamp_ns`` (module docstring).
        Detections' masks must have the followed frames' size (ValueError otherwise)."""
        cfg = self._cfg
        detections = [d for d in result.detections if d.score >= cfg.min_discovery_score]
        if self.image_shape is None and detections:
            self.image_shape = detections[0].mask.shape
        for det in detections:
            if det.mask.shape != self.image_shape:
                raise ValueError(f"discovered mask of {det.label!r} has shape {det.mask.shape}, "
                                 f"the followed frames are {self.image_shape}")
        latest = self.latest_stamp_ns if self.latest_stamp_ns is not None else stamp_ns
        det_rles = [encode_rle(d.mask) for d in detections]
        # 1. match against the tracks as they were at stamp_ns (lost since: included)
        live = self.tracks
        lost_since = [lt.track for lt in self.lost if lt.lost_stamp_ns > stamp_ns
                      and lt.track.existed_at(stamp_ns)]
        candidates = [t for t in live if t.existed_at(stamp_ns)] + lost_since
        track_rles = [t.mask_at(stamp_ns) or encode_rle(t.mask) for t in candidates]
        pairs = greedy_match(rle_iou(det_rles, track_rles), cfg.association_iou)
        confirmed, revived, ignored = [], [], []
        matched_dets = set()
        for d, c in pairs:
            track = candidates[c]
            matched_dets.add(d)
            if track.track_id in self._tracks:
                self._confirm(track, detections[d], stamp_ns, latest)
                confirmed.append((d, track.track_id))
            elif self._revive(track, detections[d], stamp_ns, latest):
                revived.append((d, track.track_id))
            else:
                ignored.append(d)
        # 2. the rest, carried to the newest frame: confirm the live track they now
        #    cover (seen differently at stamp_ns), else revive a lost track of the same
        #    name nearby, else start a new track
        started = []
        rest = sorted((d for d in range(len(detections)) if d not in matched_dets),
                      key=lambda d: -detections[d].score)
        for d in rest:
            det = detections[d]
            path = self._carry(det.mask, stamp_ns)
            carried = path[-1][1]
            if carried.sum() < max(cfg.min_area_px, 1):
                ignored.append(d)
                continue
            covered, overlap = self._best_live(carried)
            if covered is not None and overlap >= cfg.association_iou:
                if covered.track_id in {tid for _, tid in confirmed}:
                    ignored.append(d)                  # a second answer for one object
                else:
                    self._confirm(covered, det, stamp_ns, latest)
                    confirmed.append((d, covered.track_id))
                continue
            lost = self._nearest_lost(det, carried)
            if lost is not None and self._revive(lost.track, det, stamp_ns, latest, path):
                revived.append((d, lost.track.track_id))
                continue
            if len(self._tracks) >= cfg.max_tracks:
                ignored.append(d)
                continue
            track = self._start(det, stamp_ns, latest, path)
            started.append((d, track.track_id))
        # 3. live tracks that existed at stamp_ns and that the answer did not confirm
        confirmed_ids = {tid for _, tid in confirmed}
        retired = []
        for track in live:
            if track.track_id in confirmed_ids or not track.existed_at(stamp_ns) \
                    or track.track_id not in self._tracks:
                continue
            track.missed_discoveries += 1
            if track.missed_discoveries >= cfg.max_missed_discoveries:
                del self._tracks[track.track_id]
                retired.append(track.track_id)
        self.follower.forget(retired)
        return DiscoveryReport(stamp_ns, tuple(confirmed), tuple(started), tuple(revived),
                               tuple(retired), tuple(sorted(ignored)))

    def _carry(self, mask: np.ndarray, stamp_ns: int) -> list[tuple[int, np.ndarray]]:
        """A mask of the frame stamped ``stamp_ns`` moved through the kept grey frames to
        the newest followed frame (from the newest kept frame at or before ``stamp_ns``;
        the oldest kept one when the answer is older than the history). Returns
        [(stamp, mask)] per frame, ending at the newest; [(stamp_ns, mask)] without
        frames."""
        if not self._greys:
            return [(stamp_ns, mask.copy())]
        stamps = [s for s, _ in self._greys]
        first = 0
        for i, s in enumerate(stamps):
            if s <= stamp_ns:
                first = i
        masks = carry_mask_through(mask, [g for _, g in list(self._greys)[first:]],
                                   FlowSettings.from_config(self._cfg))
        return list(zip(stamps[first:], masks))

    def _best_live(self, mask: np.ndarray) -> tuple[Track | None, float]:
        """The live track whose current mask overlaps ``mask`` most, and that IoU."""
        tracks = self.tracks
        if not tracks:
            return None, 0.0
        iou = rle_iou([encode_rle(mask)], [encode_rle(t.mask) for t in tracks])[0]
        best = int(np.argmax(iou))
        return tracks[best], float(iou[best])

    def _nearest_lost(self, det: Detection, carried: np.ndarray) -> LostTrack | None:
        """The lost track sharing a name with ``det`` whose last centre is nearest to the
        carried mask's centre, within ``revive_distance`` x the image diagonal."""
        height, width = carried.shape
        limit = self._cfg.revive_distance * math.hypot(height, width)
        cx, cy = mask_centre(carried)
        best, best_distance = None, math.inf
        for lost in self.lost:
            track = lost.track
            if not labels_match(track.label, track.alt_labels, det.label, det.alt_labels):
                continue
            distance = math.hypot(lost.centre[0] - cx, lost.centre[1] - cy)
            if distance <= limit and distance < best_distance:
                best, best_distance = lost, distance
        return best

    def _confirm(self, track: Track, det: Detection, stamp_ns: int, latest: int) -> None:
        track.label, track.alt_labels, track.score = det.label, tuple(det.alt_labels), det.score
        track.label_stamp_ns = stamp_ns
        track.missed_discoveries = 0
        if stamp_ns == latest and self._cfg.reanchor_on_discovery:
            track.mask = det.mask.copy()
            track.prompt_points = np.asarray(det.prompt_points, np.float32)
            track.prompt_labels = np.asarray(det.prompt_labels, np.int8)
            track.new = True
            track.remember(latest, track.mask, self._cfg.history_frames)

    def _revive(self, track: Track, det: Detection, stamp_ns: int, latest: int,
                path: list[tuple[int, np.ndarray]] | None = None) -> bool:
        """Makes a lost track live again with the discovered mask carried to the newest
        frame; False (still lost) when the carried mask is too small, duplicates a live
        track, or the tracker is full."""
        if path is None:
            path = self._carry(det.mask, stamp_ns)
            carried = path[-1][1]
            covered, overlap = self._best_live(carried)
            if carried.sum() < max(self._cfg.min_area_px, 1) or \
                    overlap > self._cfg.max_overlap_iou:
                return False
        if len(self._tracks) >= self._cfg.max_tracks:
            return False
        del self._lost[track.track_id]
        self._tracks[track.track_id] = track
        self._confirm(track, det, stamp_ns, latest)
        self._place(track, det, path, stamp_ns, latest)
        return True

    def _start(self, det: Detection, stamp_ns: int, latest: int,
               path: list[tuple[int, np.ndarray]]) -> Track:
        carried = path[-1][1]
        track = Track(track_id=self.ids.next_id(), label=det.label,
                      alt_labels=tuple(det.alt_labels), score=det.score,
                      label_stamp_ns=stamp_ns, born_stamp_ns=stamp_ns, mask=carried,
                      stamp_ns=latest, prompt_points=np.zeros((0, 2), np.float32),
                      prompt_labels=np.zeros((0,), np.int8))
        self._place(track, det, path, stamp_ns, latest)
        self._tracks[track.track_id] = track
        return track

    def _place(self, track: Track, det: Detection, path: list[tuple[int, np.ndarray]],
               stamp_ns: int, latest: int) -> None:
        """Puts a started or revived track on the newest followed frame, its history
        filled with the discovered mask and its carried versions."""
        history = self._cfg.history_frames
        track.remember(stamp_ns, det.mask, history)
        for stamp, mask in path:
            if stamp > stamp_ns:
                track.remember(stamp, mask, history)
        track.mask, track.stamp_ns, track.new = path[-1][1], latest, True
        track.missed_discoveries = 0
        if stamp_ns == latest:
            track.prompt_points = np.asarray(det.prompt_points, np.float32)
            track.prompt_labels = np.asarray(det.prompt_labels, np.int8)
        else:  # the discovered prompt belongs to the older frame
            track.prompt_points = np.zeros((0, 2), np.float32)
            track.prompt_labels = np.zeros((0,), np.int8)

    # ------------------------------------------------------------------ output

    def detections(self) -> tuple[Detection, ...]:
        """Every live track on the newest followed frame, in id order."""
        out = []
        for track in self.tracks:
            if not track.mask.any():
                continue
            out.append(Detection(label=track.label, score=float(track.score),
                                 mask=track.mask, box_xyxy=box_from_mask(track.mask),
                                 prompt_points=track.prompt_points,
                                 prompt_labels=track.prompt_labels,
                                 alt_labels=track.alt_labels, track_id=track.track_id,
                                 label_stamp_ns=track.label_stamp_ns))
        return tuple(out)


def tracked_result(detections: Sequence[Detection], ran_discovery: bool,
                   applied: Sequence[FrameResult], follow_ms: float,
                   total_ms: float) -> FrameResult:
    """The FrameResult of a followed frame (msg/DetectionArray.msg): ``discovery`` says
    whether this frame's image went to discovery; the description (newline-joined), VLM
    time and segmenter time come from the discovery answers ``applied`` on this frame, the
    segmenter time adding to the follow time."""
    return FrameResult(tuple(detections), "\n".join(a.description for a in applied),
                       sum(a.vlm_ms for a in applied),
                       follow_ms + sum(a.segment_ms for a in applied), total_ms,
                       discovery=ran_discovery)
