"""A table is served as soon as it exists, by every API process, and disappears when dropped: no restart."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests
from psycopg import sql

from tests.conftest import free_port, serve_api
from tests.test_serving_support import connect, create_points, create_squares, drop, get_json

pytestmark = pytest.mark.serving


def _collection_ids(features: str) -> set[str]:
    return {c["id"] for c in get_json(f"{features}/collections")["collections"]}


def test_new_table_is_served_at_once_then_altered_then_dropped(database: str, api_server: str) -> None:
    features = f"{api_server}/features"
    table = f"srv_new_{uuid.uuid4().hex[:8]}"
    assert f"geo.{table}" not in _collection_ids(features)  # the catalog is built and lacks it
    with connect(database) as conn:
        try:
            create_squares(conn, table)
            # at once: by item query (bare and qualified), in the list, as tiles
            r = requests.get(f"{features}/collections/{table}/items", params={"limit": 5}, timeout=30)
            assert r.status_code == 200 and r.json()["numberMatched"] == 24
            assert f"geo.{table}" in _collection_ids(features)
            tj = requests.get(f"{features}/collections/geo.{table}/tiles/WebMercatorQuad/tilejson.json", timeout=30)
            assert tj.status_code == 200

            # a new column shows at once
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN owner text DEFAULT 'x'").format(
                sql.Identifier("geo", table)))
            page = get_json(f"{features}/collections/{table}/items", limit=1)
            assert page["features"][0]["properties"]["owner"] == "x"

            # replaced under the same name with other columns (a re-run): the new table at once
            drop(conn, table)
            create_points(conn, table, 30)
            page = get_json(f"{features}/collections/{table}/items", limit=1)
            assert page["numberMatched"] == 30 and "cat" in page["features"][0]["properties"]

            # dropped: gone at once from the items route and from the list
            drop(conn, table)
            r = requests.get(f"{features}/collections/{table}/items", params={"limit": 5}, timeout=30)
            assert r.status_code == 404, r.text[:200]
            assert f"geo.{table}" not in _collection_ids(features)
        finally:
            drop(conn, table)


@contextmanager
def extra_api(name: str, *args: str, **env: str) -> Iterator[str]:
    """Another `geoetl serve` on a free port; yields its /api base."""
    with serve_api(free_port(), name, *args, **env) as base:
        yield base


@pytest.fixture
def two_worker_api(database: str) -> Iterator[str]:
    """A second API with two uvicorn worker processes (each with its own catalog)."""
    with extra_api("2workers", "--workers", "2") as api:
        yield api


def _statuses(url: str, n: int = 24) -> list[int]:
    """n requests on fresh connections, so that both worker processes answer some."""
    out = []
    for _ in range(n):
        with requests.Session() as s:
            out.append(s.get(url, headers={"Connection": "close"}, timeout=30).status_code)
    return out


def test_every_worker_process_serves_new_and_dropped_tables(database: str, two_worker_api: str) -> None:
    features = f"{two_worker_api}/features"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # both workers up, each has built its catalog
        if set(_statuses(f"{features}/collections", 12)) == {200}:
            break
        time.sleep(0.3)
    table = f"srv_multi_{uuid.uuid4().hex[:8]}"
    with connect(database) as conn:
        try:
            create_points(conn, table, 200)
            assert set(_statuses(f"{features}/collections/{table}/items?limit=1")) == {200}
            assert all(f"geo.{table}" in _collection_ids(features) for _ in range(8))
            drop(conn, table)
            assert set(_statuses(f"{features}/collections/{table}/items?limit=1")) == {404}
        finally:
            drop(conn, table)


def test_ingest_then_query_at_once(db, drain, database: str, nonce: str, api_server: str) -> None:
    """A real ingest_vector job, then the seed's URLs right away (no restart, no wait)."""
    from shapely.geometry import Point

    from tests import vector_files as vf

    table = f"srv_ingest_{nonce}"
    feats = [(Point(10 + (i % 30) * 0.1, 50 + (i // 30) * 0.1), {"name": f"p{i}", "n": i}) for i in range(600)]
    blob = vf.upload(f"{nonce}/serving.geojson", vf.geojson(feats))
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "geojson", "table_name": table,
                                    "chunk_size": 250, "render_params": {"fill_color": "#ff0000"}})
    try:
        assert job["status"] == "completed", job["error_details"]
        result = job["result_data"]
        r = requests.get(f"{api_server}/features/collections/{table}/items", params={"limit": 10}, timeout=30)
        assert r.status_code == 200 and r.json()["numberMatched"] == 600
        # the result's links point at routes that answer (PUBLIC_BASE_URL is the test API's)
        for key in ("ogc_features_url", "viewer_url"):
            url = result[key].replace(os.environ["PUBLIC_BASE_URL"] + "/api", api_server)
            got = requests.get(url, timeout=30)
            assert got.status_code == 200, (key, url, got.status_code)
        page = requests.get(f"{api_server}/vector/viewer", params={"collection": table}, timeout=30)
        assert "#ff0000" in page.text and "600" in page.text
        found = get_json(f"{api_server}/stac/search", ids=f"geo.{table}")
        assert [f["id"] for f in found["features"]] == [f"geo.{table}"]
    finally:
        with connect(database) as conn:
            drop(conn, table)


def test_database_missing_at_startup_then_served_when_it_appears(database: str) -> None:
    """The API starts without its database; serving answers 503, then works once the database exists."""
    from psycopg.conninfo import make_conninfo

    from config import Settings
    from infrastructure.migrate import migrate

    name = f"geoetl_test_late_{uuid.uuid4().hex[:6]}"
    dsn = make_conninfo(database, dbname=name)
    try:
        with extra_api("late", DATABASE_URL=dsn) as api:
            r = requests.get(f"{api}/features/collections", timeout=30)
            assert r.status_code == 503 and r.json()["error"] == "unavailable"
            page = requests.get(f"{api}/vector/viewer", params={"collection": "x"}, timeout=30)
            assert page.status_code == 503 and page.headers["content-type"].startswith("text/html")
            migrate(Settings(database_url=dsn))
            deadline = time.monotonic() + 15
            while requests.get(f"{api}/features/collections", timeout=30).status_code != 200:
                assert time.monotonic() < deadline, "serving never recovered"
                time.sleep(0.5)
            assert requests.get(f"{api}/stac/collections", timeout=30).status_code == 200
    finally:
        with connect(make_conninfo(database, dbname="postgres")) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
