"""The orchestrator alone: hello_world with n tasks, throughput and dispatch latency.

Throughput is n / (job completed_at - job created_at), both stamped by the database, so the
poll interval does not enter it. Dispatch latency of a task is started_at - created_at of its
app.tasks row: created_at is the start of the transaction that inserted the stage's tasks and
their queue messages (enqueue), started_at is when a worker claimed it (task start).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np

from bench import pg
from bench.geoetl_run import JobFailed, stack_processes, submit, wait_for, worker_names
from bench.rss import RssSampler


def percentiles(values: list[float], qs: tuple[float, ...] = (50, 95)) -> dict[str, float | None]:
    """p50/p95 (linear interpolation) in the unit of `values`; None for an empty list."""
    if not values:
        return {f"p{int(q)}": None for q in qs}
    arr = np.asarray(values, dtype=float)
    return {f"p{int(q)}": round(float(np.percentile(arr, q)), 4) for q in qs}


def job_timings(job_id: str) -> dict[str, Any]:
    with pg.connect() as conn:
        job = conn.execute(
            "SELECT extract(epoch FROM completed_at - created_at) AS total_s, status FROM app.jobs WHERE job_id = %s",
            [job_id],
        ).fetchone()
        lat = conn.execute(
            "SELECT extract(epoch FROM started_at - created_at) FROM app.tasks"
            " WHERE parent_job_id = %s AND stage = 1 AND started_at IS NOT NULL",
            [job_id],
        ).fetchall()
        stage1 = conn.execute(
            "SELECT extract(epoch FROM max(completed_at) - min(created_at)) FROM app.tasks"
            " WHERE parent_job_id = %s AND stage = 1",
            [job_id],
        ).fetchone()
    if job is None:
        raise JobFailed(f"job {job_id} is not in app.jobs")
    return {
        "total_s": float(job[0]) if job[0] is not None else None,
        "status": job[1],
        "latencies_s": [float(r[0]) for r in lat],
        "stage1_s": float(stage1[0]) if stage1 and stage1[0] is not None else None,
    }


def run_hello_world(n: int = 1000, timeout: float = 1800) -> dict[str, Any]:
    """One hello_world job of n tasks, submitted over HTTP with a unique message so it really runs."""
    groups = stack_processes()
    body = {"n": n, "message": f"bench-{uuid.uuid4().hex}"}
    with RssSampler(groups, interval=0.2) as sampler:
        t0 = time.perf_counter()
        job_id, _ = submit("/jobs/submit/hello_world", body)
        status, seen = wait_for(job_id, timeout)
    if status.get("status") != "completed":
        raise JobFailed(f"hello_world {job_id} {status.get('status')}: {status.get('error_details')}")
    t = job_timings(job_id)
    lat_ms = [v * 1000 for v in t["latencies_s"]]
    pct = percentiles(lat_ms)
    return {
        "job_id": job_id,
        "n": n,
        "wall_s": round(seen - t0, 3),
        "server_s": round(t["total_s"], 3),
        "tasks_per_s": round(n / t["total_s"], 1) if t["total_s"] else None,
        "stage1_tasks_per_s": round(n / t["stage1_s"], 1) if t["stage1_s"] else None,
        "dispatch_p50_ms": pct["p50"],
        "dispatch_p95_ms": pct["p95"],
        "dispatch_max_ms": round(max(lat_ms), 1) if lat_ms else None,
        "tasks_measured": len(lat_ms),
        "worker_peak_rss_mb": max((sampler.peaks_mb[w] for w in worker_names(groups)), default=None),
        "peak_rss_mb": sampler.peaks_mb,
    }


def run_idle_latency(samples: int = 10, timeout: float = 120) -> dict[str, Any]:
    """Dispatch latency with no backlog: n=1 jobs one after another, so workers are idle on each enqueue."""
    lat_ms: list[float] = []
    for _ in range(samples):
        job_id, _t = submit("/jobs/submit/hello_world", {"n": 1, "message": f"bench-idle-{uuid.uuid4().hex}"})
        status, _seen = wait_for(job_id, timeout)
        if status.get("status") != "completed":
            raise JobFailed(f"hello_world {job_id} {status.get('status')}: {status.get('error_details')}")
        lat_ms += [v * 1000 for v in job_timings(job_id)["latencies_s"]]
    pct = percentiles(lat_ms)
    return {"latencies_ms": [round(v, 2) for v in lat_ms], "p50_ms": pct["p50"], "p95_ms": pct["p95"]}
