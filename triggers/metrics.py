"""GET /api/metrics: Prometheus text format, read from the database at scrape time.

A custom collector queries the database on every scrape, so every API process reports the same
numbers and they are exactly what the database holds (jobs and tasks finished by workers in other
processes included); nothing is counted in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from config import get_settings
from infrastructure import database
from infrastructure.queues import get_queue
from triggers.auth import require_read_key

router = APIRouter(tags=["operations"])

# Task durations (completed_at - started_at, seconds): from sub-second hello_world tasks to long loads.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

JOBS_SQL = "SELECT job_type, status, count(*) AS n FROM app.jobs GROUP BY 1, 2 ORDER BY 1, 2"
# One pass over the tasks for their counts, durations and rows. The bucket b of a duration d is the number of
# bounds below d (so d <= bounds[b], Prometheus' "le"): n - width_bucket(-d, ascending negated bounds), since
# width_bucket counts the thresholds <= its operand.
TASKS_SQL = (
    "SELECT task_type, job_type, status, b, count(*) AS n, sum(d) AS total, sum(rows_uploaded) AS rows_uploaded"
    " FROM (SELECT task_type, job_type, status, d, (result_data ->> 'rows_uploaded')::bigint AS rows_uploaded,"
    "        CASE WHEN d IS NOT NULL THEN %(n)s - width_bucket(-d, %(negated)s::float8[]) END AS b"
    "       FROM (SELECT task_type, job_type, status, result_data,"
    "               CASE WHEN status = 'completed' THEN extract(epoch FROM completed_at - started_at)::float8 END AS d"
    "             FROM app.tasks) AS t) AS u"
    " GROUP BY 1, 2, 3, 4"
)
DURATION_ARGS = {"n": len(DURATION_BUCKETS), "negated": sorted(-b for b in DURATION_BUCKETS)}
JANITOR_SQL = "SELECT name, value FROM app.janitor_counters ORDER BY name"


def _histograms(rows: list[dict[str, Any]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        "geoetl_task_duration_seconds", "Run time of completed tasks (started to completed)", labels=["task_type"]
    )
    per_type: dict[str, tuple[list[int], float]] = {}
    for r in rows:
        if r["b"] is None:
            continue
        counts, total = per_type.setdefault(r["task_type"], ([0] * (len(DURATION_BUCKETS) + 1), 0.0))
        counts[int(r["b"])] += int(r["n"])  # 0: d <= first bound, ..., len: above the last bound
        per_type[r["task_type"]] = (counts, total + float(r["total"] or 0.0))
    for task_type, (counts, total) in sorted(per_type.items()):
        cumulative, buckets = 0, []
        for bound, n in zip(DURATION_BUCKETS, counts, strict=False):
            cumulative += n
            buckets.append((repr(bound), cumulative))
        cumulative += counts[-1]
        buckets.append(("+Inf", cumulative))
        family.add_metric([task_type], buckets, total)
    return family


class DatabaseCollector:
    """Everything /api/metrics reports, read at scrape time."""

    def collect(self) -> Iterator[Metric]:
        settings = get_settings()
        with database.connection() as conn:
            jobs = conn.execute(JOBS_SQL).fetchall()
            tasks = conn.execute(TASKS_SQL, DURATION_ARGS).fetchall()
            janitor = {r["name"]: int(r["value"]) for r in conn.execute(JANITOR_SQL).fetchall()}
        family = GaugeMetricFamily("geoetl_jobs", "Jobs in the database by type and status",
                                   labels=["job_type", "status"])
        for r in jobs:
            family.add_metric([r["job_type"], r["status"]], r["n"])
        yield family
        by_status: dict[tuple[str, str], int] = {}
        rows: dict[str, int] = {}
        for r in tasks:
            key = (r["task_type"], r["status"])
            by_status[key] = by_status.get(key, 0) + int(r["n"])
            if r["status"] == "completed" and r["rows_uploaded"] is not None:
                rows[r["job_type"]] = rows.get(r["job_type"], 0) + int(r["rows_uploaded"])
        family = GaugeMetricFamily("geoetl_tasks", "Tasks in the database by type and status",
                                   labels=["task_type", "status"])
        for (task_type, status), n in sorted(by_status.items()):
            family.add_metric([task_type, status], n)
        yield family
        yield _histograms(tasks)
        family = GaugeMetricFamily("geoetl_rows_loaded", "Rows loaded by the completed tasks in the database",
                                   labels=["job_type"])
        for job_type, n in sorted(rows.items()):
            family.add_metric([job_type], n)
        yield family

        stats = get_queue().queue_stats([settings.jobs_queue, settings.tasks_queue])
        depth = GaugeMetricFamily("geoetl_queue_depth", "Messages waiting or in flight", labels=["queue"])
        oldest = GaugeMetricFamily("geoetl_queue_oldest_message_age_seconds",
                                   "Age of the oldest message not dead-lettered (0 when empty)", labels=["queue"])
        dead = GaugeMetricFamily("geoetl_queue_dead_letters", "Dead-lettered messages", labels=["queue"])
        for queue, st in stats.items():
            depth.add_metric([queue], st.depth)
            oldest.add_metric([queue], st.oldest_age_seconds or 0.0)
            dead.add_metric([queue], st.dead_letters)
        yield depth
        yield oldest
        yield dead

        yield CounterMetricFamily("geoetl_janitor_runs", "Janitor runs (that held the janitor lock)",
                                  value=janitor.get("runs", 0))
        work = CounterMetricFamily("geoetl_janitor_work", "What janitor runs did, by kind", labels=["kind"])
        for name, value in sorted(janitor.items()):
            if name != "runs":
                work.add_metric([name], value)
        yield work


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(DatabaseCollector())  # type: ignore[arg-type]


@router.get("/metrics", summary="Prometheus metrics (text format), read from the database",
            response_class=Response, dependencies=[Depends(require_read_key)])
async def metrics() -> Response:
    body = await run_in_threadpool(generate_latest, REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
