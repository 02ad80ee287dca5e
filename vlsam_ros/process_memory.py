"""Process-level memory settings of the node (glibc malloc), applied once on configure.

Frames arrive on the executor thread, are processed on the worker thread and the SAM encoder
runs on a short-lived thread per frame. glibc gives threads their own malloc arenas (up to 8
per core) and rarely returns their free memory to the system, so resident memory climbs
for minutes and settles high. Capping the arena count (``mallopt(M_ARENA_MAX, n)``, the same
as the ``MALLOC_ARENA_MAX`` environment variable) keeps it flat; see
``NodeConfig.malloc_arena_max``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_ARENA_MAX = -8  # glibc malloc.h


def limit_malloc_arenas(max_arenas: int) -> bool:
    """Caps glibc's malloc arenas for this process; returns True when applied.

    ``max_arenas == 0`` leaves glibc's default. Returns False (nothing changed) on other C
    libraries or operating systems. Arenas that already exist stay; new threads share them.
    """
    if max_arenas < 0:
        raise ValueError(f"max_arenas={max_arenas}: must be >= 0")
    if max_arenas == 0 or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:  # not glibc (e.g. musl)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(M_ARENA_MAX, int(max_arenas)) == 1
