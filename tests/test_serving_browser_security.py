"""No stored value runs as script: a table ingested with script-bearing properties, every HTML page
that shows them opened in headless Chromium, and no script of theirs ran. The pages that need
scripts of their own (the viewer's map, Swagger UI) still work under the Content-Security-Policy.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests import vector_files as vf
from tests.helpers import job_status, submit
from tests.test_serving_support import drop
from tests.test_serving_viewer import Watched, browser  # noqa: F401 - the browser fixture

pytestmark = pytest.mark.serving

PAYLOADS = {
    "name": "<img src=x onerror=alert('name')>",
    "note": "<script>alert('note')</script>",
    "quote": "\"><svg onload=alert('quote')>",
    "link": "javascript:alert('link')",
}
ESCAPED = "&lt;img src=x onerror=alert("
# a script element that would run inline: no src, and not a JSON data block (the viewer's config)
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\b(?:src=|type=\"application/json\"))[^>]*>", re.I)


def _drain(job_id: str, timeout: float = 120) -> str:
    from triggers.worker import Worker

    worker = Worker(concurrency=1)
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = job_status(job_id)
        if status in ("completed", "failed"):
            return status
        msg = worker.receive_one()
        if msg is None:
            time.sleep(0.02)
            continue
        worker.handle(msg)
    raise AssertionError(f"job {job_id} did not finish")


@pytest.fixture(scope="module")
def hostile_table(database: str, api_server: str) -> Iterator[dict[str, Any]]:
    """A table ingested (a real job) from a GeoJSON whose properties are script."""
    table = f"xss_{uuid.uuid4().hex[:8]}"
    features = [(geom, {**PAYLOADS, "k": i}) for i, geom in enumerate(vf.squares(5))]
    blob = vf.upload(f"xss/{table}.geojson", vf.geojson(features))
    job_id = submit("ingest_vector", {"blob_name": blob, "file_extension": "geojson", "table_name": table,
                                      "render_params": {"fill_color": "#ff0000", "title": PAYLOADS["note"]}})
    assert _drain(job_id) == "completed"
    items = requests.get(f"{api_server}/features/collections/{table}/items", timeout=30).json()
    assert items["features"][0]["properties"]["name"] == PAYLOADS["name"]  # stored exactly as sent
    yield {"table": table, "api": api_server, "item_id": items["features"][0]["id"]}
    import psycopg

    with psycopg.connect(database, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        drop(conn, table)


def html_pages(api: str, table: str, item_id: Any) -> dict[str, str]:
    features = f"{api}/features"
    return {
        "items": f"{features}/collections/{table}/items?f=html",
        "item": f"{features}/collections/{table}/items/{item_id}?f=html",
        "collection": f"{features}/collections/{table}?f=html",
        "collections": f"{features}/collections?f=html",
        "queryables": f"{features}/collections/{table}/queryables?f=html",
        "landing": f"{features}/?f=html",
        "conformance": f"{features}/conformance?f=html",
        "tilesets": f"{features}/collections/{table}/tiles?f=html",
    }


def assert_policy(r: requests.Response) -> None:
    csp = r.headers.get("content-security-policy", "")
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp, csp
    assert "object-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers.get("x-content-type-options") == "nosniff"


def test_every_html_answer_escapes_and_carries_the_policy(hostile_table: dict[str, Any]) -> None:
    api, table = hostile_table["api"], hostile_table["table"]
    for name, url in html_pages(api, table, hostile_table["item_id"]).items():
        r = requests.get(url, timeout=30)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), (name, r.status_code)
        assert_policy(r)
        for payload in PAYLOADS.values():
            assert payload not in r.text, (name, payload)
        assert not INLINE_SCRIPT.search(r.text) and "https://cdn" not in r.text and "unpkg.com" not in r.text, name
    for name in ("items", "item"):
        assert ESCAPED in requests.get(html_pages(api, table, hostile_table["item_id"])[name], timeout=30).text
    for url in (f"{api}/vector/viewer?collection={table}", f"{api}/docs", f"{api}/features/api.html",
                f"{api}/stac/api.html", f"{api}/vector/viewer?collection=%3Cscript%3E"):
        r = requests.get(url, timeout=30)
        assert r.headers["content-type"].startswith("text/html"), url
        assert_policy(r)
        assert "cdn.jsdelivr" not in r.text and not INLINE_SCRIPT.search(r.text), url  # every script has a src
    api_answer = requests.get(f"{api}/features/collections/{table}/items", timeout=30)
    assert api_answer.headers["x-content-type-options"] == "nosniff"
    assert api_answer.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"


def _watch(browser: Any) -> tuple[Any, list[str], list[str]]:  # noqa: F811
    page = browser.new_page()
    dialogs: list[str] = []
    problems: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("console", lambda m: m.type == "error" and problems.append(m.text))
    page.on("pageerror", lambda e: problems.append(str(e)))
    return page, dialogs, problems


def test_no_script_runs_on_any_page_that_shows_the_values(browser: Any, hostile_table: dict[str, Any]) -> None:  # noqa: F811
    api, table = hostile_table["api"], hostile_table["table"]
    for name, url in html_pages(api, table, hostile_table["item_id"]).items():
        page, dialogs, problems = _watch(browser)
        try:
            page.goto(url)
            page.wait_for_load_state("load")
            assert dialogs == [], (name, dialogs)
            assert [p for p in problems if "Content Security Policy" in p] == [], (name, problems)
            if name in ("items", "item"):
                text = page.inner_text("body")
                assert PAYLOADS["name"] in text and PAYLOADS["note"] in text, name  # shown as text
                assert page.evaluate("document.querySelectorAll('img[src=\"x\"], svg').length") == 0, name
            if name == "items":  # the paging that tipg's inline script did still works
                assert (page.inner_text("#current_page"), page.inner_text("#total_pages")) == ("1", "1")
                with page.expect_navigation():
                    page.select_option("#limit", "100")
                assert "limit=100" in page.url and dialogs == []
        finally:
            page.close()


def test_the_viewer_draws_and_shows_the_values_as_text(browser: Any, hostile_table: dict[str, Any]) -> None:  # noqa: F811
    api, table = hostile_table["api"], hostile_table["table"]
    w = Watched(browser)
    dialogs: list[str] = []
    w.page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        w.open(f"{api}/vector/viewer?collection={table}")  # fails unless the map reached 'ready'
        x, y = w.page.evaluate(
            "() => { const p = window.viewerMap.project([10.005, 50.005]); return [p.x, p.y]; }")
        w.page.mouse.click(x, y)
        popup = w.page.wait_for_selector(".maplibregl-popup", timeout=5000)
        assert PAYLOADS["name"] in popup.inner_text()
        assert w.page.evaluate("document.querySelectorAll('.maplibregl-popup img, .maplibregl-popup svg').length") == 0
        assert dialogs == [] and w.problems == [], (dialogs, w.problems)
    finally:
        w.page.close()


@pytest.mark.parametrize("path", ["/docs", "/features/api.html", "/stac/api.html"])
def test_swagger_ui_works_from_local_assets(browser: Any, api_server: str, path: str) -> None:  # noqa: F811
    page, dialogs, problems = _watch(browser)
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    try:
        page.goto(f"{api_server}{path}")
        page.wait_for_selector(".opblock", timeout=30000)
        assert page.evaluate("document.querySelectorAll('.opblock').length") >= 3
        assert problems == [] and dialogs == [], problems
        origin = api_server.removesuffix("/api")
        assert all(u.startswith(origin) or u.startswith("data:") for u in urls), urls
    finally:
        page.close()


def test_a_keyed_viewer_draws_with_the_key_of_its_own_address(browser: Any, hostile_table: dict[str, Any]) -> None:  # noqa: F811
    """PROTECT_READS: the page never holds the key, yet its data requests carry it (read from the address)."""
    from tests.test_hostile_clients import KEY, extra_port, own_api

    with own_api(extra_port(5), "browser-keyed", API_KEYS=KEY, PROTECT_READS="true") as (base, _proc):
        html = requests.get(f"{base}/vector/viewer", params={"collection": hostile_table["table"], "code": KEY},
                            timeout=30)
        assert html.status_code == 200 and KEY not in html.text
        w = Watched(browser)
        try:
            w.open(f"{base}/vector/viewer?collection={hostile_table['table']}&code={KEY}")
            data = [u for u in w.urls if "/features/collections/" in u]
            assert data and all(f"code={KEY}" in u for u in data), data
            assert w.problems == []
        finally:
            w.page.close()
