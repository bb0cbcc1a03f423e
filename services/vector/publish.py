"""Stage 3: index the staging table, then publish it in the transaction that completes the task.

Stage 2 loaded into STAGING_SCHEMA, which nothing serves. Here the indexes are built there (the long
part, while readers keep using whatever is published), then, holding the target's lock only for the
swap itself, one transaction:

- new table or `if_exists: "replace"`: drop the old version (if any), move the staging table into the
  target schema under the target name, give its indexes and sequence their final names;
- `if_exists: "append"`: insert the staging rows into the existing table (columns checked first);
- in both cases: the owner comment (job, run, version, source ETag) and the STAC item upserted.

Readers see the old version or the new one, never a part: a query waiting on the swap's lock resolves
the table name again once the swap commits. A worker killed before the commit changes nothing: the old
version stays published and the task runs again. A failed or cancelled job drops its staging table.
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
from psycopg import sql

from config import get_settings
from core.errors import PermanentTaskError
from services.context import TaskContext
from services.vector.identifiers import GEOMETRY_COLUMN, ID_COLUMN
from services.vector.overviews import build_overview, forget_table_overview, record_owner
from services.vector.stac import build_item, lock_collection, table_extent, temporal_range
from services.vector.table import (
    STAGING_SCHEMA,
    create_indexes,
    drop_hint,
    free_index_name,
    index_name,
    index_suffixes,
    not_owned_hint,
    qualified,
    relation_names,
    set_owner,
    staging_table,
    table_indexes,
    table_owner,
)

# How long the publishing transaction waits for readers (and other publishers) of the target.
PUBLISH_LOCK_TIMEOUT = "60s"


def lock_target(conn: psycopg.Connection, schema: str, table: str) -> None:
    """Serialise everything that publishes or deletes one dataset, until the transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"geoetl:table:{schema}.{table}"])


def check_target(mode: str, exists: bool, owner: dict[str, Any] | None, schema: str, table: str) -> None:
    """The if_exists rules, at submit (ConflictError by the caller) and again at publish."""
    if not exists:
        return
    if mode == "fail":
        raise PermanentTaskError(drop_hint(schema, table, owned=owner is not None))
    if owner is None:
        raise PermanentTaskError(not_owned_hint(schema, table, mode))


def table_columns(conn: psycopg.Connection, schema: str, table: str) -> dict[str, str]:
    """Column name -> SQL type (as format_type writes it), in order, without the id column."""
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type FROM pg_attribute a"
        " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attname <> %s"
        " ORDER BY a.attnum",
        [qualified(schema, table).as_string(conn), ID_COLUMN],
    ).fetchall()
    return {r["attname"]: r["type"] for r in rows}


def geometry_type_of(columns: dict[str, str]) -> str:
    """'geometry(MultiPoint,4326)' -> 'MultiPoint'."""
    text = columns.get(GEOMETRY_COLUMN, "")
    return text[text.find("(") + 1 : text.find(",")] if "(" in text else "Geometry"


def append_problems(target: dict[str, str], staged: dict[str, str], name: str) -> list[str]:
    """Why the staged rows cannot go into the target table; empty when they can."""
    problems = []
    for col, typ in staged.items():
        if col not in target:
            problems.append(f"column '{col}' ({typ}) is not in {name}")
        elif target[col] != typ and not (col == GEOMETRY_COLUMN and target[col] == "geometry(Geometry,4326)"):
            problems.append(f"column '{col}' is {target[col]} in {name} but {typ} in the new file")
    return problems


def _append(conn: psycopg.Connection, schema: str, table: str, staging: str) -> int:
    target, staged = table_columns(conn, schema, table), table_columns(conn, STAGING_SCHEMA, staging)
    problems = append_problems(target, staged, f"{schema}.{table}")
    if problems:
        have = ", ".join(f"{c} {t}" for c, t in target.items())
        raise PermanentTaskError(
            f"cannot append to {schema}.{table}: " + "; ".join(problems) + f". Columns of {schema}.{table}: {have}"
        )
    names = sql.SQL(", ").join(sql.Identifier(c) for c in staged)
    cur = conn.execute(
        sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ORDER BY {}").format(
            qualified(schema, table), names, names, qualified(STAGING_SCHEMA, staging), sql.Identifier(ID_COLUMN)
        )
    )
    conn.execute(sql.SQL("DROP TABLE {}").format(qualified(STAGING_SCHEMA, staging)))
    conn.execute(sql.SQL("ANALYZE {}").format(qualified(schema, table)))
    return cur.rowcount


