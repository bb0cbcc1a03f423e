"""SQL of job and task state. Every function runs in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from core.models import JobRecord, TaskDefinition, TaskRecord, TaskResult, TaskStatus

ACTIVE_JOB = ("queued", "processing")


def get_job(conn: psycopg.Connection, job_id: str, lock: bool = False) -> JobRecord | None:
    if lock:
        row = conn.execute("SELECT * FROM app.jobs WHERE job_id = %s FOR UPDATE", [job_id]).fetchone()
    else:
        row = conn.execute("SELECT * FROM app.jobs WHERE job_id = %s", [job_id]).fetchone()
    return JobRecord.model_validate(row) if row else None


def insert_job(conn: psycopg.Connection, job: JobRecord) -> bool:
    """False when a job with this id already exists (a concurrent identical submission)."""
    row = conn.execute(
        "INSERT INTO app.jobs (job_id, job_type, parameters, status, stage, total_stages, metadata)"
        " VALUES (%s, %s, %s, 'queued', 1, %s, %s) ON CONFLICT (job_id) DO NOTHING RETURNING job_id",
        [job.job_id, job.job_type, Jsonb(job.parameters), job.total_stages, Jsonb(job.metadata)],
    ).fetchone()
    if row:
        add_event(conn, job.job_id, "job_created", 1)
    return row is not None


def add_event(conn: psycopg.Connection, job_id: str, event: str, stage: int | None, detail: Any = None) -> None:
    conn.execute(
        "INSERT INTO app.job_events (job_id, event, stage, detail) VALUES (%s, %s, %s, %s)",
        [job_id, event, stage, Jsonb(detail) if detail is not None else None],
    )


def stage_has_tasks(conn: psycopg.Connection, job_id: str, stage: int) -> bool:
    return (
        conn.execute("SELECT 1 FROM app.tasks WHERE parent_job_id = %s AND stage = %s LIMIT 1", [job_id, stage])
        .fetchone()
        is not None
    )


def stage_results(conn: psycopg.Connection, job_id: str, stage: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT result_data FROM app.tasks WHERE parent_job_id = %s AND stage = %s AND status = 'completed'"
        " ORDER BY task_index",
        [job_id, stage],
    ).fetchall()
    return [r["result_data"] or {} for r in rows]


def insert_tasks(
    conn: psycopg.Connection, job: JobRecord, stage: int, tasks: Sequence[TaskDefinition]
) -> None:
    """A stage's tasks, all at once, and its count of unfinished tasks that app.complete_task counts down."""
    with conn.cursor() as cur:
        with cur.copy(
            "COPY app.tasks (task_id, parent_job_id, job_type, task_type, stage, task_index, parameters)"
            " FROM STDIN"
        ) as copy:
            for i, t in enumerate(tasks):
                copy.write_row([t.task_id, job.job_id, job.job_type, t.task_type, stage, i, Jsonb(t.parameters)])
    conn.execute("UPDATE app.jobs SET stage_tasks_left = %s WHERE job_id = %s", [len(tasks), job.job_id])


def mark_stage_started(conn: psycopg.Connection, job_id: str, stage: int) -> None:
    conn.execute(
        "UPDATE app.jobs SET status = 'processing', updated_at = now(),"
        " stage_timings = jsonb_set(stage_timings, ARRAY[%s::text],"
        "   coalesce(stage_timings -> %s::text, '{}'::jsonb) || jsonb_build_object('started_at', now()))"
        " WHERE job_id = %s",
        [stage, stage, job_id],
    )


def claim_task(conn: psycopg.Connection, task_id: str, run: int) -> TaskRecord | None:
    """Move a task to processing (again, after a crash) if its job is still running this run.

    A message from an earlier run of a re-run job (task ids repeat across runs) claims nothing.

    The claim commits without waiting for its WAL flush (about 1.3 ms per task here): if the server
    crashes before the flush, the claim is lost together with everything after it (the completion
    commits durably and flushes it), so the task is simply claimed again when its message returns.
    """
    row = conn.execute(
        "UPDATE app.tasks t SET status = 'processing', attempts = t.attempts + 1,"
        " started_at = coalesce(t.started_at, now()), heartbeat_at = now(), updated_at = now()"
        " FROM app.jobs j, (SELECT set_config('synchronous_commit', 'off', true)) AS no_flush_wait"
        " WHERE t.task_id = %s AND j.job_id = t.parent_job_id AND j.status IN ('queued', 'processing')"
        "   AND j.run = %s AND t.status IN ('queued', 'retrying', 'processing')"
        " RETURNING t.*",
        [task_id, run],
    ).fetchone()
    return TaskRecord.model_validate(row) if row else None


