"""Contender (d): geoetl end to end through its HTTP API, with the workers the local stack runs.

The clock runs from the POST to the first status poll that answers `completed`; the upload to
blob storage is timed on its own. Memory is sampled for the API, every worker and the blob
emulator (each process with its children), read from the stack's pid files.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from bench import pg
from bench.cpu import CpuMeter, postgres_root
from bench.data import HEAVY, Dataset
from bench.rss import RssSampler
from config import get_settings, reset_settings

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / os.environ.get("GEOETL_RUN_DIR", ".run")
FILE_EXTENSION = {"gpkg": "gpkg", "csv": "csv", "geojson": "geojson", "shp": "shp", "parquet": "parquet",
                  HEAVY: "geojson"}
PROFILE_TOP = 15
GEO_SCHEMA = "geo"
BLOB_PREFIX = "bench"
POLL_SECONDS = 0.2


class JobFailed(RuntimeError):
    pass


def isolate(api_port: int | None, blob_port: int | None, database: str | None) -> dict[str, str]:
    """Environment of a stack of the benchmark's own (what stack.sh and the settings read); {} changes nothing.

    The run folder is named after the ports, so `scripts/stack.sh up` here finds only its own pid files
    and never stops or reuses the processes of `make up` (.run/) or of a benchmark on other ports.
    """
    global RUN_DIR
    if api_port is None and blob_port is None and database is None:
        return {}
    s = get_settings()
    api_port = api_port or s.api_port
    blob_port = blob_port or 10000
    env = {
        "API_PORT": str(api_port),
        "BLOB_PORT": str(blob_port),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{api_port}",
        "AZURE_STORAGE_CONNECTION_STRING": "".join(
            f"BlobEndpoint=http://127.0.0.1:{blob_port}/devstoreaccount1;" if part.startswith("BlobEndpoint=")
            else part + ";" for part in s.azure_storage_connection_string.get_secret_value().split(";") if part),
        "GEOETL_RUN_DIR": f".run/bench-{api_port}-{blob_port}",
    }
    if database:  # same server and login, other database; kept a URL (SQLAlchemy, for peer (c), reads URLs)
        url = urlsplit(s.dsn)
        if not url.scheme:
            raise ValueError("--database needs DATABASE_URL written as a postgresql:// URL")
        env["DATABASE_URL"] = urlunsplit(url._replace(path="/" + quote(database)))
    os.environ.update(env)
    reset_settings()
    RUN_DIR = ROOT / env["GEOETL_RUN_DIR"]
    return env


def ensure_stack() -> str:
    """Start the local stack if it is not running (idempotent); returns what the script said. A stack
    of the benchmark's own is restarted first, so its workers run the code being measured."""
    if os.environ.get("GEOETL_RUN_DIR", ".run") != ".run":
        subprocess.run([str(ROOT / "scripts" / "stack.sh"), "down"], cwd=ROOT, capture_output=True, check=False,
                       timeout=300)
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


def worker_processes() -> list[int]:
    """The worker processes themselves (the supervisor's child), which a profiler attaches to."""
    pids = []
    for f in sorted(RUN_DIR.glob("worker-*.child.pid")):
        try:
            pids.append(int(f.read_text().strip()))
        except (OSError, ValueError):
            pass
    return pids


def cpu_groups() -> dict[str, Any]:
    """CPU meter groups of a geoetl run: the workers together, the API, the blob emulator, PostgreSQL."""
    workers = [f.stem for f in sorted(RUN_DIR.glob("worker-*.pid")) if not f.stem.endswith(".child")]
    return {"workers": lambda: [p for w in workers for p in _pid(w)], "api": lambda: _pid("api"),
            "azurite": lambda: _pid("azurite"), "postgres": postgres_root}


def stack_processes() -> dict[str, Any]:
    """Sampler groups: the API, each worker and the blob emulator, by their pid files."""
    groups: dict[str, Any] = {"api": lambda: _pid("api"), "azurite": lambda: _pid("azurite")}
    for f in sorted(RUN_DIR.glob("worker-*.pid")):
        name = f.stem
        if name.endswith(".child"):
            continue
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

    name = "countries-maritime-10m.geojson" if ds.kind == HEAVY else ds.path.name
    blob = f"{BLOB_PREFIX}/{name}"
    t0 = time.perf_counter()
    upload_file(ds.path, blob, get_settings().source_container)
    return blob, time.perf_counter() - t0


def unique_table(prefix: str) -> str:
    return f"{prefix}_{time.strftime('%m%d%H%M%S')}_{uuid.uuid4().hex[:6]}"


def ingest_body(ds: Dataset, blob: str, table: str) -> dict[str, Any]:
    params: dict[str, Any] = {"layer_name": ds.layer} if ds.kind == "gpkg" else {}
    if ds.kind == "csv":
        params = {"lat_name": "lat", "lon_name": "lon"}
    # no geometry_params: invalid geometries are repaired, the default a user gets
    return {"blob_name": blob, "file_extension": FILE_EXTENSION[ds.kind], "table_name": table,
            "converter_params": params}


def wait_for(job_id: str, timeout: float, meter: CpuMeter | None = None) -> tuple[dict[str, Any], float]:
    """Poll the status route until the job ends; (last status body, monotonic time it was seen).
    With a meter, each stage the status shows becomes one of its phases (to within a poll)."""
    api = client()
    deadline = time.monotonic() + timeout
    stage = None
    while True:
        code, st = api.request("GET", f"/jobs/status/{job_id}")
        seen = time.perf_counter()
        ended = code == 200 and st.get("status") in ("completed", "failed")
        if meter is not None and code == 200 and (st.get("stage") != stage or ended):
            if stage is not None:
                meter.mark(f"stage {stage}")
            stage = st.get("stage")
        if ended:
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


