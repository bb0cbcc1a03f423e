"""The jobs dashboard (/api/dashboard) in headless Chromium, against a real API and real workers.

Jobs submitted here appear, their progress moves, errors name their task, resubmit and cancel
call the job API with the key typed in, a completed ingest links to its features, map and STAC
item, values stay text. A screenshot is written to .run/dashboard.png for a person to look at.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from shapely.geometry import Point

from tests import vector_files as vf
from tests.conftest import ROOT, WorkerPool, serve_api
from tests.test_serving_viewer import EXTERNAL_ASSET, Watched, browser, wait_until  # noqa: F401 - the browser fixture

pytestmark = [pytest.mark.serving, pytest.mark.slow]
KEY = f"dash-key-{uuid.uuid4().hex[:8]}"
PORT = 61500
SCREENSHOT = ROOT / ".run" / "dashboard.png"
HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'


@pytest.fixture(scope="module")
def keyed_api(database: str, api_server: str) -> Iterator[str]:
    """An API that needs a key for writes (the session API serves the links it builds)."""
    with serve_api(PORT, "dashboard", API_KEYS=KEY) as base:
        yield base


@pytest.fixture(scope="module")
def running_workers(database: str) -> Iterator[WorkerPool]:
    pool = WorkerPool()
    pool.start(1, concurrency=2)
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture(scope="module")
def submitted(keyed_api: str) -> Iterator[list[str]]:
    """Job ids submitted by this module; any still running at the end is stopped and its messages dropped."""
    ids: list[str] = []
    yield ids
    from core.machine import CoreMachine
    from infrastructure import database as dbm

    machine = CoreMachine()
    for job_id in ids:
        with dbm.connection() as conn:
            machine.fail_job(conn, None, job_id, {"error": "stopped at the end of the dashboard tests"})


def submit(api: str, ids: list[str], job_type: str, params: dict[str, Any]) -> str:
    path = "jobs/ingest_vector" if job_type == "ingest_vector" else f"jobs/submit/{job_type}"
    r = requests.post(f"{api}/{path}", json=params, headers={"x-functions-key": KEY}, timeout=30)
    assert r.status_code == 202, r.text
    ids.append(r.json()["job_id"])
    return ids[-1]


def test_dashboard_page_is_static_with_local_assets(keyed_api: str) -> None:
    page = requests.get(f"{keyed_api}/dashboard", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S | re.I)
    assert scripts and all(not s.strip() for s in scripts), "inline script"
    assert all("src=" in tag for tag in re.findall(r"<script\b[^>]*>", html, re.I))
    assert not re.search(r"\son[a-z]+\s*=", html, re.I), "inline event handler"
    assert not re.search(r"\sstyle\s*=", html, re.I), "inline style"
    assert not [u for m in EXTERNAL_ASSET.findall(html) for u in m if u]
    for path, kind in (("dashboard.js", "javascript"), ("dashboard.css", "text/css")):
        r = requests.get(f"{keyed_api}/dashboard/static/{path}", timeout=30)
        assert r.status_code == 200 and kind in r.headers["content-type"], path
    js = requests.get(f"{keyed_api}/dashboard/static/dashboard.js", timeout=30).text
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "eval(" not in js
    assert not re.search(r"https?://(?!/)", js.replace("^https?:\\/\\/", ""))
    health = requests.get(f"{keyed_api}/health", timeout=60).json()
    assert health["links"]["dashboard"].endswith("/api/dashboard")


def _row(page: Any, job_id: str) -> Any:
    return page.locator(f'#job-rows tr[data-job-id="{job_id}"]')


def _open_job(page: Any, job_id: str) -> None:
    page.wait_for_selector(f'#job-rows tr[data-job-id="{job_id}"]', timeout=30000)
    _row(page, job_id).click()
    wait_until(page, f"document.getElementById('d-id').textContent === '{job_id}'", timeout=10)


def _wait_status(page: Any, status: str, timeout: float = 120) -> None:
    wait_until(page, f"document.getElementById('d-status').textContent === '{status}'", timeout=timeout)


def test_dashboard_in_a_browser(browser: Any, keyed_api: str, running_workers: WorkerPool,  # noqa: F811
                                submitted: list[str], db: Any, nonce: str) -> None:
    slow = submit(keyed_api, submitted, "hello_world", {"n": 24, "sleep_ms": 600, "message": f"dash slow {nonce}"})
    failing = submit(keyed_api, submitted, "hello_world",
                     {"n": 2, "failure_rate": 1.0, "message": f"dash fail {nonce}"})
    hostile = submit(keyed_api, submitted, "hello_world", {"n": 1, "message": HOSTILE + nonce})
    blob = vf.upload(f"{nonce}/dash.geojson", vf.geojson([(Point(i * 0.1, 45.0), {"v": i}) for i in range(10)]))
    table = f"dash_{nonce}"
    ingest = submit(keyed_api, submitted, "ingest_vector",
                    {"blob_name": blob, "file_extension": "geojson", "table_name": table})

    w = Watched(browser)
    page = w.page
    try:
        w.open(f"{keyed_api}/dashboard")
        for job_id in (slow, failing, hostile, ingest):
            page.wait_for_selector(f'#job-rows tr[data-job-id="{job_id}"]', timeout=30000)

        # progress of the slow job moves while it runs, up to every task
        _open_job(page, slow)
        bar = "#d-stages tr[data-stage='1'] progress"
        seen: list[tuple[float, float]] = []
        deadline = time.time() + 120
        while time.time() < deadline:
            got = page.evaluate(f"(() => {{ const b = document.querySelector(\"{bar}\");"
                                " return b ? [b.value, b.max] : null; })()")
            if got:
                seen.append((got[0], got[1]))
            if page.inner_text("#d-status") == "completed":
                break
            time.sleep(0.25)
        _wait_status(page, "completed", 60)
        wait_until(page, f"document.querySelector(\"{bar}\").value === 24", timeout=10)
        values = [v for v, _ in seen]
        assert any(0 < v < 24 for v, m in seen if m == 24), seen
        assert values == sorted(values), values
        assert page.locator("#d-stages tr").count() == 2  # one timeline row per stage
        assert page.inner_text("#d-stages tr[data-stage='1'] td:nth-child(6)").endswith(" s")
        assert "job_completed" in page.inner_text("#d-events")
        list_bar = page.evaluate(f"document.querySelector('#job-rows tr[data-job-id=\"{slow}\"] progress').value")
        assert list_bar == 24

        # values are text, never markup
        _open_job(page, hostile)
        assert json.dumps(HOSTILE)[1:-1] in page.inner_text("#d-params")  # the JSON, shown as text
        assert page.evaluate("window.pwned") is None
        assert page.locator("img").count() == 0

        # a failed job: its error, the failing task; resubmit needs the key
        _open_job(page, failing)
        _wait_status(page, "failed")
        page.wait_for_selector("#d-error:not([hidden])", timeout=10000)
        task = db.execute("SELECT task_id FROM app.tasks WHERE parent_job_id = %s AND status = 'failed'",
                          [failing]).fetchone()["task_id"]
        assert task in page.inner_text("#d-error-fields")
        assert "simulated failure" in page.inner_text("#d-failed")
        page.click("#resubmit")
        wait_until(page, "document.getElementById('action-result').dataset.outcome === 'error'")
        assert "401" in page.inner_text("#action-result")
        page.fill("#write-key", KEY)
        with page.expect_request(lambda r: r.method == "POST" and "/jobs/submit/hello_world" in r.url) as req:
            page.click("#resubmit")
        assert req.value.headers.get("x-functions-key") == KEY
        assert req.value.post_data_json["message"] == f"dash fail {nonce}"
        wait_until(page, "document.getElementById('action-result').dataset.outcome === 'ok'")
        assert "runs again" in page.inner_text("#action-result")
        deadline = time.time() + 30
        while db.execute("SELECT run FROM app.jobs WHERE job_id = %s", [failing]).fetchone()["run"] != 2:
            assert time.time() < deadline, "the resubmitted job did not run again"
            time.sleep(0.2)

        # a completed ingest links to its features, its map and its STAC item, all of them served
        _open_job(page, ingest)
        _wait_status(page, "completed")
        page.wait_for_selector("#d-links a[data-link='stac_item']", timeout=10000)
        links = page.evaluate("[...document.querySelectorAll('#d-links a')].map((a) => [a.dataset.link, a.href])")
        assert {name for name, _ in links} == {"features", "viewer", "stac_item"}
        for name, href in links:
            r = requests.get(href, timeout=30)
            assert r.status_code == 200, (name, href, r.status_code)
            if name == "features":
                assert r.json()["numberMatched"] == 10
            if name == "stac_item":
                assert r.json()["id"] == f"geo.{table}"

        # cancel calls the job API's cancel route with the key
        long_job = submit(keyed_api, submitted, "hello_world",
                          {"n": 40, "sleep_ms": 1500, "message": f"dash cancel {nonce}"})
        _open_job(page, long_job)
        assert page.is_enabled("#cancel")
        with page.expect_request(lambda r: r.method == "POST" and r.url.endswith(f"/jobs/{long_job}/cancel")) as req:
            page.click("#cancel")
        assert req.value.headers.get("x-functions-key") == KEY

        # the queue panel shows both queues with numbers
        queues = page.evaluate("[...document.querySelectorAll('#queue-rows tr')].map((r) => r.dataset.queue)")
        assert set(queues) == {"geospatial-jobs", "geospatial-tasks"}
        depth = page.inner_text("#queue-rows tr[data-queue='geospatial-tasks'] td:nth-child(2)")
        assert depth.isdigit()

        # filters: only completed hello_world jobs
        page.select_option("#f-status", "completed")
        page.select_option("#f-type", "hello_world")
        page.click("#filters button[type=submit]")
        wait_until(
            page,
            "(() => { const rows = [...document.querySelectorAll('#job-rows tr')];"
            " return rows.length > 0 && rows.every((r) => r.children[2].textContent === 'completed'"
            " && r.children[1].textContent === 'hello_world'); })()", timeout=15)
        assert _row(page, slow).count() == 1 and _row(page, ingest).count() == 0

        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.select_option("#f-status", "")
        page.select_option("#f-type", "")
        page.click("#filters button[type=submit]")
        _open_job(page, slow)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        assert SCREENSHOT.stat().st_size > 10_000
        assert KEY not in page.content()  # the key typed in is never written into the page
        expected = ("401: ", f"/jobs/{long_job}/cancel")  # the keyless resubmit; cancel where the route is absent
        problems = [p for p in w.problems if not any(e in p for e in expected) and "status of 401" not in p
                    and "status of 404" not in p]
        assert problems == []
    finally:
        page.close()
