"""Queue backends behind one interface; `get_queue()` picks the configured one."""

from __future__ import annotations

from functools import lru_cache

from config import get_settings
from infrastructure.queues.base import MessageQueue, OutgoingMessage, ReceivedMessage


@lru_cache(maxsize=1)
def get_queue() -> MessageQueue:
    if get_settings().queue_backend == "servicebus":
        from infrastructure.queues.servicebus import ServiceBusQueue

        return ServiceBusQueue()
    from infrastructure.queues.postgres import PostgresQueue

    return PostgresQueue()


__all__ = ["MessageQueue", "OutgoingMessage", "ReceivedMessage", "get_queue"]
