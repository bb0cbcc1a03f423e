"""The queue interface: Service Bus peek-lock semantics, whatever the backend."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg


def redelivery_delay(deliveries: int) -> float:
    """Backoff before a message whose handling failed outside any task retry (database unreachable,
    a stage that could not start) is delivered again: 2, 4, 8 ... 60 seconds, so a short outage does
    not use up the queue's deliveries in seconds."""
    return min(60.0, 2.0 ** min(max(deliveries, 1), 6))


@dataclass
class ReceivedMessage:
    """A locked message. Settle it with complete, abandon or dead_letter before the lock expires."""

    queue: str
    message_id: str
    body: dict[str, Any]
    delivery_count: int
    lock_token: str
    handle: Any = field(default=None, repr=False)  # backend's own object (row id, SB message)


@dataclass
class OutgoingMessage:
    message_id: str
    body: dict[str, Any]
    delay_seconds: float = 0.0


class MessageQueue(ABC):
    """Send inside a database transaction (outbox), receive with a lock, settle explicitly."""

    backend: str
    # True when complete(msg, conn) deletes the message in the caller's transaction, so the message
    # and the effects of its handling commit (or are lost) together.
    settles_in_transaction: bool = False

    @abstractmethod
    def send(self, conn: psycopg.Connection, queue: str, messages: Sequence[OutgoingMessage]) -> None:
        """Record messages in the caller's transaction; they become visible when it commits."""

    def discard_pending(self, conn: psycopg.Connection, queue: str, job_id: str) -> int:
        """Drop a finished job's messages that no consumer holds, in the caller's transaction.

        Only possible where the queue lives in the database; elsewhere they arrive and are
        acknowledged as no-ops.
        """
        return 0

    def after_commit(self) -> None:  # noqa: B027 - a hook most backends do not need
        """Push what the last transactions recorded (no-op when the outbox is the queue)."""

    @abstractmethod
    def receive(self, queue: str, max_messages: int = 1, lock_seconds: float | None = None) -> list[ReceivedMessage]:
        ...

    @abstractmethod
    def complete(self, msg: ReceivedMessage, conn: psycopg.Connection | None = None) -> None:
        """Remove the message; with conn, as part of that transaction."""

    @abstractmethod
    def abandon(self, msg: ReceivedMessage, delay_seconds: float = 0.0) -> None:
        ...

    @abstractmethod
    def dead_letter(self, msg: ReceivedMessage, reason: str) -> None:
        ...

    def release(self, msg: ReceivedMessage) -> None:
        """Give back a message that was received but never started."""
        self.abandon(msg)

    @abstractmethod
    def renew_lock(self, msg: ReceivedMessage) -> bool:
        """Extend the lock; False when it was lost (another consumer may have the message)."""

    def wait(self, timeout: float) -> None:
        """Block until new messages may be available or timeout passes."""
        import time

        time.sleep(timeout)

    @abstractmethod
    def health(self) -> dict[str, Any]:
        ...

    def close(self) -> None:  # noqa: B027 - a hook most backends do not need
        """Release connections and threads."""

    # --- operations: queue statistics and dead letters (GET /api/metrics, /api/queues/...)
    def queue_stats(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        """Depth, oldest waiting message and dead letters of each queue."""
        raise NotImplementedError(f"{self.backend} queues report no statistics")

    def dead_letters(self, queue: str, limit: int, after: str | None = None) -> DeadLetterPage:
        """Dead-lettered messages, oldest first, `limit` at a time after the cursor `after`."""
        raise NotImplementedError(f"{self.backend} queues cannot list dead letters")

    def replay_dead_letters(self, queue: str, message_ids: Sequence[str] | None, limit: int) -> list[str]:
        """Send dead-lettered messages (these ids, or the oldest `limit`) to their queue again; their ids."""
        raise NotImplementedError(f"{self.backend} queues cannot replay dead letters")


@dataclass
class QueueStats:
    depth: int
    oldest_age_seconds: float | None
    dead_letters: int
    scheduled: int = 0  # waiting for their delay (a retry's backoff)


@dataclass
class DeadLetter:
    message_id: str
    body: dict[str, Any]
    reason: str | None
    dead_lettered_at: str | None
    enqueued_at: str | None
    delivery_count: int
    cursor: str


@dataclass
class DeadLetterPage:
    messages: list[DeadLetter]
    total: int | None
    next_cursor: str | None
