"""The Service Bus path end to end, through the in-process SDK fake (tests/servicebus_fake.py).

The outbox and its relay, the janitor's re-send after a crash, poison messages on the last
delivery the queue allows, retries as scheduled messages, and a recorded session of a 100-task
job whose final rows must equal those the postgres backend produces from the same faults.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.exceptions import MessageAlreadySettled, MessageLockLostError

from config import get_settings
from core.errors import RetryableTaskError
from core.janitor import Janitor
from core.machine import CoreMachine
from infrastructure import database
from infrastructure.queues import MessageQueue, OutgoingMessage, ReceivedMessage
from infrastructure.queues.postgres import PostgresQueue
from infrastructure.queues.servicebus import ServiceBusQueue
from services import ALL_HANDLERS
from tests.conftest import RUN_DIR
from tests.helpers import job_status
from tests.servicebus_fake import FakeServiceBusClient
from triggers.worker import Worker

MAX = get_settings().queue_max_delivery_count  # the fake queue's MaxDeliveryCount equals it, as the README demands
LOCK = 3.0


@pytest.fixture
def bus(database: str) -> Iterator[tuple[FakeServiceBusClient, ServiceBusQueue]]:
    with database_conn() as conn:  # rows other tests left unsent belong to no namespace here
        conn.execute("UPDATE app.outbox SET sent_at = now() WHERE sent_at IS NULL")
    client = FakeServiceBusClient(lock_duration=LOCK, max_delivery_count=MAX)
    queue = ServiceBusQueue(client=client, poll_seconds=0.05)
    yield client, queue
    queue.close()


def database_conn() -> Any:
    return database.connection()


def tasks_of(job_id: str) -> list[dict[str, Any]]:
    with database.connection() as conn:
        return conn.execute(
            "SELECT task_id, task_index, stage, status, result_data, attempts FROM app.tasks"
            " WHERE parent_job_id = %s ORDER BY stage, task_index", [job_id]).fetchall()


def job_row(job_id: str) -> dict[str, Any]:
    with database.connection() as conn:
        return conn.execute(
            "SELECT status, stage, result_data, error_details FROM app.jobs WHERE job_id = %s", [job_id]).fetchone()


def drive(worker: Worker, done: Callable[[], bool], fault: Callable[[ReceivedMessage], bool] | None = None,
          timeout: float = 180.0) -> None:
    """One consumer, in this thread: receive, let the fault take the message or handle it, until done()."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the run did not finish in time"
        batch = worker.receive_batch(10)
        if not batch:
            worker.queue.wait(0.2)
            continue
        for msg in batch:
            if fault is None or not fault(msg):
                worker.handle(msg)


# --- the fake itself follows the documented service behaviour
def test_fake_duplicate_detection_window_scheduling_and_settlement_rules():
    client = FakeServiceBusClient(lock_duration=30, max_delivery_count=2, duplicate_detection_window=60)
    sender = client.get_queue_sender("q")
    receiver = client.get_queue_receiver("q")
    sender.send_messages(ServiceBusMessage("1", message_id="m"))
    sender.send_messages(ServiceBusMessage("2", message_id="m"))  # inside the window: accepted and dropped
    (m,) = receiver.receive_messages(max_message_count=10, max_wait_time=0.1)
    assert str(m) == "1" and m.delivery_count == 1
    receiver.complete_message(m)
    with pytest.raises(MessageAlreadySettled):
        receiver.complete_message(m)
    client.advance(61)
    sender.send_messages(ServiceBusMessage("3", message_id="m"))  # the window has passed: a new message
    (m,) = receiver.receive_messages(max_wait_time=0.1)
    assert str(m) == "3"
    client.advance(31)  # the lock expired
    with pytest.raises(MessageLockLostError):
        receiver.complete_message(m)
    with pytest.raises(MessageLockLostError):
        receiver.renew_message_lock(m)
    (m,) = receiver.receive_messages(max_wait_time=0.1)
    assert m.delivery_count == 2
    receiver.abandon_message(m)  # the last allowed delivery ended: dead-lettered
    assert receiver.receive_messages(max_wait_time=0.1) == []
    dlq = client.get_queue_receiver("q", sub_queue=ServiceBusSubQueue.DEAD_LETTER)
    (dead,) = dlq.receive_messages(max_wait_time=0.1)
    assert str(dead) == "3" and dead.dead_letter_reason == "MaxDeliveryCountExceeded"
    with pytest.raises(ValueError):
        dlq.dead_letter_message(dead, reason="again")

    at = client.now() + timedelta(seconds=10)
    (seq,) = sender.schedule_messages(ServiceBusMessage("later", message_id="s1"), at)
    sender.schedule_messages(ServiceBusMessage("cancelled", message_id="s2"), at)
    sender.cancel_scheduled_messages(seq + 1)
    assert receiver.receive_messages(max_wait_time=0.1) == []  # not due yet
    client.advance(11)
    assert [str(x) for x in receiver.receive_messages(max_message_count=10, max_wait_time=0.1)] == ["later"]
    with pytest.raises(TypeError):
        sender.send_messages("not a ServiceBusMessage")


