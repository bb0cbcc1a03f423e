"""Housekeeping that makes crashes harmless: stuck jobs, unfinished cleanups, unsent outbox rows.

Messages of dead workers need no help here: their lock (visibility timeout) expires and they
are delivered again. One janitor runs at a time (advisory lock).
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql

from core import retention
from core.machine import CoreMachine
from core.models import JobRecord
from infrastructure import database

log = logging.getLogger(__name__)
JANITOR_LOCK = 7_071_000_100
# The orchestrator's own tables churn: every message is inserted, locked and deleted, every task updated
# several times. Vacuumed here once their dead rows pass this many (and outnumber the live ones), so a
# queue stays fast where autovacuum is off or lagging: receiving skips over dead rows, and 130k of them
# (a day of benchmarks, autovacuum off) made hello_world four times slower.
VACUUM_DEAD_ROWS = 5_000

STUCK_JOBS_SQL = (
    "SELECT j.job_id, j.stage FROM app.jobs j"
    " WHERE j.status IN ('queued', 'processing')"
    "   AND j.updated_at < now() - make_interval(secs => %(age)s)"
    "   AND NOT EXISTS (SELECT 1 FROM app.tasks t WHERE t.parent_job_id = j.job_id"
    "        AND greatest(t.updated_at, t.heartbeat_at) > now() - make_interval(secs => %(age)s))"
)
# Served by jobs_uncleaned_idx (migration 005): only running jobs and interrupted cleanups have no cleaned_up_at.
UNCLEANED_JOBS_SQL = (
    "SELECT * FROM app.jobs WHERE cleaned_up_at IS NULL AND status IN ('completed', 'failed', 'cancelled')"
    " AND updated_at < now() - interval '30 seconds' ORDER BY updated_at LIMIT 50"
)
COUNT_RUN_SQL = (
    "INSERT INTO app.janitor_counters (name, value)"
    " SELECT k, v FROM unnest(%s::text[], %s::bigint[]) AS u(k, v)"
    " ON CONFLICT (name) DO UPDATE SET value = app.janitor_counters.value + excluded.value, updated_at = now()"
)


class Janitor:
    def __init__(self, machine: CoreMachine) -> None:
        self.machine = machine
        self.settings = machine.settings

    def run_once(self) -> dict[str, Any]:
        report: dict[str, Any] = {"ran": False}
        with database.connect(autocommit=True) as lock_conn:
            got = lock_conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", [JANITOR_LOCK]).fetchone()
            if not got or not got["ok"]:
                return report
            try:
                report = {
                    "ran": True,
                    "stuck_jobs_failed": self.fail_stuck_jobs(),
                    "cleanups_done": self.finish_cleanups(),
                    "outbox_relayed": self.relay_outbox(),
                    **self.prune(),
                    "reconciled": self.reconcile(),
                    "tables_vacuumed": self.vacuum_busy_tables(lock_conn),
                }
                self.count_run(report)
            finally:
                lock_conn.execute("SELECT pg_advisory_unlock(%s)", [JANITOR_LOCK])
        if any(v for k, v in report.items() if k != "ran"):
            log.info("janitor: %s", report)
        return report

    def prune(self) -> dict[str, int]:
        """Retention (JOB_RETENTION_DAYS): old finished jobs and what only they used."""
        return retention.prune(self.settings).as_dict()

    def count_run(self, report: dict[str, Any]) -> None:
        """Add this run to the janitor's counters (read by /api/metrics)."""
        counts = {"runs": 1} | {k: int(v) for k, v in report.items() if isinstance(v, int) and k != "ran"}
        counts["tables_vacuumed"] = len(report.get("tables_vacuumed") or [])
        with database.connection() as conn:
            conn.execute(COUNT_RUN_SQL, [list(counts), list(counts.values())])

    def vacuum_busy_tables(self, conn: psycopg.Connection) -> list[str]:
        """VACUUM (ANALYZE) the app tables with many dead rows; `conn` is in autocommit mode."""
        rows = conn.execute(
            "SELECT relname FROM pg_stat_user_tables WHERE schemaname = 'app'"
            " AND n_dead_tup > greatest(%s, n_live_tup) ORDER BY n_dead_tup DESC",
            [VACUUM_DEAD_ROWS],
        ).fetchall()
        done = []
        for row in rows:
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier("app", row["relname"])))
            done.append(str(row["relname"]))
        return done

    def fail_stuck_jobs(self) -> int:
        """Jobs with no progress (job row or any task heartbeat) for job_stuck_after_seconds."""
        with database.connection() as conn:
            rows = conn.execute(STUCK_JOBS_SQL, {"age": self.settings.job_stuck_after_seconds}).fetchall()
        failed = 0
        for r in rows:
            details = {
                "error": f"the job made no progress for {self.settings.job_stuck_after_seconds} seconds "
                "and was failed by the janitor; submit it again to re-run it",
                "stage": r["stage"],
                "task_id": None,
            }
            with database.connection() as conn:
                if self.machine.fail_job(conn, None, r["job_id"], details):
                    failed += 1
        return failed

    def finish_cleanups(self) -> int:
        """Cleanups that a crash interrupted (jobs that ended but were never cleaned)."""
        with database.connection() as conn:
            rows = conn.execute(UNCLEANED_JOBS_SQL).fetchall()
        for r in rows:
            job = JobRecord.model_validate(r)
            self.machine.cleanup_job(job, failed=job.status != "completed")
        return len(rows)

    def reconcile(self) -> dict[str, int]:
        """What each job type's outputs need to stay consistent (e.g. catalog entries of vanished tables)."""
        done: dict[str, int] = {}
        for job_cls in dict.fromkeys(self.machine.jobs.values()):
            try:
                for key, n in job_cls.reconcile().items():
                    if n:
                        done[key] = done.get(key, 0) + n
            except Exception:
                log.exception("reconciliation of %s failed; the next run tries again", job_cls.job_type)
        return done

    def relay_outbox(self) -> int:
        relay = getattr(self.machine.queue, "relay", None)
        if relay is None:
            return 0
        return int(relay(stale_after_seconds=60))
