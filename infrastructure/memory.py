"""Keep a long-lived worker's resident memory close to what its current task needs.

Measured on a 1M-polygon ingest: glibc's per-thread arenas and Arrow's caching allocator kept
freed batches resident (peak 670 MB per worker); with two arenas, Arrow on the system allocator
and a trim after each big task, the peak is about 400 MB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.abc
import logging
import os
import sys

log = logging.getLogger(__name__)
M_ARENA_MAX = -8
M_MMAP_THRESHOLD = -3
# Allocations from this size up get their own mapping, handed back to the OS when freed. Setting it
# also stops glibc from raising the threshold after each freed large block (up to 32 MiB), which
# left a worker's heap holding the 16 MiB download buffers' worth of fragments after a CSV or
# GeoJSON job (idle worker 242 -> 305 MB, and the next job's peak on top of that).
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024

_libc = None


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name or "libc.so.6")
            lib.mallopt  # noqa: B018 - only glibc has it
            lib.malloc_trim  # noqa: B018
        except (OSError, AttributeError):
            return None
        _libc = lib
    return _libc


def limit_allocator_growth(arenas: int = 2) -> None:
    """Call once at worker start, before threads allocate and before pyarrow is imported.

    Arrow's C++ code takes its default pool (mimalloc in the wheels) from ARROW_DEFAULT_MEMORY_POOL
    when the library loads; set_memory_pool() below only redirects pyarrow's own allocations. With
    mimalloc still behind the rest, a worker kept ~50 MB in a 1 GiB mimalloc region after its first
    jobs: idle 243 -> 290-300 MB, and a 10M-polygon ingest after a CSV and a GeoJSON job peaked at
    418 MB; with the system pool everywhere, idle stays at 243 MB and peaks at 320-340 MB.
    """
    if "pyarrow" in sys.modules:
        log.warning("pyarrow was imported before the allocator was chosen: Arrow keeps its default pool")
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, arenas)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    try:
        import pyarrow as pa

        pa.set_memory_pool(pa.system_memory_pool())
    except ImportError:
        pass


def release_free_memory() -> None:
    """Give freed heap pages back to the operating system (after a big task)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


class _Absent(importlib.abc.MetaPathFinder):
    """Answers "not installed" for some top-level packages, as if they were missing."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (not loaded in worker processes)", name=name)
        return None


def skip_dataframe_libraries() -> None:
    """Make geopandas and pandas look absent in this process, before GDAL's binding is imported.

    pyogrio (and pyarrow) import both at start-up when they are installed, as in a development
    environment where the tests use them, to offer DataFrame conversions workers never call:
    ~120 MB resident per worker process for nothing.
    """
    names = ("geopandas", "pandas")
    if not any(isinstance(f, _Absent) for f in sys.meta_path) and not any(n in sys.modules for n in names):
        sys.meta_path.insert(0, _Absent(names))
