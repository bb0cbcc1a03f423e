"""What a task handler gets besides its parameters."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from infrastructure.memory import release_free_memory


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
