"""function_app.py: the Functions entry points called directly, as the host would call them."""

from __future__ import annotations

import asyncio
import json
import time
import types
from datetime import timedelta

import azure.functions as func
import pytest
from azure.functions.servicebus import ServiceBusMessage

from core.models import JobQueueMessage, TaskQueueMessage
from tests.helpers import job_status

FUNCTIONS: dict = {}


@pytest.fixture(scope="module")
def fa(database):
    import function_app

    if not FUNCTIONS:  # the app builds its function list once
        FUNCTIONS.update({f.get_function_name(): f for f in function_app.app.get_functions()})
    return function_app


def user_function(fa, name):
    return FUNCTIONS[name].get_user_function()


def call_http(fa, method, url, body=b"", headers=None):
    fn = user_function(fa, "http_app_func")
    req = func.HttpRequest(method, url, headers=headers or {"content-type": "application/json"}, body=body)
    ctx = types.SimpleNamespace(invocation_id="test", function_name="http_app_func", trace_context=None)
    return asyncio.run(fn(req, ctx))


def sb_message(body: dict, message_id: str, delivery_count: int = 1) -> ServiceBusMessage:
    return ServiceBusMessage(
        body=json.dumps(body).encode(), message_id=message_id, delivery_count=delivery_count,
        application_properties={}, user_properties={}, content_type="application/json",
    )


def test_registered_functions(fa):
    names = {n: [b.type for b in f.get_bindings()] for n, f in FUNCTIONS.items()}
    assert names["http_app_func"][0] == "httpTrigger"
    assert names["jobs_queue"] == ["serviceBusTrigger"] and names["tasks_queue"] == ["serviceBusTrigger"]
    assert names["janitor"] == ["timerTrigger"]
    queues = {n: f.get_bindings()[0].queue_name for n, f in FUNCTIONS.items() if n.endswith("_queue")}
    assert queues == {"jobs_queue": "geospatial-jobs", "tasks_queue": "geospatial-tasks"}


def test_health_through_http_function(fa):
    resp = call_http(fa, "GET", "http://localhost/api/health")
    assert resp.status_code == 200
    body = json.loads(resp.get_body())
    assert body["status"] == "healthy" and body["components"]["database"]["postgis"]["version"]
    assert body["components"]["serving"]["status"] == "healthy"


def test_submit_and_status_through_http_function(fa, nonce):
    resp = call_http(fa, "POST", "http://localhost/api/jobs/submit/hello_world",
                     body=json.dumps({"n": 2, "message": nonce}).encode())
    assert resp.status_code == 202
    job_id = json.loads(resp.get_body())["job_id"]
    st = call_http(fa, "GET", f"http://localhost/api/jobs/status/{job_id}")
    assert st.status_code == 200 and json.loads(st.get_body())["status"] == "queued"
    bad = call_http(fa, "POST", "http://localhost/api/jobs/submit/hello_world", body=b"{oops")
    assert bad.status_code == 400 and json.loads(bad.get_body())["error"] == "invalid_json"


def test_service_bus_triggers_run_the_core_machine(fa, db, nonce):
    """Drive a job through the queue functions with messages built as the host builds them."""
    resp = call_http(fa, "POST", "http://localhost/api/jobs/submit/hello_world",
                     body=json.dumps({"n": 3, "message": nonce}).encode())
    job_id = json.loads(resp.get_body())["job_id"]
    jobs_fn, tasks_fn = user_function(fa, "jobs_queue"), user_function(fa, "tasks_queue")
    # take the messages the orchestrator produced out of the postgres queue and hand them to the triggers
    rounds = 0
    while job_status(job_id) not in ("completed", "failed") and rounds < 20:
        rounds += 1
        rows = db.execute(
            "DELETE FROM app.queue_messages WHERE body->>'job_id' = %s OR body->>'parent_job_id' = %s"
            " RETURNING queue, message_id, body", [job_id, job_id]).fetchall()
        for r in rows:
            msg = sb_message(r["body"], r["message_id"])
            (jobs_fn if r["queue"] == "geospatial-jobs" else tasks_fn)(msg)
            # the host may deliver twice: a duplicate is harmless
            (jobs_fn if r["queue"] == "geospatial-jobs" else tasks_fn)(sb_message(r["body"], r["message_id"], 2))
    assert job_status(job_id) == "completed"
    result = db.execute("SELECT result_data FROM app.jobs WHERE job_id = %s", [job_id]).fetchone()["result_data"]
    assert result["sum"] == 3


