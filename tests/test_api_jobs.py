"""Job HTTP API: submit, validation errors, idempotency, status, task and job lists, auth."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from config import reset_settings


@pytest.fixture(scope="module")
def client(database):
    from triggers.app import create_app

    with TestClient(create_app()) as c:
        yield c


def assert_error(resp, status, kind=None, names=None):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) >= {"error", "message"} and body["message"]
    if kind:
        assert body["error"] == kind
    if names:
        assert names in body["message"]
    assert "Traceback" not in resp.text and "postgresql://" not in resp.text
    return body


def test_submit_creates_job_with_seed_body(client, drain, nonce):
    r = client.post("/api/jobs/submit/hello_world", json={"n": 4, "message": nonce})
    assert r.status_code == 202
    body = r.json()
    assert body["status"] == "created" and body["idempotent"] is False and len(body["job_id"]) == 64
    assert body["job_type"] == "hello_world" and body["parameters"]["n"] == 4
    assert body["queue_info"]["queue_name"] == "geospatial-jobs" and body["queue_info"]["queued"] is True
    assert r.headers["location"].endswith(f"/api/jobs/status/{body['job_id']}")
    assert body["status_url"] == r.headers["location"]

    again = client.post("/api/jobs/submit/hello_world", json={"message": nonce, "n": 4})
    assert again.status_code == 200
    assert again.json()["job_id"] == body["job_id"] and again.json()["idempotent"] is True
    assert again.json()["status"] == "queued"

    assert drain(body["job_id"]) == "completed"
    done = client.post("/api/jobs/submit/hello_world", json={"n": 4, "message": nonce})
    assert done.status_code == 200
    assert done.json()["status"] == "already_completed" and done.json()["result_data"]["sum"] == 6


def test_defaults_are_part_of_the_identity(client, nonce):
    a = client.post("/api/jobs/submit/hello_world", json={"message": nonce}).json()
    b = client.post("/api/jobs/submit/hello_world", json={"message": nonce, "n": 3, "failure_rate": 0}).json()
    assert a["job_id"] == b["job_id"] and b["idempotent"] is True


def test_status_shows_progress_and_result(client, drain, nonce):
    job_id = client.post("/api/jobs/submit/hello_world", json={"n": 7, "message": nonce}).json()["job_id"]
    queued = client.get(f"/api/jobs/status/{job_id}").json()
    assert queued["status"] == "queued" and queued["stage"] == 1 and queued["total_stages"] == 2
    assert queued["progress"]["tasks_total"] == 0 and "result_data" not in queued
    drain(job_id)
    st = client.get(f"/api/jobs/status/{job_id}").json()
    assert st["status"] == "completed" and st["stage"] == 2 and st["stage_name"] == "sum"
    assert st["progress"]["stages"]["1"]["completed"] == 7 and st["progress"]["stages"]["2"]["completed"] == 1
    assert st["progress"]["tasks_total"] == 8 and st["result_data"]["sum"] == 21
    assert st["created_at"] and st["updated_at"] and st["parameters"]["n"] == 7
    assert set(st["stage_timings"]) == {"1", "2"}


def test_failed_status_has_error_details(client, drain, nonce):
    job_id = client.post(
        "/api/jobs/submit/hello_world", json={"n": 2, "failure_rate": 1, "message": nonce}).json()["job_id"]
    drain(job_id)
    st = client.get(f"/api/jobs/status/{job_id}").json()
    assert st["status"] == "failed" and st["error_details"]["stage"] == 1
    assert "simulated failure" in st["error_details"]["error"] and st["error_details"]["task_id"]
    rerun = client.post("/api/jobs/submit/hello_world", json={"n": 2, "failure_rate": 1, "message": nonce})
    assert rerun.status_code == 202
    assert rerun.json()["rerun_from_stage"] == 1 and "runs again from stage 1" in rerun.json()["message"]


def test_tasks_and_jobs_listing(client, drain, nonce):
    job_id = client.post("/api/jobs/submit/hello_world", json={"n": 12, "message": nonce}).json()["job_id"]
    drain(job_id)
    page = client.get(f"/api/jobs/{job_id}/tasks", params={"stage": 1, "limit": 5, "offset": 5}).json()
    assert page["total"] == 12 and len(page["tasks"]) == 5
    assert [t["task_index"] for t in page["tasks"]] == [5, 6, 7, 8, 9]
    only_done = client.get(f"/api/jobs/{job_id}/tasks", params={"status": "completed"}).json()
    assert only_done["total"] == 13
    jobs = client.get("/api/jobs", params={"job_type": "hello_world", "status": "completed", "limit": 500}).json()
    assert job_id in [j["job_id"] for j in jobs["jobs"]]
    assert all(j["status"] == "completed" for j in jobs["jobs"])


@pytest.mark.parametrize(
    ("path", "body", "status", "kind", "names"),
    [
        ("/api/jobs/submit/no_such_job", {"x": 1}, 404, "unknown_job_type", "hello_world"),
        ("/api/jobs/submit/hello_world", {"n": "many"}, 400, "validation_error", "n"),
        ("/api/jobs/submit/hello_world", {"n": -1}, 400, "validation_error", "n"),
        ("/api/jobs/submit/hello_world", {"n": 10_001}, 400, "validation_error", "n"),
        ("/api/jobs/submit/hello_world", {"failure_rate": 2}, 400, "validation_error", "failure_rate"),
        ("/api/jobs/submit/hello_world", {"bogus": 1}, 400, "validation_error", "bogus"),
        ("/api/jobs/submit/hello_world", [1, 2], 400, "validation_error", "JSON object"),
    ],
)
def test_submit_errors(client, path, body, status, kind, names):
    assert_error(client.post(path, json=body), status, kind, names)


def test_malformed_and_empty_bodies(client):
    assert_error(client.post("/api/jobs/submit/hello_world", content=b"{not json",
                             headers={"content-type": "application/json"}), 400, "invalid_json")
    assert_error(client.post("/api/jobs/submit/hello_world", content=b""), 400, "invalid_json")
    assert_error(client.post("/api/jobs/submit/hello_world", content=b"\xff\xfe"), 400, "invalid_json")


def test_job_listing_filter_with_a_control_character_is_a_400(client):
    assert_error(client.get("/api/jobs", params={"job_type": "hello\x00world"}), 400, "validation_error", "job_type")


def test_status_errors(client):
    assert_error(client.get("/api/jobs/status/" + "0" * 64), 404, "not_found")
    assert_error(client.get("/api/jobs/status/not-a-job-id"), 400, "invalid_job_id")
    assert_error(client.get("/api/jobs/" + "A" * 64 + "/tasks"), 400, "invalid_job_id")
    assert_error(client.get("/api/jobs/nope/whatever"), 404)


def test_openapi_lists_routes(client):
    doc = client.get("/api/openapi.json").json()
    for p in ("/api/jobs/ingest_vector", "/api/jobs/submit/{job_type}", "/api/jobs/status/{job_id}",
              "/api/jobs/{job_id}/tasks", "/api/jobs", "/api/health"):
        assert p in doc["paths"], p
    assert client.get("/api/docs").status_code == 200


def test_api_keys_protect_writes_only(monkeypatch, client, nonce):
    monkeypatch.setenv("API_KEYS", "k1-secret,k2-secret")
    reset_settings()
    try:
        assert_error(client.post("/api/jobs/submit/hello_world", json={"message": nonce}), 401, "unauthorized")
        assert_error(client.post("/api/jobs/submit/hello_world", json={"message": nonce},
                                 headers={"x-functions-key": "wrong"}), 401)
        ok = client.post("/api/jobs/submit/hello_world", json={"message": nonce},
                         headers={"x-functions-key": "k2-secret"})
        assert ok.status_code == 202
        assert "k2-secret" not in ok.text
        ok2 = client.post("/api/jobs/submit/hello_world?code=k1-secret", json={"message": nonce + "b"})
        assert ok2.status_code == 202
        assert client.get(f"/api/jobs/status/{ok.json()['job_id']}").status_code == 200  # reads stay public
        assert client.get("/api/health").status_code == 200
        monkeypatch.setenv("PROTECT_READS", "true")
        reset_settings()
        assert_error(client.get(f"/api/jobs/status/{ok.json()['job_id']}"), 401)
    finally:
        monkeypatch.delenv("API_KEYS")
        monkeypatch.delenv("PROTECT_READS", raising=False)
        reset_settings()


def test_concurrent_identical_submissions_make_one_job(client, nonce):
    from concurrent.futures import ThreadPoolExecutor

    def go(_):
        return client.post("/api/jobs/submit/hello_world", json={"n": 2, "message": nonce})

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(go, range(16)))
    assert all(r.status_code in (200, 202) for r in results)
    assert len({r.json()["job_id"] for r in results}) == 1
    assert sum(r.json()["idempotent"] is False for r in results) == 1
