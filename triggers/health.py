"""GET /api/health: each part's status; 503 naming the failing part."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from config import get_settings
from infrastructure import database
from infrastructure.blob import get_blob_store
from infrastructure.queues import get_queue
from jobs import ALL_JOBS
from services import ALL_HANDLERS
from triggers import serving

router = APIRouter(tags=["health"])


def check_database() -> dict[str, Any]:
    with database.connection() as conn:
        row = conn.execute(
            "SELECT split_part(version(), ' ', 2) AS postgres, postgis_lib_version() AS postgis,"
            " pgstac.get_version() AS pgstac,"
            " (SELECT max(version) FROM app.schema_migrations) AS schema_version"
        ).fetchone()
    assert row is not None
    return {
        "postgresql": {"version": row["postgres"]},
        "postgis": {"version": row["postgis"]},
        "pgstac": {"version": row["pgstac"]},
        "schema_version": row["schema_version"],
    }


def check_blob() -> dict[str, Any]:
    s = get_settings()
    store = get_blob_store()
    info = store.health()  # fails fast when the service is down, before slower calls retry
    info["containers"] = {c: store.container_exists(c) for c in (s.source_container, s.intermediate_container)}
    if not all(info["containers"].values()):
        missing = [c for c, ok in info["containers"].items() if not ok]
        raise RuntimeError(f"container(s) missing: {', '.join(missing)} (run `geoetl migrate` or `make up`)")
    return info


def check_queue() -> dict[str, Any]:
    return get_queue().health()


def check_registries() -> dict[str, Any]:
    missing = [
        f"{name}: stage {st.number} task type '{st.task_type}'"
        for name, job in ALL_JOBS.items()
        for st in job.stages
        if st.task_type not in ALL_HANDLERS
    ]
    if missing:
        raise RuntimeError("task types without a handler: " + "; ".join(missing))
    return {"jobs": sorted(ALL_JOBS), "handlers": sorted(ALL_HANDLERS)}


CHECKS: dict[str, Callable[[], dict[str, Any]]] = {
    "database": check_database,
    "blob": check_blob,
    "queue": check_queue,
    "registries": check_registries,
}


def run_checks() -> tuple[bool, dict[str, Any]]:
    components: dict[str, Any] = {}
    for name, check in CHECKS.items():
        t0 = time.perf_counter()
        try:
            components[name] = {"status": "healthy", **check()}
        except Exception as exc:  # noqa: BLE001 - any failure makes the part unhealthy
            components[name] = {"status": "unhealthy", "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        components[name]["ms"] = round((time.perf_counter() - t0) * 1000, 1)
    failing = [n for n, c in components.items() if c["status"] != "healthy"]
    status = "healthy" if not failing else "unhealthy"
    base = get_settings().base_url
    links = {"dashboard": f"{base}/api/dashboard", "metrics": f"{base}/api/metrics", "docs": f"{base}/api/docs"}
    return not failing, {"status": status, "failing": failing, "components": components, "links": links}


async def check_serving_part(app: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        part = {"status": "healthy", **(await serving.check_serving(app))}
    except Exception as exc:  # noqa: BLE001 - any failure makes the part unhealthy
        part = {"status": "unhealthy", "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    part["ms"] = round((time.perf_counter() - t0) * 1000, 1)
    return part


@router.get("/health", summary="Health of the database, blob store, queue, registries and serving layer")
async def health(request: Request) -> JSONResponse:
    ok, body = await run_in_threadpool(run_checks)
    body["components"]["serving"] = await check_serving_part(request.app)
    if body["components"]["serving"]["status"] != "healthy":
        ok = False
        body["failing"].append("serving")
        body["status"] = "unhealthy"
    return JSONResponse(body, status_code=200 if ok else 503)
