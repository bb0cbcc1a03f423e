"""function_app.py: the Functions entry points called directly, as the host would call them."""

from __future__ import annotations

import asyncio
import json
import time
import types

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


def test_poison_message_fails_task_and_job(fa, db, nonce):
    from tests.helpers import submit

    job_id = submit("hello_world", {"n": 1, "message": nonce})
    job_msg = db.execute(
        "DELETE FROM app.queue_messages WHERE body->>'job_id' = %s RETURNING body", [job_id]).fetchone()["body"]
    user_function(fa, "jobs_queue")(sb_message(JobQueueMessage.model_validate(job_msg).model_dump(), "m1"))
    task_msg = db.execute(
        "DELETE FROM app.queue_messages WHERE body->>'parent_job_id' = %s RETURNING body", [job_id]).fetchone()["body"]
    TaskQueueMessage.model_validate(task_msg)
    user_function(fa, "tasks_queue")(sb_message(task_msg, "m2", delivery_count=11))
    job = db.execute("SELECT status, error_details FROM app.jobs WHERE job_id = %s", [job_id]).fetchone()
    assert job["status"] == "failed" and "delivered 11 times" in job["error_details"]["error"]


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
