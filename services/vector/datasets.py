"""Published datasets: list them, delete one (table and STAC item together), reconcile what drifted.

A dataset is a table geoetl published (its comment names the job, see table.py) in a served schema,
with its STAC item. Deleting takes the same per-dataset lock as publishing, so a delete and a replace
of one table take turns. The janitor reconciles what changed behind geoetl's back: a STAC item whose
table was dropped by hand is removed, and staging tables of jobs that ended are dropped.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql

from config import get_settings
from core.errors import ConflictError, ResourceNotFoundError
from services.vector.overviews import drop_stale_overviews, forget_table_overview
from services.vector.publish import lock_target
from services.vector.stac import delete_item, get_item, tiles_url
from services.vector.table import STAGING_SCHEMA, parse_owner, qualified, table_owner

log = logging.getLogger(__name__)
DELETE_LOCK_TIMEOUT = "30s"


def served_schemas() -> list[str]:
    return [s for s in get_settings().schema_allow_list if s != STAGING_SCHEMA]


def _owned_tables(conn: psycopg.Connection, schemas: list[str]) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT n.nspname AS schema, c.relname AS table, obj_description(c.oid, 'pg_class') AS comment,"
        " c.reltuples::bigint AS estimate FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') ORDER BY 1, 2",
        [schemas],
    ).fetchall()
    out = []
    for r in rows:
        owner = parse_owner(r["comment"])
        if owner is not None:
            out.append({"schema": r["schema"], "table": r["table"], "owner": owner, "estimate": r["estimate"]})
    return out


def describe(schema: str, table: str, owner: dict[str, Any], item: dict[str, Any] | None, estimate: int) -> dict:
    """One dataset as GET /api/datasets lists it."""
    settings = get_settings()
    props = (item or {}).get("properties") or {}
    collection = settings.stac_collection
    dataset = f"{schema}.{table}"
    return {
        "dataset": dataset,
        "schema": schema,
        "table": table,
        "state": "published",
        "rows": props.get("table:row_count", max(int(estimate), 0)),
        "bbox": (item or {}).get("bbox"),
        "geometry_type": props.get("vector:geometry_type"),
        "version": owner.get("version", 1),
        "source_etag": owner.get("source_etag"),
        "source_file": props.get("vector:source_file"),
        "job_id": owner.get("job_id"),
        "published_at": props.get("created"),
        "stac_item": item is not None,
        "links": {
            "features": settings.ogc_features_url(schema, table),
            "tiles": tiles_url(schema, table),
            "viewer": settings.viewer_url(table),
            "stac_item": f"{settings.base_url}/api/stac/collections/{collection}/items/{dataset}",
            "job": f"{settings.base_url}/api/jobs/status/{owner.get('job_id')}",
            "delete": f"{settings.base_url}/api/datasets/{dataset}",
        },
    }


def list_datasets(conn: psycopg.Connection, limit: int, offset: int) -> dict[str, Any]:
    owned = _owned_tables(conn, served_schemas())
    page = owned[offset : offset + limit]
    datasets = [
        describe(d["schema"], d["table"], d["owner"], get_item(conn, d["schema"], d["table"]), d["estimate"])
        for d in page
    ]
    return {"total": len(owned), "limit": limit, "offset": offset, "datasets": datasets}


def find_dataset(conn: psycopg.Connection, schema: str, table: str) -> dict[str, Any]:
    exists, owner = table_owner(conn, schema, table)
    if not exists or schema not in served_schemas():
        raise ResourceNotFoundError(f"no dataset {schema}.{table}")
    if owner is None:
        raise ConflictError(f"table {schema}.{table} was not created by geoetl; it is not a dataset geoetl manages")
    return describe(schema, table, owner, get_item(conn, schema, table), 0)


def delete_dataset(conn: psycopg.Connection, schema: str, table: str) -> dict[str, Any]:
    """Drop a geoetl table and its STAC item in the caller's transaction (both or neither)."""
    if schema not in served_schemas():
        raise ResourceNotFoundError(f"no dataset {schema}.{table}: schema '{schema}' is not one geoetl serves")
    conn.execute("SELECT set_config('lock_timeout', %s, true)", [DELETE_LOCK_TIMEOUT])
    lock_target(conn, schema, table)
    exists, owner = table_owner(conn, schema, table)
    if exists and owner is None:
        raise ConflictError(
            f"table {schema}.{table} was not created by geoetl (its comment names no geoetl job); "
            "geoetl deletes only the tables it published"
        )
    item = get_item(conn, schema, table)
    if not exists and item is None:
        raise ResourceNotFoundError(f"no dataset {schema}.{table}")
    rows = ((item or {}).get("properties") or {}).get("table:row_count")
    if exists:
        forget_table_overview(conn, qualified(schema, table))
        try:
            with conn.transaction():
                conn.execute(sql.SQL("DROP TABLE {}").format(qualified(schema, table)))
        except psycopg.errors.DependentObjectsStillExist as exc:
            detail = (exc.diag.message_detail or "").replace("\n", "; ")
            raise ConflictError(f"other objects depend on {schema}.{table} ({detail}); drop them first") from None
    item_deleted = delete_item(conn, schema, table)
    return {
        "dataset": f"{schema}.{table}",
        "deleted": True,
        "table_dropped": exists,
        "stac_item_deleted": item_deleted,
        "rows": rows,
        "version": (owner or {}).get("version"),
        "job_id": (owner or {}).get("job_id") or ((item or {}).get("properties") or {}).get("etl:job_id"),
    }


