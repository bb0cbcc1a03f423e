"""Contender (d): geoetl end to end through its HTTP API, with the workers the local stack runs.

The clock runs from the POST to the first status poll that answers `completed`; the upload to
blob storage is timed on its own. Memory is sampled for the API, every worker and the blob
emulator (each process with its children), read from the stack's pid files.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from bench import pg
from bench.data import Dataset
from bench.rss import RssSampler
from config import get_settings

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
GEO_SCHEMA = "geo"
BLOB_PREFIX = "bench"
POLL_SECONDS = 0.2


class JobFailed(RuntimeError):
    pass


def ensure_stack() -> str:
    """Start the local stack if it is not running (idempotent); returns what the script said."""
    proc = subprocess.run([str(ROOT / "scripts" / "stack.sh"), "up"], cwd=ROOT, capture_output=True, text=True,
                          check=False, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/stack.sh up failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def _pid(name: str) -> list[int]:
    try:
        return [int((RUN_DIR / f"{name}.pid").read_text().strip())]
    except (OSError, ValueError):
        return []


def stack_processes() -> dict[str, Any]:
    """Sampler groups: the API, each worker and the blob emulator, by their pid files."""
    groups: dict[str, Any] = {"api": lambda: _pid("api"), "azurite": lambda: _pid("azurite")}
    for f in sorted(RUN_DIR.glob("worker-*.pid")):
        name = f.stem
        groups[name] = lambda name=name: _pid(name)
    return groups


def worker_names(groups: dict[str, Any]) -> list[str]:
    return [g for g in groups if g.startswith("worker")]


def client():  # imported late: the client reads settings, which the CLI may have changed
    from triggers.client import ApiClient

    return ApiClient()


def upload(ds: Dataset) -> tuple[str, float]:
    """Upload the file to the source container; (blob name, seconds)."""
    from triggers.client import upload as upload_file

    blob = f"{BLOB_PREFIX}/{ds.path.name}"
    t0 = time.perf_counter()
    upload_file(ds.path, blob, get_settings().source_container)
    return blob, time.perf_counter() - t0


def unique_table(prefix: str) -> str:
    return f"{prefix}_{time.strftime('%m%d%H%M%S')}_{uuid.uuid4().hex[:6]}"


def ingest_body(ds: Dataset, blob: str, table: str) -> dict[str, Any]:
    params: dict[str, Any] = {"layer_name": ds.layer} if ds.kind == "gpkg" else {}
    if ds.kind == "csv":
        params = {"lat_name": "lat", "lon_name": "lon"}
    return {"blob_name": blob, "file_extension": ds.kind, "table_name": table, "converter_params": params}


def wait_for(job_id: str, timeout: float) -> tuple[dict[str, Any], float]:
    """Poll the status route until the job ends; (last status body, monotonic time it was seen)."""
    api = client()
    deadline = time.monotonic() + timeout
    while True:
        code, st = api.request("GET", f"/jobs/status/{job_id}")
        seen = time.perf_counter()
        if code == 200 and st.get("status") in ("completed", "failed"):
            return st, seen
        if code not in (200, 503) and code < 500:
            raise JobFailed(f"status of {job_id} answered {code}: {st}")
        if time.monotonic() > deadline:
            raise JobFailed(f"job {job_id} did not end within {timeout:.0f} s (last: {st.get('status')})")
        time.sleep(POLL_SECONDS)


def submit(path: str, body: dict[str, Any]) -> tuple[str, float]:
    code, answer = client().request("POST", path, body)
    if code not in (200, 202) or "job_id" not in answer:
        raise JobFailed(f"POST {path} answered {code}: {answer}")
    return answer["job_id"], time.perf_counter()


def server_seconds(job_id: str) -> float | None:
    with pg.connect() as conn:
        row = conn.execute("SELECT extract(epoch FROM completed_at - created_at) FROM app.jobs WHERE job_id = %s",
                           [job_id]).fetchone()
    return round(float(row[0]), 3) if row and row[0] is not None else None


def drop_geoetl_table(table: str, status: dict[str, Any]) -> None:
    """Drop the loaded table and the STAC item the job made, so repeated runs do not pile up."""
    stac = (status.get("result_data") or {}).get("stac") or {}
    with pg.connect() as conn:
        pg.drop_table(conn, GEO_SCHEMA, table)
        if stac.get("stac_id") and stac.get("collection_id"):
            try:
                conn.execute("SET search_path TO pgstac, public")
                conn.execute("SELECT pgstac.delete_item(%s, %s)", [stac["stac_id"], stac["collection_id"]])
            except Exception as exc:  # noqa: BLE001 - a leftover catalog row must not end the benchmark
                print(f"  (could not delete STAC item {stac['stac_id']}: {exc})")


def run_geoetl(ds: Dataset, blob: str, table: str, timeout: float = 7200, keep: bool = False) -> dict[str, Any]:
    """One end-to-end ingest of an uploaded file; timings, per-process peak RSS and the table check."""
    groups = stack_processes()
    result: dict[str, Any] = {"peer": "geoetl", "dataset": ds.kind, "rows_expected": ds.rows, "table": table,
                              "command": "POST /api/jobs/ingest_vector, poll /api/jobs/status/{id} to completed"}
    with pg.connect() as conn:
        pg.drop_table(conn, GEO_SCHEMA, table)
    status: dict[str, Any] = {}
    with RssSampler(groups, interval=0.1) as sampler:
        t0 = time.perf_counter()
        try:
            job_id, _ = submit("/jobs/ingest_vector", ingest_body(ds, blob, table))
            status, seen = wait_for(job_id, timeout)
        except JobFailed as exc:
            result["error"] = str(exc)
            return result
    result["job_id"] = job_id
    result["seconds"] = round(seen - t0, 3)
    result["server_seconds"] = server_seconds(job_id)
    result["peak_rss_mb"] = sampler.peaks_mb
    result["baseline_rss_mb"] = sampler.baseline_mb
    workers = worker_names(groups)
    result["worker_peak_rss_mb"] = max((sampler.peaks_mb[w] for w in workers), default=None)
    result["peak_rss_total_mb"] = sampler.peak_total_mb
    if status.get("status") != "completed":
        result["error"] = f"job {status.get('status')}: {status.get('error_details')}"
        return result
    data = status.get("result_data") or {}
    result["seconds_per_stage"] = data.get("seconds_per_stage")
    summary = data.get("summary") or {}
    result["chunks"] = summary.get("total_chunks")
    result["chunk_size"] = summary.get("chunk_size")
    with pg.connect() as conn:
        result["check"] = pg.table_check(conn, GEO_SCHEMA, table)
    if result["check"]["rows"] != ds.rows:
        result["error"] = f"loaded {result['check']['rows']} rows, expected {ds.rows}"
    if not keep:
        drop_geoetl_table(table, status)
    return result


def versions() -> dict[str, str]:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                         check=False).stdout.strip()
    # the report and raw results a previous section of the same session just wrote are not code
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!BENCHMARKS.md",
                            ":!bench/results"], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
    return {"geoetl": (rev or "?") + ("+uncommitted" if dirty else "")}
