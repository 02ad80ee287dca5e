"""Connecting to Ray: a cluster by address, or a small local Ray on loopback.

Only the offline labelling code imports this module (and Ray); the node never does.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from vlsam_ros.tools.cli import ToolError

LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch between a cluster-reachable node address and loopback. Set to ``0`` for a
local Ray, its servers bind 127.0.0.1 only (checked with ``ss -ltn``); otherwise they
listen on every interface."""

WORKER_NICENESS_ENV = "RAY_worker_niceness"
"""Ray runs its workers at niceness 15 by default; a local Ray here runs them at 0 (like
``vlsam-replay-bag``'s own process) unless this variable is set."""


@dataclasses.dataclass(frozen=True)
class RaySettings:
    """Where and how big: ``address`` None (and no ``RAY_ADDRESS``) starts a local Ray in
    this process with ``num_cpus`` / ``num_gpus`` (None: what the machine has) and an
    object store of ``object_store_mb`` MiB; an address (``auto``, ``ray://host:10001`` or
    ``host:6379``) connects to a running cluster and the sizes are the cluster's."""

    address: str | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None
    object_store_mb: int = 200


def cluster_address(settings: RaySettings) -> str | None:
    """The cluster to join: ``settings.address``, else ``RAY_ADDRESS``, else None (local)."""
    return settings.address or os.environ.get("RAY_ADDRESS") or None


def start_ray(settings: RaySettings) -> bool:
    """Joins or starts Ray unless this process already did (then it is reused, e.g. by the
    tests' one session). Returns True when this call started it (the caller shuts it down)."""
    address = cluster_address(settings)
    if address is None:
        os.environ[LOCAL_ONLY_ENV] = "0"  # read when ray is imported, and by its children
        os.environ.setdefault(WORKER_NICENESS_ENV, "0")  # read by the raylet it starts
    try:
        import ray
    except ImportError:
        raise ToolError("vlsam-label needs Ray, which is not installed: pip install "
                        "ray==2.60.0 (or pip install '.[labelling]' in the source tree)"
                        ) from None

    if ray.is_initialized():
        return False
    if address is not None:
        ray.init(address=address, configure_logging=False, log_to_driver=True)
        return True
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # in case ray was imported before the env var
    ray.init(address="local", num_cpus=settings.num_cpus, num_gpus=settings.num_gpus,
             object_store_memory=settings.object_store_mb * 1024 * 1024,
             include_dashboard=False, _node_ip_address="127.0.0.1",
             configure_logging=False, log_to_driver=True)
    return True


def stop_ray(started: bool) -> None:
    """Shuts Ray down if ``start_ray`` started it."""
    if started:
        import ray

        ray.shutdown()


def cluster_resources() -> dict[str, Any]:
    """Ray's total resources (CPU, GPU, memory...) of the joined cluster."""
    import ray

    return dict(ray.cluster_resources())
