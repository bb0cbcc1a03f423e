"""Job routes: submit (any registered type), status with progress, task lists, job lists, cancel."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from config import get_settings
from core import state
from core.errors import ConflictError, JobValidationError, ResourceNotFoundError
from core.machine import CoreMachine
from core.models import JobRecord
from core.submit import Submission, UnknownJobType, submit_job
from infrastructure import database
from infrastructure.blob import UnsafeBlobName
from jobs import ALL_JOBS
from triggers.auth import require_read_key, require_write_key
from triggers.errors import ApiError

router = APIRouter(tags=["jobs"])
JOB_ID_RE = re.compile(r"^[0-9a-f]{64}$")


class ErrorBody(BaseModel):
    error: str
    message: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Invalid request"},
    401: {"model": ErrorBody, "description": "API key required"},
    404: {"model": ErrorBody, "description": "Unknown job type, container or blob"},
    409: {"model": ErrorBody, "description": "Target exists and belongs to no job with these parameters"},
}


class SubmitResponse(BaseModel):
    job_id: str
    status: str
    job_type: str
    idempotent: bool
    message: str
    status_url: str
    parameters: dict[str, Any] | None = None
    queue_info: dict[str, Any] | None = None
    result_data: dict[str, Any] | None = None
    current_stage: int | None = None
    total_stages: int | None = None
    rerun_from_stage: int | None = None


class JobStatusResponse(BaseModel):
    job_id: str
    job_type: str
    status: Literal["queued", "processing", "completed", "failed", "cancelled"]
    stage: int
    stage_name: str | None = None
    total_stages: int
    run: int
    parameters: dict[str, Any]
    created_at: str | None
    updated_at: str | None
    completed_at: str | None = None
    progress: dict[str, Any]
    stage_timings: dict[str, Any] = {}
    result_data: dict[str, Any] | None = None
    error_details: dict[str, Any] | None = None


def status_url(job_id: str) -> str:
    return f"{get_settings().base_url}/api/jobs/status/{job_id}"


async def json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        raise ApiError(400, "invalid_json", "the request body is empty: send a JSON object of job parameters")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the request body is nested too deeply to be job parameters") from None


def submission_response(sub: Submission) -> JSONResponse:
    url = status_url(sub.job_id)
    body: dict[str, Any] = {
        "job_id": sub.job_id,
        "job_type": sub.job_type,
        "idempotent": sub.idempotent,
        "status_url": url,
    }
    if sub.status == "created":
        body |= {
            "status": "created",
            "message": f"{sub.job_type} job created and queued for processing",
            "parameters": sub.parameters,
            "queue_info": sub.queue_info,
        }
        return JSONResponse(body, status_code=202, headers={"Location": url})
    if sub.status == "rerun":
        body |= {
            "status": "queued",
            "message": f"{sub.reason or 'the job had failed'}; it runs again from stage {sub.rerun_from_stage}",
            "rerun_from_stage": sub.rerun_from_stage,
            "parameters": sub.parameters,
            "queue_info": sub.queue_info,
        }
        return JSONResponse(body, status_code=202, headers={"Location": url})
    job = sub.job
    assert job is not None
    if sub.status == "already_completed":
        body |= {
            "status": "already_completed",
            "message": "a job with these parameters already completed; its result is returned",
            "result_data": job.result_data,
        }
    else:
        body |= {
            "status": job.status.value,
            "message": f"a job with these parameters is already {job.status.value} (stage {job.stage})",
            "current_stage": job.stage,
            "total_stages": job.total_stages,
        }
    return JSONResponse(body, status_code=200, headers={"Location": url})


def _submit(job_type: str, params: Any) -> JSONResponse:
    try:
        return submission_response(submit_job(job_type, params))
    except UnknownJobType as exc:
        raise ApiError(404, "unknown_job_type", str(exc), registered=sorted(exc.known)) from None
    except JobValidationError as exc:
        extra = {"field": exc.field} if exc.field else {}
        raise ApiError(400, exc.kind, str(exc), **extra) from None
    except UnsafeBlobName as exc:
        raise ApiError(400, "invalid_name", str(exc)) from None
    except ResourceNotFoundError as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except ConflictError as exc:
        raise ApiError(409, "conflict", str(exc)) from None


REF_TEMPLATE = "#/components/schemas/{model}"


def _body_schema(job_type: str) -> dict[str, Any]:
    job = ALL_JOBS.get(job_type)
    schema: dict[str, Any] = {"type": "object"}
    if job is not None:
        schema = dict(job.Parameters.model_json_schema(ref_template=REF_TEMPLATE))
        schema.pop("$defs", None)  # moved to components by add_parameter_schemas
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def add_parameter_schemas(app: Any) -> None:
    """Put the nested models of job parameters where their $refs point: components/schemas."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = build()
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for job in ALL_JOBS.values():
            schemas.update(job.Parameters.model_json_schema(ref_template=REF_TEMPLATE).get("$defs", {}))
        app.openapi_schema = doc
        return doc

    app.openapi = openapi


