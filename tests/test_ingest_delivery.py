"""Exactly-once loading on at-least-once delivery: duplicates, concurrent redelivery, a worker killed mid-COPY,
and what a failed job leaves behind (nothing)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.models import TaskQueueMessage
from services.vector.table import STAGING_SCHEMA
from tests import vector_files as vf
from tests.helpers import every_message_twice, submit, wait_for_job


def csv_points(n: int) -> bytes:
    lines = ["n,lat,lon"] + [f"{i},{-60 + (i % 1200) * 0.1},{-170 + (i // 1200) * 0.01}" for i in range(n)]
    return ("\n".join(lines) + "\n").encode()


def csv_params(blob: str, table: str, chunk_size: int) -> dict:
    return {"blob_name": blob, "file_extension": "csv", "table_name": table, "chunk_size": chunk_size,
            "converter_params": {"lat_name": "lat", "lon_name": "lon"}}


def count(db, table: str) -> int:
    return db.execute(f"SELECT count(*) AS n, count(DISTINCT n) AS d FROM geo.{table}").fetchone()


def drain_leftovers() -> None:
    from triggers.worker import Worker

    w = Worker(concurrency=1)
    while (m := w.receive_one()) is not None:
        w.handle(m)


def test_every_message_delivered_twice_loads_each_row_once(db, drain, nonce):
    blob = vf.upload(f"{nonce}/dup.csv", csv_points(2_000))
    table = f"dup_{nonce}"
    with every_message_twice(db):
        job_id = submit("ingest_vector", csv_params(blob, table, 300))
        assert drain(job_id) == "completed"
        drain_leftovers()  # the duplicates of the last messages
    drain_leftovers()
    assert count(db, table) == {"n": 2_000, "d": 2_000}
    job = vf.job_row(db, job_id)
    assert job["status"] == "completed" and job["result_data"]["summary"]["total_rows_uploaded"] == 2_000
    tasks = db.execute("SELECT stage, status, count(*) AS n FROM app.tasks WHERE parent_job_id = %s"
                       " GROUP BY 1, 2 ORDER BY 1", [job_id]).fetchall()
    assert [(t["stage"], t["status"], t["n"]) for t in tasks] == [(1, "completed", 1), (2, "completed", 7),
                                                                 (3, "completed", 1)]


def test_concurrent_redelivery_of_a_running_load_commits_once(db, nonce):
    """Two deliveries of each load task run at the same time; both COPY, only the first to complete commits."""
    from core.machine import CoreMachine
    from services import ALL_HANDLERS
    from services.vector import load_vector_chunk
    from triggers.worker import Worker

    barrier = threading.Barrier(2, timeout=60)

    def load_then_wait(params, ctx):
        out = load_vector_chunk(params, ctx)
        barrier.wait()  # both deliveries have written their rows before either completes the task
        return out

    machine = CoreMachine(handlers={**ALL_HANDLERS, "load_vector_chunk": load_then_wait})
    worker = Worker(concurrency=2, machine=machine)
    blob = vf.upload(f"{nonce}/conc.csv", csv_points(900))
    table = f"conc_{nonce}"
    job_id = submit("ingest_vector", csv_params(blob, table, 300))
    outcomes = []
    deadline = time.time() + 120
    while vf.job_row(db, job_id)["status"] not in ("completed", "failed"):
        assert time.time() < deadline
        msg = worker.receive_one()
        if msg is None:
            time.sleep(0.02)
            continue
        if msg.body.get("task_type") == "load_vector_chunk":
            task = TaskQueueMessage.model_validate(msg.body)
            with ThreadPoolExecutor(2) as pool:
                outcomes += list(pool.map(machine.process_task_message, [task, task]))
            worker.queue.complete(msg)
        else:
            worker.handle(msg)
    assert vf.job_row(db, job_id)["status"] == "completed"
    assert outcomes.count("duplicate") == 3, outcomes
    assert count(db, table) == {"n": 900, "d": 900}


@pytest.mark.chaos
def test_worker_killed_mid_copy_loses_and_duplicates_nothing(db, workers, nonce):
    """A row trigger slows the COPY down so that the kill lands inside it; a new worker finishes the job."""
    table = f"kill_{nonce}"
    slow = "IF NEW.n % 4 = 0 THEN PERFORM pg_sleep(0.0002); END IF;"
    with vf.slowed_inserts(db, table, per="ROW", sleep_sql=slow):
        rows = 16_000  # 4 chunks whose COPY takes about a second each
        blob = vf.upload(f"{nonce}/kill.csv", csv_points(rows))
        job_id = submit("ingest_vector", csv_params(blob, table, 4_000))
        first = workers.start(1, concurrency=1)[0]
        deadline = time.time() + 90
        while True:
            assert time.time() < deadline, "no COPY was seen running"
            busy = db.execute(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'COPY%%'"
                " AND query LIKE %s", [f"%{STAGING_SCHEMA}%{job_id[:32]}%"]).fetchone()["n"]
            if busy:
                break
            time.sleep(0.01)
        workers.kill(first)
        killed_at = time.time()
        workers.start(1, concurrency=1)
        assert wait_for_job(job_id, timeout=120) == "completed"
    assert count(db, table) == {"n": rows, "d": rows}
    redelivered = db.execute("SELECT count(*) AS n FROM app.tasks WHERE parent_job_id = %s AND stage = 2"
                             " AND attempts > 1", [job_id]).fetchone()["n"]
    assert redelivered >= 1
    assert time.time() - killed_at < 120
    summary = vf.job_row(db, job_id)["result_data"]["summary"]
    assert summary["total_rows_uploaded"] == rows and summary["data_complete"] is True


def test_failed_job_leaves_no_table_and_no_chunks_and_reruns(db, drain, nonce):
    """A chunk lost before stage 2: the job fails, its table and chunks go; resubmitting re-runs it from stage 1."""
    import tempfile
    from pathlib import Path

    import geopandas as gpd
    import pyogrio

    from config import get_settings
    from core.submit import submit_job
    from infrastructure.blob import get_blob_store

    # FlatGeobuf: converted once into chunks in stage 1 (GeoPackage, Shapefile, CSV and GeoJSON are read in parts)
    frame = gpd.GeoDataFrame({"n": list(range(1_000))}, geometry=list(vf.points(1_000)), crs="EPSG:4326")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lost.fgb"
        pyogrio.write_dataframe(frame, path, driver="FlatGeobuf")
        blob = vf.upload(f"{nonce}/lost.fgb", path.read_bytes())
    table = f"lost_{nonce}"
    params = {"blob_name": blob, "file_extension": "fgb", "table_name": table, "chunk_size": 400}
    job_id = submit("ingest_vector", params)
    deleted = []

    def lose_a_chunk(msg):
        if msg.body.get("task_type") == "load_vector_chunk" and not deleted:
            deleted.append(get_blob_store().delete_prefix(get_settings().intermediate_container, f"{job_id}/r1/"))

    assert drain(job_id, on_message=lose_a_chunk) == "failed"
    job = vf.job_row(db, job_id)
    assert "chunk_0000" in job["error_details"]["error"] and "missing" in job["error_details"]["error"]
    assert not vf.table_exists(db, "geo", table)
    assert vf.chunk_blobs(job_id) == []
    assert job["cleaned_up_at"] is not None

    again = submit_job("ingest_vector", params)
    assert again.status == "rerun" and again.rerun_from_stage == 1
    assert drain(job_id) == "completed"
    assert count(db, table) == {"n": 1_000, "d": 1_000}
    assert vf.job_row(db, job_id)["run"] == 2
    assert vf.chunk_blobs(job_id) == []


def test_failure_never_drops_a_table_the_job_did_not_create(db, drain, nonce):
    blob = vf.upload(f"{nonce}/race.csv", csv_points(50))
    table = f"race_{nonce}"
    job_id = submit("ingest_vector", csv_params(blob, table, 1_000))

    def someone_else_creates_it(msg):
        if msg.body.get("stage") == 2 and "task_id" not in msg.body and not vf.table_exists(db, "geo", table):
            db.execute(f"CREATE TABLE geo.{table} (theirs int)")

    assert drain(job_id, on_message=someone_else_creates_it) == "failed"
    err = vf.job_row(db, job_id)["error_details"]["error"]
    assert "already exists" in err and f"DROP TABLE geo.{table} CASCADE;" in err
    assert vf.columns_of(db, "geo", table) == {"theirs": "integer"}
    assert vf.chunk_blobs(job_id) == []
