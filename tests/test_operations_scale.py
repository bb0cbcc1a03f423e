"""The operator's queries at 100,000 finished jobs and 1,000,000 tasks each walk an index.

EXPLAIN of the exact statements the job list, job status, dashboard, janitor and a failed job's
message cleanup run (bench/operations.py generates the rows and holds the list): no sequential
scan of the app tables. Their times are reported by `python -m bench.operations` in BENCHMARKS.md,
never asserted here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from bench import operations as ops

pytestmark = pytest.mark.slow
APP_TABLES = {"jobs", "tasks", "job_events", "queue_messages", "outbox"}


@pytest.fixture(scope="module")
def scaled(database: str) -> Iterator[psycopg.Connection]:
    from config import get_settings

    s = get_settings()
    with psycopg.connect(database, row_factory=dict_row) as conn:
        ops.remove(conn)
        ops.generate(conn, s.jobs_queue, s.tasks_queue)
        try:
            yield conn
        finally:
            conn.rollback()
            ops.remove(conn)


def test_the_generated_volume(scaled: psycopg.Connection) -> None:
    row = scaled.execute(
        "SELECT (SELECT count(*) FROM app.jobs WHERE parameters ? 'scale' AND status <> 'processing') AS jobs,"
        " (SELECT count(*) FROM app.tasks WHERE task_type = 'scale_task') AS tasks,"
        " (SELECT count(*) FROM app.queue_messages WHERE message_id LIKE 'scale-task:%') AS waiting"
    ).fetchone()
    assert row == {"jobs": 100_000, "tasks": 1_000_000, "waiting": 100_000}
    scaled.rollback()


def _query_ids() -> list[str]:
    return [what for what, _, _ in ops.queries("jobs", "tasks", "c")]


@pytest.mark.parametrize("what", _query_ids())
def test_query_walks_an_index(scaled: psycopg.Connection, what: str) -> None:
    from config import get_settings

    s = get_settings()
    stmt, args = next((q, a) for w, q, a in ops.queries(s.jobs_queue, s.tasks_queue, s.stac_collection) if w == what)
    plan = ops.plan(scaled, stmt, args)
    scaled.rollback()
    assert ops.seq_scans(plan, APP_TABLES) == [], f"{what}: sequential scan in\n{plan}"
    used = [n for n in ops.nodes(plan) if n["Node Type"] in ("Index Scan", "Index Only Scan", "Bitmap Index Scan")]
    assert used, f"{what}: no index used in\n{plan}"


def test_the_answers_are_right_at_scale(scaled: psycopg.Connection, api_server: str) -> None:
    """The rewritten job list counts and pages correctly over the generated jobs."""
    import requests

    failed = requests.get(f"{api_server}/jobs", params={"status": "failed", "job_type": ops.JOB_TYPE, "limit": 500},
                          timeout=60).json()
    want = scaled.execute("SELECT count(*) AS n FROM app.jobs WHERE status = 'failed' AND job_type = %s",
                          [ops.JOB_TYPE]).fetchone()["n"]
    scaled.rollback()
    assert failed["total"] == want and not failed["total_capped"] and len(failed["jobs"]) == min(500, want)
    every = requests.get(f"{api_server}/jobs", params={"limit": 5}, timeout=60).json()
    assert every["total"] == 10_000 and every["total_capped"] is True
    created = [j["created_at"] for j in every["jobs"]]
    assert created == sorted(created, reverse=True)
    page = requests.get(f"{api_server}/dashboard/data/jobs", params={"status": "failed", "job_type": ops.JOB_TYPE,
                                                                     "limit": 3}, timeout=60).json()
    stages: dict[str, Any] = page["jobs"][0]["stages"]
    assert stages["1"]["total"] == 9 and stages["1"]["failed"] == 1 and stages["2"]["total"] == 1
