"""The last-task check: a per-stage counter of unfinished tasks, and which completions wait for the flush."""

from __future__ import annotations

from typing import Any

from core import state
from infrastructure import database
from tests.helpers import submit


def tasks_left(db, job_id: str) -> tuple[int, int | None]:
    row = db.execute("SELECT stage, stage_tasks_left FROM app.jobs WHERE job_id = %s", [job_id]).fetchone()
    return row["stage"], row["stage_tasks_left"]


def test_counter_starts_at_the_stage_size_and_counts_down(db, drain, nonce):
    job_id = submit("hello_world", {"n": 6, "message": nonce})
    seen: list[tuple[int, int | None]] = []

    def look(msg: Any) -> None:  # before each of this job's messages (drain also runs other tests' leftovers)
        if job_id in (msg.body.get("job_id"), msg.body.get("parent_job_id")):
            seen.append(tasks_left(db, job_id))

    assert drain(job_id, on_message=look) == "completed"
    seen.append(tasks_left(db, job_id))
    stage_one = [left for stage, left in seen if stage == 1 and left is not None]
    assert stage_one == [6, 5, 4, 3, 2, 1], seen  # one message fans out, six complete one task each
    assert seen[-1] == (2, 0)


def test_a_job_fanned_out_before_the_counter_still_advances(db, drain, nonce):
    """Jobs already running when the counter arrived have none: their stage is counted in the tasks table."""
    job_id = submit("hello_world", {"n": 4, "message": nonce})

    def forget_counter(_msg: Any) -> None:
        db.execute("UPDATE app.jobs SET stage_tasks_left = NULL WHERE job_id = %s AND stage = 1", [job_id])

    assert drain(job_id, on_message=forget_counter) == "completed"
    job = db.execute("SELECT result_data FROM app.jobs WHERE job_id = %s", [job_id]).fetchone()
    assert job["result_data"]["sum"] == sum(range(4))


def fan_out(drain_job_message, job_id: str) -> list[str]:
    drain_job_message()
    with database.connection() as conn:
        rows = conn.execute(
            "SELECT task_id FROM app.tasks WHERE parent_job_id = %s AND stage = 1 ORDER BY task_index", [job_id]
        ).fetchall()
    return [r["task_id"] for r in rows]


def complete(task_id: str, run: int, flush_at_stage_end_only: bool, commit: bool) -> tuple[str, str]:
    """Claim and complete one task; (outcome, synchronous_commit as the completing transaction saw it)."""
    with database.connection() as conn:
        assert state.claim_task(conn, task_id, run) is not None
    with database.connection() as conn:
        outcome = state.complete_task(conn, task_id, {"value": 1}, flush_at_stage_end_only)
        setting = conn.execute("SHOW synchronous_commit").fetchone()["synchronous_commit"]
        if not commit:
            conn.rollback()
    return outcome["outcome"], setting


def test_only_the_stage_ending_completion_waits_for_its_flush(db, drain, nonce):
    from triggers.worker import Worker

    job_id = submit("hello_world", {"n": 2, "message": nonce})
    worker = Worker(concurrency=1)
    first, second = fan_out(lambda: worker.handle(worker.receive_one()), job_id)
    run = db.execute("SELECT run FROM app.jobs WHERE job_id = %s", [job_id]).fetchone()["run"]

    # a queue that settles outside the transaction keeps every commit durable
    assert complete(first, run, flush_at_stage_end_only=False, commit=False) == ("task_completed", "on")
    assert complete(first, run, flush_at_stage_end_only=True, commit=True) == ("task_completed", "off")
    assert tasks_left(db, job_id) == (1, 1)
    # rolled back: advancing the job (sending stage 2's message) is the machine's work, done by drain below
    assert complete(second, run, flush_at_stage_end_only=True, commit=False) == ("stage_completed", "on")
    assert tasks_left(db, job_id) == (1, 1)
    with database.connection() as conn:  # a duplicate completion neither counts nor skips the flush
        assert state.complete_task(conn, first, {"value": 1}, True)["outcome"] == "duplicate"
        assert conn.execute("SHOW synchronous_commit").fetchone()["synchronous_commit"] == "on"
    assert drain(job_id) == "completed"  # the task messages still queued run as no-ops
    job = db.execute("SELECT result_data FROM app.jobs WHERE job_id = %s", [job_id]).fetchone()
    assert job["result_data"]["tasks_per_stage"] == {"1": 2, "2": 1}
