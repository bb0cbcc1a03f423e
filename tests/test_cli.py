"""The `geoetl` command as a user runs it: ingest a file with a live progress line, then status."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, TEST_ENV
from tests.vector_files import frame, gpkg, tmpdir


def geoetl(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "triggers.cli", *args], cwd=ROOT, env={**os.environ, **TEST_ENV},
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_ingest_wait_and_status(api_server, workers, db, nonce):
    workers.start(1)
    path = gpkg({"parcels": frame(300)}, tmpdir())
    table = f"cli_{nonce}"
    done = geoetl("ingest", str(path), "--table", table, "--layer", "parcels", "--wait", "--api",
                  api_server.removesuffix("/api"), "--blob-name", f"cli/{nonce}/parcels.gpkg")
    assert done.returncode == 0, done.stderr
    assert "loaded 300 rows" in done.stdout
    assert f"/api/features/collections/geo.{table}/items" in done.stdout
    assert f"/api/vector/viewer?collection={table}" in done.stdout
    assert "uploaded" in done.stderr and "chunks" in done.stderr and "[completed]" in done.stderr
    assert db.execute(f'SELECT count(*) AS n FROM geo."{table}"').fetchone()["n"] == 300
    job_id = db.execute("SELECT job_id FROM app.jobs WHERE parameters->>'table_name' = %s", [table]).fetchone()
    st = geoetl("status", job_id["job_id"], "--api", api_server.removesuffix("/api"))
    assert st.returncode == 0 and json.loads(st.stdout)["status"] == "completed"


def test_ingest_refuses_bad_input_clearly(api_server, tmp_path, nonce):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    r = geoetl("ingest", str(bad), "--api", api_server.removesuffix("/api"))
    assert r.returncode == 2 and "not supported" in r.stderr
    path = gpkg({"parcels": frame(3)}, tmpdir())
    r = geoetl("ingest", str(path), "--table", "1bad", "--api", api_server.removesuffix("/api"),
               "--blob-name", f"cli/{nonce}/x.gpkg")
    assert r.returncode == 1 and "invalid_table_name" in r.stderr
    missing = geoetl("status", "0" * 64, "--api", api_server.removesuffix("/api"))
    assert missing.returncode == 1 and "no job" in missing.stdout


def test_failed_ingest_exits_non_zero(api_server, workers, nonce):
    workers.start(1)
    folder = tmpdir()
    path = folder / "empty.geojson"
    path.write_text('{"type": "FeatureCollection", "features": []}')
    r = geoetl("ingest", str(path), "--table", f"cli_empty_{nonce}", "--wait", "--api",
               api_server.removesuffix("/api"), "--blob-name", f"cli/{nonce}/empty.geojson")
    assert r.returncode == 1 and "job failed at stage 1" in r.stderr


def test_cancel_a_queued_job(api_server, db, nonce):
    """No worker runs: the job waits in the queue, `geoetl cancel` ends it and nothing is left to run."""
    from core.submit import submit_job
    from tests import vector_files as vf

    blob = vf.upload(f"cli/{nonce}/q.geojson", vf.geojson([(vf.points(1)[0], {"a": 1})]))
    job_id = submit_job("ingest_vector", {"blob_name": blob, "file_extension": "geojson",
                                          "table_name": f"cli_q_{nonce}"}).job_id
    api = api_server.removesuffix("/api")
    r = geoetl("cancel", job_id, "--api", api)
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert body["status"] == "cancelled" and body["previous_status"] == "queued" and body["tasks_stopping"] == 0
    row = vf.job_row(db, job_id)
    assert row["status"] == "cancelled" and row["cleaned_up_at"] is not None
    again = geoetl("cancel", job_id, "--api", api)
    assert again.returncode == 0 and json.loads(again.stdout)["idempotent"] is True
    missing = geoetl("cancel", "0" * 64, "--api", api)
    assert missing.returncode == 1 and "no job" in missing.stderr
    from triggers.worker import Worker

    worker = Worker(concurrency=1)  # the job's stage-1 message is still queued: it finds the job cancelled
    outcomes = []
    while (msg := worker.receive_one()) is not None:
        outcomes.append(worker.handle(msg))
    assert "stale" in outcomes
    assert vf.job_row(db, job_id)["status"] == "cancelled"
    assert db.execute("SELECT count(*) AS n FROM app.tasks WHERE parent_job_id = %s", [job_id]).fetchone()["n"] == 0
