"""Tile overviews of large point tables: built at publish, served as stored, equal to the live aggregation.

The expected cells and counts are computed here in numpy from the points' coordinates (spherical
Mercator), independently of the SQL that builds the overview; the live aggregation (a filter that
matches every row makes the server aggregate on the fly) must give the same tile.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import mapbox_vector_tile
import numpy as np
import pytest
import requests
from psycopg import sql

from config import reset_settings
from services.vector.overviews import TILE_FEATURE_BUDGET, build_overview, drop_stale_overviews, record_owner
from services.vector.table import set_owner
from tests import vector_files as vf
from tests.test_serving_support import SCHEMA, connect

pytestmark = pytest.mark.serving
R = 6378137.0
HALF = math.pi * R


def mercator(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.radians(lon) * R, np.log(np.tan(np.pi / 4 + np.radians(lat) / 2)) * R


def expected_cells(lonlat: np.ndarray, z: int, x: int, y: int) -> Counter[tuple[int, int]]:
    """Points per cell (64 x 64 per tile, numbered on the world grid) of the points inside tile z/x/y."""
    keep = np.abs(lonlat[:, 1]) <= 85.0511287798066
    mx, my = mercator(lonlat[keep, 0], lonlat[keep, 1])
    size = 2 * HALF / 2 ** (z + 6)
    cx, cy = np.floor((mx + HALF) / size).astype(np.int64), np.floor((my + HALF) / size).astype(np.int64)
    south_row = 2**z - 1 - y
    inside = ((cx >> 6) == x) & ((cy >> 6) == south_row)
    return Counter(zip(cx[inside].tolist(), cy[inside].tolist(), strict=True))


def decoded(content: bytes) -> list[dict[str, Any]]:
    return [f for layer in mapbox_vector_tile.decode(content).values() for f in layer["features"]]


def clusters(content: bytes) -> list[tuple[int, int, int]]:
    """(point_count, x, y) of every feature of an aggregated tile, sorted."""
    out = []
    for f in decoded(content):
        assert f["geometry"]["type"] == "Point", f
        px, py = f["geometry"]["coordinates"]
        out.append((f["properties"]["point_count"], px, py))
    return sorted(out)


def create_table(conn: Any, table: str, cluster: int, world: int, seed: int) -> None:
    """MultiPoints as geoetl loads them: `cluster` of them within half a degree of Paris, `world` spread out."""
    conn.execute(sql.SQL(
        "CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, k integer,"
        " geom geometry(MultiPoint, 4326))").format(sql.Identifier(SCHEMA, table)))
    add_points(conn, table, cluster, world, seed)
    conn.execute(sql.SQL("CREATE INDEX ON {} USING gist (geom)").format(sql.Identifier(SCHEMA, table)))
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(SCHEMA, table)))


def add_points(conn: Any, table: str, cluster: int, world: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lon = np.concatenate([2.0 + rng.random(cluster) * 0.5, rng.random(world) * 360 - 180])
    lat = np.concatenate([48.5 + rng.random(cluster) * 0.5, rng.random(world) * 178 - 89])
    with conn.cursor().copy(sql.SQL("COPY {} (k, geom) FROM STDIN").format(sql.Identifier(SCHEMA, table))) as cp:
        for i, (a, b) in enumerate(zip(lon.tolist(), lat.tolist(), strict=True)):
            cp.write_row((i, f"SRID=4326;MULTIPOINT(({a!r} {b!r}))"))


def points_of(conn: Any, table: str) -> np.ndarray:
    rows = conn.execute(sql.SQL("SELECT ST_X(ST_GeometryN(geom, 1)) AS x, ST_Y(ST_GeometryN(geom, 1)) AS y FROM {}")
                        .format(sql.Identifier(SCHEMA, table))).fetchall()
    return np.array([(r["x"], r["y"]) for r in rows], dtype=float)


def publish(conn: Any, table: str, version: int) -> dict[str, Any] | None:
    """What stage 3 does for the overview: build, owner comment, record the owner (one transaction)."""
    rows = conn.execute(sql.SQL("SELECT count(*) AS n FROM {}").format(sql.Identifier(SCHEMA, table))).fetchone()["n"]
    with conn.transaction():
        built = build_overview(conn, sql.Identifier(SCHEMA, table), "MultiPoint", rows, min_rows=0)
        set_owner(conn, SCHEMA, table, "f" * 64, 1, state="published", version=version)
        record_owner(conn, sql.Identifier(SCHEMA, table))
    return built


def stored(conn: Any, table: str) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT z, x, y, point_count, mvt FROM app.tile_overviews WHERE table_oid = %s::regclass::oid ORDER BY z, x, y",
        [f"{SCHEMA}.{table}"],
    ).fetchall()


@pytest.fixture(scope="module")
def crowded(database: str, api_server: str) -> Iterator[dict[str, Any]]:
    import uuid

    table = f"overview_{uuid.uuid4().hex[:8]}"
    with connect(database) as conn:
        create_table(conn, table, cluster=50_000, world=10_000, seed=3)
        built = publish(conn, table, version=1)
        yield {"conn": conn, "table": table, "built": built,
               "tiles": f"{api_server}/features/collections/{SCHEMA}.{table}/tiles/WebMercatorQuad"}
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(SCHEMA, table)))


def test_crowded_tiles_are_stored_once_and_served_as_stored(crowded: dict[str, Any]) -> None:
    conn, table = crowded["conn"], crowded["table"]
    built = crowded["built"]
    # 50,000 points within half a degree: every tile holding them is crowded up to z10 (~0.35 degrees)
    assert built is not None and built["max_zoom"] >= 9 and built["tiles"] >= built["max_zoom"] + 1
    tiles = stored(conn, table)
    assert len(tiles) == built["tiles"] and {t["z"] for t in tiles} == set(range(built["max_zoom"] + 1))
    lonlat = points_of(conn, table)
    for t in tiles:
        r = requests.get(f"{crowded['tiles']}/{t['z']}/{t['x']}/{t['y']}", timeout=60)
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/vnd.mapbox-vector-tile")
        assert r.content == bytes(t["mvt"]), (t["z"], t["x"], t["y"])
        want = expected_cells(lonlat, t["z"], t["x"], t["y"])
        got = clusters(r.content)
        assert sum(want.values()) == t["point_count"] == sum(c for c, _, _ in got) > TILE_FEATURE_BUDGET
        assert sorted(want.values()) == sorted(c for c, _, _ in got), (t["z"], t["x"], t["y"])


def test_a_stored_tile_equals_the_live_aggregation(crowded: dict[str, Any]) -> None:
    for t in stored(crowded["conn"], crowded["table"])[::3]:
        url = f"{crowded['tiles']}/{t['z']}/{t['x']}/{t['y']}"
        live = requests.get(url, params={"filter": "k >= 0"}, timeout=60)  # filtered: aggregated on the fly
        assert live.status_code == 200
        a, b = clusters(live.content), clusters(bytes(t["mvt"]))
        assert [c for c, _, _ in a] == [c for c, _, _ in b]
        assert all(abs(x1 - x2) <= 1 and abs(y1 - y2) <= 1 for (_, x1, y1), (_, x2, y2) in zip(a, b, strict=True))


def test_tiles_within_the_budget_stay_exact(crowded: dict[str, Any]) -> None:
    conn, table = crowded["conn"], crowded["table"]
    lonlat = points_of(conn, table)
    keys = {(t["z"], t["x"], t["y"]) for t in stored(conn, table)}
    z = crowded["built"]["max_zoom"] + 1
    n = 2**z
    x = int((2.25 + 180) / 360 * n)  # the tile over the cluster's middle, one zoom above the overview
    y = int((1 - math.asinh(math.tan(math.radians(48.75))) / math.pi) / 2 * n)
    for zxy in [(z, x, y), (3, 0, 0)]:
        assert zxy not in keys
        features = decoded(requests.get(f"{crowded['tiles']}/{zxy[0]}/{zxy[1]}/{zxy[2]}", timeout=60).content)
        inside = sum(expected_cells(lonlat, *zxy).values())
        assert 0 < len(features) == inside <= TILE_FEATURE_BUDGET
        assert all("point_count" not in f["properties"] for f in features)


def test_a_new_version_never_gets_the_old_tiles(crowded: dict[str, Any]) -> None:
    conn, table = crowded["conn"], crowded["table"]
    z0 = f"{crowded['tiles']}/0/0/0"
    before = sum(c for c, _, _ in clusters(requests.get(z0, timeout=60).content))
    # rows added and a new owner comment, as an append publishes, but no overview rebuilt yet
    add_points(conn, table, cluster=5_000, world=0, seed=4)
    set_owner(conn, SCHEMA, table, "e" * 64, 1, state="published", version=2)
    live = requests.get(z0, timeout=60).content
    assert sum(c for c, _, _ in clusters(live)) == before + 5_000
    assert live != bytes(stored(conn, table)[0]["mvt"])
    publish(conn, table, version=3)
    again = requests.get(z0, timeout=60).content
    assert again == bytes(stored(conn, table)[0]["mvt"]) and sum(c for c, _, _ in clusters(again)) == before + 5_000


def test_the_janitor_removes_overviews_of_dropped_tables(database: str) -> None:
    import uuid

    table = f"overview_{uuid.uuid4().hex[:8]}"
    with connect(database) as conn:
        create_table(conn, table, cluster=12_000, world=0, seed=5)
        assert publish(conn, table, version=1) is not None
        oid = conn.execute("SELECT %s::regclass::oid AS oid", [f"{SCHEMA}.{table}"]).fetchone()["oid"]
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(SCHEMA, table)))  # dropped behind geoetl's back
        conn.execute("UPDATE app.tile_overview_sets SET built_at = now() - interval '2 hours' WHERE table_oid = %s",
                     [oid])
        with conn.transaction():
            assert drop_stale_overviews(conn) >= 1
        assert conn.execute("SELECT count(*) AS n FROM app.tile_overviews WHERE table_oid = %s", [oid]
                            ).fetchone()["n"] == 0


# ---------------------------------------------------------------- through the ingest job

def csv_cluster(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    lines = ["k,lat,lon"] + [f"{i},{48.5 + a * 0.5!r},{2.0 + b * 0.5!r}" for i, (a, b) in
                              enumerate(zip(rng.random(n).tolist(), rng.random(n).tolist(), strict=True))]
    return ("\n".join(lines) + "\n").encode()


def test_ingest_builds_replaces_appends_and_deletes_the_overview(
    drain: Any, db: Any, api_server: str, monkeypatch: pytest.MonkeyPatch, nonce: str
) -> None:
    monkeypatch.setenv("TILE_OVERVIEW_MIN_ROWS", "0")
    reset_settings()
    table = f"ovjob_{nonce}"
    tiles = f"{api_server}/features/collections/{SCHEMA}.{table}/tiles/WebMercatorQuad/0/0/0"

    def ingest(n: int, seed: int, **extra: Any) -> dict[str, Any]:
        blob = vf.upload(f"overviews/{table}_{seed}.csv", csv_cluster(n, seed))
        job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "csv", "table_name": table,
                                        "converter_params": {"lat_name": "lat", "lon_name": "lon"}, **extra})
        assert job["status"] == "completed", job["error_details"]
        return job

    def served_total() -> int:
        return sum(c for c, _, _ in clusters(requests.get(tiles, timeout=60).content))

    def sets() -> list[dict[str, Any]]:
        return db.execute("SELECT s.table_oid, s.points, s.table_comment = obj_description(s.table_oid, 'pg_class')"
                          " AS current FROM app.tile_overview_sets s JOIN pg_class c ON c.oid = s.table_oid"
                          " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                          [SCHEMA, table]).fetchall()

    try:
        first = ingest(20_000, 1)
        result = json.dumps(first["result_data"])
        assert '"tile_overview": {' in result, result[:2000]
        assert [(s["points"], s["current"]) for s in sets()] == [(20_000, True)]
        assert served_total() == 20_000
        old_oid = sets()[0]["table_oid"]
        ingest(15_000, 2, if_exists="replace")
        assert [(s["points"], s["current"]) for s in sets()] == [(15_000, True)] and sets()[0]["table_oid"] != old_oid
        assert db.execute("SELECT count(*) AS n FROM app.tile_overview_sets WHERE table_oid = %s", [old_oid]
                          ).fetchone()["n"] == 0
        assert served_total() == 15_000
        ingest(12_000, 3, if_exists="append")
        assert [(s["points"], s["current"]) for s in sets()] == [(27_000, True)]
        assert served_total() == 27_000
        oid = sets()[0]["table_oid"]
        from services.vector.datasets import delete_dataset

        with db.transaction():
            delete_dataset(db, SCHEMA, table)
        assert db.execute("SELECT count(*) AS n FROM app.tile_overview_sets WHERE table_oid = %s", [oid]
                          ).fetchone()["n"] == 0
    finally:
        monkeypatch.delenv("TILE_OVERVIEW_MIN_ROWS")
        reset_settings()
        db.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(SCHEMA, table)))


@pytest.mark.parametrize("budget", [100, 1_000, 10_000, 40_000, 80_000])
def test_the_highest_crowded_zoom_is_counted_from_every_point(crowded: dict[str, Any], budget: int) -> None:
    """Below SAMPLE_POINTS rows every point counts: the zoom equals numpy's count of points per tile."""
    from services.vector.overviews import OVERVIEW_MAX_ZOOM, _highest_crowded_zoom

    conn, table = crowded["conn"], crowded["table"]
    lonlat = points_of(conn, table)
    keep = np.abs(lonlat[:, 1]) <= 85.0511287798066
    mx, my = mercator(lonlat[keep, 0], lonlat[keep, 1])
    expected = None
    for z in range(OVERVIEW_MAX_ZOOM, -1, -1):
        size = 2 * HALF / 2**z
        tiles = Counter(zip(np.floor((mx + HALF) / size).tolist(), np.floor((my + HALF) / size).tolist(), strict=True))
        if max(tiles.values()) > budget * 0.8:
            expected = z
            break
    found = _highest_crowded_zoom(conn, sql.Identifier(SCHEMA, table), "multipoint", len(lonlat), budget)
    assert found == expected
    assert (expected is None) == (budget * 0.8 >= len(lonlat))