def cancel_orphan_task(conn: psycopg.Connection, task_id: str, reason: str | None = None) -> None:
    """A task whose job has finished will never run (or was stopped, `reason`): say so instead of leaving it
    queued."""
    conn.execute(
        "UPDATE app.tasks t SET status = 'cancelled', updated_at = now(),"
        " error_details = coalesce(%s, t.error_details) FROM app.jobs j"
        " WHERE t.task_id = %s AND j.job_id = t.parent_job_id AND j.status IN ('completed', 'failed', 'cancelled')"
        "   AND t.status IN ('queued', 'retrying', 'processing')",
        [reason, task_id],
    )


def complete_task(
    conn: psycopg.Connection, task_id: str, result: dict[str, Any], flush_at_stage_end_only: bool = False
) -> dict[str, Any]:
    """Complete a task and, if it was its stage's last, advance the job (app.complete_task).

    With `flush_at_stage_end_only`, a completion that does not end its stage commits without waiting
    for its WAL flush. Only for a queue whose message is deleted in this same transaction: a server
    crash before the flush then loses the task's effects, its completion and the message's deletion
    together, so the message is delivered again and the task re-runs. The stage's last completion
    commits durably, which flushes every earlier one (the WAL is written in order). Waiting for the
    flush held the job row lock, which every completion of the job queues on, through the flush
    (0.5-1.7 ms here). Set in the same statement: every round trip here is made holding that lock.
    """
    row = conn.execute(
        "SELECT c.*, CASE WHEN %s AND c.outcome = 'task_completed'"
        " THEN set_config('synchronous_commit', 'off', true) END AS no_flush_wait"
        " FROM app.complete_task(%s, %s) AS c",
        [flush_at_stage_end_only, task_id, Jsonb(result)],
    ).fetchone()
    assert row is not None
    return dict(row)


def advance_stage(conn: psycopg.Connection, job_id: str, from_stage: int) -> int:
    row = conn.execute("SELECT app.advance_stage(%s, %s) AS stage", [job_id, from_stage]).fetchone()
    assert row is not None
    return int(row["stage"])


def set_task_retrying(conn: psycopg.Connection, task_id: str, error: str) -> None:
    conn.execute(
        "UPDATE app.tasks SET status = 'retrying', error_details = %s, updated_at = now()"
        " WHERE task_id = %s AND status = 'processing'",
        [error, task_id],
    )


def fail_task_and_job(
    conn: psycopg.Connection, task: TaskRecord | None, job_id: str, error_details: dict[str, Any]
) -> bool:
    """Fail the task and its job, cancel what has not started; False when the job had already finished."""
    job = get_job(conn, job_id, lock=True)
    if task is not None:
        conn.execute(
            "UPDATE app.tasks SET status = 'failed', error_details = %s, completed_at = clock_timestamp(),"
            " updated_at = clock_timestamp()"
            " WHERE task_id = %s AND status IN ('processing', 'queued', 'retrying')",
            [error_details.get("error"), task.task_id],
        )
    if job is None or job.status not in ACTIVE_JOB:
        return False
    conn.execute(
        "UPDATE app.jobs SET status = 'failed', error_details = %s, updated_at = clock_timestamp(),"
        " completed_at = clock_timestamp()"
        " WHERE job_id = %s",
        [Jsonb(error_details), job_id],
    )
    conn.execute(
        "UPDATE app.tasks SET status = 'cancelled', updated_at = now()"
        " WHERE parent_job_id = %s AND status IN ('queued', 'retrying')",
        [job_id],
    )
    add_event(conn, job_id, "job_failed", job.stage, error_details)
    return True


