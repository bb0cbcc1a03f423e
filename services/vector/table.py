"""DDL of ingested tables: created in the staging schema before the fan-out, indexed and analysed after
the load, published into the target schema (see publish.py), dropped only when geoetl owns them.

Every table carries a JSON comment naming its owner, `{"geoetl": {"job_id", "run", "version", "state", ...}}`,
so that the cleanup of a failed run drops only a table that run created, and replace, append and delete
touch only tables geoetl created (never one somebody else made under the same name). Tables of releases
before the staging schema carry `geoetl:<job_id>:r<run>` and count as owned too.
"""

from __future__ import annotations

import hashlib
import json
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
# Where stage 2 loads: no API serves it (never in ALLOWED_SCHEMAS), so half-loaded rows are never seen.
STAGING_SCHEMA = "geoetl_staging"


def staging_table(job_id: str) -> str:
    """The staging table of a job (one per job: a re-run replaces its own leftover)."""
    return f"j_{job_id[:32]}"


def owner_tag(job_id: str, run: int, **extra: Any) -> str:
    """The table comment that marks geoetl's ownership (JSON)."""
    return json.dumps({"geoetl": {"job_id": job_id, "run": run, **extra}}, sort_keys=True)


def parse_owner(comment: str | None) -> dict[str, Any] | None:
    """The owner record of a table comment, or None when geoetl did not create the table."""
    if not comment:
        return None
    if comment.startswith("geoetl:"):  # the comment of earlier releases: geoetl:<job_id>:r<run>
        parts = comment.split(":")
        if len(parts) == 3 and parts[2].startswith("r") and parts[2][1:].isdigit():
            return {"job_id": parts[1], "run": int(parts[2][1:]), "version": 1}
        return None
    try:
        doc = json.loads(comment)
    except ValueError:
        return None
    owner = doc.get("geoetl") if isinstance(doc, dict) else None
    return owner if isinstance(owner, dict) and isinstance(owner.get("job_id"), str) else None


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


def table_owner(conn: psycopg.Connection, schema: str, table: str) -> tuple[bool, dict[str, Any] | None]:
    """(exists, owner record or None when geoetl did not create it)."""
    exists, comment = table_comment(conn, schema, table)
    return exists, parse_owner(comment)


def set_owner(conn: psycopg.Connection, schema: str, table: str, job_id: str, run: int, **extra: Any) -> None:
    tag = owner_tag(job_id, run, **extra)
    conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(qualified(schema, table), sql.Literal(tag)))


def table_exists(conn: psycopg.Connection, schema: str, table: str) -> bool:
    return table_comment(conn, schema, table)[0]


def drop_hint(schema: str, table: str, owned: bool = False) -> str:
    """The answer to a job whose target exists (if_exists "fail")."""
    hint = (
        f"Table {schema}.{table} already exists. Submit with \"if_exists\": \"replace\" to publish the new "
        "version in its place (readers keep the old one until the swap), or \"append\" to add the rows to it."
        if owned
        else f"Table {schema}.{table} already exists and was not created by geoetl, so it cannot be replaced."
    )
    return (
        f"{hint} To remove it first, drop the table (DELETE /api/datasets/{schema}.{table} for a geoetl table):\n"
        f"  DROP TABLE {schema}.{table} CASCADE;\n"
        "Or choose a different table_name."
    )


def not_owned_hint(schema: str, table: str, mode: str) -> str:
    verb = "replaced" if mode == "replace" else "appended to"
    return (
        f"Table {schema}.{table} already exists and was not created by geoetl (its comment names no geoetl job), "
        f"so it cannot be {verb}. Choose a different table_name, or drop it first:\n"
        f"  DROP TABLE {schema}.{table} CASCADE;"
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
    """Create a job's table (in the caller's transaction); replace only a leftover of this same job."""
    if geometry_type not in GEOMETRY_TYPES:
        raise ValueError(f"unsupported geometry column type {geometry_type!r}")
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    exists, owner = table_owner(conn, schema, table)
    if exists:
        if owner and owner["job_id"] == job_id:
            conn.execute(sql.SQL("DROP TABLE {}").format(qualified(schema, table)))
        else:
            raise PermanentTaskError(drop_hint(schema, table, owned=owner is not None))
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
    set_owner(conn, schema, table, job_id, run, state="staging" if schema == STAGING_SCHEMA else "published")


def drop_owned_table(conn: psycopg.Connection, schema: str, table: str, job_id: str, run: int) -> bool:
    """Drop the table only when this job run created it; True when dropped."""
    conn.execute("SET LOCAL lock_timeout = '10s'")
    exists, owner = table_owner(conn, schema, table)
    if not exists or owner is None or owner["job_id"] != job_id or owner.get("run") != run:
        return False
    conn.execute(sql.SQL("DROP TABLE {} CASCADE").format(qualified(schema, table)))
    return True


def index_name(table: str, suffix: str, salt: str = "") -> str:
    """`<table>_<suffix>` within 63 bytes; a short hash (of table, suffix and salt) keeps long or clashing
    names apart: roads.type_code and roads_type.code both make roads_type_code_idx otherwise."""
    name = f"{table}_{suffix}"
    if not salt and len(name.encode()) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.sha1(f"{table}\x00{suffix}\x00{salt}".encode()).hexdigest()[:8]
    head = table.encode()[: max(1, MAX_IDENTIFIER_BYTES - len(suffix.encode()) - 10)].decode(errors="ignore")
    return f"{head}_{digest}_{suffix}".encode()[:MAX_IDENTIFIER_BYTES].decode(errors="ignore")


def relation_names(conn: psycopg.Connection, schema: str) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s",
        [schema],
    ).fetchall()
    return {r["relname"] for r in rows}


def free_index_name(table: str, suffix: str, taken: set[str]) -> str:
    """index_name(table, suffix), salted until no relation of the schema has it; added to `taken`."""
    name, salt = index_name(table, suffix), 0
    while name in taken:
        salt += 1
        name = index_name(table, suffix, str(salt))
    taken.add(name)
    return name


def table_indexes(conn: psycopg.Connection, schema: str, table: str) -> list[str]:
    """The indexes the table has, by name: what a job result reports."""
    rows = conn.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = %s ORDER BY indexname",
        [schema, table],
    ).fetchall()
    return [r["indexname"] for r in rows]


def _set_index_memory(conn: psycopg.Connection) -> None:
    memory = f"{int(get_settings().index_build_memory_mb)}MB"
    conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", [memory])  # this transaction only


def index_suffixes(spatial: bool, attributes: list[str], temporal: list[str]) -> list[str]:
    """The suffixes of the indexes create_indexes builds (an index is named `<table>_<suffix>`)."""
    out = ["geom_gist"] if spatial else []
    out += ["pkey"] + [f"{col}_idx" for col in attributes]
    return out + [f"{col}_tidx" for col in temporal if col not in attributes]


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
