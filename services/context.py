"""What a task handler gets besides its parameters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg


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