# --- outbox, relay and the janitor
def test_janitor_resends_what_a_crash_left_in_the_outbox(bus, nonce, monkeypatch):
    """Crash after commit, before the relay: the rows stay unsent until the janitor sends them.
    Crash after sending, before marking sent: the janitor sends them again and duplicate
    detection drops the copies. Either way every task runs once."""
    from core.submit import submit_job

    client, queue = bus
    machine = CoreMachine(queue=queue)
    worker = Worker(concurrency=1, machine=machine, queue=queue)
    relay = queue.after_commit
    monkeypatch.setattr(queue, "after_commit", lambda: None)  # the process dies right after each commit
    job_id = submit_job("hello_world", {"n": 3, "message": nonce}, machine=machine).job_id
    assert client.log == []
    janitor = Janitor(machine)
    assert janitor.run_once()["outbox_relayed"] == 0  # a fresh row may still be relayed by its writer

    def age_outbox() -> None:
        with database.connection() as conn:
            conn.execute("UPDATE app.outbox SET created_at = created_at - interval '2 minutes'"
                         " WHERE sent_at IS NULL AND (body->>'job_id' = %s OR body->>'parent_job_id' = %s)",
                         [job_id, job_id])

    age_outbox()
    assert janitor.run_once()["outbox_relayed"] == 1
    (job_msg,) = receive_task(queue, name=get_settings().jobs_queue)
    assert job_msg.body["job_id"] == job_id
    worker.handle(job_msg)  # fans out: three task messages committed to the outbox, never relayed
    assert [e["op"] for e in client.log if e["queue"] == get_settings().tasks_queue] == []

    real_send = queue._send

    def send_then_crash(q: str, fn: Callable[[Any], Any]) -> Any:
        real_send(q, fn)
        raise ConnectionError("the process died after sending, before marking the rows sent")

    monkeypatch.setattr(queue, "_send", send_then_crash)
    with pytest.raises(ConnectionError):
        relay()
    monkeypatch.setattr(queue, "_send", real_send)
    sent = [e for e in client.log if e["op"] == "sent" and e["queue"] == get_settings().tasks_queue]
    assert len(sent) == 3
    age_outbox()
    assert janitor.run_once()["outbox_relayed"] == 3
    dropped = [e for e in client.log if e["op"] == "duplicate_dropped"]
    assert sorted(e["message_id"] for e in dropped) == sorted(e["message_id"] for e in sent)

    monkeypatch.setattr(queue, "after_commit", relay)
    drive(worker, lambda: job_status(job_id) in ("completed", "failed"))
    assert job_status(job_id) == "completed" and job_row(job_id)["result_data"]["sum"] == 3
    assert [t["attempts"] for t in tasks_of(job_id)] == [1, 1, 1, 1]
    with database.connection() as conn:
        unsent = conn.execute("SELECT count(*) AS n FROM app.outbox WHERE sent_at IS NULL"
                              " AND body->>'parent_job_id' = %s", [job_id]).fetchone()["n"]
    assert unsent == 0