def first_task_message(fa, db, job_id):
    """Fan the job out through the jobs function; the task message it produced, taken from the queue."""
    job_msg = db.execute(
        "DELETE FROM app.queue_messages WHERE body->>'job_id' = %s RETURNING body", [job_id]).fetchone()["body"]
    user_function(fa, "jobs_queue")(sb_message(JobQueueMessage.model_validate(job_msg).model_dump(), "m1"))
    task_msg = db.execute(
        "DELETE FROM app.queue_messages WHERE body->>'parent_job_id' = %s RETURNING body", [job_id]).fetchone()["body"]
    TaskQueueMessage.model_validate(task_msg)
    return task_msg


class InstanceDied(BaseException):
    """Stands for the host instance dying mid-invocation (out of memory, killed): nothing catches it."""


def test_poison_message_on_the_last_allowed_delivery_fails_task_and_job(fa, db, nonce, monkeypatch):
    """Deliveries 1..N-1 of a task message kill the instance running them (the function never returns);
    delivery N = QUEUE_MAX_DELIVERY_COUNT, the last the queue allows, fails the job without running the
    task again and returns, so the host completes the message instead of the service dead-lettering it."""
    from core.machine import CoreMachine
    from services import ALL_HANDLERS
    from tests.helpers import submit

    calls = []

    def dies(params, ctx):
        calls.append(ctx.attempt)
        raise InstanceDied()

    n = fa.settings.queue_max_delivery_count
    job_id = submit("hello_world", {"n": 1, "message": nonce})
    task_msg = first_task_message(fa, db, job_id)
    monkeypatch.setattr(fa, "_machine", CoreMachine(handlers={**ALL_HANDLERS, "hello_world_greet": dies}))
    tasks_fn = user_function(fa, "tasks_queue")
    for delivery in range(1, n):
        with pytest.raises(InstanceDied):
            tasks_fn(sb_message(task_msg, "m2", delivery_count=delivery))
        assert db.execute("SELECT status FROM app.jobs WHERE job_id = %s", [job_id]).fetchone()["status"] in (
            "queued", "processing")
    assert calls == list(range(1, n))
    assert fa.handle_service_bus_message(sb_message(task_msg, "m2", delivery_count=n), "task") == "poisoned"
    assert calls == list(range(1, n))  # the last delivery does not run the task again
    job = db.execute("SELECT status, error_details FROM app.jobs WHERE job_id = %s", [job_id]).fetchone()
    assert job["status"] == "failed"
    details = job["error_details"]
    assert f"delivered {n} times" in details["error"] and "QUEUE_MAX_DELIVERY_COUNT" in details["error"]
    assert details["task_id"] == task_msg["task_id"] and details["delivery_count"] == n
    task = db.execute("SELECT status FROM app.tasks WHERE task_id = %s", [task_msg["task_id"]]).fetchone()
    assert task["status"] == "failed"
    tasks_fn(sb_message(task_msg, "m2", delivery_count=n))  # the same delivery again: returns, changes nothing


def test_deliveries_before_the_last_run_the_task(fa, db, nonce):
    from tests.helpers import submit

    n = fa.settings.queue_max_delivery_count
    for delivery in range(1, n):
        job_id = submit("hello_world", {"n": 1, "message": f"{nonce}-{delivery}"})
        task_msg = first_task_message(fa, db, job_id)
        outcome = fa.handle_service_bus_message(sb_message(task_msg, "m2", delivery_count=delivery), "task")
        assert outcome == "stage_completed"
        db.execute("UPDATE app.jobs SET status = 'failed' WHERE job_id = %s", [job_id])  # stage 2 not needed


def test_a_redelivery_copy_counts_the_deliveries_it_replaces(fa, db, nonce):
    from infrastructure.queues.servicebus import PRIOR_DELIVERIES
    from tests.helpers import submit

    n = fa.settings.queue_max_delivery_count
    job_id = submit("hello_world", {"n": 1, "message": nonce})
    task_msg = first_task_message(fa, db, job_id)
    copy = ServiceBusMessage(body=json.dumps(task_msg).encode(), message_id="m2~d9", delivery_count=1,
                             application_properties={PRIOR_DELIVERIES: n - 1}, user_properties={},
                             content_type="application/json")
    assert fa.handle_service_bus_message(copy, "task") == "poisoned"
    assert db.execute("SELECT status FROM app.jobs WHERE job_id = %s", [job_id]).fetchone()["status"] == "failed"


