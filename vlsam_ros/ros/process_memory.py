"""Process-level memory settings of the node (glibc malloc), applied once on configure.

Frames arrive on the executor thread, are processed on the worker thread and the SAM encoder
runs on a short-lived thread per frame. glibc gives threads their own malloc arenas (up to 8
per core) and rarely returns their free memory to the system, so resident memory climbs
for minutes and settles high. Capping the arena count (``mallopt(M_ARENA_MAX, n)``, the same
as the ``MALLOC_ARENA_MAX`` environment variable) keeps it flat; see
``NodeConfig.malloc_arena_max``. Freed blocks of a frame's large tensors still stay in the
arenas; ``malloc_trim`` after each frame returns them (``NodeConfig.malloc_trim_each_frame``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

M_ARENA_MAX = -8  # glibc malloc.h


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc on Linux, else None (looked up once)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if getattr(libc, "mallopt", None) is None or getattr(libc, "malloc_trim", None) is None:
        return None  # not glibc (e.g. musl)
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc


def trim_free_memory() -> bool:
    """Returns the free memory of every malloc arena to the system (``malloc_trim(0)``).

    Returns True when glibc released something, False when nothing was released or the C
    library is not glibc.
    """
    libc = _glibc()
    return libc is not None and libc.malloc_trim(0) == 1


def limit_malloc_arenas(max_arenas: int) -> bool:
    """Caps glibc's malloc arenas for this process; returns True when applied.

    ``max_arenas == 0`` leaves glibc's default. Returns False (nothing changed) on other C
    libraries or operating systems. Arenas that already exist stay; new threads share them.
    """
    if max_arenas < 0:
        raise ValueError(f"max_arenas={max_arenas}: must be >= 0")
    if max_arenas == 0:
        return False
    libc = _glibc()
    return libc is not None and libc.mallopt(M_ARENA_MAX, int(max_arenas)) == 1
