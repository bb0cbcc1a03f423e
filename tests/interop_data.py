"""Real data for the interoperability tests: Natural Earth countries and a dated points table.

The countries come from pyogrio's own test fixture (Natural Earth 1:110m, 177 countries), the
points are generated in PostgreSQL. Both are written the way an ingest leaves a table (schema
geo, identity key `id`, geometry `geom` in 4326, GiST index, ANALYZE) and cataloged with the
STAC item the ingest's stage 3 builds (services/vector/stac.py). This module holds no tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pyogrio
from psycopg import sql

from services.vector.stac import build_item, table_extent, temporal_range
from tests.test_serving_support import COLLECTION, SCHEMA

COUNTRIES_FILE = Path(pyogrio.__file__).parent / "tests" / "fixtures" / "naturalearth_lowres"
COUNTRIES_FILE = COUNTRIES_FILE / "naturalearth_lowres.shp"


def create_countries(conn: psycopg.Connection, table: str) -> int:
    """The Natural Earth countries as geo.<table> (name, iso_a3, continent, pop_est, gdp_md_est)."""
    frame = pyogrio.read_dataframe(COUNTRIES_FILE)
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text, iso_a3 text,"
            " continent text, pop_est bigint, gdp_md_est double precision, geom geometry(MultiPolygon, 4326))"
        ).format(sql.Identifier(SCHEMA, table))
    )
    rows = [
        (r["name"], r["iso_a3"], r["continent"], int(r["pop_est"]), float(r["gdp_md_est"]), r["geometry"].wkb)
        for _, r in frame.iterrows()
    ]
    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL(
                "INSERT INTO {} (name, iso_a3, continent, pop_est, gdp_md_est, geom)"
                " VALUES (%s, %s, %s, %s, %s, ST_Multi(ST_SetSRID(ST_GeomFromWKB(%s), 4326)))"
            ).format(sql.Identifier(SCHEMA, table)),
            rows,
        )
    _finish(conn, table)
    return len(rows)


def create_dated_points(conn: psycopg.Connection, table: str, n: int) -> int:
    """n points over the world; `rank` repeats (k % 97), `observed` runs through 2021 hour by hour."""
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, k integer, rank integer,"
            " cat text, observed timestamptz, geom geometry(Point, 4326))"
        ).format(sql.Identifier(SCHEMA, table))
    )
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (k, rank, cat, observed, geom)"
            " SELECT k, k %% 97, (ARRAY['a','b','c'])[1 + k %% 3],"
            " timestamptz '2021-01-01 00:00:00+00' + (k %% 8760) * interval '1 hour',"
            " ST_SetSRID(ST_MakePoint(-179.5 + (k * 7919 %% 3590) / 10.0, -89.5 + (k * 104729 %% 1790) / 10.0), 4326)"
            " FROM generate_series(0::bigint, %s) k"
        ).format(sql.Identifier(SCHEMA, table)),
        [n - 1],
    )
    _finish(conn, table)
    return n


def _finish(conn: psycopg.Connection, table: str) -> None:
    t = sql.Identifier(SCHEMA, table)
    conn.execute(sql.SQL("CREATE INDEX ON {} USING gist (geom)").format(t))
    conn.execute(sql.SQL("ANALYZE {}").format(t))


def catalog(conn: psycopg.Connection, table: str, geometry_type: str, columns: list[dict[str, str]],
            temporal: list[str]) -> dict[str, Any]:
    """The STAC item stage 3 writes for geo.<table>, upserted into pgstac."""
    rows, bbox = table_extent(conn, SCHEMA, table)
    assert bbox is not None
    period = temporal_range(conn, SCHEMA, table, temporal)
    params = {"schema": SCHEMA, "table_name": table, "job_id": "0" * 64, "source_format": "shp",
              "source_file": f"interop/{table}.shp", "source_container": "interop", "geometry_type": geometry_type,
              "collection_id": COLLECTION, "columns": columns}
    item = build_item(params, rows, bbox, period)
    conn.execute("SELECT pgstac.upsert_item(%s::jsonb)", [json.dumps(item)])
    return item
