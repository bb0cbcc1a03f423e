"""Handlers of the hello_world job."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from core.errors import RetryableTaskError
from services.context import TaskContext


def simulated_failure(task_id: str, attempt: int, rate: float) -> bool:
    """Deterministic per (task, attempt), and transient: attempt k fails with probability rate**k.

    A share `rate` of tasks fails its first attempt and retries mostly succeed, as with real
    transient errors; rate 1 fails every attempt.
    """
    if rate <= 0:
        return False
    digest = hashlib.sha256(f"{task_id}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate**attempt


def greet(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    if params.get("sleep_ms"):
        time.sleep(params["sleep_ms"] / 1000)
    if simulated_failure(ctx.task_id, ctx.attempt, params.get("failure_rate", 0.0)):
        raise RetryableTaskError(f"simulated failure of task {params['index']} (attempt {ctx.attempt})")
    return {"value": params["index"], "greeting": f"hello from task {params['index']}"}


def total(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    if simulated_failure(ctx.task_id, ctx.attempt, params.get("failure_rate", 0.0)):
        raise RetryableTaskError(f"simulated failure of the sum task (attempt {ctx.attempt})")
    values = params["values"]
    return {"sum": sum(values), "count": len(values)}
