"""Lint as a test: ruff, configured in ruff.toml, finds nothing in the project's Python code.

Run by ``make test``. To see or fix the findings by hand:
``.venv/bin/ruff check vlsam_ros test bench launch scripts`` (``--fix`` for the safe fixes).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LINTED = ("vlsam_ros", "test", "bench", "launch", "scripts")


def ruff(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """``python -m ruff check`` in the repository root (its ruff.toml), no cache written."""
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache",
                           "--output-format", "concise", *args], cwd=REPO_ROOT, input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_ruff_finds_nothing():
    result = ruff(*LINTED)
    report = f"{result.stdout}{result.stderr}"
    assert result.returncode == 0, f"ruff findings (see ruff.toml for the rules):\n{report}"
    assert "warning" not in result.stderr.lower(), report  # e.g. a malformed noqa comment


def test_ruff_reports_a_planted_finding():
    """The configuration is read and package code is checked: an unused import and a
    mutable default argument in a would-be package module are both reported."""
    result = ruff("--stdin-filename", "vlsam_ros/core/planted.py", "-",
                  stdin="import os\n\n\ndef f(x=[]):\n    return x\n")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "F401" in result.stdout and "B006" in result.stdout, result.stdout
