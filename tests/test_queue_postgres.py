"""What only the postgres queue does: settle in the caller's transaction, FIFO, LISTEN/NOTIFY.

The semantics both backends share are tested in tests/test_queue_semantics.py.
"""

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