def reconcile_catalog(conn: psycopg.Connection) -> dict[str, int]:
    """Remove STAC items whose table is gone, and drop staging tables of jobs that are no longer active.

    Each repair runs in its own transaction (on `conn`), rechecked under the dataset's lock.
    """
    collection = get_settings().stac_collection
    orphans = conn.execute(
        "SELECT id FROM pgstac.items WHERE collection = %s AND id ~ '^[a-z_][a-z0-9_]*\\.[a-z_][a-z0-9_]*$'"
        " AND to_regclass(quote_ident(split_part(id, '.', 1)) || '.' || quote_ident(split_part(id, '.', 2))) IS NULL",
        [collection],
    ).fetchall()
    conn.commit()
    removed = 0
    for row in orphans:
        schema, table = row["id"].split(".", 1)
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('lock_timeout', '5s', true)")
                lock_target(conn, schema, table)
                if not table_owner(conn, schema, table)[0] and delete_item(conn, schema, table, collection):
                    removed += 1
                    log.warning("removed STAC item %s: its table %s.%s no longer exists", row["id"], schema, table)
        except psycopg.errors.LockNotAvailable:
            log.info("STAC item %s is busy; reconciled on the next run", row["id"])
    with conn.transaction():
        overviews = drop_stale_overviews(conn)
    return {
        "stac_items_removed": removed,
        "staging_tables_dropped": _drop_stale_staging(conn),
        "tile_overviews_removed": overviews,
    }


def _drop_stale_staging(conn: psycopg.Connection) -> int:
    rows = conn.execute(
        "SELECT c.relname, obj_description(c.oid, 'pg_class') AS comment FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'",
        [STAGING_SCHEMA],
    ).fetchall()
    conn.commit()
    dropped = 0
    for r in rows:
        owner = parse_owner(r["comment"])
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('lock_timeout', '2s', true)")
                if owner is not None:
                    job = conn.execute(
                        "SELECT status, run FROM app.jobs WHERE job_id = %s FOR UPDATE", [owner["job_id"]]
                    ).fetchone()
                    if job is not None and job["status"] in ("queued", "processing") and job["run"] == owner.get("run"):
                        continue  # its job is loading it
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(qualified(STAGING_SCHEMA, r["relname"])))
                dropped += 1
                log.warning("dropped staging table %s.%s: no job is loading it", STAGING_SCHEMA, r["relname"])
        except psycopg.errors.LockNotAvailable:
            log.info("staging table %s is busy; reconciled on the next run", r["relname"])
    return dropped