@router.post(
    "/jobs/ingest_vector",
    summary="Submit an ingest_vector job",
    status_code=202,
    response_model=SubmitResponse,
    responses={200: {"model": SubmitResponse, "description": "Existing job (idempotent)"}, **ERRORS},
    openapi_extra=_body_schema("ingest_vector"),
    dependencies=[Depends(require_write_key)],
)
async def submit_ingest_vector(request: Request) -> JSONResponse:
    params = await json_body(request)
    return await run_in_threadpool(_submit, "ingest_vector", params)


@router.post(
    "/jobs/submit/{job_type}",
    summary="Submit a job of any registered type",
    status_code=202,
    response_model=SubmitResponse,
    responses={200: {"model": SubmitResponse, "description": "Existing job (idempotent)"}, **ERRORS},
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}},
    dependencies=[Depends(require_write_key)],
)
async def submit_any(job_type: str, request: Request) -> JSONResponse:
    params = await json_body(request)
    return await run_in_threadpool(_submit, job_type, params)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def job_status_body(conn: Any, job: JobRecord) -> dict[str, Any]:
    job_cls = ALL_JOBS.get(job.job_type)
    stages = state.progress(conn, job.job_id)
    totals = {k: sum(s.get(k, 0) for s in stages.values()) for k in ("total", "completed", "failed")}
    progress: dict[str, Any] = {
        "stages": stages,
        "tasks_total": totals["total"],
        "tasks_completed": totals["completed"],
        "tasks_failed": totals["failed"],
    }
    if job_cls is not None:
        progress |= job_cls.progress_details(conn, job)
    stage_name = None
    if job_cls is not None and 1 <= job.stage <= len(job_cls.stages):
        stage_name = job_cls.stage(job.stage).name
    body = {
        "job_id": job.job_id,
        "job_type": job.job_type,
        "status": job.status.value,
        "stage": job.stage,
        "stage_name": stage_name,
        "total_stages": job.total_stages,
        "run": job.run,
        "parameters": job.parameters,
        "created_at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
        "completed_at": _iso(job.completed_at),
        "progress": progress,
        "stage_timings": job.stage_timings,
    }
    if job.status.value == "completed":
        body["result_data"] = job.result_data
    if job.status.value in ("failed", "cancelled"):
        body["error_details"] = job.error_details
    return body


def _check_job_id(job_id: str) -> None:
    if not JOB_ID_RE.match(job_id):
        raise ApiError(400, "invalid_job_id", "a job id is 64 lowercase hexadecimal characters (SHA-256)")


