"""What the viewer needs to know about one table, read through the serving pool (asyncpg).

The serving pool, not the job API's, so that the viewer lives and fails with the APIs it
draws from (opened by our lifespan, retried when the database comes back).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
from psycopg import sql

from triggers.serving.render import style_from

EXACT_COUNT_MAX = 1_000_000  # above this (estimated) rows, count and extent are planner estimates


@dataclass
class Layer:
    """One table as the viewer shows it."""

    schema: str
    table: str
    geometry_column: str
    geometry_type: str
    count: int
    count_is_estimate: bool
    bbox: list[float] | None
    style: dict[str, Any]

    @property
    def collection_id(self) -> str:
        return f"{self.schema}.{self.table}"


MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1


async def _find_table(conn: asyncpg.Connection, name: str, schemas: list[str]) -> tuple[str, str] | None:
    """(schema, table) for T or schema.T, looking only in the served schemas, in their order."""
    if "." in name:
        schema, _, table = name.partition(".")
        if schema not in schemas:
            return None
        candidates = [schema]
    else:
        table, candidates = name, schemas
    if len(table.encode()) > MAX_IDENTIFIER_BYTES:  # no such table, and PostgreSQL refuses the longer name
        return None
    row = await conn.fetchrow(
        "SELECT n.nspname AS schema, c.relname AS table FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relname = $1 AND n.nspname = ANY($2::text[]) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
        " ORDER BY array_position($2::text[], n.nspname::text) LIMIT 1",
        table,
        candidates,
    )
    return (row["schema"], row["table"]) if row else None


async def _geometry(conn: asyncpg.Connection, schema: str, table: str) -> tuple[str, str, int] | None:
    row = await conn.fetchrow(
        "SELECT f_geometry_column AS col, type, srid FROM public.geometry_columns"
        " WHERE f_table_schema = $1 AND f_table_name = $2"
        " ORDER BY (f_geometry_column = 'geom') DESC, f_geometry_column LIMIT 1",
        schema,
        table,
    )
    return (row["col"], row["type"], int(row["srid"] or 0)) if row else None


async def _stac_item(conn: asyncpg.Connection, item_id: str, collection: str) -> dict[str, Any] | None:
    item = await conn.fetchval("SELECT pgstac.get_item($1, $2)", item_id, collection)
    return item if isinstance(item, dict) else None


def _in_4326(geom: str, srid: int) -> sql.Composable:
    """The geometry column in lon/lat (ingested tables already are; SRID 0 is taken as lon/lat)."""
    if srid in (0, 4326):
        return sql.Identifier(geom)
    return sql.SQL("ST_Transform({}, 4326)").format(sql.Identifier(geom))


def _bbox(row: Any) -> list[float] | None:
    return [row["x0"], row["y0"], row["x1"], row["y1"]] if row and row["x0"] is not None else None


async def _count_and_extent(
    conn: asyncpg.Connection, schema: str, table: str, geom: str, srid: int
) -> tuple[int, bool, list[float] | None]:
    """Exact for ordinary tables; planner estimates for very large ones (a full scan would take seconds)."""
    estimate = await conn.fetchval(
        "SELECT c.reltuples::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relname = $2",
        schema,
        table,
    )
    if estimate is not None and estimate > EXACT_COUNT_MAX:
        row = await conn.fetchrow(
            "SELECT ST_XMin(e) AS x0, ST_YMin(e) AS y0, ST_XMax(e) AS x1, ST_YMax(e) AS y1"
            " FROM (SELECT CASE WHEN $4::int IN (0, 4326) THEN b::geometry"
            " ELSE ST_Transform(ST_SetSRID(b::geometry, $4::int), 4326) END AS e"
            " FROM ST_EstimatedExtent($1, $2, $3) AS b) s",
            schema,
            table,
            geom,
            srid,
        )
        return int(estimate), True, _bbox(row)
    query = sql.SQL(
        "SELECT n, ST_XMin(e) AS x0, ST_YMin(e) AS y0, ST_XMax(e) AS x1, ST_YMax(e) AS y1"
        " FROM (SELECT count(*) AS n, ST_Extent({g}) AS e FROM {t}) s"
    ).format(g=_in_4326(geom, srid), t=sql.Identifier(schema, table))
    row = await conn.fetchrow(query.as_string())
    return int(row["n"]), False, _bbox(row)


# Served by jobs_ingest_table_idx (migration 005).
RENDER_PARAMS_SQL = (
    "SELECT parameters -> 'render_params' FROM app.jobs"
    " WHERE job_type = 'ingest_vector' AND status = 'completed'"
    " AND parameters ->> 'table_name' = $1 AND coalesce(parameters ->> 'schema', $2) = $2"
    " ORDER BY completed_at DESC LIMIT 1"
)


async def _render_params(conn: asyncpg.Connection, schema: str, table: str) -> Any:
    """render_params of the latest completed ingest of this table (None when there is none)."""
    return await conn.fetchval(RENDER_PARAMS_SQL, table, schema)


async def load_layer(pool: asyncpg.Pool, name: str, schemas: list[str], stac_collection: str) -> Layer | None:
    """Everything the page shows about table `name` (T or schema.T), or None when it cannot be shown."""
    async with pool.acquire() as conn:
        found = await _find_table(conn, name, schemas)
        if found is None:
            return None
        schema, table = found
        geometry = await _geometry(conn, schema, table)
        if geometry is None:
            return None
        geom, geom_type, srid = geometry
        item = await _stac_item(conn, f"{schema}.{table}", stac_collection)
        props = (item or {}).get("properties") or {}
        rows = props.get("table:row_count", props.get("vector:feature_count"))
        if item and isinstance(rows, int) and item.get("bbox"):
            count, estimate, bbox = rows, False, [float(v) for v in item["bbox"][:4]]
        else:
            count, estimate, bbox = await _count_and_extent(conn, schema, table, geom, srid)
        params = await _render_params(conn, schema, table)
    if params is None:
        params = props.get("geoetl:render_params")
    return Layer(schema, table, geom, geom_type, count, estimate, bbox, style_from(params))
