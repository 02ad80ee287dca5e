"""Ray Core actors that label frames, fed through a bounded window and read back in
source order, with the frames of a dead actor retried on another one.

Why Core actors, not Ray Data: an output bag must get every frame exactly once, in source
order, from a stream that is never held whole, and a frame lost with its actor must be
labelled again. With actors and an explicit window the driver knows at every moment which
frame is where (in flight on an actor, finished but waiting for an earlier one, written),
so exactly-once and ordering are a few lines of bookkeeping; Ray Data's actor pools would
hide that and add a second reorder step to restore source order.

Each actor (:class:`LabelWorker`) builds one pipeline (``factory(cfg)``: models load once
per actor) and labels frames with the same :class:`FrameLabeller` as ``vlsam-replay-bag``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import time
from typing import Any, Callable, Iterator

from vlsam_ros.core.config import VlsamConfig
from vlsam_ros.offline.replay.frame_outputs import FrameLabeller, FrameOutput, FramePipeline
from vlsam_ros.offline.replay.replay_options import ReplayOptions
from vlsam_ros.offline.replay.source_frames import SourceFrame

LOG = logging.getLogger("vlsam_ros.label")

PipelineFactory = Callable[[VlsamConfig], FramePipeline]


class LabelError(RuntimeError):
    """Labelling of one bag cannot go on (the message names the bag and frame)."""


class PoolError(RuntimeError):
    """No actor is left to label with (all died and the restart budget is spent)."""


class LabelWorker:
    """The actor: one pipeline, frames in, :class:`FrameOutput` out."""

    def __init__(self, factory: PipelineFactory, cfg: VlsamConfig,
                 options: ReplayOptions) -> None:
        self._problem: str | None = None
        try:
            self._labeller = FrameLabeller(factory(cfg), cfg, options)
        except Exception as exc:  # reported by ready(): one line for the user
            self._problem = f"{type(exc).__name__}: {exc}"

    def ready(self) -> str | None:
        """None when the pipeline was built, else why not."""
        return self._problem

    def label(self, frames: list[SourceFrame]) -> list[FrameOutput | str]:
        """The frames' outputs, in order; a frame whose pipeline raised gives the error
        as ``"<type>: <message>"`` instead (the other frames of the batch still count)."""
        results: list[FrameOutput | str] = []
        for frame in frames:
            try:
                results.append(self._labeller.label(frame))
            except Exception as exc:  # noqa: BLE001 - reported per frame, the bag fails
                results.append(f"{type(exc).__name__}: {exc}")
        return results


@dataclasses.dataclass(frozen=True)
class PoolSettings:
    """``actors`` workers (0: :func:`auto_actors`) with ``num_cpus`` / ``num_gpus`` each
    (fractions allowed); frames sent ``batch`` per actor call (fewer Ray round trips for
    cheap pipelines), at most ``in_flight`` calls queued per actor; a frame whose actor
    died is retried up to ``frame_retries`` times; up to ``actor_restarts`` dead actors are
    replaced."""

    actors: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    in_flight: int = 2
    batch: int = 1
    frame_retries: int = 2
    actor_restarts: int = 4


def auto_actors(settings: PoolSettings, have: dict[str, float]) -> PoolSettings:
    """``actors`` 0 (auto) -> as many as the cluster resources ``have`` (Ray's ``CPU`` /
    ``GPU`` totals) hold: GPUs with GPU actors, else CPUs; at least 1."""
    if settings.actors:
        return settings
    if settings.num_gpus > 0:
        count = math.floor(have.get("GPU", 0) / settings.num_gpus + 1e-9)
        if count < 1:
            raise PoolError(f"{settings.num_gpus} GPU(s) per actor: the Ray cluster has "
                            f"{have.get('GPU', 0)} GPU(s)")
    else:
        count = max(1, math.floor(have.get("CPU", 1) / settings.num_cpus + 1e-9))
    return dataclasses.replace(settings, actors=count)


@dataclasses.dataclass
class ActorStats:
    """What one actor did: frames labelled, seconds in the pipeline, seconds alive."""

    name: str
    frames: int = 0
    pipeline_s: float = 0.0
    started: float = dataclasses.field(default_factory=time.perf_counter)
    ended: float | None = None
    died: str | None = None

    def as_dict(self) -> dict[str, Any]:
        alive_s = (self.ended or time.perf_counter()) - self.started
        return {"actor": self.name, "frames": self.frames, "pipeline_s": self.pipeline_s,
                "alive_s": alive_s, "frames_per_s": self.frames / alive_s if alive_s else None,
                "died": self.died}


@dataclasses.dataclass(frozen=True)
class Retry:
    """A frame sent again because its actor died."""

    bag: str
    frame: str
    actor: str
    reason: str


def _death_reason(exc: BaseException) -> str:
    """Ray's actor-death message without its ids and advice: one short line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text.split(' class_name:')[0][:160]}"


