"""Per-bag checkpoint of a labelling run: finished bags are skipped, a partial one resumes
from its last complete frame, and nothing unfinished looks finished.

Layout in the output folder, for the input bag whose output is named ``NAME``:

* ``NAME/``: the finished output bag. It appears only by an atomic rename once the bag is
  complete and closed, so its existence is the mark of a finished bag.
* ``NAME.partial/``: the work folder of an unfinished bag:

  - ``progress.json`` (written atomically): the run's fingerprint (input, configuration,
    replay options), frames done and total, for people and for the check on resume;
  - ``journal.bin``: every finished frame's :class:`FrameOutput`, in source order, as
    records ``<u32 length><u32 crc32><pickle>``; a record cut by a crash fails its length
    or checksum and is dropped (with everything after it) on resume;
  - ``NAME/``: the output bag being written (named like the final one, so its file names
    and metadata are those of a replay into ``NAME``).

On resume the bag is rewritten from the journal (no pipeline call) and labelling continues
with the next frame, so the output is byte-identical to an uninterrupted run: the output
bag's bytes depend only on the sequence of :class:`FrameOutput` written (``OutputBag``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
import time
import zlib
from pathlib import Path
from typing import Any, Iterator

from vlsam_ros.offline.replay.frame_outputs import FrameOutput
from vlsam_ros.tools.cli import ToolError, write_text_atomically

PARTIAL_SUFFIX = ".partial"
PROGRESS_FILE = "progress.json"
JOURNAL_FILE = "journal.bin"
_RECORD_HEAD = struct.Struct("<II")  # payload length, crc32 of the payload


def fingerprint(settings: dict[str, Any]) -> str:
    """sha256 of the JSON of what decides a bag's output (input, config, options)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def read_journal(path: Path) -> tuple[list[int], int]:
    """``(record offsets, valid length)`` of a journal: records up to the first cut or
    corrupt one. Reads headers and checksums, keeps no payload."""
    offsets: list[int] = []
    if not path.is_file():
        return offsets, 0
    size = path.stat().st_size
    with path.open("rb") as f:
        pos = 0
        while pos + _RECORD_HEAD.size <= size:
            length, crc = _RECORD_HEAD.unpack(f.read(_RECORD_HEAD.size))
            if pos + _RECORD_HEAD.size + length > size:
                break
            if zlib.crc32(f.read(length)) != crc:
                break
            offsets.append(pos)
            pos += _RECORD_HEAD.size + length
    return offsets, pos


def iter_journal(path: Path, count: int) -> Iterator[FrameOutput]:
    """The first ``count`` records of a journal (checked by :func:`read_journal`), streamed."""
    with path.open("rb") as f:
        for _ in range(count):
            length, _ = _RECORD_HEAD.unpack(f.read(_RECORD_HEAD.size))
            yield pickle.loads(f.read(length))


class BagCheckpoint:
    """The checkpoint of one output bag ``out_dir / name``.

    ``done`` is how many frames (from the first, in source order) are journalled; write the
    journalled outputs with :meth:`journalled` before labelling frame ``done`` on.
    """

    def __init__(self, out_dir: Path, name: str, settings: dict[str, Any], total: int,
                 sync_every_s: float) -> None:
        self.final = out_dir / name
        self.work = out_dir / (name + PARTIAL_SUFFIX)
        self.bag = self.work / name  # the same file names as a replay into NAME
        self.journal_path = self.work / JOURNAL_FILE
        self.fingerprint = fingerprint(settings)
        self.settings = settings
        self.total = total
        self.sync_every_s = sync_every_s
        self.done = 0
        self.resumed_from = 0
        self._journal: Any = None
        self._last_sync = time.monotonic()

    @property
    def finished(self) -> bool:
        """True when the output bag exists (only a complete bag is renamed there)."""
        return self.final.exists()

    def open(self) -> None:
        """Starts or resumes: checks a found work folder's fingerprint (ToolError when the
        settings differ), drops a cut journal tail and the half-written bag."""
        progress = self.work / PROGRESS_FILE
        if self.work.exists():
            try:
                found = json.loads(progress.read_text())["fingerprint"]
            except (OSError, ValueError, KeyError):
                found = None
            if found != self.fingerprint:
                raise ToolError(f"{self.work} was left by a run with other inputs or settings "
                                f"(or is damaged); remove it to label {self.final.name} anew")
            offsets, valid = read_journal(self.journal_path)
            with self.journal_path.open("ab") as f:
                f.truncate(valid)
            self.done = self.resumed_from = len(offsets)
            if self.bag.exists():
                shutil.rmtree(self.bag)
        else:
            self.work.mkdir()
            self.journal_path.touch()
        self._journal = self.journal_path.open("ab")
        self._write_progress()

    def journalled(self) -> Iterator[FrameOutput]:
        """The outputs of the frames already done (a resumed bag), in source order."""
        return iter_journal(self.journal_path, self.resumed_from)

    def append(self, out: FrameOutput) -> None:
        """Journals the next frame's output (flushed at once); syncs to disk (fsync, and
        progress.json) every ``sync_every_s`` seconds."""
        payload = pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)
        self._journal.write(_RECORD_HEAD.pack(len(payload), zlib.crc32(payload)) + payload)
        self._journal.flush()  # in the OS's hands: survives this process being killed
        self.done += 1
        if time.monotonic() - self._last_sync >= self.sync_every_s:
            self.sync()

    def sync(self) -> None:
        """Flushes the journal to disk and rewrites progress.json."""
        if self._journal is not None and not self._journal.closed:
            self._journal.flush()
            os.fsync(self._journal.fileno())
            self._write_progress()
        self._last_sync = time.monotonic()

    def _write_progress(self) -> None:
        write_text_atomically(self.work / PROGRESS_FILE, json.dumps(
            {"fingerprint": self.fingerprint, "frames_done": self.done, "total": self.total,
             "settings": self.settings}, indent=2, sort_keys=True, default=str) + "\n")

    def close(self) -> None:
        """Stops journalling (the work folder stays for a later resume)."""
        if self._journal is not None and not self._journal.closed:
            self.sync()
            self._journal.close()

    def complete(self) -> None:
        """The closed bag becomes ``NAME`` (atomic rename), then the work folder goes."""
        self.close()
        os.rename(self.bag, self.final)
        shutil.rmtree(self.work)
