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


_heavy = threading.BoundedSemaphore(1)


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

    return run
