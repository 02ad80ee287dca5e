"""Seeded, resumable random search, and the tuning loop that scores configurations with the
contrastive reward.

**Checkpoint** (JSON lines, appended and flushed to disk after every trial): the first line
describes the search (``seed``, ``space``, and a ``fingerprint`` of everything else the
rewards depend on: frames, base configuration, scorer, text template); each further line is
one finished trial ``{"index", "params", "reward", "seconds"}``. Running the same search
again with the same checkpoint skips the finished trials; since trial i's parameters depend
only on (seed, i, space) (``SearchSpace.trial_params``), the resumed search is the same as
an uninterrupted one. A checkpoint of another search is refused, never mixed in. A last
line cut short by a crash is dropped (that trial runs again).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from vlsam_ros.core.config import VlsamConfig, from_flat, to_flat
from vlsam_ros.offline.tuning.frames import Frame, frames_fingerprint
from vlsam_ros.offline.tuning.reward import (DEFAULT_TEXT_TEMPLATE, ImageTextScorer, Masked,
                                             frame_reward)
from vlsam_ros.offline.tuning.search_space import SearchSpace
from vlsam_ros.offline.tuning.vlm_cache import CachedVlm
from vlsam_ros.tools.cli import write_text_atomically

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """The checkpoint belongs to another search or is not a checkpoint (a user error)."""


@dataclasses.dataclass(frozen=True)
class Trial:
    """One evaluated configuration: index (0-based), params (dotted key -> value), reward,
    and the wall seconds its evaluation took."""

    index: int
    params: dict[str, Any]
    reward: float
    seconds: float


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """Every trial in index order; ``best``: highest reward, the earliest on ties;
    ``resumed``: how many came from the checkpoint."""

    trials: tuple[Trial, ...]
    best: Trial
    resumed: int


def _header(space: SearchSpace, seed: int, fingerprint: str) -> dict[str, Any]:
    return {"vlsam_tune_checkpoint": CHECKPOINT_FORMAT, "seed": int(seed),
            "space": space.as_data(), "fingerprint": fingerprint}


def read_checkpoint(path: Path, header: dict[str, Any]) -> dict[int, Trial]:
    """Finished trials of ``path`` by index; {} when it does not exist. CheckpointError when
    its header differs from ``header`` (another search)."""
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    if not lines:
        return {}
    try:
        found = json.loads(lines[0])
    except json.JSONDecodeError:
        raise CheckpointError(f"checkpoint {path}: not a vlsam-tune checkpoint") from None
    if not isinstance(found, dict) or "vlsam_tune_checkpoint" not in found:
        raise CheckpointError(f"checkpoint {path}: not a vlsam-tune checkpoint")
    differs = [k for k in ("vlsam_tune_checkpoint", "seed", "space", "fingerprint")
               if found.get(k) != header[k]]
    if differs:
        what = {"fingerprint": "frames/config/scorer/template"}
        raise CheckpointError(f"checkpoint {path} was written by another search (its "
                              f"{', '.join(what.get(k, k) for k in differs)} differ); remove "
                              "it or give another --checkpoint")
    trials: dict[int, Trial] = {}
    for n, line in enumerate(lines[1:], 2):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):            # cut short by a crash: the trial runs again
                break
            raise CheckpointError(f"checkpoint {path}: line {n} is damaged") from None
        trials[int(rec["index"])] = Trial(int(rec["index"]), dict(rec["params"]),
                                          float(rec["reward"]), float(rec["seconds"]))
    return trials


def _rewrite(path: Path, header: dict[str, Any], trials: dict[int, Trial]) -> None:
    """Replaces ``path`` (atomically) by the header and ``trials``: drops a line cut short
    by a crash, so the next appended trial starts on a line of its own."""
    text = "".join(json.dumps(r) + "\n" for r in
                   [header] + [dataclasses.asdict(trials[i]) for i in sorted(trials)])
    write_text_atomically(path, text)


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def random_search(space: SearchSpace, objective: Callable[[dict[str, Any]], float],
                  trials: int, seed: int, checkpoint: str | Path | None = None,
                  fingerprint: str = "", progress: bool = True) -> SearchResult:
    """Evaluates trials 0..trials-1 (``space.trial_params(seed, i)``) with ``objective``
    (params -> reward, larger is better) and returns them all with the best. Finished
    trials found in ``checkpoint`` are not evaluated again; each new one is appended to it.
    A KeyboardInterrupt propagates after the checkpoint holds every finished trial."""
    from tqdm import tqdm

    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    path = Path(checkpoint) if checkpoint is not None else None
    header = _header(space, seed, fingerprint)
    done: dict[int, Trial] = {}
    if path is not None:
        found = read_checkpoint(path, header)
        _rewrite(path, header, found)
        done = {i: t for i, t in found.items() if i < trials}
    resumed = len(done)
    best = max(done.values(), key=lambda t: (t.reward, -t.index), default=None)
    bar = tqdm(total=trials, initial=resumed, unit="trial", desc="tune", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    with bar:
        if best is not None:
            bar.set_postfix(best=f"{best.reward:.4f}")
        for i in range(trials):
            if i in done:
                continue
            params = space.trial_params(seed, i)
            start = time.perf_counter()
            reward = float(objective(params))
            if not math.isfinite(reward):
                raise ValueError(f"trial {i} {params}: the reward is {reward}")
            trial = Trial(i, params, reward, time.perf_counter() - start)
            done[i] = trial
            if path is not None:
                _append(path, dataclasses.asdict(trial))
            if best is None or (reward, -i) > (best.reward, -best.index):
                best = trial
            bar.set_postfix(best=f"{best.reward:.4f}")
            bar.update(1)
    ordered = tuple(done[i] for i in sorted(done))
    return SearchResult(ordered, best, resumed)


# ---------------------------------------------------------------------- the tuning loop

def config_fingerprint(cfg: VlsamConfig, frames: Sequence[Frame], scorer: ImageTextScorer,
                       template: str) -> str:
    """sha256 of what the rewards depend on besides the trial parameters."""
    digest = hashlib.sha256()
    digest.update(json.dumps(to_flat(cfg), sort_keys=True).encode())
    digest.update(frames_fingerprint(frames).encode())
    digest.update(f"|{getattr(scorer, 'name', type(scorer).__name__)}|{template}".encode())
    return digest.hexdigest()


def configuration_reward(pipeline: Any, frames: Sequence[Frame], scorer: ImageTextScorer,
                         template: str = DEFAULT_TEXT_TEMPLATE) -> float:
    """Mean over ``frames`` of the frame reward (reward.py) of the pipeline's detections
    under its current configuration."""
    total = 0.0
    for frame in frames:
        result = pipeline.run(frame.image)
        total += frame_reward(frame.image, [Masked(d.label, d.mask) for d in result.detections],
                              scorer, template)
    return total / len(frames)


def tune(pipeline: Any, frames: Sequence[Frame], scorer: ImageTextScorer, space: SearchSpace,
         trials: int, seed: int, checkpoint: str | Path | None = None,
         template: str = DEFAULT_TEXT_TEMPLATE, progress: bool = True,
         vlm_cache_bytes: int = 0) -> tuple[SearchResult, VlsamConfig]:
    """Random search over ``space`` on top of ``pipeline.cfg`` (``Pipeline``: ``cfg``,
    ``update_config``, ``run``, ``vlm``), maximising ``configuration_reward``. Returns the
    search and the best configuration (base config with the best trial's values); the
    pipeline is left with its base configuration and its own VLM. With
    ``vlm_cache_bytes`` > 0, trials that share the VLM and attention settings share the VLM's
    answers (``vlm_cache.CachedVlm``, at most that many bytes of maps)."""
    if not frames:
        raise ValueError("no frames to tune on")
    base = pipeline.cfg
    vlm = pipeline.vlm
    if vlm_cache_bytes > 0:
        pipeline.vlm = CachedVlm(vlm, vlm_cache_bytes)

    def objective(params: dict[str, Any]) -> float:
        pipeline.update_config(from_flat(params, base))
        return configuration_reward(pipeline, frames, scorer, template)

    try:
        result = random_search(space, objective, trials, seed, checkpoint,
                               config_fingerprint(base, frames, scorer, template), progress)
    finally:
        pipeline.update_config(base)
        pipeline.vlm = vlm
    return result, from_flat(result.best.params, base)