# --- poison messages
def test_poison_message_on_the_last_allowed_delivery_fails_the_job_and_is_completed(bus, nonce):
    """Deliveries 1..MAX-1 die with their worker (abandoned, and the last one's lock expires);
    delivery MAX fails the job with clear error_details and completes the message, so the
    service never dead-letters it out of the job's sight."""
    from core.submit import submit_job

    client, queue = bus
    machine = CoreMachine(queue=queue)
    worker = Worker(concurrency=1, machine=machine, queue=queue)
    job_id = submit_job("hello_world", {"n": 1, "message": nonce}, machine=machine).job_id
    drive(worker, lambda: any(e["op"] == "sent" and e["queue"] == get_settings().tasks_queue for e in client.log))
    counts = []
    for delivery in range(1, MAX):
        (msg,) = receive_task(queue)
        counts.append(msg.delivery_count)
        assert job_status(job_id) in ("queued", "processing")
        if delivery < MAX - 1:
            queue.abandon(msg)  # the worker crashed while handling it
        else:
            time.sleep(LOCK + 0.3)  # the worker died holding it: the lock expires
    (last,) = receive_task(queue)
    counts.append(last.delivery_count)
    assert counts == list(range(1, MAX + 1))
    assert worker.handle(last) == "poisoned"
    job = job_row(job_id)
    assert job["status"] == "failed"
    details = job["error_details"]
    assert details["delivery_count"] == MAX and details["task_id"] == last.body["task_id"]
    assert f"delivered {MAX} times" in details["error"] and "QUEUE_MAX_DELIVERY_COUNT" in details["error"]
    ops = [(e["op"], e.get("delivery_count")) for e in client.log if e["message_id"] == last.message_id]
    assert ops[-1] == ("completed", MAX) and ("dead_lettered", MAX) not in ops
    assert client.queue(get_settings().tasks_queue).dead_letters == []


