"""The benchmark's view of the database: the DSN geoetl uses, and checks that a load is complete."""

from __future__ import annotations

import os
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from config import get_settings

PEER_SCHEMA = "bench"


def dsn() -> str:
    """Every contender loads into the database geoetl itself uses (same server, same settings)."""
    return get_settings().dsn


def connect() -> psycopg.Connection:
    return psycopg.connect(dsn(), autocommit=True)


def gdal_pg_target() -> tuple[str, dict[str, str]]:
    """`PG:` connection string for ogr2ogr, with the password in the environment, not in argv."""
    info = conninfo_to_dict(dsn())
    env = dict(os.environ)
    password = info.pop("password", None)
    if password:
        env["PGPASSWORD"] = str(password)
    parts = [f"{k}={v}" for k, v in info.items() if k in ("host", "port", "dbname", "user", "sslmode")]
    return "PG:" + " ".join(parts), env


def sqlalchemy_url() -> str:
    """The same DSN for SQLAlchemy with the psycopg 3 driver (the one already installed)."""
    url = dsn()
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def ensure_schema(conn: psycopg.Connection, schema: str = PEER_SCHEMA) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))


def drop_table(conn: psycopg.Connection, schema: str, table: str) -> None:
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}.{}").format(sql.Identifier(schema), sql.Identifier(table)))


def geometry_column(conn: psycopg.Connection, schema: str, table: str) -> str | None:
    row = conn.execute(
        "SELECT f_geometry_column FROM public.geometry_columns WHERE f_table_schema = %s AND f_table_name = %s",
        [schema, table],
    ).fetchone()
    return row[0] if row else None


def table_check(conn: psycopg.Connection, schema: str, table: str) -> dict[str, Any]:
    """Row count, spatial index and statistics of a loaded table: what 'done' means for every contender."""
    ident = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ident)).fetchone()
    gist = conn.execute(
        "SELECT count(*) FROM pg_indexes WHERE schemaname = %s AND tablename = %s AND indexdef ILIKE %s",
        [schema, table, "%USING gist%"],
    ).fetchone()
    analyzed = conn.execute(
        "SELECT greatest(last_analyze, last_autoanalyze) IS NOT NULL FROM pg_stat_user_tables"
        " WHERE schemaname = %s AND relname = %s",
        [schema, table],
    ).fetchone()
    size = conn.execute("SELECT pg_total_relation_size(%s::regclass)", [f'"{schema}"."{table}"']).fetchone()
    return {
        "rows": int(rows[0]) if rows else 0,
        "spatial_index": bool(gist and gist[0]),
        "analyzed": bool(analyzed and analyzed[0]),
        "total_bytes": int(size[0]) if size else 0,
        "geometry_column": geometry_column(conn, schema, table),
    }


def create_spatial_index(conn: psycopg.Connection, schema: str, table: str, analyze: bool = True) -> None:
    """GiST index on the geometry, then ANALYZE: the tuned ogr2ogr recipe's last step."""
    col = geometry_column(conn, schema, table)
    if col is None:
        raise RuntimeError(f"{schema}.{table} has no geometry column")
    conn.execute(sql.SQL("CREATE INDEX ON {}.{} USING GIST ({})").format(
        sql.Identifier(schema), sql.Identifier(table), sql.Identifier(col)))
    if analyze:
        conn.execute(sql.SQL("ANALYZE {}.{}").format(sql.Identifier(schema), sql.Identifier(table)))


def server_versions(conn: psycopg.Connection) -> dict[str, str]:
    pg = conn.execute("SHOW server_version").fetchone()
    postgis = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'postgis'").fetchone()
    full = conn.execute("SELECT postgis_full_version()").fetchone()
    return {
        "postgresql": pg[0] if pg else "?",
        "postgis": postgis[0] if postgis else "?",
        "postgis_full": full[0] if full else "?",
    }