def _index_missing_columns(conn: psycopg.Connection, schema: str, table: str, columns: list[str]) -> None:
    """Appending with indexes the table lacks: build them (readers are not blocked; writers wait)."""
    if not columns:
        return
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
        " WHERE i.indrelid = %s::regclass AND i.indnatts = 1",
        [qualified(schema, table).as_string(conn)],
    ).fetchall()
    indexed = {r["attname"] for r in rows}
    taken = relation_names(conn, schema)
    for col in dict.fromkeys(columns):
        if col not in indexed:
            name = free_index_name(table, f"{col}_idx", taken)
            conn.execute(
                sql.SQL("CREATE INDEX {} ON {} ({})").format(
                    sql.Identifier(name), qualified(schema, table), sql.Identifier(col)
                )
            )


def _move_into(conn: psycopg.Connection, staging: str, schema: str, table: str, suffixes: list[str]) -> None:
    """The staging table becomes schema.table; its indexes and sequence get names free in that schema."""
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    moved = qualified(STAGING_SCHEMA, staging)
    conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(moved, sql.Identifier(schema)))
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(qualified(schema, staging), sql.Identifier(table)))
    taken = relation_names(conn, schema)
    for suffix in suffixes:
        old = index_name(staging, suffix)
        if old not in taken:
            continue
        taken.discard(old)
        new = free_index_name(table, suffix, taken)
        conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(qualified(schema, old), sql.Identifier(new)))
    row = conn.execute(
        "SELECT c.relname FROM pg_class c WHERE c.oid = pg_get_serial_sequence(%s, %s)::regclass",
        [qualified(schema, table).as_string(conn), ID_COLUMN],
    ).fetchone()
    if row is not None:
        taken.discard(row["relname"])
        new = free_index_name(table, "id_seq", taken)
        sequence = qualified(schema, row["relname"])
        conn.execute(sql.SQL("ALTER SEQUENCE {} RENAME TO {}").format(sequence, sql.Identifier(new)))


def _drop_previous(conn: psycopg.Connection, schema: str, table: str) -> None:
    forget_table_overview(conn, qualified(schema, table))
    try:
        with conn.transaction():
            conn.execute(sql.SQL("DROP TABLE {}").format(qualified(schema, table)))
    except psycopg.errors.DependentObjectsStillExist as exc:
        detail = (exc.diag.message_detail or "").replace("\n", "; ")
        raise PermanentTaskError(
            f"cannot replace {schema}.{table}: other objects depend on it ({detail}); drop or change them first"
        ) from None