_Batch = list  # [(stream position, tag, SourceFrame)]: the frames of one actor call


@dataclasses.dataclass
class _StreamState:
    """Where every item of a stream is: sent (``pending``: call -> (actor, batch)), to be
    sent again (``again``), or finished and waiting for an earlier one (``waiting``: stream
    position -> (tag, result)); ``next_seq`` is the next position to hand over."""

    items: Iterator[tuple[Any, SourceFrame | None]]
    pending: dict[Any, tuple["_Actor", _Batch]] = dataclasses.field(default_factory=dict)
    waiting: dict[int, tuple[Any, Any]] = dataclasses.field(default_factory=dict)
    again: collections.deque = dataclasses.field(default_factory=collections.deque)
    attempts: dict[int, int] = dataclasses.field(default_factory=dict)
    next_seq: int = 0
    emitted: int = 0
    exhausted: bool = False


class _Actor:
    def __init__(self, handle: Any, stats: ActorStats) -> None:
        self.handle = handle
        self.stats = stats
        self.in_flight = 0
        self.alive = True


class LabelPool:
    """The actors and the ordered, windowed, retrying map from frames to outputs."""

    def __init__(self, factory: PipelineFactory, cfg: VlsamConfig, options: ReplayOptions,
                 settings: PoolSettings) -> None:
        import ray

        self._ray = ray
        self._remote = ray.remote(LabelWorker).options(
            num_cpus=settings.num_cpus, num_gpus=settings.num_gpus, max_restarts=0,
            max_task_retries=0)
        self._args = (factory, cfg, options)
        self.settings = settings
        self.restarts_left = settings.actor_restarts
        self.retries: list[Retry] = []
        self.actor_stats: list[ActorStats] = []
        self._count = 0
        self._actors = [self._start_actor() for _ in range(settings.actors)]
        self._check_ready(self._actors)

    def _start_actor(self) -> _Actor:
        self._count += 1
        stats = ActorStats(f"actor-{self._count}")
        self.actor_stats.append(stats)
        return _Actor(self._remote.remote(*self._args), stats)

    def _check_ready(self, actors: list[_Actor]) -> None:
        """Waits for the actors' pipelines; raises PoolError with the first problem."""
        for actor in actors:
            problem = self._ray.get(actor.handle.ready.remote())
            if problem is not None:
                raise PoolError(f"{actor.stats.name} could not build the pipeline: {problem}")
            actor.stats.started = time.perf_counter()

    def _alive(self) -> list[_Actor]:
        return [a for a in self._actors if a.alive]

    def _bury(self, actor: _Actor, reason: str) -> None:
        """Marks a dead actor and starts a replacement while the budget allows."""
        if not actor.alive:
            return
        actor.alive = False
        actor.stats.ended = time.perf_counter()
        actor.stats.died = reason
        LOG.warning("%s died (%s)", actor.stats.name, reason)
        if self.restarts_left > 0:
            self.restarts_left -= 1
            fresh = self._start_actor()
            self._actors.append(fresh)
            self._check_ready([fresh])
        if not self._alive():
            raise PoolError(f"every actor died and the restart budget "
                            f"({self.settings.actor_restarts}) is spent; last: {reason}")

    def label_in_order(self, items: Iterator[tuple[Any, SourceFrame | None]],
                       sink: Callable[[Any, FrameOutput | LabelError | None], None]) -> None:
        """Labels a stream of ``(tag, frame)`` items and calls ``sink(tag, result)`` for
        every item in stream order. ``tag`` says which bag a frame belongs to (its ``str``
        names the bag in messages); a ``None`` frame is a marker (the end of a bag) that is
        handed to ``sink`` as ``None`` once everything before it was. ``result`` is the
        frame's FrameOutput, or a LabelError when its pipeline failed or it killed its
        actor more than ``frame_retries`` times (the stream goes on: ``sink`` decides).

        At most ``in_flight x batch`` frames per live actor are outstanding (sent, or
        finished and waiting for an earlier one): the driver holds no more than that, and
        the stream is read across bag ends without emptying the actors. Raises PoolError
        when no actor is left; whatever ``items`` or ``sink`` raise propagates. Outstanding
        work is drained before returning or raising.
        """
        state = _StreamState(items)
        try:
            while True:
                self._fill(state)
                while state.next_seq in state.waiting:  # hand over in stream order
                    sink(*state.waiting.pop(state.next_seq))
                    state.next_seq += 1
                if not state.pending:
                    if state.exhausted and not state.again:
                        return
                    continue
                ready, _ = self._ray.wait(list(state.pending), num_returns=1)
                for ref in ready:
                    self._collect(ref, state)
        finally:
            self._drain(state.pending)

    def _fill(self, state: "_StreamState") -> None:
        """Sends batches (retries first) to the least busy live actors while the window
        has room."""
        while True:
            alive = self._alive()
            free = [a for a in alive if a.in_flight < self.settings.in_flight]
            if not free:
                return
            batch = state.again.popleft() if state.again else self._next_batch(state, alive)
            if not batch:
                return
            actor = min(free, key=lambda a: a.in_flight)
            actor.in_flight += 1
            state.pending[actor.handle.label.remote([f for _, _, f in batch])] = (actor, batch)

    def _next_batch(self, state: "_StreamState", alive: list[_Actor]) -> "_Batch":
        """Up to ``batch`` frames from the stream, within the window; markers met on the
        way go straight to ``waiting``."""
        room = (self.settings.in_flight * self.settings.batch * len(alive) - len(state.waiting)
                - sum(len(b) for _, b in state.pending.values()))
        batch: _Batch = []
        while not state.exhausted and len(batch) < min(self.settings.batch, room):
            item = next(state.items, None)
            if item is None:
                state.exhausted = True
                break
            (tag, frame), seq = item, state.emitted
            state.emitted += 1
            if frame is None:  # a marker: nothing to run
                state.waiting[seq] = (tag, None)
                room -= 1
            else:
                batch.append((seq, tag, frame))
        return batch

    def _collect(self, ref: Any, state: "_StreamState") -> None:
        """One finished actor call: its outputs (or per-frame errors) into ``waiting``; a
        dead actor's batch to :meth:`_retry`."""
        ray = self._ray
        actor, batch = state.pending.pop(ref)
        actor.in_flight -= 1
        try:
            results = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            self._retry(actor, batch, _death_reason(exc), state)
            return
        except ray.exceptions.RayTaskError as exc:  # not the pipeline's (caught per frame)
            results = [f"{type(exc).__name__}: {exc}"] * len(batch)
        for (seq, tag, frame), result in zip(batch, results, strict=True):
            if isinstance(result, str):
                state.waiting[seq] = (tag, LabelError(
                    f"{tag}: {frame.topic} frame {frame.topic_frame}: the pipeline failed: "
                    f"{result}"))
                continue
            actor.stats.frames += 1
            actor.stats.pipeline_s += result.pipeline_s
            state.waiting[seq] = (tag, result)

    def _retry(self, actor: _Actor, batch: "_Batch", reason: str,
               state: "_StreamState") -> None:
        """A dead actor's batch: sent again (its frames recorded as retried), or, for a frame
        that killed more than ``frame_retries`` actors, a LabelError in its place."""
        self._bury(actor, reason)
        resend: _Batch = []
        for seq, tag, frame in batch:
            state.attempts[seq] = state.attempts.get(seq, 0) + 1
            where = f"{frame.topic} frame {frame.topic_frame}"
            if state.attempts[seq] > self.settings.frame_retries:
                state.waiting[seq] = (tag, LabelError(
                    f"{tag}: {where} killed {state.attempts[seq]} actors; last: {reason}"))
                continue
            self.retries.append(Retry(str(tag), where, actor.stats.name, reason))
            resend.append((seq, tag, frame))
        if resend:
            state.again.append(resend)

    def _drain(self, pending: dict[Any, tuple[Any, ...]]) -> None:
        """Waits out frames still on the actors (after an error), ignoring their results."""
        for ref, (actor, *_) in pending.items():
            try:
                self._ray.get(ref)
            except Exception:  # noqa: BLE001 - results of an abandoned bag
                pass
            actor.in_flight = max(0, actor.in_flight - 1)
        pending.clear()

    def finish(self) -> list[dict[str, Any]]:
        """Ends the actors; returns their stats."""
        for actor in self._actors:
            if actor.alive:
                actor.stats.ended = time.perf_counter()
                self._ray.kill(actor.handle)
                actor.alive = False
        return [s.as_dict() for s in self.actor_stats]
