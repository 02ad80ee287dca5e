"""What every console tool shares: one-line errors, documented exit codes, interrupts without
a traceback, and outputs that are either complete or absent.

Exit codes of every ``vlsam-*`` tool:

====  =====================================================================================
0     success
1     the node could not start (``vlsam-node-runner``: configure or activate failed; the
      log says why) or the demo did not answer every frame
2     a user error: bad arguments, an invalid configuration value, an unreadable or
      malformed input, an output that exists already or cannot be written
3     ``vlsam-replay-bag`` only: done, but some input frames were skipped or unreadable
130   interrupted (Ctrl-C / SIGINT); a one-line summary says what was kept
====  =====================================================================================

A user error prints ``<tool>: error: <what is wrong>`` on one line of stderr; a bug (any
other exception) still shows its traceback. ``staged_output`` writes an output next to its
final place under a hidden name and moves it there only once complete.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator, NoReturn

from vlsam_ros.core.config import ConfigError
from vlsam_ros.core.errors import VlsamError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130

STAGING_PREFIX = ".vlsam-staging-"
"""Hidden sibling folder in which an output is written before it is moved into place."""


class ToolError(Exception):
    """A user error the tool detected itself; ``exit_code`` defaults to EXIT_USAGE."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ToolParser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line (``<tool>: error: ... (see --help)``),
    exit code 2, like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


USER_ERRORS: tuple[type[BaseException], ...] = (ToolError, ConfigError, VlsamError, OSError)
"""Errors every tool reports as one line: the tool's own, configuration, core (missing
weights, bad images...) and file-system errors (unreadable, unwritable, missing paths)."""


def one_line(exc: BaseException) -> str:
    """The message of a user error on one line; file-system errors as ``<path>: <reason>``."""
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        if exc.filename2 is not None:
            where = f"{where} -> {exc.filename2}"
        return f"{where}: {exc.strerror}" if where else exc.strerror
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def run_tool(prog: str, body: Callable[[], int],
             user_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Runs a tool's ``body`` and turns user errors and interrupts into one line and an exit
    code. A KeyboardInterrupt's message (if any) is the summary of what was kept."""
    try:
        return body()
    except KeyboardInterrupt as exc:
        summary = one_line(exc) if str(exc) else "nothing was kept"
        print(f"{prog}: interrupted; {summary}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (*USER_ERRORS, *user_errors) as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_USAGE)


def check_output_parent(path: Path, what: str = "output") -> None:
    """ToolError unless ``path``'s parent folder exists and a folder can be created in it
    (checked before any expensive work, such as loading models)."""
    parent = path.absolute().parent
    if not parent.is_dir():
        raise ToolError(f"{what} {path}: folder {parent} does not exist")
    try:  # a real probe: permissions, read-only mounts and special file systems alike
        os.rmdir(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent))
    except OSError as exc:
        raise ToolError(f"{what} {path}: cannot write in {parent}: {exc.strerror}") from None


def check_new_output(path: Path, what: str = "output") -> None:
    """ToolError unless ``path`` does not exist yet and can be created."""
    if path.exists() or path.is_symlink():
        raise ToolError(f"{what} {path} exists already; remove it or choose another path")
    check_output_parent(path, what)


def check_input(path: Path, what: str = "input", *, folder: bool | None = None) -> None:
    """ToolError unless ``path`` exists (and is a folder / file when ``folder`` says so) and
    is readable."""
    if not path.exists():
        kind = {True: "folder", False: "file", None: "file or folder"}[folder]
        raise ToolError(f"{what} {path}: {kind} not found")
    if folder is True and not path.is_dir():
        raise ToolError(f"{what} {path}: not a folder")
    if folder is False and not path.is_file():
        raise ToolError(f"{what} {path}: not a file")
    if not os.access(path, os.R_OK):
        raise ToolError(f"{what} {path}: not readable")


def _make_staging(path: Path) -> Path:
    parent = path.absolute().parent
    try:
        return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent))
    except OSError as exc:
        raise ToolError(f"output {path}: cannot write in {parent}: {exc.strerror}") from None


@contextlib.contextmanager
def staged_output(path: str | Path, *, merge: bool = False) -> Iterator[Path]:
    """Yields where to write ``path`` (a file or a folder): the same name inside a hidden
    staging folder beside it. On success it is moved to ``path``; on any error or interrupt
    the staging folder is removed, so nothing half-written is left.

    Without ``merge``, ``path`` must not exist. With ``merge`` (outputs such as an
    evaluation folder that is written again), an existing folder ``path`` keeps what is not
    rewritten and each top-level entry written is replaced as a whole.
    """
    path = Path(path)
    if merge and path.exists() and not path.is_dir():
        raise ToolError(f"output {path} exists and is not a folder")
    if not merge:
        check_new_output(path)
    else:
        check_output_parent(path)
    staging = _make_staging(path)
    target = staging / path.name
    try:
        yield target
        if merge and path.is_dir():
            if target.is_dir():
                for entry in sorted(target.iterdir()):
                    final = path / entry.name
                    if final.is_dir() and not final.is_symlink():
                        shutil.rmtree(final)
                    os.replace(entry, final)
        elif target.exists():
            if path.exists() or path.is_symlink():
                raise ToolError(f"output {path} appeared while it was being written; the "
                                "new output was discarded")
            os.rename(target, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Writes ``text`` to ``path`` through a temporary file in the same folder and an atomic
    rename: a reader sees the old file or the complete new one, never a partial one."""
    path = Path(path)
    check_output_parent(path)
    if path.is_dir():
        raise ToolError(f"output {path} is a folder; give a file name")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                   dir=path.absolute().parent)
    except OSError as exc:
        raise ToolError(f"output {path}: cannot write in {path.absolute().parent}: "
                        f"{exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value