@router.get(
    "/jobs/status/{job_id}",
    summary="Status of a job, with per-stage progress",
    response_model=JobStatusResponse,
    response_model_exclude_none=True,
    responses={400: ERRORS[400], 404: {"model": ErrorBody, "description": "Unknown job"}},
    dependencies=[Depends(require_read_key)],
)
def job_status(job_id: str) -> dict[str, Any]:
    _check_job_id(job_id)
    with database.connection() as conn:
        job = state.get_job(conn, job_id)
        if job is None:
            raise ApiError(404, "not_found", f"no job with id {job_id}")
        return job_status_body(conn, job)


# One job's tasks: the count runs over that job's rows only (tasks_job_stage_idx).
JOB_TASKS_SQL = (
    "SELECT task_id, task_type, stage, task_index, status, attempts, result_data, error_details,"
    " created_at, started_at, completed_at, count(*) OVER () AS total_count"
    " FROM app.tasks WHERE parent_job_id = %(job)s"
    " AND (%(stage)s::int IS NULL OR stage = %(stage)s) AND (%(status)s::text IS NULL OR status = %(status)s)"
    " ORDER BY stage, task_index LIMIT %(limit)s OFFSET %(offset)s"
)


@router.get(
    "/jobs/{job_id}/tasks",
    summary="Tasks of a job",
    responses={400: ERRORS[400], 404: {"model": ErrorBody, "description": "Unknown job"}},
    dependencies=[Depends(require_read_key)],
)
def job_tasks(
    job_id: str,
    stage: int | None = Query(None, ge=1, le=1000),
    status: Literal["queued", "processing", "completed", "failed", "retrying", "cancelled"] | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=10_000_000),
) -> dict[str, Any]:
    _check_job_id(job_id)
    with database.connection() as conn:
        if state.get_job(conn, job_id) is None:
            raise ApiError(404, "not_found", f"no job with id {job_id}")
        rows = conn.execute(
            JOB_TASKS_SQL,
            {"job": job_id, "stage": stage, "status": status, "limit": limit, "offset": offset},
        ).fetchall()
    total = rows[0]["total_count"] if rows else 0
    tasks = [
        {k: (_iso(v) if k.endswith("_at") else v) for k, v in r.items() if k != "total_count"} for r in rows
    ]
    return {"job_id": job_id, "total": total, "limit": limit, "offset": offset, "tasks": tasks}


# Newest first, by status, type and creation time; each filter combination walks an index (migration 005).
# The total is counted up to TOTAL_CAP rows along the same index (`total_capped` says when it stopped):
# count(*) OVER () read every matching row on every page.
TOTAL_CAP = 10_000
LIST_JOBS_SQL = (
    "SELECT job_id, job_type, status, stage, total_stages, run, created_at, updated_at, completed_at"
    " FROM app.jobs"
    " WHERE (%(status)s::text IS NULL OR status = %(status)s)"
    "   AND (%(type)s::text IS NULL OR job_type = %(type)s)"
    "   AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)"
    "   AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s)"
    " ORDER BY created_at DESC, job_id LIMIT %(limit)s OFFSET %(offset)s"
)
COUNT_JOBS_SQL = (
    "SELECT count(*) AS n FROM (SELECT 1 FROM app.jobs"
    " WHERE (%(status)s::text IS NULL OR status = %(status)s)"
    "   AND (%(type)s::text IS NULL OR job_type = %(type)s)"
    "   AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)"
    "   AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s)"
    " ORDER BY created_at DESC, job_id LIMIT %(cap)s) AS capped"
)


def list_jobs_page(
    conn: Any, status: str | None, job_type: str | None, since: datetime | None, until: datetime | None,
    limit: int, offset: int,
) -> dict[str, Any]:
    """One page of jobs, newest first, with the (capped) number of jobs matching the filters."""
    args = {"status": status, "type": job_type, "since": since, "until": until, "limit": limit, "offset": offset,
            "cap": TOTAL_CAP + 1}
    rows = conn.execute(LIST_JOBS_SQL, args).fetchall()
    counted = conn.execute(COUNT_JOBS_SQL, args).fetchone()["n"]
    jobs = [
        {k: (_iso(v) if k.endswith("_at") else v) for k, v in r.items()} | {"status_url": status_url(r["job_id"])}
        for r in rows
    ]
    return {"total": min(counted, TOTAL_CAP), "total_capped": counted > TOTAL_CAP, "limit": limit,
            "offset": offset, "jobs": jobs}


