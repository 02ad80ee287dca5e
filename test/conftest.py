"""Shared fixtures. Every test process keeps ROS 2 traffic on loopback, in its own domain."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

# Before anything imports rclpy: loopback-only discovery and a per-run domain id, so that
# parallel runs (CI, developers) never hear each other or anything off this machine.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_LOCALHOST_ONLY"] = "1"
os.environ.setdefault("ROS_DOMAIN_ID", str(10 + os.getpid() % 90))
# pytest-xdist workers (make test runs two) inherit the controller's id: give each worker its
# own domain next to it, so the workers' ROS tests never hear each other.
if os.environ.get("PYTEST_XDIST_WORKER", "").startswith("gw"):
    _worker = int(os.environ["PYTEST_XDIST_WORKER"][2:])
    _base = int(os.environ["ROS_DOMAIN_ID"]) - 10
    os.environ["ROS_DOMAIN_ID"] = str(10 + (_base + 45 * _worker) % 90)
    # As many workers as cores (make test): one OpenMP thread each, for this process and
    # the nodes and tools it starts. Two workers with two threads each oversubscribe the
    # cores, and waiting OpenMP threads spin: the parallel part took 218 s that way, 186 s
    # with one thread each (same machine, same tests).
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:  # imported before this file (by a plugin): set it directly
        sys.modules["torch"].set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]

# Under `make test` / `make test-slow` (VLSAM_NO_SKIP=1) a skipped test is a failure: the
# ROS tests skip when the wheels or the built messages are missing, and a broken build must
# not pass as coverage. Only skips that are right on some machines stay skips.
ALLOWED_SKIPS = ("needs a machine without CUDA", "malloc_trim is glibc's")


def _skip_becomes_failure(report) -> bool:
    return (os.environ.get("VLSAM_NO_SKIP") == "1" and report.skipped
            and not hasattr(report, "wasxfail")
            and not any(reason in str(report.longrepr) for reason in ALLOWED_SKIPS))


def _fail_skip(report) -> None:
    report.outcome = "failed"
    report.longrepr = f"skipped, which VLSAM_NO_SKIP=1 (make test) forbids: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if _skip_becomes_failure(report):
        _fail_skip(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    report = (yield).get_result()
    if _skip_becomes_failure(report):  # a module-level importorskip
        _fail_skip(report)


@pytest.hookimpl(tryfirst=True)  # before -m deselects anything
def pytest_collection_modifyitems(config, items):
    """make test's second run collects only the files that spell ``mark.alone`` (Makefile:
    ALONE_TEST_FILES); an ``alone`` test marked any other way would run in neither part."""
    for item in items:
        if item.get_closest_marker("alone") and "mark.alone" not in item.path.read_text():
            raise pytest.UsageError(f"{item.nodeid}: mark `alone` tests with "
                                    "@pytest.mark.alone or pytestmark = pytest.mark.alone "
                                    "in their file (make test finds them by that text)")


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same random state."""
    import random

    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run faster on one torch thread, above all on a loaded shared machine.
    Opt in per module with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A folder with tiny seeded random models saved exactly as real checkpoints are:

    ``llava/`` (Hugging Face save_pretrained: weights, config, tokenizer, processor) and
    ``sam_vit_t.pt`` (a MobileSAM state dict).
    """
    from vlsam_ros.testing.make_tiny_models import make_tiny_models

    out = tmp_path_factory.mktemp("tiny_models")
    make_tiny_models(out, families=("llava",), sam_types=("vit_t",), seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_config(tiny_model_dir):
    """Factory: a CPU VlsamConfig pointing at the tiny models, with dotted overrides."""
    from vlsam_ros.testing.make_tiny_models import tiny_model_overrides
    from vlsam_ros.core.config import from_flat

    def make(**overrides):
        values = tiny_model_overrides(tiny_model_dir)
        values.update({k.replace("__", "."): v for k, v in overrides.items()})
        return from_flat(values)

    return make