def test_a_failure_outside_the_machine_is_redelivered_after_a_backoff(fa, db, nonce, monkeypatch):
    """A stage that cannot start for a transient reason (or an unreachable database) escapes the
    CoreMachine: the function schedules a copy at the backoff time and returns, so the host completes
    the original, instead of raising (the service would redeliver at once and use up the deliveries)."""
    from core.errors import RetryableTaskError
    from core.machine import CoreMachine
    from infrastructure.queues.servicebus import ServiceBusQueue
    from jobs import ALL_JOBS
    from tests.helpers import submit
    from tests.servicebus_fake import FakeServiceBusClient

    class BusyHelloWorld(ALL_JOBS["hello_world"]):
        @classmethod
        def setup_stage(cls, conn, job, stage, previous):
            raise RetryableTaskError("the blob service is busy")

    job_id = submit("hello_world", {"n": 1, "message": nonce})
    job_msg = db.execute(
        "DELETE FROM app.queue_messages WHERE body->>'job_id' = %s RETURNING message_id, body", [job_id]).fetchone()
    client = FakeServiceBusClient()
    bus = ServiceBusQueue(client=client)
    monkeypatch.setattr(fa, "_machine", CoreMachine(queue=bus, jobs={**ALL_JOBS, "hello_world": BusyHelloWorld}))
    outcome = fa.handle_service_bus_message(sb_message(job_msg["body"], job_msg["message_id"], 3), "job")
    assert outcome == "redelivery_scheduled"
    (scheduled,) = [e for e in client.log if e["op"] == "scheduled"]
    assert scheduled["queue"] == fa.settings.jobs_queue and scheduled["message_id"] == job_msg["message_id"] + "~d3"
    assert scheduled["visible_at"] - scheduled["at"] >= timedelta(seconds=7)  # the 3rd delivery waits 8 s
    assert db.execute("SELECT status FROM app.jobs WHERE job_id = %s", [job_id]).fetchone()["status"] == "queued"
    client.advance(9)
    (copy,) = wait_receive(bus, fa.settings.jobs_queue)
    assert copy.delivery_count == 4 and copy.body == job_msg["body"]  # 1 of its own + 3 it replaces
    bus.close()
    db.execute("UPDATE app.jobs SET status = 'failed' WHERE job_id = %s", [job_id])


def test_a_retryable_task_failure_schedules_its_retry_at_the_backoff_time(fa, db, nonce, monkeypatch):
    """The function returns (the host completes the delivery) and the next attempt, written to the
    outbox in the transaction that marks the task retrying, is relayed as a scheduled message."""
    from config import get_settings
    from core.errors import RetryableTaskError
    from core.machine import CoreMachine
    from infrastructure.queues.servicebus import ServiceBusQueue
    from services import ALL_HANDLERS
    from tests.helpers import submit
    from tests.servicebus_fake import FakeServiceBusClient

    def busy(params, ctx):
        raise RetryableTaskError("the service is busy")

    job_id = submit("hello_world", {"n": 1, "message": nonce})
    task_msg = first_task_message(fa, db, job_id)
    db.execute("UPDATE app.outbox SET sent_at = now() WHERE sent_at IS NULL")
    client = FakeServiceBusClient()
    bus = ServiceBusQueue(client=client)
    backoff = 5.0
    machine = CoreMachine(queue=bus, handlers={**ALL_HANDLERS, "hello_world_greet": busy},
                          settings=get_settings().model_copy(update={"task_retry_backoff_seconds": backoff}))
    monkeypatch.setattr(fa, "_machine", machine)
    assert fa.handle_service_bus_message(sb_message(task_msg, "t1"), "task") == "retrying"
    task = db.execute("SELECT status, attempts FROM app.tasks WHERE task_id = %s", [task_msg["task_id"]]).fetchone()
    assert task["status"] == "retrying" and task["attempts"] == 1
    (scheduled,) = client.log
    assert scheduled["op"] == "scheduled" and scheduled["message_id"].endswith(":a2")
    assert scheduled["visible_at"] - scheduled["at"] >= timedelta(seconds=backoff - 1)
    assert client.get_queue_receiver(fa.settings.tasks_queue).receive_messages(max_wait_time=0.2) == []
    client.advance(backoff)
    (retry,) = client.get_queue_receiver(fa.settings.tasks_queue).receive_messages(max_wait_time=1)
    assert json.loads(str(retry))["attempt"] == 2 and retry.delivery_count == 1
    bus.close()
    db.execute("UPDATE app.jobs SET status = 'failed' WHERE job_id = %s", [job_id])


