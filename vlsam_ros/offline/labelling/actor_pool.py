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

    def label(self, frame: SourceFrame) -> FrameOutput:
        return self._labeller.label(frame)


@dataclasses.dataclass(frozen=True)
class PoolSettings:
    """``actors`` workers (0: :func:`auto_actors`) with ``num_cpus`` / ``num_gpus`` each
    (fractions allowed); at most ``in_flight`` frames queued per actor; a frame whose actor
    died is retried up to ``frame_retries`` times; up to ``actor_restarts`` dead actors are
    replaced."""

    actors: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    in_flight: int = 2
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

    def label_in_order(self, frames: Iterator[SourceFrame], bag: str,
                       sink: Callable[[FrameOutput], None]) -> None:
        """Labels ``frames`` (consecutive indices) and hands every output to ``sink`` in
        source order. At most ``in_flight`` frames per live actor are outstanding (sent,
        or finished and waiting for an earlier one): the driver holds no more than that.

        Raises LabelError when a frame's pipeline fails or a frame kills its actor more
        than ``frame_retries`` times, PoolError when no actor is left; whatever ``sink``
        raises propagates. Outstanding work is drained before returning or raising.
        """
        ray = self._ray
        pending: dict[Any, tuple[_Actor, SourceFrame]] = {}
        waiting: dict[int, FrameOutput] = {}
        again: collections.deque[SourceFrame] = collections.deque()
        attempts: dict[int, int] = {}
        next_index: int | None = None
        exhausted = False
        try:
            while True:
                while True:  # fill the window
                    alive = self._alive()
                    free = [a for a in alive if a.in_flight < self.settings.in_flight]
                    if not free:
                        break
                    if again:
                        frame = again.popleft()
                    else:
                        if exhausted or (len(pending) + len(waiting)
                                         >= self.settings.in_flight * len(alive)):
                            break
                        frame = next(frames, None)
                        if frame is None:
                            exhausted = True
                            break
                        if next_index is None:
                            next_index = frame.index
                    actor = min(free, key=lambda a: a.in_flight)
                    actor.in_flight += 1
                    pending[actor.handle.label.remote(frame)] = (actor, frame)
                if not pending:
                    break
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    actor, frame = pending.pop(ref)
                    actor.in_flight -= 1
                    try:
                        out = ray.get(ref)
                    except ray.exceptions.RayActorError as exc:
                        reason = _death_reason(exc)
                        self._bury(actor, reason)
                        attempts[frame.index] = attempts.get(frame.index, 0) + 1
                        if attempts[frame.index] > self.settings.frame_retries:
                            raise LabelError(f"{bag}: {frame.topic} frame {frame.topic_frame}"
                                             f" killed {attempts[frame.index]} actors; "
                                             f"last: {reason}") from None
                        self.retries.append(Retry(bag, f"{frame.topic} frame "
                                                       f"{frame.topic_frame}",
                                                  actor.stats.name, reason))
                        again.append(frame)
                        continue
                    except ray.exceptions.RayTaskError as exc:
                        cause = exc.cause if exc.cause is not None else exc
                        raise LabelError(f"{bag}: {frame.topic} frame {frame.topic_frame}: "
                                         f"the pipeline failed: {type(cause).__name__}: "
                                         f"{cause}") from None
                    actor.stats.frames += 1
                    actor.stats.pipeline_s += out.pipeline_s
                    waiting[out.index] = out
                while next_index is not None and next_index in waiting:
                    sink(waiting.pop(next_index))
                    next_index += 1
        finally:
            self._drain(pending)

    def _drain(self, pending: dict[Any, tuple[_Actor, SourceFrame]]) -> None:
        """Waits out frames still on the actors (after an error), ignoring their results."""
        for ref, (actor, _) in pending.items():
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
