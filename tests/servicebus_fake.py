"""An in-process stand-in for the part of the azure-servicebus SDK that geoetl uses.

No Service Bus emulator runs on a development machine, so the Service Bus path is tested up to
the SDK boundary against this fake. It implements what Azure documents, not what would be
convenient:

- Peek-lock: a received message is locked for the queue's LockDuration; complete removes it,
  abandon unlocks it at once, and a lock that expires makes it available again. Settling or
  renewing with a lost lock raises MessageLockLostError; settling twice raises
  MessageAlreadySettled (the SDK checks that on the client).
  https://learn.microsoft.com/en-us/azure/service-bus-messaging/message-transfers-locks-settlement
- Delivery count: the n-th delivery of a message carries delivery_count n (the count grows each
  time a lock expires or the message is abandoned).
  https://learn.microsoft.com/en-us/dotnet/api/azure.messaging.servicebus.administration.queueproperties.maxdeliverycount
- Max delivery count: when a delivery whose count has reached MaxDeliveryCount ends without
  completion (lock expiry or abandon), the message moves to the dead-letter sub-queue with
  DeadLetterReason "MaxDeliveryCountExceeded": with MaxDeliveryCount 10, deliveries 1..10 happen
  and there is never an 11th.
  https://learn.microsoft.com/en-us/azure/service-bus-messaging/service-bus-dead-letter-queues
- Dead-letter sub-queue: receivable with sub_queue=ServiceBusSubQueue.DEAD_LETTER, no time to
  live, no automatic dead-lettering of its own; dead_letter_message stamps reason and
  error description (same page).
- Scheduled messages: a message sent with scheduled_enqueue_time_utc, or through
  schedule_messages (which returns sequence numbers for cancel_scheduled_messages), is stored at
  once and invisible until its time.
  https://learn.microsoft.com/en-us/azure/service-bus-messaging/message-sequencing#scheduled-messages
- Duplicate detection: a message whose MessageId was accepted within the queue's
  DuplicateDetectionHistoryTimeWindow (default 10 minutes) is reported as sent and dropped;
  nothing but the MessageId is compared.
  https://learn.microsoft.com/en-us/azure/service-bus-messaging/duplicate-detection
- receive_messages waits up to max_wait_time for the first message, then returns what is
  available (up to max_message_count) without waiting for more; messages come in sequence
  order (a non-partitioned queue).
  https://learn.microsoft.com/en-us/python/api/azure-servicebus/azure.servicebus.servicebusreceiver

Time is the wall clock plus an offset that `advance()` moves, so a test can jump over a lock
duration or a backoff without sleeping. Every operation is appended to `client.log`, the
recording a test can assert on.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.exceptions import MessageAlreadySettled, MessageLockLostError

MAX_DELIVERY_REASON = "MaxDeliveryCountExceeded"


@dataclass
class _Stored:
    message_id: str
    body: bytes
    application_properties: dict[Any, Any]
    content_type: str | None
    sequence_number: int
    enqueued_time_utc: datetime
    visible_at: datetime
    delivery_count: int = 0
    lock_token: str | None = None
    locked_until: datetime | None = None
    dead_letter_reason: str | None = None
    dead_letter_error_description: str | None = None


class FakeReceivedMessage:
    """What receive_messages hands out: a snapshot of the stored message at its delivery."""

    def __init__(self, stored: _Stored, queue: str, sub_queue: Any) -> None:
        self.message_id = stored.message_id
        self._body = stored.body
        self.application_properties = dict(stored.application_properties)
        self.content_type = stored.content_type
        self.sequence_number = stored.sequence_number
        self.enqueued_time_utc = stored.enqueued_time_utc
        self.delivery_count = stored.delivery_count
        self.lock_token = stored.lock_token
        self.locked_until_utc = stored.locked_until
        self.dead_letter_reason = stored.dead_letter_reason
        self.dead_letter_error_description = stored.dead_letter_error_description
        self._queue, self._sub_queue = queue, sub_queue
        self._settled = False

    @property
    def body(self) -> Iterator[bytes]:
        """A data body comes back from the SDK as an iterable of byte sections."""
        return iter([self._body])

    def __str__(self) -> str:
        return self._body.decode("utf-8")


@dataclass
class FakeQueue:
    name: str
    lock_duration: float = 60.0
    max_delivery_count: int = 10
    duplicate_detection_window: float = 600.0
    active: list[_Stored] = field(default_factory=list)  # scheduled ones included, invisible until due
    dead_letters: list[_Stored] = field(default_factory=list)
    seen_ids: dict[str, datetime] = field(default_factory=dict)


class FakeServiceBusClient:
    """ServiceBusClient with queues held in memory; one instance stands for one namespace."""

    def __init__(self, lock_duration: float = 60.0, max_delivery_count: int = 10,
                 duplicate_detection_window: float = 600.0) -> None:
        self.defaults = {"lock_duration": lock_duration, "max_delivery_count": max_delivery_count,
                         "duplicate_detection_window": duplicate_detection_window}
        self.queues: dict[str, FakeQueue] = {}
        self.log: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.offset = 0.0
        self._sequence = 0
        self.closed = False
        self.receivers: list[FakeReceiver] = []
        self.senders: list[FakeSender] = []

    # --- the namespace's clock
    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset)

    def advance(self, seconds: float) -> None:
        with self.cond:
            self.offset += seconds
            self.cond.notify_all()

    def queue(self, name: str) -> FakeQueue:
        with self.cond:
            if name not in self.queues:
                self.queues[name] = FakeQueue(name, **self.defaults)
            return self.queues[name]

    def record(self, op: str, queue: str, message_id: str | None, **detail: Any) -> None:
        self.log.append({"op": op, "queue": queue, "message_id": message_id, "at": self.now(), **detail})

    # --- SDK surface
    def get_queue_sender(self, queue_name: str, **_: Any) -> FakeSender:
        sender = FakeSender(self, queue_name)
        self.senders.append(sender)
        return sender

    def get_queue_receiver(self, queue_name: str, sub_queue: Any = None, max_wait_time: float | None = None,
                           **_: Any) -> FakeReceiver:
        receiver = FakeReceiver(self, queue_name, sub_queue, max_wait_time)
        self.receivers.append(receiver)
        return receiver

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeServiceBusClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- broker behaviour (called with self.cond held)
    def _accept(self, q: FakeQueue, msg: Any, scheduled_for: datetime | None) -> int | None:
        if not isinstance(msg, ServiceBusMessage):
            raise TypeError(f"expected ServiceBusMessage, got {type(msg).__name__}")
        now = self.now()
        window = timedelta(seconds=q.duplicate_detection_window)
        q.seen_ids = {k: t for k, t in q.seen_ids.items() if now - t < window}
        message_id = str(msg.message_id)
        if message_id in q.seen_ids:
            self.record("duplicate_dropped", q.name, message_id)
            return None
        q.seen_ids[message_id] = now
        self._sequence += 1
        due = scheduled_for or msg.scheduled_enqueue_time_utc
        stored = _Stored(
            message_id=message_id, body=str(msg).encode("utf-8"),
            application_properties=dict(msg.application_properties or {}), content_type=msg.content_type,
            sequence_number=self._sequence, enqueued_time_utc=now, visible_at=max(now, due) if due else now,
        )
        q.active.append(stored)
        self.record("scheduled" if due and due > now else "sent", q.name, message_id,
                    sequence_number=stored.sequence_number, visible_at=stored.visible_at)
        self.cond.notify_all()
        return stored.sequence_number

    def _expire_locks(self, q: FakeQueue) -> None:
        now = self.now()
        for m in list(q.active):
            if m.lock_token is not None and m.locked_until is not None and m.locked_until <= now:
                self.record("lock_expired", q.name, m.message_id, delivery_count=m.delivery_count)
                self._unlock(q, m)

    def _unlock(self, q: FakeQueue, m: _Stored) -> None:
        """A delivery ended without completion; past the last allowed one the message is dead-lettered."""
        m.lock_token = m.locked_until = None
        if m.delivery_count >= q.max_delivery_count:
            q.active.remove(m)
            m.dead_letter_reason = MAX_DELIVERY_REASON
            m.dead_letter_error_description = (
                f"Message could not be consumed after {q.max_delivery_count} delivery attempts.")
            q.dead_letters.append(m)
            self.record("dead_lettered", q.name, m.message_id, reason=MAX_DELIVERY_REASON,
                        delivery_count=m.delivery_count)
        self.cond.notify_all()


class FakeSender:
    def __init__(self, client: FakeServiceBusClient, queue: str) -> None:
        self.client, self.queue_name, self.closed = client, queue, False

    def _messages(self, messages: Any) -> list[Any]:
        if self.closed:
            raise RuntimeError("the sender is closed")
        return list(messages) if isinstance(messages, Iterable) and not isinstance(messages, ServiceBusMessage) \
            else [messages]

    def send_messages(self, messages: Any, **_: Any) -> None:
        msgs = self._messages(messages)
        with self.client.cond:
            q = self.client.queue(self.queue_name)
            for m in msgs:
                self.client._accept(q, m, None)

    def schedule_messages(self, messages: Any, schedule_time_utc: datetime, **_: Any) -> list[int]:
        msgs = self._messages(messages)
        with self.client.cond:
            q = self.client.queue(self.queue_name)
            seqs = [self.client._accept(q, m, schedule_time_utc) for m in msgs]
        return [s for s in seqs if s is not None]

    def cancel_scheduled_messages(self, sequence_numbers: int | list[int], **_: Any) -> None:
        seqs = {sequence_numbers} if isinstance(sequence_numbers, int) else set(sequence_numbers)
        with self.client.cond:
            q = self.client.queue(self.queue_name)
            q.active = [m for m in q.active if m.sequence_number not in seqs]
            self.client.record("cancelled", q.name, None, sequence_numbers=sorted(seqs))

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeSender:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class FakeReceiver:
    def __init__(self, client: FakeServiceBusClient, queue: str, sub_queue: Any, max_wait_time: float | None) -> None:
        self.client, self.queue_name, self.sub_queue = client, queue, sub_queue
        self.max_wait_time = max_wait_time
        self.closed = False

    def _pool(self, q: FakeQueue) -> list[_Stored]:
        return q.dead_letters if self.sub_queue == ServiceBusSubQueue.DEAD_LETTER else q.active

    def receive_messages(self, max_message_count: int | None = 1, max_wait_time: float | None = None) -> list[Any]:
        if self.closed:
            raise RuntimeError("the receiver is closed")
        wait = max_wait_time if max_wait_time is not None else self.max_wait_time
        deadline = time.monotonic() + (wait if wait is not None else 3600.0)
        client = self.client
        with client.cond:
            q = client.queue(self.queue_name)
            while True:
                client._expire_locks(q)
                now = client.now()
                ready = [m for m in self._pool(q) if m.lock_token is None and m.visible_at <= now]
                if ready or self.closed:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                client.cond.wait(min(left, 0.05))  # also wakes for due scheduled messages and expiring locks
            out = []
            for m in sorted(ready, key=lambda s: s.sequence_number)[: max_message_count or 1]:
                m.delivery_count += 1
                m.lock_token = str(uuid.uuid4())
                m.locked_until = now + timedelta(seconds=q.lock_duration)
                client.record("received", q.name, m.message_id, delivery_count=m.delivery_count,
                              sub_queue=str(self.sub_queue) if self.sub_queue else None)
                out.append(FakeReceivedMessage(m, q.name, self.sub_queue))
            return out

    def _locked(self, message: FakeReceivedMessage) -> tuple[FakeQueue, _Stored]:
        """The stored message if this delivery still holds its lock (called with the condition held)."""
        if message._settled:
            raise MessageAlreadySettled()
        q = self.client.queue(self.queue_name)
        self.client._expire_locks(q)
        for m in self._pool(q):
            if m.lock_token is not None and m.lock_token == message.lock_token:
                return q, m
        raise MessageLockLostError(message="the lock of the message expired or was lost")

    def complete_message(self, message: FakeReceivedMessage) -> None:
        with self.client.cond:
            q, m = self._locked(message)
            self._pool(q).remove(m)
            message._settled = True
            self.client.record("completed", q.name, m.message_id, delivery_count=m.delivery_count)

    def abandon_message(self, message: FakeReceivedMessage) -> None:
        with self.client.cond:
            q, m = self._locked(message)
            message._settled = True
            self.client.record("abandoned", q.name, m.message_id, delivery_count=m.delivery_count)
            if self.sub_queue == ServiceBusSubQueue.DEAD_LETTER:
                m.lock_token = m.locked_until = None
                self.client.cond.notify_all()
            else:
                self.client._unlock(q, m)

    def dead_letter_message(self, message: FakeReceivedMessage, reason: str | None = None,
                            error_description: str | None = None) -> None:
        with self.client.cond:
            if self.sub_queue == ServiceBusSubQueue.DEAD_LETTER:
                raise ValueError("a message cannot be dead-lettered from the dead-letter queue")
            q, m = self._locked(message)
            q.active.remove(m)
            m.lock_token = m.locked_until = None
            m.dead_letter_reason, m.dead_letter_error_description = reason, error_description
            q.dead_letters.append(m)
            message._settled = True
            self.client.record("dead_lettered", q.name, m.message_id, reason=reason, delivery_count=m.delivery_count)

    def renew_message_lock(self, message: FakeReceivedMessage, **_: Any) -> datetime:
        with self.client.cond:
            q, m = self._locked(message)
            m.locked_until = self.client.now() + timedelta(seconds=q.lock_duration)
            message.locked_until_utc = m.locked_until
            self.client.record("lock_renewed", q.name, m.message_id, delivery_count=m.delivery_count)
            return m.locked_until

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeReceiver:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