def receive_task(queue: MessageQueue, timeout: float = 10.0, name: str | None = None) -> list[ReceivedMessage]:
    """One message of the tasks queue (or of `name`), waiting for the receiver to fetch it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = queue.receive(name or get_settings().tasks_queue, 1)
        if got:
            return got
        time.sleep(0.02)
    return []


# --- a recorded session: 100 tasks, one forced redelivery, one poison message, one retry with backoff
BACKOFF = 1.0
REDELIVERED, POISONED, RETRIED = 10, 20, 30  # task indexes


def flaky_handlers() -> dict[str, Any]:
    greet = ALL_HANDLERS["hello_world_greet"]

    def flaky_greet(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        if params["index"] == RETRIED and ctx.attempt == 1:
            raise RetryableTaskError("the service was busy (injected once)")
        return greet(params, ctx)

    return {**ALL_HANDLERS, "hello_world_greet": flaky_greet}


def run_session(queue: MessageQueue, nonce: str) -> tuple[str, dict[str, Any]]:
    """The same job and the same faults on either backend; returns the job id and what the faults saw."""
    from core.submit import submit_job

    settings = get_settings().model_copy(update={"task_retry_backoff_seconds": BACKOFF})
    machine = CoreMachine(queue=queue, handlers=flaky_handlers(), settings=settings)
    worker = Worker(concurrency=1, machine=machine, queue=queue)
    job_id = submit_job("hello_world", {"n": 100, "message": nonce}, machine=machine).job_id
    index_of: dict[str, int] = {}
    seen: dict[str, Any] = {"held": None, "copy_deliveries": [], "copy_outcome": None, "redelivered": []}

    def index(msg: ReceivedMessage) -> int | None:
        task_id = msg.body.get("task_id")
        if task_id and not index_of:
            index_of.update({t["task_id"]: t["task_index"] for t in tasks_of(job_id) if t["stage"] == 1})
        return index_of.get(task_id) if task_id else None

    def fault(msg: ReceivedMessage) -> bool:
        if msg.message_id.endswith("#copy"):  # the poison copy: its worker crashes until the last delivery
            seen["copy_deliveries"].append(msg.delivery_count)
            if msg.delivery_count < MAX:
                queue.abandon(msg)
            else:
                seen["copy_outcome"] = worker.handle(msg)
            return True
        i = index(msg)
        if i == REDELIVERED:
            if seen["held"] is None:
                seen["held"] = msg  # the worker stalls on it: never settled, its lock expires
                return True
            seen["redelivered"].append(msg.delivery_count)
        if i == POISONED and not msg.message_id.endswith("#copy") and msg.body.get("attempt") == 1:
            worker.handle(msg)
            with database.connection() as conn:  # a copy under another id, as a lost duplicate window lets through
                queue.send(conn, get_settings().tasks_queue, [OutgoingMessage(msg.message_id + "#copy", msg.body)])
            queue.after_commit()
            return True
        return False

    drive(worker, lambda: job_status(job_id) in ("completed", "failed") and seen["copy_outcome"] is not None,
          fault)
    return job_id, seen


def final_rows(job_id: str) -> dict[str, Any]:
    job = job_row(job_id)
    return {
        "job": {k: job[k] for k in ("status", "stage", "result_data", "error_details")},
        "tasks": {t["task_id"]: (t["stage"], t["task_index"], t["status"], t["result_data"]) for t in tasks_of(job_id)},
    }


@pytest.mark.slow
def test_recorded_session_of_a_100_task_job_matches_the_postgres_backend(bus, nonce, db):
    pg_job, pg_seen = run_session(PostgresQueue(lock_seconds=LOCK), nonce)
    expected = final_rows(pg_job)
    db.execute("DELETE FROM app.jobs WHERE job_id = %s", [pg_job])  # the same job again, on Service Bus
    client, queue = bus
    job_id, seen = run_session(queue, nonce)
    assert job_id == pg_job
    got = final_rows(job_id)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / "servicebus-session.json").write_text(json.dumps(client.log, default=str, indent=1))

    assert got == expected
    assert got["job"]["status"] == "completed" and got["job"]["result_data"]["sum"] == sum(range(100))
    assert len(got["tasks"]) == 101 and {t[2] for t in got["tasks"].values()} == {"completed"}
    for s in (pg_seen, seen):
        assert s["redelivered"] == [2]  # the stalled message came back once, counted
        assert s["copy_deliveries"] == list(range(1, MAX + 1)) and s["copy_outcome"] == "poison_ignored"

    by_id: dict[str, list[dict[str, Any]]] = {}
    for e in client.log:
        by_id.setdefault(e["message_id"], []).append(e)
    held = seen["held"].message_id
    assert [e["op"] for e in by_id[held]] == ["sent", "received", "lock_expired", "received", "completed"]
    copy = [m for m in by_id if m and m.endswith("#copy")]
    assert len(copy) == 1
    copy_ops = [(e["op"], e.get("delivery_count")) for e in by_id[copy[0]]]
    assert copy_ops.count(("abandoned", None)) == 0 and copy_ops[-1] == ("completed", MAX)
    assert [op for op, _ in copy_ops].count("abandoned") == MAX - 1
    assert not any(e["op"] == "dead_lettered" for e in client.log)

    retried = next(t for t in tasks_of(job_id) if t["stage"] == 1 and t["task_index"] == RETRIED)
    assert retried["attempts"] == 2
    first = [e for e in by_id[next(m for m in by_id if m and m.startswith(f"task:{retried['task_id']}:")
                                   and m.endswith(":a1"))]]
    second = by_id[next(m for m in by_id if m and m.startswith(f"task:{retried['task_id']}:") and m.endswith(":a2"))]
    failed_at = next(e["at"] for e in first if e["op"] == "completed")  # completed, not abandoned
    assert [e["op"] for e in first] == ["sent", "received", "completed"]
    scheduled = second[0]
    assert scheduled["op"] == "scheduled" and scheduled["visible_at"] - failed_at >= timedelta(seconds=BACKOFF * 0.8)
    received = next(e for e in second if e["op"] == "received")
    assert received["at"] >= scheduled["visible_at"] and second[-1]["op"] == "completed"


# --- the worker's receivers
def test_worker_keeps_one_receiver_per_queue_waits_on_both_and_closes_them(bus, nonce, monkeypatch):
    """Consumers never block in the SDK: each queue's receiver runs on its own thread (the SDK's
    clients are not thread-safe), both long-poll at once, and shutdown closes them."""
    import threading

    from core.submit import submit_job
    from tests.servicebus_fake import FakeReceiver

    client, queue = bus
    threads: dict[str, set[str]] = {}
    both_waiting = threading.Event()
    waiting: set[str] = set()
    receive = FakeReceiver.receive_messages

    def watched(self: FakeReceiver, *a: Any, **kw: Any) -> list[Any]:
        threads.setdefault(self.queue_name, set()).add(threading.current_thread().name)
        waiting.add(self.queue_name)
        if len(waiting) == 2:
            both_waiting.set()
        try:
            return receive(self, *a, **kw)
        finally:
            waiting.discard(self.queue_name)

    monkeypatch.setattr(FakeReceiver, "receive_messages", watched)
    machine = CoreMachine(queue=queue)
    worker = Worker(concurrency=1, machine=machine, queue=queue)
    assert worker.receive_batch(4) == []  # returns at once; the receivers start polling
    assert both_waiting.wait(5.0), "the two queues were not waited on at the same time"
    job_id = submit_job("hello_world", {"n": 5, "message": nonce}, machine=machine).job_id
    drive(worker, lambda: job_status(job_id) in ("completed", "failed"))
    assert job_status(job_id) == "completed"
    s = get_settings()
    assert {q: r for q, r in threads.items()} == {
        s.jobs_queue: {f"sb-receiver-{s.jobs_queue}"}, s.tasks_queue: {f"sb-receiver-{s.tasks_queue}"}}
    assert sorted(r.queue_name for r in client.receivers) == sorted([s.jobs_queue, s.tasks_queue])
    queue.close()
    assert all(r.closed for r in client.receivers) and all(x.closed for x in client.senders) and client.closed


def test_worker_renews_the_locks_of_running_messages(bus, nonce):
    """The worker's renewal thread keeps a long task's message locked past the queue's lock duration."""
    import threading

    from core.submit import submit_job

    client, queue = bus
    machine = CoreMachine(queue=queue)
    worker = Worker(concurrency=1, machine=machine, queue=queue)
    submit_job("hello_world", {"n": 1, "message": nonce}, machine=machine)
    drive(worker, lambda: any(e["op"] == "sent" and e["queue"] == get_settings().tasks_queue for e in client.log))
    (msg,) = receive_task(queue)
    worker._inflight[id(msg)] = msg  # as while its handler runs
    renewer = threading.Thread(target=worker._renew_locks, daemon=True)
    renewer.start()
    every = max(1.0, worker.settings.queue_lock_seconds / 3)
    assert every < LOCK
    time.sleep(LOCK * 2 + 0.5)  # two lock durations: without renewal it would have been delivered again
    assert receive_task(queue, timeout=0.3) == []
    renewals = [e for e in client.log if e["op"] == "lock_renewed" and e["message_id"] == msg.message_id]
    assert len(renewals) >= 2 and not any(e["op"] == "lock_expired" for e in client.log)
    worker.handle(msg)
    worker.stopping.set()
    renewer.join(10)
    assert not renewer.is_alive()
    ops = [e["op"] for e in client.log if e["message_id"] == msg.message_id]
    assert ops[-1] == "completed"
