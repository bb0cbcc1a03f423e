"""One psycopg connection pool per process."""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from config import get_settings

_lock = threading.Lock()
_pool: ConnectionPool | None = None
_pool_pid: int | None = None
_capacity = 0


def reserve_capacity(connections: int) -> None:
    """Make the pool (when it opens) large enough for this many concurrent users."""
    global _capacity
    _capacity = max(_capacity, connections)


def _configure(conn: psycopg.Connection) -> None:
    conn.row_factory = dict_row  # type: ignore[assignment]


RECENTLY_USED_SECONDS = 1.0
_returned_at: weakref.WeakKeyDictionary[psycopg.Connection, float] = weakref.WeakKeyDictionary()


def _mark_returned(conn: psycopg.Connection) -> None:
    _returned_at[conn] = time.monotonic()


def _check(conn: psycopg.Connection) -> None:
    """Probe a connection before handing it out, unless it came back from a user less than a second ago.

    The probe is a round trip; every task takes a connection twice, so probing each time cost about an
    eighth of a worker's time on short tasks. A connection that worked a moment ago is taken as good; one a
    database restart broke since then fails its first statement, and the task is retried.
    """
    if time.monotonic() - _returned_at.get(conn, float("-inf")) < RECENTLY_USED_SECONDS:
        return
    ConnectionPool.check_connection(conn)


def get_pool() -> ConnectionPool:
    """The process's pool, opened on first use (and again after a fork)."""
    global _pool, _pool_pid
    with _lock:
        if _pool is None or _pool_pid != os.getpid():
            s = get_settings()
            _pool = ConnectionPool(
                s.dsn,
                min_size=s.db_pool_min_size,
                max_size=max(s.db_pool_max_size, s.db_pool_min_size, _capacity),
                configure=_configure,
                kwargs={"application_name": "geoetl"},
                open=True,
                name="geoetl",
                timeout=5.0,
                check=_check,  # survive database restarts
            )
            _pool_pid = os.getpid()
        return _pool


def close_pool() -> None:
    global _pool
    with _lock:
        if _pool is not None and _pool_pid == os.getpid():
            _pool.close()
        _pool = None


@contextmanager
def connection() -> Iterator[psycopg.Connection]:
    """A pooled connection; the block's work is committed on success, rolled back on error."""
    with get_pool().connection() as conn:
        try:
            yield conn
        finally:
            _mark_returned(conn)


def connect(autocommit: bool = False) -> psycopg.Connection:
    """A dedicated (unpooled) connection, for LISTEN and long maintenance work."""
    conn = psycopg.connect(get_settings().dsn, autocommit=autocommit, application_name="geoetl")
    _configure(conn)
    return conn