def py_spy() -> str | None:
    """The py-spy executable (requirements-dev.txt installs it into the venv), or None."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """py-spy recording every worker process while a job runs; `result()` gives own time by function."""

    def __init__(self, pids: list[int], rate: int = 50) -> None:
        self.pids, self.rate = pids, rate
        self.dir = Path(tempfile.mkdtemp(prefix="geoetl-bench-profile-"))
        self.procs: list[tuple[int, subprocess.Popen, Path, Path]] = []

    def __enter__(self) -> Profiler:
        exe = py_spy()
        if exe is None:
            return self
        for pid in self.pids:
            out, err = self.dir / f"{pid}.txt", self.dir / f"{pid}.err"
            # --nonblocking: the worker is never paused; --function: one row per function, not per line
            cmd = [exe, "record", "--pid", str(pid), "--rate", str(self.rate), "--format", "raw", "--function",
                   "--nonblocking", "--subprocesses", "--output", str(out)]
            self.procs.append((pid, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err.open("w")), out, err))
        time.sleep(1.0)  # attached before the job is submitted (an attach failure ends py-spy at once)
        return self

    def __exit__(self, *exc: object) -> None:
        for _pid, proc, _out, _err in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its samples on SIGINT
        for _pid, proc, _out, _err in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def result(self) -> dict[str, Any]:
        """{"tool", "samples", "top_own": [{"function", "samples", "share"}], "errors"}; errors when none attached."""
        if py_spy() is None:
            return {"tool": None, "errors": ["py-spy is not installed (pip install -r requirements-dev.txt)"]}
        own: dict[str, int] = {}
        errors = []
        for pid, proc, out, err in self.procs:
            text = out.read_text() if out.exists() else ""
            if not text.strip():
                msg = err.read_text().strip() if err.exists() else ""
                errors.append(f"py-spy on worker pid {pid} (exit {proc.returncode}): {msg[-300:] or 'no samples'}")
            for fn, n in own_time(text).items():
                own[fn] = own.get(fn, 0) + n
        shutil.rmtree(self.dir, ignore_errors=True)
        total = sum(own.values())
        top = sorted(own.items(), key=lambda kv: (-kv[1], kv[0]))[:PROFILE_TOP]
        return {"tool": "py-spy record --nonblocking --function --subprocesses --rate " + str(self.rate),
                "samples": total, "errors": errors,
                "top_own": [{"function": f, "samples": n, "share": round(n / total, 3)} for f, n in top]}


def own_time(collapsed: str) -> dict[str, int]:
    """Samples per innermost frame of py-spy's raw (collapsed-stack) output: the time a function spent itself."""
    out: dict[str, int] = {}
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1].strip()
        out[leaf] = out.get(leaf, 0) + int(count)
    return out


def task_seconds(job_id: str) -> dict[str, dict[str, Any]]:
    """Per stage: tasks, their summed and longest run time, as the database stamped them (no profiler needed)."""
    with pg.connect() as conn:
        rows = conn.execute(
            "SELECT stage, count(*), sum(extract(epoch FROM completed_at - started_at)),"
            " max(extract(epoch FROM completed_at - started_at)) FROM app.tasks WHERE parent_job_id = %s"
            " GROUP BY stage ORDER BY stage", [job_id]).fetchall()
    return {str(stage): {"tasks": int(n), "sum_s": round(float(total or 0), 3), "max_s": round(float(mx or 0), 3)}
            for stage, n, total, mx in rows}


def run_geoetl(ds: Dataset, blob: str, table: str, timeout: float = 7200, keep: bool = False,
               profile: bool = False) -> dict[str, Any]:
    """One end-to-end ingest of an uploaded file; timings, per-process peak RSS and the table check.

    With `profile`, py-spy samples every worker during the run (the numbers of such a run are not
    comparable with unprofiled ones: the sampler takes a share of the two cores).
    """
    if profile:
        with Profiler(worker_processes()) as prof:
            result = run_geoetl(ds, blob, table, timeout=timeout, keep=keep)
        result["profile"] = prof.result()
        return result
    groups = stack_processes()
    result: dict[str, Any] = {"peer": "geoetl", "dataset": ds.kind, "rows_expected": ds.rows, "table": table,
                              "command": "POST /api/jobs/ingest_vector, poll /api/jobs/status/{id} to completed"}
    with pg.connect() as conn:
        pg.drop_table(conn, GEO_SCHEMA, table)
    status: dict[str, Any] = {}
    with RssSampler(groups, interval=0.1) as sampler, CpuMeter(cpu_groups()) as meter:
        t0 = time.perf_counter()
        try:
            job_id, _ = submit("/jobs/ingest_vector", ingest_body(ds, blob, table))
            status, seen = wait_for(job_id, timeout, meter)
        except JobFailed as exc:
            result["error"] = str(exc)
            return result
    result["cpu"] = meter.result()
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
    result["task_seconds"] = task_seconds(job_id)
    summary = data.get("summary") or {}
    result["chunks"] = summary.get("total_chunks")
    result["chunk_size"] = summary.get("chunk_size")
    result["features_repaired"] = summary.get("features_repaired")
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
