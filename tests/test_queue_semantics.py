"""One set of queue semantics, run against both backends.

`postgres`: the real queue table. `servicebus`: ServiceBusQueue (outbox, relay, receivers,
settlement) against the in-process SDK fake of tests/servicebus_fake.py, which follows Azure's
documented behaviour. Whatever a worker or a function relies on must hold for both.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.servicebus import ServiceBusSubQueue

from infrastructure import database
from infrastructure.queues import OutgoingMessage, ReceivedMessage
from infrastructure.queues.postgres import PostgresQueue
from infrastructure.queues.servicebus import ServiceBusQueue
from tests.servicebus_fake import FakeServiceBusClient

MAX_DELIVERIES = 3


class Backend:
    """The queue under test plus the few things a test needs to do to time and to dead letters."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name
        if kind == "postgres":
            self.lock_seconds = 3.0
            self.queue: Any = PostgresQueue(lock_seconds=self.lock_seconds, max_delivery_count=MAX_DELIVERIES)
        else:
            self.lock_seconds = 30.0
            self.bus = FakeServiceBusClient(lock_duration=self.lock_seconds, max_delivery_count=MAX_DELIVERIES)
            self.queue = ServiceBusQueue(client=self.bus, poll_seconds=0.05)

    def send(self, *ids: str, delay: float = 0.0) -> None:
        with database.connection() as conn:
            self.queue.send(conn, self.name, [OutgoingMessage(i, {"id": i}, delay) for i in ids])
        self.queue.after_commit()

    def receive(self, n: int = 1, timeout: float = 2.0) -> list[ReceivedMessage]:
        """Up to n messages, waiting at most timeout for them (the Service Bus receivers fetch in the
        background); a test expecting nothing passes a short timeout."""
        deadline = time.monotonic() + timeout
        got: list[ReceivedMessage] = []
        while len(got) < n:
            got += self.queue.receive(self.name, n - len(got))
            if len(got) >= n or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        return got

    def elapse(self, seconds: float) -> None:
        """Let time pass: for real on the postgres queue, on the fake namespace's clock for Service Bus."""
        if self.kind == "postgres":
            time.sleep(seconds)
        else:
            self.bus.advance(seconds)

    def expire_locks(self) -> None:
        self.elapse(self.lock_seconds + 0.3)

    def dead_letters(self) -> list[tuple[dict[str, Any], str]]:
        """(body, reason) of the dead-lettered messages, read the way an operator would."""
        if self.kind == "postgres":
            with database.connection() as conn:
                rows = conn.execute(
                    "SELECT body, dead_letter_reason FROM app.queue_messages"
                    " WHERE queue = %s AND dead_lettered_at IS NOT NULL ORDER BY id", [self.name]).fetchall()
            return [(r["body"], r["dead_letter_reason"]) for r in rows]
        import json

        with self.bus.get_queue_receiver(self.name, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
            msgs = dlq.receive_messages(max_message_count=100, max_wait_time=0.2)
            out = [(json.loads(str(m)), m.dead_letter_reason) for m in msgs]
            for m in msgs:
                dlq.abandon_message(m)  # leave them there
        return out

    def close(self) -> None:
        self.queue.close()
        if self.kind == "postgres":
            with database.connection() as conn:
                conn.execute("DELETE FROM app.queue_messages WHERE queue = %s", [self.name])


@pytest.fixture(params=["postgres", "servicebus"])
def q(request: pytest.FixtureRequest, database: str, nonce: str) -> Iterator[Backend]:
    backend = Backend(request.param, f"test-{nonce}")
    yield backend
    backend.close()


def ids(msgs: list[ReceivedMessage]) -> list[str]:
    return sorted(m.body["id"] for m in msgs)


def test_receive_locks_message_until_settled(q):
    q.send("a")
    (m,) = q.receive()
    assert m.body == {"id": "a"} and m.delivery_count == 1
    assert q.receive(timeout=0.3) == []  # locked: invisible to other consumers
    q.queue.complete(m)
    q.expire_locks()
    assert q.receive(timeout=0.3) == []  # completed: gone for good


def test_expired_lock_redelivers_with_higher_count_and_a_lost_lock_settles_nothing(q):
    q.send("a")
    (m1,) = q.receive()
    q.expire_locks()
    (m2,) = q.receive()
    assert m2.body == {"id": "a"} and m2.delivery_count == 2
    q.queue.complete(m1)  # the first consumer lost its lock: its settle must not remove the message
    assert q.queue.renew_lock(m2) is True
    assert q.queue.renew_lock(m1) is False
    q.queue.complete(m2)
    q.expire_locks()
    assert q.receive(timeout=0.3) == []


def test_renewed_lock_outlives_the_lock_duration(q):
    q.send("a")
    (m,) = q.receive()
    q.elapse(q.lock_seconds * 0.6)
    assert q.queue.renew_lock(m) is True
    q.elapse(q.lock_seconds * 0.6)  # past the first lock's end, inside the renewed one
    assert q.receive(timeout=0.3) == []
    q.queue.complete(m)


def test_send_is_transactional_and_deduplicated_by_message_id(q):
    with database.connection() as conn:
        q.queue.send(conn, q.name, [OutgoingMessage("x", {"id": "x"})])
        conn.rollback()
    q.queue.after_commit()
    assert q.receive(timeout=0.3) == []
    q.send("y")
    q.send("y")  # same message id: duplicate detection
    assert ids(q.receive(n=10, timeout=1.0)) == ["y"]


def test_abandon_with_delay_redelivers_after_the_delay_counting_the_delivery(q):
    q.send("a")
    (m,) = q.receive()
    q.queue.abandon(m, delay_seconds=1.0)
    assert q.receive(timeout=0.3) == []
    q.elapse(1.2)
    (again,) = q.receive()
    assert again.body == {"id": "a"} and again.delivery_count == 2
    q.queue.complete(again)


def test_abandon_without_delay_redelivers_at_once(q):
    q.send("a")
    (m,) = q.receive()
    q.queue.abandon(m)
    (again,) = q.receive()
    assert again.body == {"id": "a"} and again.delivery_count == 2
    q.queue.complete(again)


def test_last_allowed_delivery_then_dead_letter(q):
    """MaxDeliveryCount 3: deliveries 1, 2, 3 happen, then the message is dead-lettered, never a 4th."""
    q.send("a")
    seen = []
    for _ in range(MAX_DELIVERIES):
        (m,) = q.receive()
        seen.append(m.delivery_count)
        q.queue.abandon(m)
    assert seen == [1, 2, 3]
    assert q.receive(timeout=0.3) == []
    assert q.dead_letters() == [({"id": "a"}, "MaxDeliveryCountExceeded")]


def test_expired_last_delivery_is_dead_lettered_too(q):
    q.send("a")
    for _ in range(MAX_DELIVERIES - 1):
        (m,) = q.receive()
        q.queue.abandon(m)
    (last,) = q.receive()
    assert last.delivery_count == MAX_DELIVERIES
    q.expire_locks()  # its worker died on the last delivery
    assert q.receive(timeout=0.3) == []
    assert [reason for _, reason in q.dead_letters()] == ["MaxDeliveryCountExceeded"]


def test_dead_letter_keeps_the_reason(q):
    q.send("a")
    (m,) = q.receive()
    q.queue.dead_letter(m, "malformed message")
    q.expire_locks()
    assert q.receive(timeout=0.3) == []
    assert q.dead_letters() == [({"id": "a"}, "malformed message")]


def test_delayed_send_is_invisible_until_due(q):
    q.send("later", delay=2.0)
    q.send("one", "two")
    first = q.receive(n=10, timeout=1.0)
    assert ids(first) == ["one", "two"]
    for m in first:
        q.queue.complete(m)
    q.elapse(2.2)
    assert ids(q.receive(n=10, timeout=1.0)) == ["later"]


def test_release_gives_back_without_counting_a_delivery(q):
    q.send("a")
    (m,) = q.receive()
    q.queue.release(m)
    (again,) = q.receive()
    assert again.body == {"id": "a"} and again.delivery_count == 1
    q.queue.complete(again)


def test_wait_wakes_when_a_message_arrives(q):
    assert q.receive(timeout=0.05) == []  # a consumer asks, finds nothing, waits
    q.queue.wait(0.01)
    time.sleep(0.3)
    q.queue._wake.clear()
    threading.Timer(0.2, lambda: q.send("ping")).start()
    started = time.monotonic()
    q.queue.wait(5.0)
    assert time.monotonic() - started < 2.0
    assert ids(q.receive()) == ["ping"]