def publish_vector_table(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """The stage-3 handler: indexes in staging, then the publishing transaction (see the module doc)."""
    started = time.monotonic()
    conn = ctx.conn
    schema, table = params["schema"], params["table_name"]
    staging = params.get("staging_table") or staging_table(ctx.job_id)
    mode = params.get("if_exists") or "fail"
    idx = params.get("indexes") or {}
    spatial, attributes, temporal = bool(idx.get("spatial", True)), idx.get("attributes", []), idx.get("temporal", [])
    if not table_owner(conn, STAGING_SCHEMA, staging)[0]:
        raise PermanentTaskError(f"the staging table {STAGING_SCHEMA}.{staging} of this job is missing; submit again")

    overview_min_rows = get_settings().tile_overview_min_rows

    def overview(c: psycopg.Connection, in_schema: str, name: str, rows: int) -> dict[str, Any] | None:
        kind = geometry_type_of(table_columns(c, in_schema, name))
        return build_overview(c, qualified(in_schema, name), kind, rows, min_rows=overview_min_rows)

    def extent_and_overview(other: psycopg.Connection) -> tuple[tuple[int, list[float] | None], Any]:
        """Read on the side connection while the GiST index builds. A new version's tiles are aggregated
        there too, before the lock while readers use the old one; they commit with the side connection
        and are served only once record_owner ties them to the published table (in this transaction)."""
        extent = table_extent(other, STAGING_SCHEMA, staging)
        return extent, overview(other, STAGING_SCHEMA, staging, extent[0])

    def index_staging() -> tuple[int, list[float] | None, dict[str, Any] | None]:
        _, ((rows, extent), tiles) = create_indexes(
            conn, STAGING_SCHEMA, staging, spatial, attributes, temporal, meanwhile=extent_and_overview
        )
        return rows, extent, tiles

    t0 = time.monotonic()
    # Appended rows go into a table that has its indexes: staging then needs only its extent.
    indexed = mode != "append" or not table_owner(conn, schema, table)[0]
    tile_overview = None
    if indexed:
        staged_rows, bbox, tile_overview = index_staging()
    else:
        staged_rows, bbox = table_extent(conn, STAGING_SCHEMA, staging)
    period = temporal_range(conn, STAGING_SCHEMA, staging, temporal) if indexed else None
    index_seconds = time.monotonic() - t0
    if bbox is None:
        raise ValueError(f"table {STAGING_SCHEMA}.{staging} is empty; nothing to publish")

    # The publishing section: from here to the task's commit, the target is locked (briefly).
    t1 = time.monotonic()
    conn.execute("SELECT set_config('lock_timeout', %s, true)", [PUBLISH_LOCK_TIMEOUT])
    collection = params["collection_id"]
    lock_target(conn, schema, table)
    lock_collection(conn, collection)
    exists, owner = table_owner(conn, schema, table)
    check_target(mode, exists, owner, schema, table)
    version = int(owner.get("version") or 1) + 1 if exists and owner else 1
    item_params = dict(params)
    if mode == "append" and exists:
        rows_added = _append(conn, schema, table, staging)
        _index_missing_columns(conn, schema, table, [*attributes, *temporal])
        row_count, bbox = table_extent(conn, schema, table)
        period = temporal_range(conn, schema, table, temporal)
        tile_overview = overview(conn, schema, table, row_count)  # readers are not blocked by the appended rows
        columns = table_columns(conn, schema, table)
        item_params["geometry_type"] = geometry_type_of(columns)
        item_params["columns"] = [{"name": c, "type": t} for c, t in columns.items() if c != GEOMETRY_COLUMN]
        action = "appended"
    else:
        if not indexed:  # append to a table deleted since the check above: published as a new one
            _, _, tile_overview = index_staging()
            period = temporal_range(conn, STAGING_SCHEMA, staging, temporal)
        if exists:
            _drop_previous(conn, schema, table)
        _move_into(conn, staging, schema, table, index_suffixes(spatial, attributes, temporal))
        rows_added, row_count = staged_rows, staged_rows
        action = "replaced" if exists else "created"
    source_etag = params.get("source_etag")
    set_owner(
        conn, schema, table, ctx.job_id, ctx.run,
        state="published", version=version, source_etag=source_etag, if_exists=mode,
    )
    record_owner(conn, qualified(schema, table))  # the overview serves this version, and no other
    item_params |= {"version": version, "source_etag": source_etag, "if_exists": mode}
    item = build_item(item_params, row_count, bbox, period)
    conn.execute("SELECT pgstac.upsert_item(%s::jsonb)", [json.dumps(item)])
    return {
        "stac_id": item["id"],
        "item_id": item["id"],
        "collection_id": item["collection"],
        "bbox": bbox,
        "row_count": row_count,
        "rows_added": rows_added,
        "datetime": item["properties"].get("datetime"),
        "indexes": table_indexes(conn, schema, table),
        "inserted_to_pgstac": True,
        "published": action,
        "version": version,
        "previous_job_id": owner.get("job_id") if exists and owner else None,
        "index_seconds": round(index_seconds, 3),
        "tile_overview": tile_overview,
        "publish_seconds": round(time.monotonic() - t1, 3),
        "seconds": round(time.monotonic() - started, 3),
    }
