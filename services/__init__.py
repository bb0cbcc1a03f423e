"""Task handlers, registered explicitly by task type."""

from __future__ import annotations

from services import hello_world, vector
from services.context import Handler, TaskContext

ALL_HANDLERS: dict[str, Handler] = {
    "hello_world_greet": hello_world.greet,
    "hello_world_sum": hello_world.total,
    **vector.HANDLERS,
}

__all__ = ["ALL_HANDLERS", "Handler", "TaskContext"]
