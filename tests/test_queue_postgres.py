"""The postgres queue keeps Service Bus peek-lock semantics."""

from __future__ import annotations

import time

import pytest

from infrastructure import database
from infrastructure.queues import OutgoingMessage
from infrastructure.queues.postgres import PostgresQueue


@pytest.fixture
def q(database, nonce):
    queue = PostgresQueue(lock_seconds=1)
    name = f"test-{nonce}"
    yield queue, name
    with database_conn() as conn:
        conn.execute("DELETE FROM app.queue_messages WHERE queue = %s", [name])


def database_conn():
    return database.connection()


def send(queue, name, *ids, delay=0.0):
    with database.connection() as conn:
        queue.send(conn, name, [OutgoingMessage(i, {"id": i}, delay) for i in ids])


def test_receive_locks_message_until_settled(q):
    queue, name = q
    send(queue, name, "a")
    first = queue.receive(name)
    assert [m.message_id for m in first] == ["a"] and first[0].delivery_count == 1
    assert queue.receive(name) == []  # locked: invisible to other consumers
    queue.complete(first[0])
    time.sleep(1.2)
    assert queue.receive(name) == []  # completed: gone for good


def test_expired_lock_redelivers_with_higher_count(q):
    queue, name = q
    send(queue, name, "a")
    (m1,) = queue.receive(name)
    time.sleep(1.2)
    (m2,) = queue.receive(name)
    assert m2.message_id == "a" and m2.delivery_count == 2
    queue.complete(m1)  # the first consumer lost its lock: its settle must not remove the message
    assert queue.renew_lock(m2) is True
    assert queue.renew_lock(m1) is False
    queue.complete(m2)


def test_send_is_transactional_and_deduplicated(q):
    queue, name = q
    with database.connection() as conn:
        queue.send(conn, name, [OutgoingMessage("x", {})])
        conn.rollback()
    assert queue.receive(name) == []
    send(queue, name, "y")
    send(queue, name, "y")  # same message id: duplicate detection
    got = queue.receive(name, max_messages=10)
    assert [m.message_id for m in got] == ["y"]


def test_abandon_with_delay_and_dead_letter(q):
    queue, name = q
    send(queue, name, "a")
    (m,) = queue.receive(name)
    queue.abandon(m, delay_seconds=0.5)
    assert queue.receive(name) == []
    time.sleep(0.6)
    (m,) = queue.receive(name)
    queue.dead_letter(m, "poison")
    time.sleep(1.2)
    assert queue.receive(name) == []
    with database.connection() as conn:
        row = conn.execute(
            "SELECT dead_letter_reason FROM app.queue_messages WHERE queue = %s", [name]).fetchone()
    assert row["dead_letter_reason"] == "poison"


def test_complete_in_rolled_back_transaction_keeps_message(q):
    queue, name = q
    send(queue, name, "a")
    (m,) = queue.receive(name)
    with database.connection() as conn:
        queue.complete(m, conn)
        conn.rollback()
    time.sleep(1.2)
    assert [x.message_id for x in queue.receive(name)] == ["a"]


def test_delayed_send_and_fifo(q):
    queue, name = q
    send(queue, name, "later", delay=0.7)
    send(queue, name, "one", "two")
    got = [m.message_id for m in queue.receive(name, max_messages=10)]
    assert got == ["one", "two"]
    time.sleep(0.8)
    assert [m.message_id for m in queue.receive(name, max_messages=10)] == ["later"]


def test_listen_notify_wakes_waiter(q):
    """The waiter wakes on the NOTIFY of a send, and only on it: a send whose NOTIFY is suppressed (its
    trigger does not fire under session_replication_role = replica) leaves it asleep, so this test fails
    when NOTIFY is broken."""
    import threading

    queue, name = q
    queue._listener = threading.Thread(target=queue._listen, name="queue-listener", daemon=True)
    queue._listener.start()  # as wait() starts it, without a wait() that would clear the first wake-up
    assert queue._wake.wait(30), "the listener never started listening"  # set once LISTEN ran
    queue._wake.clear()

    with database.connection() as conn, conn.transaction():  # a message inserted without its NOTIFY
        conn.execute("SET LOCAL session_replication_role = replica")
        queue.send(conn, name, [OutgoingMessage("silent", {"id": "silent"})])
    t0 = time.monotonic()
    queue.wait(1.5)
    assert time.monotonic() - t0 >= 1.4, "the waiter woke without a NOTIFY"

    threading.Timer(0.2, lambda: send(queue, name, "ping")).start()
    t0 = time.monotonic()
    queue.wait(10.0)
    assert time.monotonic() - t0 < 5.0, "the NOTIFY of a send did not wake the waiter"
    assert {m.message_id for m in queue.receive(name, max_messages=10)} == {"silent", "ping"}
    queue.close()


def test_release_gives_back_without_counting_a_delivery(q):
    queue, name = q
    send(queue, name, "a")
    (m,) = queue.receive(name)
    queue.release(m)
    (again,) = queue.receive(name)
    assert again.message_id == "a" and again.delivery_count == 1
