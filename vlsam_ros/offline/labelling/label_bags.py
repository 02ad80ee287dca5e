"""Labels many bags with a pool of Ray actors: one output bag per input bag, byte-identical
to ``vlsam-replay-bag``'s, checkpointed per bag (``checkpoint``), with a summary.

The driver streams each bag's frames (``SourceBag``) into the actors (``LabelPool``) and
writes their outputs in source order with the replay's own writer (``OutputBag``) while
journalling them; bags are read one after another as one stream, so the actors do not idle
at a bag's end while its last frames finish. Bad input
follows the replay's rules: an undecodable frame is a logged, counted and recorded skip; a
bag that cannot be read (truncated sqlite3, unreadable file, missing topic) fails with an
error naming it, and the other bags still finish; a cut mcap's complete messages are
labelled and the summary says what was lost.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from vlsam_ros.core.config import VlsamConfig, to_flat
from vlsam_ros.offline.labelling.actor_pool import (
    LabelError,
    LabelPool,
    PipelineFactory,
    PoolSettings,
    auto_actors,
)
from vlsam_ros.offline.labelling.checkpoint import BagCheckpoint
from vlsam_ros.offline.labelling.dataset_source import DATASET_TOPIC, DatasetSource
from vlsam_ros.offline.labelling.ray_session import (
    RaySettings,
    cluster_resources,
    start_ray,
    stop_ray,
)
from vlsam_ros.offline.replay.bag_io import BagError, read_custom_data
from vlsam_ros.offline.replay.frame_outputs import FrameOutput
from vlsam_ros.offline.replay.output_bag import OutputBag
from vlsam_ros.offline.replay.replay_options import REPLAY_INFO_KEY, ReplayError, ReplayOptions
from vlsam_ros.offline.replay.source_frames import SourceBag, SourceFrame
from vlsam_ros.tools.cli import ToolError

LOG = logging.getLogger("vlsam_ros.label")

BAG_ERRORS = (BagError, ReplayError, LabelError, ToolError, OSError)
"""What fails one bag and lets the others go on."""


@dataclasses.dataclass(frozen=True)
class LabelJob:
    """One input bag (or, with ``dataset``, a CODA-layout dataset folder) and the name of
    its output bag in the output folder."""

    source: Path
    name: str
    dataset: bool = False

    def requested(self, cfg: VlsamConfig, options: ReplayOptions) -> tuple[str, ...]:
        """Camera topics: ``options.topics``, else the config's cameras (a dataset's one
        topic for a dataset)."""
        if options.topics:
            return tuple(options.topics)
        return (DATASET_TOPIC,) if self.dataset else tuple(cfg.cameras)

    def open(self, cfg: VlsamConfig, options: ReplayOptions) -> Any:
        """The input as a context manager: SourceBag, or DatasetSource for a dataset."""
        kind = DatasetSource if self.dataset else SourceBag
        return kind(self.source, self.requested(cfg, options), options.node_name)


@dataclasses.dataclass
class BagReport:
    """What happened to one bag. ``status``: ``labelled``, ``already_done`` (finished by
    an earlier run) or ``failed``; ``resumed_from``: frames taken from the checkpoint."""

    source: str
    output: str
    status: str = "pending"
    total: int = 0
    frames: int = 0
    labelled_now: int = 0
    resumed_from: int = 0
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)
    skipped_earlier: int = 0  # already_done: the skips recorded in the finished bag
    truncated_input: str | None = None
    error: str | None = None
    wall_s: float = 0.0


@dataclasses.dataclass
class LabelSummary:
    """The run: per bag, per actor, the retries, wall time (s)."""

    bags: list[BagReport]
    actors: list[dict[str, Any]]
    retries: list[dict[str, str]]
    wall_s: float

    @property
    def failed(self) -> list[BagReport]:
        return [b for b in self.bags if b.status == "failed"]

    @property
    def skipped(self) -> int:
        return sum(len(b.skipped) + b.skipped_earlier for b in self.bags)

    def as_dict(self) -> dict[str, Any]:
        labelled = sum(b.labelled_now for b in self.bags)
        return {"bags": [dataclasses.asdict(b) for b in self.bags], "actors": self.actors,
                "retries": self.retries, "wall_s": self.wall_s,
                "frames": sum(b.frames for b in self.bags), "labelled_now": labelled,
                "skipped": self.skipped, "failed": len(self.failed),
                "frames_per_s": labelled / self.wall_s if self.wall_s > 0 else None}

    def lines(self) -> list[str]:
        """The human summary, one line per bag, per actor and per retry."""
        out = []
        for b in self.bags:
            head = f"{b.source} -> {b.output}: {b.status}"
            if b.status == "failed":
                out.append(f"{head}: {b.error}")
                continue
            resumed = f", {b.resumed_from} from the checkpoint" if b.resumed_from else ""
            out.append(f"{head}, {b.frames} frame(s) ({b.labelled_now} labelled now{resumed}), "
                       f"{len(b.skipped) + b.skipped_earlier} skipped")
            out += [f"  skipped {s['frame']}: {s['reason']}" for s in b.skipped]
            if b.truncated_input:
                out.append(f"  input: {b.truncated_input}")
        for a in self.actors:
            rate = a["frames_per_s"]
            died = f", died: {a['died']}" if a["died"] else ""
            out.append(f"{a['actor']}: {a['frames']} frame(s), "
                       f"{rate if rate is None else round(rate, 2)} frames/s{died}")
        out += [f"retried {r['frame']} of {r['bag']} ({r['actor']} died)" for r in self.retries]
        info = self.as_dict()
        out.append(f"{len(self.bags)} bag(s), {len(self.failed)} failed, {info['frames']} "
                   f"frame(s), {info['skipped']} skipped, {len(self.retries)} retried, "
                   f"{self.wall_s:.2f} s wall")
        return out


def bag_settings(job: LabelJob, cfg: VlsamConfig, options: ReplayOptions,
                 factory: PipelineFactory) -> dict[str, Any]:
    """What decides a bag's output (its checkpoint fingerprint): the input files (names,
    sizes, modification times), the configuration, the replay options, the factory."""
    files = sorted(job.source.iterdir()) if job.source.is_dir() else [job.source]
    return {"input": str(job.source.resolve()),
            "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files],
            "config": to_flat(cfg),
            "options": {**dataclasses.asdict(options), "progress": None},
            "factory": f"{getattr(factory, '__module__', '?')}."
                       f"{getattr(factory, '__qualname__', type(factory).__qualname__)}"}


def check_config(cfg: VlsamConfig) -> None:
    """ToolError for settings labelling does not support (before Ray or a model starts)."""
    if cfg.tracking.mode != "off":
        raise ToolError(f"tracking.mode={cfg.tracking.mode}: vlsam-label labels frames "
                        "independently on many actors; tracking needs every frame of a "
                        "camera in order in one process: use vlsam-replay-bag, or "
                        "--set tracking.mode=off")


def _finished_counts(bag: Path) -> tuple[int, int]:
    """(frames, skipped) of a finished output bag, from its ``vlsam_ros.replay`` counts."""
    try:
        counts = json.loads(read_custom_data(bag).get(REPLAY_INFO_KEY, "{}"))
    except (BagError, ValueError):
        return 0, 0
    return (sum(c.get("frames", 0) for c in counts.values()),
            sum(c.get("skipped", 0) for c in counts.values()))


def _count_frames(job: LabelJob, cfg: VlsamConfig, options: ReplayOptions) -> int:
    with job.open(cfg, options) as source:
        return source.total


def label_bags(jobs: list[LabelJob], out_dir: str | Path, factory: PipelineFactory,
               cfg: VlsamConfig, options: ReplayOptions, pool: PoolSettings,
               ray_settings: RaySettings | None = None, sync_every_s: float = 2.0,
               on_pool: Callable[[LabelPool], None] | None = None) -> LabelSummary:
    """Labels every job into ``out_dir`` (created if missing). Bags finished by an earlier
    run are skipped, unfinished ones resume from their checkpoint. A bag that fails is
    reported in the summary and the others go on; ``PoolError`` (no actor left) and
    interrupts stop the run with every checkpoint kept. ``on_pool`` (tests) sees the pool
    once its actors are ready."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    check_config(cfg)
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reports = [BagReport(str(j.source), str(out_dir / j.name)) for j in jobs]
    todo: list[tuple[LabelJob, BagReport, BagCheckpoint]] = []
    for job, report in zip(jobs, reports, strict=True):  # cheap checks before Ray and the models
        ckpt = BagCheckpoint(out_dir, job.name, {}, 0, sync_every_s)
        if ckpt.finished:
            report.status = "already_done"
            report.frames, report.skipped_earlier = _finished_counts(ckpt.final)
            if ckpt.work.exists():  # completed, its clean-up interrupted
                shutil.rmtree(ckpt.work)
            continue
        try:
            report.total = _count_frames(job, cfg, options)
            ckpt = BagCheckpoint(out_dir, job.name, bag_settings(job, cfg, options, factory),
                                 report.total, sync_every_s)
        except BAG_ERRORS as exc:
            report.status, report.error = "failed", str(exc)
            LOG.error("%s", exc)
            continue
        todo.append((job, report, ckpt))
    actors: list[dict[str, Any]] = []
    retries: list[dict[str, str]] = []
    if todo:
        started_ray = start_ray(ray_settings or RaySettings())
        try:
            labeller = LabelPool(factory, cfg, options, auto_actors(pool, cluster_resources()))
            try:
                if on_pool is not None:
                    on_pool(labeller)
                bar = tqdm(total=sum(r.total for _, r, _ in todo), unit="frame", desc="label",
                           file=sys.stderr, disable=not options.progress, dynamic_ncols=True)
                runs: list[_BagRun] = []
                try:
                    with bar, logging_redirect_tqdm():
                        labeller.label_in_order(_stream(todo, cfg, options, bar, runs),
                                                _BagRun.take)
                finally:
                    for run in runs:  # after an interrupt or PoolError: checkpoints kept
                        run.stop()
            except KeyboardInterrupt:
                done = [r.output for r in reports if r.status == "labelled"]
                raise KeyboardInterrupt(
                    f"{len(done)} bag(s) finished in this run; the others' checkpoints are in "
                    f"{out_dir}/*.partial: run the same command again to resume") from None
            finally:
                actors = labeller.finish()
                retries = [dataclasses.asdict(r) for r in labeller.retries]
        finally:
            stop_ray(started_ray)
    return LabelSummary(reports, actors, retries, time.perf_counter() - started)


