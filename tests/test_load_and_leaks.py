"""Many submissions at once, and no secret in any answer or log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import ROOT, RUN_DIR, TEST_ENV, free_port, serve_api
from tests.helpers import wait_for_job


@pytest.mark.load
def test_fifty_concurrent_submissions(api_server, db, workers, nonce):
    """Identical and distinct submissions mixed: one job per distinct parameter set, no error."""
    bodies = [{"n": 3, "message": f"{nonce}-{i % 10}"} for i in range(50)]  # 10 distinct, 5 copies each

    def post(body):
        return requests.post(f"{api_server}/jobs/submit/hello_world", json=body, timeout=60)

    with ThreadPoolExecutor(25) as ex:
        answers = list(ex.map(post, bodies))
    assert all(a.status_code in (200, 202) for a in answers), [a.text for a in answers if a.status_code >= 300]
    ids = {a.json()["job_id"] for a in answers}
    assert len(ids) == 10
    assert sum(a.json()["idempotent"] is False for a in answers) == 10
    rows = db.execute("SELECT count(*) AS n FROM app.jobs WHERE parameters->>'message' LIKE %s",
                      [f"{nonce}-%"]).fetchone()
    assert rows["n"] == 10
    workers.start(2)
    assert {wait_for_job(j, timeout=120) for j in ids} == {"completed"}


SECRET_KEY = "k3y-that-must-never-be-logged"


@pytest.mark.load
def test_no_secret_in_answers_or_logs(database, nonce):
    env = {"API_KEYS": SECRET_KEY, "LOG_LEVEL": "DEBUG"}
    wlog_path = RUN_DIR / f"leak-worker-{nonce}.log"
    wlog = open(wlog_path, "wb")
    worker = subprocess.Popen([sys.executable, "-m", "triggers.cli", "worker"], cwd=ROOT,
                              env={**os.environ, **TEST_ENV, **env}, stdout=wlog, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        with serve_api(free_port(), f"leak-{nonce}", **env) as base:
            answers = [
                requests.post(f"{base}/jobs/submit/hello_world", json={"message": nonce}, timeout=30),
                requests.post(f"{base}/jobs/submit/hello_world", json={"message": nonce},
                              headers={"x-functions-key": "wrong"}, timeout=30),
                requests.post(f"{base}/jobs/submit/hello_world", data=b"{bad", timeout=30),
            ]
            ok = requests.post(f"{base}/jobs/submit/hello_world?code={SECRET_KEY}",
                               json={"n": 2, "failure_rate": 1, "message": nonce}, timeout=30)
            assert [a.status_code for a in answers] == [401, 401, 401] and ok.status_code == 202
            assert wait_for_job(ok.json()["job_id"], timeout=60) == "failed"
            answers += [ok, requests.get(f"{base}/jobs/status/{ok.json()['job_id']}", timeout=30),
                        requests.get(f"{base}/health", timeout=30), requests.get(f"{base}/openapi.json", timeout=30)]
        for a in answers:
            text = a.text
            assert SECRET_KEY not in text and "postgresql://" not in text and "AccountKey" not in text
            assert "Traceback" not in text
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(30)
        wlog.close()
    logs = (RUN_DIR / f"api-leak-{nonce}.log").read_text(errors="replace") + wlog_path.read_text(errors="replace")
    assert "job" in logs.lower()  # the logs are not empty: the check below means something
    assert SECRET_KEY not in logs
    assert "AccountKey=" not in logs and "postgresql://postgres:postgres@" not in logs
    assert json.dumps(SECRET_KEY) not in logs


@pytest.mark.load
@pytest.mark.slow
def test_twenty_small_ingests_at_once(api_server, db, workers, nonce):
    """20 different files submitted at the same moment: every job completes with its exact rows."""
    from tests.vector_files import geojson, points, upload

    sizes = [5 + 7 * i for i in range(20)]
    blobs = [upload(f"{nonce}/load_{i}.geojson", geojson([(p, {"i": j}) for j, p in enumerate(points(n, i, i))]))
             for i, n in enumerate(sizes)]
    bodies = [{"blob_name": b, "file_extension": "geojson", "table_name": f"load_{nonce}_{i}"}
              for i, b in enumerate(blobs)]
    workers.start(3, concurrency=2)
    with ThreadPoolExecutor(20) as ex:
        answers = list(ex.map(lambda b: requests.post(f"{api_server}/jobs/ingest_vector", json=b, timeout=60), bodies))
    assert [a.status_code for a in answers] == [202] * 20, [a.text for a in answers if a.status_code != 202]
    assert {wait_for_job(a.json()["job_id"], timeout=240) for a in answers} == {"completed"}
    for i, n in enumerate(sizes):
        assert db.execute(f'SELECT count(*) AS n FROM geo."load_{nonce}_{i}"').fetchone()["n"] == n
