"""GET /api/dashboard: the jobs dashboard, and the JSON it reads (/api/dashboard/data/...).

The page is static HTML with its script and style served from /api/dashboard/static (no CDN, no
inline script: a Content-Security-Policy can forbid both). The script writes every value with
textContent, so nothing stored in a job runs as markup. Write actions (cancel, resubmit) call the
job API with the write key the user types in; the key stays in the page's memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from config import get_settings
from core import state
from infrastructure import database
from infrastructure.queues import get_queue
from jobs import ALL_JOBS
from triggers.auth import require_read_key
from triggers.errors import ApiError
from triggers.jobs_api import _check_job_id, _iso, job_status_body, list_jobs_page

TRIGGERS = Path(__file__).resolve().parent
STATIC_DIR = TRIGGERS / "static" / "dashboard"
TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TRIGGERS / "templates")),
    autoescape=jinja2.select_autoescape(["html"]),
)
EVENTS_SHOWN = 200

router = APIRouter(tags=["dashboard"])

STAGE_COUNTS_SQL = (
    "SELECT parent_job_id, stage, status, count(*) AS n FROM app.tasks"
    " WHERE parent_job_id = ANY(%s) GROUP BY 1, 2, 3 ORDER BY 1, 2"
)
EVENTS_SQL = (
    "SELECT id, event, stage, detail, at FROM app.job_events WHERE job_id = %s ORDER BY id DESC LIMIT %s"
)
FAILED_TASKS_SQL = (
    "SELECT task_id, task_type, stage, task_index, attempts, error_details, started_at, completed_at"
    " FROM app.tasks WHERE parent_job_id = %s AND status = 'failed' ORDER BY stage, task_index LIMIT 10"
)


def register(app: Any) -> None:
    app.include_router(router, prefix="/api")
    app.mount("/api/dashboard/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")


@router.get("/dashboard", response_class=HTMLResponse, summary="Jobs dashboard (HTML)")
async def dashboard(request: Request) -> HTMLResponse:
    api = request.scope.get("root_path", "").rstrip("/") + "/api"
    page = TEMPLATES.get_template("dashboard.html").render(static=f"{api}/dashboard/static", api=api)
    return HTMLResponse(page)


def _stage_counts(conn: Any, job_ids: list[str]) -> dict[str, dict[str, dict[str, int]]]:
    out: dict[str, dict[str, dict[str, int]]] = {}
    for r in conn.execute(STAGE_COUNTS_SQL, [job_ids]).fetchall():
        stage = out.setdefault(r["parent_job_id"], {}).setdefault(str(r["stage"]), {"total": 0})
        stage[r["status"]] = r["n"]
        stage["total"] += r["n"]
    return out


def _jobs_page(status: str | None, job_type: str | None, since: Any, until: Any, limit: int, offset: int
               ) -> dict[str, Any]:
    with database.connection() as conn:
        page = list_jobs_page(conn, status, job_type, since, until, limit, offset)
        counts = _stage_counts(conn, [j["job_id"] for j in page["jobs"]])
    for job in page["jobs"]:
        job["stages"] = counts.get(job["job_id"], {})
    page["job_types"] = sorted(ALL_JOBS)
    return page


@router.get("/dashboard/data/jobs", summary="Dashboard: a page of jobs with per-stage task counts",
            dependencies=[Depends(require_read_key)])
async def dashboard_jobs(
    status: str | None = Query(None, pattern=r"^(queued|processing|completed|failed|cancelled)$"),
    job_type: str | None = Query(None, max_length=100, pattern=r"^[^\x00-\x1f]*$"),
    since: str | None = Query(None, max_length=40),
    until: str | None = Query(None, max_length=40),
    limit: int = Query(25, ge=1, le=200),
    offset: int = Query(0, ge=0, le=10_000_000),
) -> dict[str, Any]:
    from datetime import datetime

    def when(name: str, value: str | None) -> datetime | None:
        if not value:
            return None
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise ApiError(400, "invalid_time", f"{name} is not an ISO 8601 time: {value!r}") from None

    return await run_in_threadpool(_jobs_page, status, job_type, when("since", since), when("until", until),
                                   limit, offset)


def links(job: dict[str, Any]) -> dict[str, str]:
    """Where a completed ingest's dataset is served (built from settings, never from stored text)."""
    if job["job_type"] != "ingest_vector" or job["status"] != "completed":
        return {}
    params = job["parameters"]
    schema, table = str(params.get("schema") or "geo"), str(params.get("table_name") or "")
    if not table:
        return {}
    s = get_settings()
    item = quote(f"{schema}.{table}", safe="")
    return {
        "features": s.ogc_features_url(quote(schema, safe=""), quote(table, safe="")),
        "viewer": f"{s.base_url}/api/vector/viewer?collection={quote(table, safe='')}",
        "stac_item": f"{s.base_url}/api/stac/collections/{quote(s.stac_collection, safe='')}/items/{item}",
    }


def _job_detail(job_id: str) -> dict[str, Any]:
    with database.connection() as conn:
        job = state.get_job(conn, job_id)
        if job is None:
            raise ApiError(404, "not_found", f"no job with id {job_id}")
        body = job_status_body(conn, job)
        events = conn.execute(EVENTS_SQL, [job_id, EVENTS_SHOWN]).fetchall()
        failed = conn.execute(FAILED_TASKS_SQL, [job_id]).fetchall()
    body["events"] = [{**e, "at": _iso(e["at"])} for e in reversed(events)]
    body["failed_tasks"] = [
        {k: (_iso(v) if k.endswith("_at") else v) for k, v in t.items()} for t in failed
    ]
    body["links"] = links(body)
    return body


@router.get("/dashboard/data/jobs/{job_id}", summary="Dashboard: one job with its timeline and failures",
            dependencies=[Depends(require_read_key)])
async def dashboard_job(job_id: str) -> dict[str, Any]:
    _check_job_id(job_id)
    return await run_in_threadpool(_job_detail, job_id)


def _queues() -> dict[str, Any]:
    s = get_settings()
    queue = get_queue()
    stats = queue.queue_stats([s.jobs_queue, s.tasks_queue])
    return {
        "backend": queue.backend,
        "queues": {
            name: {"depth": st.depth, "scheduled": st.scheduled, "oldest_age_seconds": st.oldest_age_seconds,
                   "dead_letters": st.dead_letters}
            for name, st in stats.items()
        },
    }


@router.get("/dashboard/data/queues", summary="Dashboard: queue depth, oldest message age, dead letters",
            dependencies=[Depends(require_read_key)])
async def dashboard_queues() -> dict[str, Any]:
    return await run_in_threadpool(_queues)
