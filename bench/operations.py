"""The operator's queries at scale: 100,000 finished jobs, 1,000,000 tasks, a busy queue.

    .venv/bin/python -m bench.operations --database-url postgresql://.../geoetl_bench   (times each query)

`generate` writes synthetic rows (job type `scale_synthetic`, ids from 'scale-<n>') into the app
tables of a migrated database and `remove` takes them out again; `QUERIES` are the exact SQL
statements the job list, job status, dashboard, janitor and failed-job cleanup run.
tests/test_operations_scale.py checks their plans (every one walks an index); this module
reports their times (BENCHMARKS.md), which are never asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

JOBS = 100_000
TASKS_PER_JOB = 10
RUNNING_JOBS = 200
PENDING_PER_RUNNING_JOB = 500  # 100,000 waiting task messages
DEAD_LETTERS = 2_000
SENT_OUTBOX = 100_000
TAG = "scale-"
JOB_TYPE = "scale_synthetic"


def job_id(i: int) -> str:
    import hashlib

    return hashlib.sha256(f"{TAG}{i}".encode()).hexdigest()


# Literal SQL (the sizes above are written into it): 100,000 finished jobs (+200 running), 10 tasks per
# finished job, 500 waiting task messages per running job, 2,000 dead letters, 100,000 relayed outbox rows.
GENERATE = [
    # finished jobs, one every 15 s back from now (17 days: inside the default retention);
    # 1 in 10 an ingest, 1 in 50 failed
    """INSERT INTO app.jobs (job_id, job_type, parameters, status, stage, total_stages, run, cleaned_up_at,
                              created_at, updated_at, completed_at)
        SELECT encode(sha256(('scale-' || i)::bytea), 'hex'),
               CASE WHEN mod(i, 10) = 0 THEN 'ingest_vector' ELSE 'scale_synthetic' END,
               jsonb_build_object('table_name', 'scale_t' || i, 'schema', 'geo', 'scale', i),
               CASE WHEN mod(i, 50) = 7 THEN 'failed' ELSE 'completed' END, 2, 2, 1, t, t - interval '1 minute', t, t
          FROM generate_series(1, 100000) AS i, LATERAL (SELECT now() - i * interval '15 seconds') AS g(t)""",
    """INSERT INTO app.jobs (job_id, job_type, parameters, status, stage, total_stages, run, created_at, updated_at)
        SELECT encode(sha256(('scale-' || i)::bytea), 'hex'), 'scale_synthetic', jsonb_build_object('scale', i),
               'processing', 1, 2, 1, now() - interval '5 minutes', now()
          FROM generate_series(100001, 100200) AS i""",
    """INSERT INTO app.tasks (task_id, parent_job_id, job_type, task_type, stage, task_index, status, result_data,
                               attempts, created_at, started_at, completed_at, updated_at)
        SELECT j.job_id || ':' || k, j.job_id, j.job_type, 'scale_task',
               CASE WHEN k < 9 THEN 1 ELSE 2 END, k,
               CASE WHEN j.status = 'failed' AND k = 3 THEN 'failed' ELSE 'completed' END,
               jsonb_build_object('rows_uploaded', 100), 1, j.created_at, j.created_at,
               j.created_at + (k + 1) * interval '0.3 seconds', j.updated_at
          FROM app.jobs j, generate_series(0, 9) AS k
         WHERE j.parameters ? 'scale' AND j.status <> 'processing'""",
    """INSERT INTO app.job_events (job_id, event, stage, at)
        SELECT job_id, e, 1, created_at FROM app.jobs, unnest(ARRAY['job_created', 'stage_advanced']) AS e
         WHERE parameters ? 'scale'""",
    """INSERT INTO app.queue_messages (queue, message_id, body, enqueued_at, visible_at)
        SELECT %(tasks)s, 'scale-task:' || j.job_id || ':' || k,
               jsonb_build_object('task_id', j.job_id || ':' || k, 'parent_job_id', j.job_id, 'stage', 1,
                                  'job_type', 'scale_synthetic', 'task_type', 'scale_task'),
               now() - interval '4 minutes', now() - interval '4 minutes'
          FROM app.jobs j, generate_series(1, 500) AS k
         WHERE j.parameters ? 'scale' AND j.status = 'processing'""",
    """INSERT INTO app.queue_messages (queue, message_id, body, dead_lettered_at, dead_letter_reason, delivery_count)
        SELECT CASE WHEN mod(i, 2) = 0 THEN %(tasks)s ELSE %(jobs)s END, 'scale-dead:' || i,
               CASE WHEN mod(i, 2) = 0 THEN jsonb_build_object('task_id', 't' || i, 'parent_job_id',
                                                           encode(sha256(('scale-' || i)::bytea), 'hex'))
                    ELSE jsonb_build_object('job_id', encode(sha256(('scale-' || i)::bytea), 'hex'), 'stage', 1) END,
               now() - i * interval '1 minute', 'delivered 11 times', 11
          FROM generate_series(1, 2000) AS i""",
    """INSERT INTO app.outbox (queue, message_id, body, created_at, sent_at)
        SELECT %(tasks)s, 'scale-outbox:' || i, '{}'::jsonb, now() - i * interval '10 seconds',
               now() - i * interval '10 seconds'
          FROM generate_series(1, 100000) AS i""",
]

REMOVE = [
    "DELETE FROM app.queue_messages WHERE message_id LIKE 'scale-%'",
    "DELETE FROM app.outbox WHERE message_id LIKE 'scale-%'",
    "DELETE FROM app.jobs WHERE parameters ? 'scale'",  # tasks and events cascade
]


def generate(conn: psycopg.Connection, jobs_queue: str, tasks_queue: str) -> dict[str, float]:
    """Write the synthetic rows, then VACUUM (ANALYZE) as autovacuum or the janitor would; seconds per step."""
    took = {}
    for i, stmt in enumerate(GENERATE):
        t0 = time.perf_counter()
        conn.execute(stmt, {"jobs": jobs_queue, "tasks": tasks_queue})
        took[f"insert {i}"] = time.perf_counter() - t0
    conn.commit()
    t0 = time.perf_counter()
    autocommit, conn.autocommit = conn.autocommit, True
    try:
        for table in ("jobs", "tasks", "job_events", "queue_messages", "outbox"):
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier("app", table)))
    finally:
        conn.autocommit = autocommit
    took["vacuum"] = time.perf_counter() - t0
    return took


def remove(conn: psycopg.Connection) -> None:
    for stmt in REMOVE:
        conn.execute(stmt)  # type: ignore[arg-type]
    conn.commit()


def queries(jobs_queue: str, tasks_queue: str, collection: str) -> list[tuple[str, str, dict[str, Any] | list[Any]]]:
    """(what, SQL, parameters): the statements the API, the dashboard and the janitor run."""
    from core import retention
    from core.janitor import STUCK_JOBS_SQL, UNCLEANED_JOBS_SQL
    from core.retention import EXPIRED_JOBS_SQL, FINISHED
    from infrastructure.queues.postgres import (
        DEAD_LETTER_COUNT_SQL,
        DEAD_LETTERS_SQL,
        DISCARD_SQL,
        STATS_SQL,
    )
    from jobs.ingest_vector import PROGRESS_SQL as INGEST_PROGRESS_SQL
    from triggers.dashboard import EVENTS_SQL, FAILED_TASKS_SQL, STAGE_COUNTS_SQL
    from triggers.jobs_api import COUNT_JOBS_SQL, JOB_TASKS_SQL, LIST_JOBS_SQL, TOTAL_CAP
    from triggers.serving.layers import RENDER_PARAMS_SQL

    failed_job = job_id(57)  # failed (1 in 50), not an ingest
    ingest_job = job_id(10)
    running_job = job_id(JOBS + 7)
    page = [job_id(i) for i in range(1, 26)]
    now = datetime.now(UTC)
    list_args = {"status": None, "type": None, "since": None, "until": None, "limit": 50, "offset": 0,
                 "cap": TOTAL_CAP + 1}
    out: list[tuple[str, str, dict[str, Any] | list[Any]]] = []
    for label, extra in (
        ("no filter", {}),
        ("status=failed", {"status": "failed"}),
        ("status=completed", {"status": "completed"}),
        ("job_type=ingest_vector", {"type": "ingest_vector"}),
        ("type+status", {"type": JOB_TYPE, "status": "completed"}),
        ("last 24 h", {"since": now - timedelta(days=1), "until": now}),
        ("status=failed, 3 days",
         {"status": "failed", "since": now - timedelta(days=5), "until": now - timedelta(days=2)}),
        ("page 100", {"offset": 5000}),
    ):
        args = list_args | extra
        out.append((f"job list ({label})", LIST_JOBS_SQL, args))
        out.append((f"job list count ({label})", COUNT_JOBS_SQL, args))
    out += [
        ("job status: job row", "SELECT * FROM app.jobs WHERE job_id = %s", [failed_job]),
        ("job status: progress", "SELECT stage, status, count(*) AS n FROM app.tasks WHERE parent_job_id = %s"
         " GROUP BY 1, 2 ORDER BY 1", [failed_job]),
        ("job status: ingest progress", INGEST_PROGRESS_SQL, [ingest_job]),
        ("job tasks", JOB_TASKS_SQL, {"job": failed_job, "stage": None, "status": None, "limit": 100, "offset": 0}),
        ("dashboard: stage counts of a page", STAGE_COUNTS_SQL, [page]),
        ("dashboard: events", EVENTS_SQL, [failed_job, 200]),
        ("dashboard: failed tasks", FAILED_TASKS_SQL, [failed_job]),
        ("dashboard: queue stats (tasks)", STATS_SQL, {"queue": tasks_queue}),
        ("dashboard: queue stats (jobs)", STATS_SQL, {"queue": jobs_queue}),
        ("dead letters page", DEAD_LETTERS_SQL, {"queue": tasks_queue, "after": 0, "limit": 50}),
        ("dead letters count", DEAD_LETTER_COUNT_SQL, {"queue": tasks_queue}),
        ("viewer: render_params", RENDER_PARAMS_SQL.replace("$1", "%s").replace("$2", "%s"),
         ["scale_t10", "geo", "geo"]),
        ("janitor: stuck jobs", STUCK_JOBS_SQL, {"age": 3 * 3600}),
        ("janitor: unfinished cleanups", UNCLEANED_JOBS_SQL, []),
        ("janitor: retention candidates", EXPIRED_JOBS_SQL,
         {"days": 10, "finished": FINISHED, "kept": [ingest_job], "batch": retention.BATCH}),
        ("janitor: old dead letters", retention.OLD_DEAD_LETTERS_SQL, {"queue": tasks_queue, "days": 1, "batch": 500}),
        ("janitor: old outbox rows", retention.OLD_OUTBOX_SQL, {"days": 1, "batch": 500}),
        ("janitor: a deleted batch's messages", retention.DELETE_JOB_MESSAGES_SQL,
         {"tasks": tasks_queue, "jobs": jobs_queue, "ids": page}),
        ("failed job: drop its waiting messages", DISCARD_SQL, [tasks_queue, running_job]),
    ]
    return out


def plan(conn: psycopg.Connection, stmt: str, args: Any) -> dict[str, Any]:
    """EXPLAIN (FORMAT JSON) of a statement; data-changing ones run in a transaction that is rolled back."""
    row = conn.execute(f"EXPLAIN (FORMAT JSON) {stmt}", args).fetchone()  # type: ignore[arg-type]
    assert row is not None
    value = row["QUERY PLAN"] if isinstance(row, dict) else row[0]
    return (json.loads(value) if isinstance(value, str) else value)[0]["Plan"]


def nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = [node]
    for child in node.get("Plans", []):
        out += nodes(child)
    return out


def seq_scans(node: dict[str, Any], tables: set[str]) -> list[str]:
    return [n["Relation Name"] for n in nodes(node)
            if n["Node Type"] == "Seq Scan" and n.get("Relation Name") in tables]


def timed(conn: psycopg.Connection, stmt: str, args: Any, runs: int = 5) -> float:
    """Median seconds of `runs` executions (rolled back, so deletes delete nothing for good)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        conn.execute(stmt, args)  # type: ignore[arg-type]
        times.append(time.perf_counter() - t0)
        conn.rollback()
    return statistics.median(times)


