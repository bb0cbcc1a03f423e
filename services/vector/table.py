"""DDL of ingested tables: create once before the fan-out, index and analyze after the load, drop what we own.

A table carries `COMMENT 'geoetl:<job_id>:r<run>'` so that the cleanup of a failed run drops only a
table that run created, never a table somebody else made under the same name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from psycopg import sql

from config import get_settings
from core.errors import PermanentTaskError
from infrastructure import database
from services.vector import columns as C
from services.vector.identifiers import GEOMETRY_COLUMN, ID_COLUMN, MAX_IDENTIFIER_BYTES

GEOMETRY_TYPES = ("MultiPoint", "MultiLineString", "MultiPolygon", "Geometry")


def owner_tag(job_id: str, run: int) -> str:
    return f"geoetl:{job_id}:r{run}"


def qualified(schema: str, table: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))


def table_comment(conn: psycopg.Connection, schema: str, table: str) -> tuple[bool, str | None]:
    """(exists, comment) of a table."""
    row = conn.execute(
        "SELECT obj_description(c.oid, 'pg_class') AS comment FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        [schema, table],
    ).fetchone()
    if row is None:
        return False, None
    return True, (row["comment"] if isinstance(row, dict) else row[0])


def table_exists(conn: psycopg.Connection, schema: str, table: str) -> bool:
    return table_comment(conn, schema, table)[0]


def drop_hint(schema: str, table: str) -> str:
    return (
        f"Table {schema}.{table} already exists. To replace it, drop the table first:\n"
        f"  DROP TABLE {schema}.{table} CASCADE;\n"
        "Or choose a different table_name."
    )


def create_table(
    conn: psycopg.Connection,
    schema: str,
    table: str,
    columns: list[dict[str, Any]],
    geometry_type: str,
    job_id: str,
    run: int,
) -> None:
    """Create the target table (in the caller's transaction); replace only a leftover of this same job."""
    if geometry_type not in GEOMETRY_TYPES:
        raise ValueError(f"unsupported geometry column type {geometry_type!r}")
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    exists, comment = table_comment(conn, schema, table)
    if exists:
        if comment and comment.startswith(f"geoetl:{job_id}:"):
            conn.execute(sql.SQL("DROP TABLE {}").format(qualified(schema, table)))
        else:
            raise PermanentTaskError(drop_hint(schema, table))
    defs = [
        # The primary key is added after the load (create_indexes): parallel COPYs then skip one b-tree each row
        # (and the contention of every backend appending to its rightmost page); CACHE spares the sequence's WAL.
        sql.SQL("{} bigint GENERATED ALWAYS AS IDENTITY (CACHE 1000) NOT NULL").format(sql.Identifier(ID_COLUMN)),
        sql.SQL("{} geometry({}, 4326) NOT NULL").format(sql.Identifier(GEOMETRY_COLUMN), sql.SQL(geometry_type)),
    ]
    for col in columns:
        pg_type = C.final_type(col["type"])
        if pg_type not in C.PG_TYPES:
            raise ValueError(f"unsupported column type {pg_type!r}")
        defs.append(sql.SQL("{} {}").format(sql.Identifier(col["name"]), sql.SQL(pg_type)))
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(qualified(schema, table), sql.SQL(", ").join(defs)))
    conn.execute(
        sql.SQL("COMMENT ON TABLE {} IS {}").format(qualified(schema, table), sql.Literal(owner_tag(job_id, run)))
    )


def drop_owned_table(conn: psycopg.Connection, schema: str, table: str, job_id: str, run: int) -> bool:
    """Drop the table only when this job run created it; True when dropped."""
    conn.execute("SET LOCAL lock_timeout = '10s'")
    exists, comment = table_comment(conn, schema, table)
    if not exists or comment != owner_tag(job_id, run):
        return False
    conn.execute(sql.SQL("DROP TABLE {} CASCADE").format(qualified(schema, table)))
    return True


def index_name(table: str, suffix: str) -> str:
    name = f"{table}_{suffix}"
    if len(name.encode()) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{table[: MAX_IDENTIFIER_BYTES - len(suffix) - 10]}_{digest}_{suffix}"[:MAX_IDENTIFIER_BYTES]


def _set_index_memory(conn: psycopg.Connection) -> None:
    memory = f"{int(get_settings().index_build_memory_mb)}MB"
    conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", [memory])  # this transaction only


def _btree_plan(table: str, attributes: list[str], temporal: list[str]) -> list[tuple[str, str, bool]]:
    """(index name, column, unique) of the b-trees: the primary key's unique index first."""
    plan = [(index_name(table, "pkey"), ID_COLUMN, True)]
    plan += [(index_name(table, f"{col}_idx"), col, False) for col in attributes]
    plan += [(index_name(table, f"{col}_tidx"), col, False) for col in temporal if col not in attributes]
    return plan


def create_indexes(
    conn: psycopg.Connection,
    schema: str,
    table: str,
    spatial: bool,
    attributes: list[str],
    temporal: list[str],
    meanwhile: Callable[[psycopg.Connection], Any] | None = None,
) -> tuple[list[str], Any]:
    """Indexes after the load (building them during it doubles the load time), then ANALYZE.

    The GiST build (the long one, single-threaded in PostgreSQL) runs in the caller's transaction while a
    second connection builds the b-trees (the primary key's unique index, requested attribute indexes) and
    runs `meanwhile` (a read, e.g. the extent); CREATE INDEX locks do not conflict with each other. Then the
    unique index becomes the primary key and the table is analysed. Everything is idempotent, so a retried
    task only redoes what did not commit. Returns the index names and what `meanwhile` returned.
    """
    target = qualified(schema, table)
    _set_index_memory(conn)
    btrees = _btree_plan(table, attributes, temporal)

    def build_btrees() -> Any:
        with database.connection() as other:
            _set_index_memory(other)
            for name, col, unique in btrees:
                other.execute(
                    sql.SQL("CREATE {} INDEX IF NOT EXISTS {} ON {} ({})").format(
                        sql.SQL("UNIQUE" if unique else ""), sql.Identifier(name), target, sql.Identifier(col)
                    )
                )
            return meanwhile(other) if meanwhile else None

    made = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="btree-indexes") as helper:
        side = helper.submit(build_btrees)
        if spatial:
            name = index_name(table, "geom_gist")
            conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING gist ({})").format(
                    sql.Identifier(name), target, sql.Identifier(GEOMETRY_COLUMN)
                )
            )
            made.append(name)
        result = side.result()  # its error, if any, is the task's
    made += [name for name, _, _ in btrees]
    key = btrees[0][0]
    has_key = conn.execute(
        "SELECT 1 FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'", [target.as_string(conn)]
    ).fetchone()
    if not has_key:
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY USING INDEX {}").format(
                target, sql.Identifier(key), sql.Identifier(key)
            )
        )
    conn.execute(sql.SQL("ANALYZE {}").format(target))
    return made, result
