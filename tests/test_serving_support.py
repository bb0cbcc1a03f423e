"""Tables and catalog entries the serving tests create, the way an ingest leaves them.

An ingested table lives in schema geo, has an identity key `id` and a geometry column `geom`
(SRID 4326), is indexed and ANALYZEd, has a STAC item `geo.<table>` in `system-vectors` and a
completed job row. These helpers make exactly that with SQL, so the serving tests do not
depend on the ingest pipeline (tests/test_serving_freshness.py also runs a real ingest).
This module holds no tests.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import psycopg
import requests
from psycopg import sql

SCHEMA = "geo"
COLLECTION = "system-vectors"


def connect(dsn: str) -> psycopg.Connection:
    from psycopg.rows import dict_row

    return psycopg.connect(dsn, autocommit=True, row_factory=dict_row)


def _finish(conn: psycopg.Connection, table: str) -> None:
    """What the ingest's last stage does: spatial index, then ANALYZE."""
    t = sql.Identifier(SCHEMA, table)
    conn.execute(sql.SQL("CREATE INDEX ON {} USING gist (geom)").format(t))
    conn.execute(sql.SQL("ANALYZE {}").format(t))


def create_points(
    conn: psycopg.Connection, table: str, n: int, seed: int = 7
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n random points in lon 5..15, lat 45..55, with k (0..n-1), cat (a/b/c) and a daily timestamp."""
    rng = np.random.default_rng(seed)
    xs, ys = rng.uniform(5, 15, n), rng.uniform(45, 55, n)
    cats = rng.choice(["a", "b", "c"], n)
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, k integer, cat text,"
            " observed timestamptz, geom geometry(Point, 4326))"
        ).format(sql.Identifier(SCHEMA, table))
    )
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (k, cat, observed, geom)"
            " SELECT k, cat, timestamptz '2024-01-01 00:00:00+00' + k * interval '1 day',"
            " ST_SetSRID(ST_MakePoint(x, y), 4326)"
            " FROM unnest(%s::int[], %s::text[], %s::float8[], %s::float8[]) AS u(k, cat, x, y) ORDER BY k"
        ).format(sql.Identifier(SCHEMA, table)),
        [list(range(n)), [str(c) for c in cats], xs.tolist(), ys.tolist()],
    )
    _finish(conn, table)
    return xs, ys, cats


def create_squares(conn: psycopg.Connection, table: str, cols: int = 6, rows: int = 4) -> int:
    """A grid of MultiPolygon squares over lon 0..12, lat 0..8 (2-degree cells, 1.5-degree squares)."""
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text, area_km2 double precision,"
            " geom geometry(MultiPolygon, 4326))"
        ).format(sql.Identifier(SCHEMA, table))
    )
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (name, area_km2, geom)"
            " SELECT 'cell ' || i || '-' || j, (i + 1) * 10.5,"
            " ST_Multi(ST_MakeEnvelope(i * 2, j * 2, i * 2 + 1.5, j * 2 + 1.5, 4326))"
            " FROM generate_series(0, %s) i, generate_series(0, %s) j ORDER BY j, i"
        ).format(sql.Identifier(SCHEMA, table)),
        [cols - 1, rows - 1],
    )
    _finish(conn, table)
    return cols * rows


def extent(conn: psycopg.Connection, table: str) -> tuple[int, list[float]]:
    row = conn.execute(
        sql.SQL(
            "SELECT n, ST_XMin(e) x0, ST_YMin(e) y0, ST_XMax(e) x1, ST_YMax(e) y1"
            " FROM (SELECT count(*) n, ST_Extent(geom) e FROM {}) s"
        ).format(sql.Identifier(SCHEMA, table))
    ).fetchone()
    assert row is not None
    return int(row["n"]), [row["x0"], row["y0"], row["x1"], row["y1"]]


def job_id_for(table: str) -> str:
    return hashlib.sha256(f"serving-test:{table}".encode()).hexdigest()


def add_catalog_entries(
    conn: psycopg.Connection, table: str, base_url: str, render_params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The completed job row and the STAC item an ingest of `table` would have written."""
    n, bbox = extent(conn, table)
    job_id = job_id_for(table)
    params = {"table_name": table, "schema": SCHEMA, "blob_name": f"tests/{table}.gpkg", "file_extension": "gpkg",
              "render_params": render_params or {}}
    conn.execute(
        "INSERT INTO app.jobs (job_id, job_type, parameters, status, stage, total_stages, completed_at)"
        " VALUES (%s, 'ingest_vector', %s::jsonb, 'completed', 3, 3, now())"
        " ON CONFLICT (job_id) DO UPDATE SET parameters = excluded.parameters, completed_at = now()",
        [job_id, json.dumps(params)],
    )
    x0, y0, x1, y1 = bbox
    features = f"{base_url}/api/features/collections/{SCHEMA}.{table}/items"
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": f"{SCHEMA}.{table}",
        "collection": COLLECTION,
        "bbox": bbox,
        "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
        "properties": {
            "datetime": "2024-01-01T00:00:00Z",
            "title": f"{SCHEMA}.{table}",
            "etl:job_id": job_id,
            "table:row_count": n,
            "vector:feature_count": n,
        },
        "links": [
            {"rel": "ogc-features", "href": features, "type": "application/geo+json"},
            {"rel": "viewer", "href": f"{base_url}/api/vector/viewer?collection={table}", "type": "text/html"},
        ],
        "assets": {"data": {"href": features, "type": "application/geo+json", "roles": ["data"]}},
    }
    conn.execute("SELECT pgstac.upsert_item(%s::jsonb)", [json.dumps(item)])
    return item


def drop(conn: psycopg.Connection, table: str) -> None:
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA, table)))
    conn.execute("DELETE FROM app.jobs WHERE job_id = %s", [job_id_for(table)])
    item_id = f"{SCHEMA}.{table}"
    if conn.execute("SELECT pgstac.get_item(%s, %s) AS i", [item_id, COLLECTION]).fetchone()["i"]:
        with conn.transaction():  # pgstac.delete_item names its tables without a schema
            conn.execute("SET LOCAL search_path TO pgstac, public")
            conn.execute("SELECT pgstac.delete_item(%s, %s)", [item_id, COLLECTION])


def get_json(url: str, **params: Any) -> dict[str, Any]:
    r = requests.get(url, params=params or None, timeout=30)
    assert r.status_code == 200, f"{url} -> {r.status_code}: {r.text[:300]}"
    return r.json()


def link(doc: dict[str, Any], rel: str) -> str | None:
    return next((lk["href"] for lk in doc.get("links", []) if lk.get("rel") == rel), None)