def _scrape_ms(runs: int = 3) -> float:
    from triggers.metrics import DatabaseCollector

    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        list(DatabaseCollector().collect())
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.operations", description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", required=True, help="a migrated geoetl database (never the one `make up` uses)")
    p.add_argument("--keep", action="store_true", help="leave the synthetic rows in place")
    args = p.parse_args(argv)
    import os

    os.environ["DATABASE_URL"] = args.database_url
    from config import get_settings, reset_settings

    reset_settings()
    s = get_settings()
    report: Callable[[str], None] = print
    with psycopg.connect(args.database_url, row_factory=dict_row) as conn:
        remove(conn)
        took = generate(conn, s.jobs_queue, s.tasks_queue)
        report(f"generated in {sum(took.values()):.1f} s")
        try:
            report("| query | plan (top) | median ms |\n| --- | --- | --- |")
            for what, stmt, qargs in queries(s.jobs_queue, s.tasks_queue, s.stac_collection):
                top = plan(conn, stmt, qargs)
                conn.rollback()
                scans = sorted({n["Node Type"] + (f" {n['Index Name']}" if n.get("Index Name") else "")
                                for n in nodes(top) if "Scan" in n["Node Type"]})
                report(f"| {what} | {', '.join(scans)} | {timed(conn, stmt, qargs) * 1000:.2f} |")
            conn.rollback()
            report(f"| GET /api/metrics collector (reads every job and task) | - | {_scrape_ms():.1f} |")
        finally:
            if not args.keep:
                remove(conn)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
