"""Retention: finished jobs older than JOB_RETENTION_DAYS go, with everything that only they used.

A job goes with its tasks and events (foreign keys cascade), its leftover and dead-lettered queue
messages; relayed outbox rows and dead letters older than the retention go whatever their job.
Never deleted: a job that is not finished (status is checked under the row lock, and a locked
row is skipped), a job whose cleanup has not run yet, and the job that a published dataset
points to (its STAC item's `etl:job_id`): that record is the dataset's origin.

Small batches (a batch's ids are collected first, then deleted by primary key), each its own
transaction, so no lock is held for long and the queue keeps flowing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from infrastructure import database

FINISHED = ["completed", "failed", "cancelled"]
BATCH = 500
MAX_BATCHES_PER_RUN = 20  # at most 10,000 jobs per janitor run: a backlog drains over a few runs

# Job ids that published datasets point to (one STAC item per dataset: a small set).
PUBLISHED_JOB_IDS_SQL = (
    "SELECT DISTINCT content -> 'properties' ->> 'etl:job_id' AS job_id FROM pgstac.items"
    " WHERE collection = %(collection)s AND content -> 'properties' ->> 'etl:job_id' IS NOT NULL"
)

EXPIRED_JOBS_SQL = (
    "SELECT job_id FROM app.jobs"
    " WHERE completed_at < now() - make_interval(days => %(days)s)"
    "   AND status = ANY(%(finished)s) AND cleaned_up_at IS NOT NULL"
    "   AND job_id <> ALL(%(kept)s)"
    " ORDER BY completed_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED"
)

DELETE_JOB_MESSAGES_SQL = (
    "DELETE FROM app.queue_messages WHERE (queue = %(tasks)s AND body ->> 'parent_job_id' = ANY(%(ids)s))"
    " OR (queue = %(jobs)s AND body ->> 'job_id' = ANY(%(ids)s))"
)

OLD_DEAD_LETTERS_SQL = (
    "DELETE FROM app.queue_messages WHERE id = ANY(ARRAY(SELECT id FROM app.queue_messages"
    " WHERE queue = %(queue)s AND dead_lettered_at IS NOT NULL"
    "   AND dead_lettered_at < now() - make_interval(days => %(days)s)"
    " ORDER BY id LIMIT %(batch)s))"
)

OLD_OUTBOX_SQL = (
    "DELETE FROM app.outbox WHERE id = ANY(ARRAY(SELECT id FROM app.outbox"
    " WHERE sent_at IS NOT NULL AND sent_at < now() - make_interval(days => %(days)s)"
    " ORDER BY sent_at LIMIT %(batch)s))"
)


@dataclass
class RetentionReport:
    jobs_deleted: int = 0
    messages_deleted: int = 0
    outbox_deleted: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "jobs_deleted": self.jobs_deleted,
            "messages_deleted": self.messages_deleted,
            "outbox_deleted": self.outbox_deleted,
        }


def published_job_ids(conn: psycopg.Connection, collection: str) -> list[str]:
    try:
        with conn.transaction():
            rows = conn.execute(PUBLISHED_JOB_IDS_SQL, {"collection": collection}).fetchall()
    except psycopg.errors.UndefinedTable:  # no pgstac in this database: nothing is published
        return []
    return [r["job_id"] for r in rows]


def prune(settings: Any, batch: int = BATCH, max_batches: int = MAX_BATCHES_PER_RUN) -> RetentionReport:
    """Delete what outlived the retention; JOB_RETENTION_DAYS=0 keeps everything."""
    report = RetentionReport()
    days = settings.job_retention_days
    if days <= 0:
        return report
    queues = {"jobs": settings.jobs_queue, "tasks": settings.tasks_queue}
    with database.connection() as conn:
        kept = published_job_ids(conn, settings.stac_collection)
    for _ in range(max_batches):
        with database.connection() as conn:
            rows = conn.execute(
                EXPIRED_JOBS_SQL, {"days": days, "finished": FINISHED, "kept": kept, "batch": batch}
            ).fetchall()
            if not rows:
                break
            ids = [r["job_id"] for r in rows]
            report.messages_deleted += conn.execute(DELETE_JOB_MESSAGES_SQL, {**queues, "ids": ids}).rowcount
            report.jobs_deleted += conn.execute("DELETE FROM app.jobs WHERE job_id = ANY(%s)", [ids]).rowcount
        if len(rows) < batch:
            break
    for queue in queues.values():
        for _ in range(max_batches):
            with database.connection() as conn:
                n = conn.execute(OLD_DEAD_LETTERS_SQL, {"queue": queue, "days": days, "batch": batch}).rowcount
            report.messages_deleted += n
            if n < batch:
                break
    for _ in range(max_batches):
        with database.connection() as conn:
            n = conn.execute(OLD_OUTBOX_SQL, {"days": days, "batch": batch}).rowcount
        report.outbox_deleted += n
        if n < batch:
            break
    return report