def wait_receive(bus, queue, timeout=10.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = bus.receive(queue)
        if got:
            return got
        time.sleep(0.02)
    return []


# The Service Bus extension 5.x settings (extension bundle 4.x ships it), as documented in
# https://learn.microsoft.com/en-us/azure/azure-functions/functions-bindings-service-bus#hostjson-settings
SERVICE_BUS_5X_KEYS = {
    "clientRetryOptions", "prefetchCount", "transportType", "webProxy", "autoCompleteMessages",
    "maxAutoLockRenewalDuration", "maxConcurrentCalls", "maxConcurrentSessions", "maxMessageBatchSize",
    "minMessageBatchSize", "maxBatchWaitTime", "sessionIdleTimeout", "enableCrossEntityTransactions",
}
# Keys of extension 2.x-4.x that 5.x no longer reads (a stale one would silently keep the defaults).
SERVICE_BUS_LEGACY_KEYS = {"messageHandlerOptions", "sessionHandlerOptions", "batchOptions", "autoRenewTimeout"}


def hours(value: str) -> float:
    h, m, s = value.split(":")
    return int(h) + int(m) / 60 + float(s) / 3600


def test_host_json_uses_the_service_bus_5x_settings():
    """Timeouts by plan: https://learn.microsoft.com/en-us/azure/azure-functions/functions-scale#timeout
    (Consumption at most 10 min; Flex Consumption and Premium 30 min by default, unbounded)."""
    from pathlib import Path

    host = json.loads((Path(__file__).resolve().parent.parent / "host.json").read_text())
    bus = host["extensions"]["serviceBus"]
    assert set(bus) <= SERVICE_BUS_5X_KEYS, f"not a Service Bus 5.x setting: {set(bus) - SERVICE_BUS_5X_KEYS}"
    assert not set(bus) & SERVICE_BUS_LEGACY_KEYS
    assert host["extensionBundle"]["version"] == "[4.*, 5.0.0)"
    # the lock is renewed for as long as a function may run, so a long task is never delivered twice
    assert hours(bus["maxAutoLockRenewalDuration"]) >= hours(host["functionTimeout"])
    assert hours(host["functionTimeout"]) > 10 / 60  # needs Flex Consumption or Premium (README)
    assert bus["autoCompleteMessages"] is True  # returning completes: poison and scheduled redelivery rely on it
    assert bus["prefetchCount"] == 0  # prefetched messages' locks are not renewed while they wait
    assert 1 <= bus["maxConcurrentCalls"] <= 16


def test_janitor_timer_runs(fa, db, nonce, caplog):
    """The timer function runs the janitor: a job stuck past JOB_STUCK_AFTER_SECONDS is failed by it."""
    from tests.helpers import submit

    job_id = submit("hello_world", {"n": 1, "message": nonce})
    db.execute("UPDATE app.jobs SET updated_at = now() - interval '5 hours' WHERE job_id = %s", [job_id])
    db.execute("DELETE FROM app.queue_messages WHERE body->>'job_id' = %s", [job_id])  # no worker takes it
    timer = types.SimpleNamespace(past_due=False)
    with caplog.at_level("INFO"):
        for _ in range(20):  # one janitor at a time: another process may hold its lock for a moment
            user_function(fa, "janitor")(timer)
            if any(r.getMessage().startswith("janitor: {'ran': True") for r in caplog.records):
                break
            time.sleep(0.5)
    job = db.execute("SELECT status, error_details FROM app.jobs WHERE job_id = %s", [job_id]).fetchone()
    assert job["status"] == "failed" and "no progress" in job["error_details"]["error"]
    reports = [r.getMessage() for r in caplog.records if r.getMessage().startswith("janitor: ")]
    assert reports and "'stuck_jobs_failed': " in reports[-1] and "'stuck_jobs_failed': 0" not in reports[-1]