@router.get("/jobs", summary="List jobs, newest first", dependencies=[Depends(require_read_key)])
def list_jobs(
    status: Literal["queued", "processing", "completed", "failed", "cancelled"] | None = None,
    job_type: str | None = Query(None, max_length=100, pattern=r"^[^\x00-\x1f]*$"),  # PostgreSQL text holds no NUL
    since: datetime | None = Query(None, description="Jobs created at or after this time (ISO 8601)"),
    until: datetime | None = Query(None, description="Jobs created before this time (ISO 8601)"),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=10_000_000),
) -> dict[str, Any]:
    with database.connection() as conn:
        return list_jobs_page(conn, status, job_type, since, until, limit, offset)


class CancelResponse(BaseModel):
    """The answer of POST /api/jobs/{job_id}/cancel (200)."""

    job_id: str
    status: Literal["cancelled"] = Field(description="Always 'cancelled': the job's status from now on.")
    idempotent: bool = Field(description="True when the job had already been cancelled (nothing changed).")
    previous_status: Literal["queued", "processing", "cancelled"] = Field(
        description="The job's status before this request."
    )
    stage: int = Field(description="The stage the job was in.")
    tasks_dropped: int = Field(description="Tasks that had not started: cancelled at once, their messages dropped.")
    tasks_stopping: int = Field(
        description="Tasks running when the job was cancelled: they stop within seconds (at their next batch, or "
        "when their worker renews their lock), their work is rolled back and they end 'cancelled'."
    )
    message: str
    status_url: str


@router.post(
    "/jobs/{job_id}/cancel",
    summary="Cancel a queued or running job",
    description=(
        "Waiting tasks are dropped at once; running tasks stop within seconds and roll back. The job ends in "
        "status `cancelled` and is cleaned up like a failed job (its staging table dropped, its chunks deleted); "
        "nothing it loaded is published. Submitting the same parameters again runs it again. Cancelling a "
        "cancelled job answers 200 with `idempotent: true`; a completed or failed job answers 409."
    ),
    response_model=CancelResponse,
    responses={
        400: ERRORS[400],
        401: ERRORS[401],
        404: {"model": ErrorBody, "description": "Unknown job"},
        409: {"model": ErrorBody, "description": "The job already completed or failed (error 'job_finished')"},
    },
    dependencies=[Depends(require_write_key)],
)
def cancel_job(job_id: str) -> dict[str, Any]:
    _check_job_id(job_id)
    outcome = CoreMachine().cancel_job(job_id)
    url = status_url(job_id)
    if outcome is not None:
        running = outcome["tasks_stopping"]
        return {
            "job_id": job_id,
            "status": "cancelled",
            "idempotent": False,
            "previous_status": outcome["previous_status"],
            "stage": outcome["stage"],
            "tasks_dropped": outcome["tasks_dropped"],
            "tasks_stopping": running,
            "message": f"job cancelled at stage {outcome['stage']}"
            + (f"; {running} running task(s) stop within seconds" if running else ""),
            "status_url": url,
        }
    with database.connection() as conn:
        job = state.get_job(conn, job_id)
    if job is None:
        raise ApiError(404, "not_found", f"no job with id {job_id}")
    if job.status.value != "cancelled":
        raise ApiError(
            409, "job_finished", f"the job is already {job.status.value}; only queued or running jobs can be cancelled"
        )
    return {
        "job_id": job_id,
        "status": "cancelled",
        "idempotent": True,
        "previous_status": "cancelled",
        "stage": job.stage,
        "tasks_dropped": 0,
        "tasks_stopping": 0,
        "message": "the job had already been cancelled",
        "status_url": url,
    }
