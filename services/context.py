"""What a task handler gets besides its parameters."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg

from core.errors import JobCancelled
from infrastructure import database
from infrastructure.memory import release_free_memory

log = logging.getLogger(__name__)
# How often a running task asks the database whether its job is still active (from checkpoint()).
CANCEL_POLL_SECONDS = 2.0


@dataclass
class TaskContext:
    """`conn` is the transaction that also completes the task: effects written there commit exactly once."""

    task_id: str
    job_id: str
    job_type: str
    stage: int
    attempt: int
    conn: psycopg.Connection
    run: int = 1  # the job's run (1 + re-runs after failure): keeps a re-run's intermediates apart
    heartbeat: Callable[[], None] = lambda: None


Handler = Callable[[dict[str, Any], TaskContext], dict[str, Any]]


_heavy = threading.Lock()


def one_at_a_time(handler: Handler) -> Handler:
    """At most one such handler runs per process: big batches stay bounded in memory, and since the
    work is CPU-bound a second one in the same interpreter would only wait for the GIL anyway."""

    @functools.wraps(handler)
    def run(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        with _heavy:
            try:
                return handler(params, ctx)
            finally:
                release_free_memory()

    run.one_at_a_time = True  # type: ignore[attr-defined]
    return run


def must_wait(handler: Handler | None) -> bool:
    """A one-at-a-time handler while this process already runs one: a worker gives such a message back
    instead of holding it, so an idle worker process takes it."""
    return bool(getattr(handler, "one_at_a_time", False)) and slot_busy()


def slot_busy() -> bool:
    return _heavy.locked()


# ---------------------------------------------------------------- cancellation
@dataclass
class _RunningTask:
    task_id: str
    job_id: str
    conn: psycopg.Connection
    stop: threading.Event = field(default_factory=threading.Event)
    reason: str = "cancelled"
    polled_at: float = field(default_factory=time.monotonic)


_running: dict[str, _RunningTask] = {}
_running_lock = threading.Lock()
_current = threading.local()


@contextmanager
def task_scope(task_id: str, job_id: str, conn: psycopg.Connection) -> Iterator[None]:
    """While a handler runs: checkpoint() in its thread can stop it, and stop_task() from another thread."""
    running = _RunningTask(task_id, job_id, conn)
    with _running_lock:
        _running[task_id] = running
    previous = getattr(_current, "task", None)
    _current.task = running
    try:
        yield
    finally:
        _current.task = previous
        with _running_lock:
            _running.pop(task_id, None)


def stop_task(task_id: str, reason: str) -> bool:
    """Ask a task running in this process to stop (its job was cancelled): flag it, and interrupt the
    statement its connection runs (a COPY, an index build). True when the task runs here."""
    with _running_lock:
        running = _running.get(task_id)
    if running is None:
        return False
    if not running.stop.is_set():
        running.reason = reason
        running.stop.set()
        log.info("stopping task %s: its job is %s", task_id, reason)
        try:
            running.conn.cancel_safe(timeout=5.0)
        except Exception:
            log.warning("could not interrupt the statement of task %s", task_id, exc_info=True)
    return True


def checkpoint() -> None:
    """Called between batches: raise JobCancelled when this task's job is no longer active.

    Workers flag their tasks when they renew their locks; besides that, a task asks the database
    itself at most every CANCEL_POLL_SECONDS (so that hosts without our lock-renewal loop stop too).
    """
    running: _RunningTask | None = getattr(_current, "task", None)
    if running is None:
        return
    if stopped(running):
        raise JobCancelled(f"the job is {running.reason}; task {running.task_id} stopped")


def current_task() -> _RunningTask | None:
    """The task this thread runs (None outside one): for a helper thread that watches it (stopped())."""
    return getattr(_current, "task", None)


def stopped(running: _RunningTask) -> bool:
    """Whether the task's job is no longer active; asks the database at most every CANCEL_POLL_SECONDS.
    Safe from any thread."""
    if not running.stop.is_set() and time.monotonic() - running.polled_at >= CANCEL_POLL_SECONDS:
        running.polled_at = time.monotonic()
        try:
            with database.connection() as conn:
                row = conn.execute("SELECT status FROM app.jobs WHERE job_id = %s", [running.job_id]).fetchone()
        except Exception:  # no connection free right now: the next checkpoint asks again
            log.debug("could not check whether job %s is still active", running.job_id, exc_info=True)
            row = {"status": "queued"}
        status = row["status"] if row else "deleted"
        if status not in ("queued", "processing"):
            stop_task(running.task_id, status)  # also ends what the server still runs for it (a COPY's tail)
    return running.stop.is_set()