def complete_job(conn: psycopg.Connection, job_id: str, stage: int, result: dict[str, Any]) -> None:
    conn.execute(
        "UPDATE app.jobs SET status = 'completed', result_data = %s, updated_at = clock_timestamp(),"
        " completed_at = clock_timestamp(),"
        " stage_timings = jsonb_set(stage_timings, ARRAY[%s::text],"
        "   coalesce(stage_timings -> %s::text, '{}'::jsonb) || jsonb_build_object('completed_at', clock_timestamp()))"
        " WHERE job_id = %s",
        [Jsonb(result), stage, stage, job_id],
    )
    add_event(conn, job_id, "job_completed", stage)


def task_results(conn: psycopg.Connection, job_id: str) -> list[TaskResult]:
    rows = conn.execute(
        "SELECT task_id, task_type, stage, task_index, status, coalesce(result_data, '{}'::jsonb) AS result_data,"
        " error_details FROM app.tasks WHERE parent_job_id = %s ORDER BY stage, task_index",
        [job_id],
    ).fetchall()
    return [TaskResult.model_validate(r) for r in rows]


def mark_cleaned(conn: psycopg.Connection, job_id: str, run: int) -> None:
    conn.execute("UPDATE app.jobs SET cleaned_up_at = now() WHERE job_id = %s AND run = %s", [job_id, run])


def progress(conn: psycopg.Connection, job_id: str) -> dict[str, dict[str, int]]:
    """Task counts by status for every stage that has tasks."""
    rows = conn.execute(
        "SELECT stage, status, count(*) AS n FROM app.tasks WHERE parent_job_id = %s GROUP BY 1, 2 ORDER BY 1",
        [job_id],
    ).fetchall()
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        stage = out.setdefault(str(r["stage"]), {s.value: 0 for s in TaskStatus} | {"total": 0})
        stage[r["status"]] = r["n"]
        stage["total"] += r["n"]
    return out


def prepare_rerun(conn: psycopg.Connection, job: JobRecord, from_stage: int) -> int:
    """Reset a finished job (failed, cancelled, or completed but its output gone) to re-run from a stage;
    returns the new run number."""
    conn.execute("DELETE FROM app.tasks WHERE parent_job_id = %s AND stage >= %s", [job.job_id, from_stage])
    row = conn.execute(
        "UPDATE app.jobs SET status = 'queued', stage = %s, run = run + 1, error_details = NULL,"
        " result_data = NULL, completed_at = NULL, cleaned_up_at = NULL, updated_at = now()"
        " WHERE job_id = %s AND status = %s RETURNING run",
        [from_stage, job.job_id, job.status.value],
    ).fetchone()
    assert row is not None
    previous = {"previous_status": job.status.value, "previous_error": job.error_details}
    add_event(conn, job.job_id, "job_rerun", from_stage, previous)
    return int(row["run"])


def cancel_job(conn: psycopg.Connection, job_id: str, reason: str) -> dict[str, Any] | None:
    """Cancel an active job: status `cancelled`, its not-started tasks cancelled; None when it is not active.

    Running tasks are left `processing`: they notice the cancellation (between batches, or when their
    worker renews their lock), stop, roll back and are cancelled then (see services.context).
    """
    job = get_job(conn, job_id, lock=True)
    if job is None or job.status not in ACTIVE_JOB:
        return None
    details = {"error": reason, "cancelled": True, "stage": job.stage}
    conn.execute(
        "UPDATE app.jobs SET status = 'cancelled', error_details = %s, updated_at = clock_timestamp(),"
        " completed_at = clock_timestamp() WHERE job_id = %s",
        [Jsonb(details), job_id],
    )
    dropped = conn.execute(
        "UPDATE app.tasks SET status = 'cancelled', updated_at = now()"
        " WHERE parent_job_id = %s AND status IN ('queued', 'retrying')",
        [job_id],
    ).rowcount
    running = conn.execute(
        "SELECT count(*) AS n FROM app.tasks WHERE parent_job_id = %s AND status = 'processing'", [job_id]
    ).fetchone()
    add_event(conn, job_id, "job_cancelled", job.stage, details)
    return {
        "previous_status": job.status.value,
        "stage": job.stage,
        "tasks_dropped": dropped,
        "tasks_stopping": int(running["n"]) if running else 0,
    }
