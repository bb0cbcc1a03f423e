"""GET /api/health: each part's status; 503 naming the failing part.

Anonymous callers learn which part is up or down (and the database's versions, which the
local stack's contract checks); the details — URLs (without query strings or credentials),
queue depths, error classes and messages — are only for a caller with a valid API key, and
only when API_KEYS is set. Nothing that could carry a secret reaches an answer either way.
"""

from __future__ import annotations

import re
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
from triggers.auth import presented_key_is_valid

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
            components[name] = {"status": "unhealthy", "error": _error_text(exc)}
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
        part = {"status": "unhealthy", "error": _error_text(exc)}
    part["ms"] = round((time.perf_counter() - t0) * 1000, 1)
    return part


_URL = re.compile(r"\b([a-z][a-z0-9+.-]*://)(?:[^/@\s]*@)?([^\s?#\"']*)(?:[?#][^\s\"']*)?", re.I)
_SECRET = re.compile(r"(password|accountkey|sharedaccesskey|sharedaccesssignature|sig|secret|token)=[^;&\s\"']*", re.I)


def scrub(text: str) -> str:
    """Text with URL credentials and query strings, and key=value secrets, removed."""
    return _SECRET.sub(r"\1=***", _URL.sub(r"\1\2", text))


def _error_text(exc: Exception) -> str:
    return f"{type(exc).__name__}: {scrub(str(exc))[:300]}"


def _scrubbed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v) for v in value]
    return scrub(value) if isinstance(value, str) else value


PUBLIC_DATABASE_KEYS = ("postgresql", "postgis", "pgstac", "schema_version")


def public_view(body: dict[str, Any]) -> dict[str, Any]:
    """Which part is up or down, the database's versions and the links to the operator's pages; nothing else."""
    parts: dict[str, Any] = {}
    for name, part in body["components"].items():
        parts[name] = {"status": part["status"]}
        if name == "database" and part["status"] == "healthy":
            parts[name] |= {k: part[k] for k in PUBLIC_DATABASE_KEYS if k in part}
    links = {name: "/api/" + url.split("/api/", 1)[1] for name, url in body["links"].items()}  # no host names
    return {"status": body["status"], "failing": body["failing"], "components": parts, "links": links}


@router.get("/health", summary="Health of the database, blob store, queue, registries and serving layer")
async def health(request: Request) -> JSONResponse:
    ok, body = await run_in_threadpool(run_checks)
    body["components"]["serving"] = await check_serving_part(request.app)
    if body["components"]["serving"]["status"] != "healthy":
        ok = False
        body["failing"].append("serving")
        body["status"] = "unhealthy"
    detailed = bool(get_settings().api_key_list) and presented_key_is_valid(request)
    answer = _scrubbed(body) if detailed else public_view(body)
    return JSONResponse(answer, status_code=200 if ok else 503)


@router.get("/stac/_mgmt/health", include_in_schema=False)
async def stac_health(request: Request) -> JSONResponse:
    """stac-fastapi's own health route, answered here: its version answers anonymous callers with the
    database error's text (host, user); this one says UP or DOWN and the pgstac version only."""
    try:
        info = await serving.check_serving(request.app)
    except Exception:  # noqa: BLE001 - any failure is DOWN; the cause is for /api/health with a key
        body = {"status": "DOWN", "lifespan": {"status": "UP"}, "pgstac": {"status": "DOWN"}}
        return JSONResponse(body, status_code=503)
    pgstac = {"status": "UP", "pgstac_version": info.get("pgstac")}
    return JSONResponse({"status": "UP", "lifespan": {"status": "UP"}, "pgstac": pgstac})