class _BagRun:
    """One bag being labelled: its checkpoint and output bag, fed in source order."""

    def __init__(self, job: LabelJob, report: BagReport, ckpt: BagCheckpoint,
                 bar: Any) -> None:
        self.job, self.report, self.ckpt, self.bar = job, report, ckpt, bar
        self.output: OutputBag | None = None
        self.started = time.perf_counter()
        self.open = False

    def __str__(self) -> str:
        return str(self.job.source)

    def start(self, source: Any, options: ReplayOptions) -> None:
        """Opens (or resumes) the checkpoint and the output bag; rewrites the journalled
        frames of a resumed bag into it."""
        self.ckpt.open()
        self.open = True
        self.report.resumed_from = self.ckpt.resumed_from
        self.output = OutputBag(self.ckpt.bag, options.storage or source.storage,
                                source.cameras, source.custom_data, options, self.job.source)
        for out in self.ckpt.journalled():
            self.output.write(out)
            self._account(out)
        self.bar.update(self.ckpt.resumed_from)

    def _account(self, out: FrameOutput) -> None:
        self.report.frames += 1
        if out.skip_reason is not None:
            self.report.skipped.append({"frame": out.where, "reason": out.skip_reason})

    def take(self, result: FrameOutput | LabelError | None) -> None:
        """The pool's sink: the next frame's output (written and journalled), a frame's
        failure (the bag fails), or None at the bag's end (the bag is completed)."""
        if not self.open:  # failed already: what was still in flight is dropped
            return
        try:
            if isinstance(result, LabelError):
                raise result
            if result is None:
                self.output.close()
                self.ckpt.complete()
                self.open = False
                self.report.status = "labelled"
                self.report.wall_s = time.perf_counter() - self.started
                return
            self.output.write(result)
            self.ckpt.append(result)
            self._account(result)
            self.report.labelled_now += 1
            self.bar.update(1)
        except BAG_ERRORS as exc:
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        """Records the bag as failed; its work folder stays (a later run resumes it)."""
        self.report.status, self.report.error = "failed", str(exc)
        self.report.wall_s = time.perf_counter() - self.started
        LOG.error("%s (what was done is kept in %s)", exc, self.ckpt.work)
        self.stop()

    def stop(self) -> None:
        """Closes the output bag unfinished and the journal (no-op once completed)."""
        if self.open:
            self.open = False
            if self.output is not None:
                self.output.abandon()
            self.ckpt.close()


def _stream(todo: list[tuple[LabelJob, BagReport, BagCheckpoint]], cfg: VlsamConfig,
            options: ReplayOptions, bar: Any, runs: list[_BagRun],
            ) -> Iterator[tuple[_BagRun, SourceFrame | None]]:
    """The frames still to label of every bag, one bag after the other, each bag's followed
    by its end marker ``None``. A bag that cannot be opened or read fails alone (its work
    folder keeps the frames written before the failure)."""
    for job, report, ckpt in todo:
        run = _BagRun(job, report, ckpt, bar)
        runs.append(run)
        try:
            with job.open(cfg, options) as source:
                run.start(source, options)
                for frame in source.frames(start=ckpt.done):
                    if not run.open:  # failed meanwhile (a frame's error)
                        break
                    yield run, frame
                if source.report is not None:  # a cut mcap: its complete messages
                    report.truncated_input = source.report.describe(job.requested(cfg, options))
        except BAG_ERRORS as exc:
            run.fail(exc)
        yield run, None
