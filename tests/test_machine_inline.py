"""CoreMachine driven in-process: fan-out, stage advance, duplicates, failures, empty stages."""

from __future__ import annotations

from tests.helpers import every_message_twice, receive_own, submit


def events(db, job_id):
    return [(r["event"], r["stage"]) for r in db.execute(
        "SELECT event, stage FROM app.job_events WHERE job_id = %s ORDER BY id", [job_id]).fetchall()]


def test_hello_world_completes_and_sums(db, drain, nonce):
    job_id = submit("hello_world", {"n": 25, "message": nonce})
    assert drain(job_id) == "completed"
    job = db.execute("SELECT * FROM app.jobs WHERE job_id = %s", [job_id]).fetchone()
    assert job["result_data"]["sum"] == sum(range(25))
    assert job["result_data"]["tasks_per_stage"] == {"1": 25, "2": 1}
    assert events(db, job_id) == [("job_created", 1), ("stage_advanced", 1), ("job_completed", 2)]


def test_zero_tasks_stage_completes(db, drain, nonce):
    job_id = submit("hello_world", {"n": 0, "message": nonce})
    assert drain(job_id) == "completed"
    job = db.execute("SELECT result_data FROM app.jobs WHERE job_id = %s", [job_id]).fetchone()
    assert job["result_data"]["sum"] == 0


def test_every_message_delivered_twice(db, drain, nonce):
    """A trigger copies every queued message once: the outcome is the same and nothing fails."""
    with every_message_twice(db):
        job_id = submit("hello_world", {"n": 40, "message": nonce})
        assert drain(job_id) == "completed"
        # let the duplicates of the last messages run too
        drain(job_id)
    from triggers.worker import Worker

    w = Worker(concurrency=1)
    while (m := w.receive_one()) is not None:
        w.handle(m)
    job = db.execute("SELECT * FROM app.jobs WHERE job_id = %s", [job_id]).fetchone()
    assert job["status"] == "completed"
    assert job["result_data"]["sum"] == sum(range(40))
    rows = db.execute(
        "SELECT stage, status, count(*) AS n FROM app.tasks WHERE parent_job_id = %s GROUP BY 1, 2 ORDER BY 1",
        [job_id]).fetchall()
    assert [(r["stage"], r["status"], r["n"]) for r in rows] == [(1, "completed", 40), (2, "completed", 1)]
    assert events(db, job_id).count(("stage_advanced", 1)) == 1
    assert events(db, job_id).count(("job_completed", 2)) == 1


def test_failure_rate_one_fails_job_cleanly(db, drain, nonce):
    job_id = submit("hello_world", {"n": 5, "failure_rate": 1.0, "message": nonce})
    assert drain(job_id) == "failed"
    job = db.execute("SELECT * FROM app.jobs WHERE job_id = %s", [job_id]).fetchone()
    assert job["stage"] == 1
    err = job["error_details"]
    assert err["stage"] == 1 and err["task_id"] and "simulated failure" in err["error"]
    assert err["attempts"] == 4  # first try + TASK_MAX_RETRIES=3
    statuses = {r["status"] for r in db.execute(
        "SELECT status FROM app.tasks WHERE parent_job_id = %s", [job_id]).fetchall()}
    assert "queued" not in statuses and "failed" in statuses
    assert ("stage_advanced", 1) not in events(db, job_id)
    left = db.execute("SELECT count(*) AS n FROM app.queue_messages WHERE body->>'parent_job_id' = %s", [job_id])
    assert left.fetchone()["n"] == 0  # the cancelled tasks' messages were dropped with the failure


def test_failure_rate_with_retries_completes(db, drain, nonce):
    job_id = submit("hello_world", {"n": 30, "failure_rate": 0.2, "message": "retry-" + nonce})
    assert drain(job_id) == "completed"
    attempts = db.execute(
        "SELECT sum(attempts) AS a FROM app.tasks WHERE parent_job_id = %s", [job_id]).fetchone()["a"]
    assert attempts > 31  # some tasks were retried


def test_failed_job_resubmitted_reruns(db, drain, nonce):
    from core.submit import submit_job

    params = {"n": 3, "failure_rate": 1.0, "message": nonce}
    job_id = submit("hello_world", params)
    assert drain(job_id) == "failed"
    again = submit_job("hello_world", params)
    assert again.status == "rerun" and again.rerun_from_stage == 1 and again.job_id == job_id
    job = db.execute("SELECT run, status FROM app.jobs WHERE job_id = %s", [job_id]).fetchone()
    assert job["run"] == 2 and job["status"] == "queued"
    assert drain(job_id) == "failed"


def test_message_from_an_earlier_run_claims_nothing(db, drain, nonce):
    """Task ids repeat when a failed job re-runs: a late message of run 1 must not run run 2's task."""
    from core.models import TaskQueueMessage
    from core.submit import submit_job
    from infrastructure import database
    from infrastructure.queues import OutgoingMessage, get_queue
    from triggers.worker import Worker

    params = {"n": 1, "failure_rate": 1.0, "message": nonce}
    job_id = submit("hello_world", params)
    assert drain(job_id) == "failed"
    assert submit_job("hello_world", params).status == "rerun"
    w = Worker(concurrency=1)
    job_msg = receive_own(w, job_id)  # run 2, stage 1: creates the task again, queued
    assert job_msg is not None and job_msg.body["run"] == 2
    w.handle(job_msg)
    task = db.execute("SELECT task_id, task_type FROM app.tasks WHERE parent_job_id = %s", [job_id]).fetchone()
    stale = TaskQueueMessage(task_id=task["task_id"], parent_job_id=job_id, job_type="hello_world",
                             task_type=task["task_type"], stage=1, attempt=9, run=1)
    with database.connection() as conn:
        get_queue().send(conn, "geospatial-tasks", [OutgoingMessage(stale.message_id, stale.model_dump())])
    for _ in range(5):
        msg = w.receive_one()
        if msg is not None and msg.body["run"] == 1:
            assert w.handle(msg) == "not_runnable"
            break
        if msg is not None:
            get_queue().release(msg)
    else:
        raise AssertionError("the stale message never came")
    row = db.execute("SELECT status, attempts FROM app.tasks WHERE task_id = %s", [task["task_id"]]).fetchone()
    assert row == {"status": "queued", "attempts": 0}
