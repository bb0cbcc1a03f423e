"""Versioned, idempotent migrations: app schema (SQL files here), PostGIS, pgstac, STAC collection."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from config import Settings, get_settings

log = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
LOCK_KEY = 7_071_000_001


def ensure_database(dsn: str) -> bool:
    """Create the target database when it is missing; True when it was created."""
    params = conninfo_to_dict(dsn)
    dbname = params.get("dbname") or "postgres"
    admin = make_conninfo(dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [dbname]).fetchone():
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        return True


def applied_versions(conn: psycopg.Connection) -> set[int]:
    conn.execute("CREATE SCHEMA IF NOT EXISTS app")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS app.schema_migrations ("
        " version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    return {r[0] for r in conn.execute("SELECT version FROM app.schema_migrations").fetchall()}


def pending_files(done: set[int]) -> list[tuple[int, Path]]:
    files = sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9]_*.sql"))
    return [(int(f.name[:3]), f) for f in files if int(f.name[:3]) not in done]


def migrate_app(dsn: str) -> list[str]:
    applied: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
        try:
            for version, path in pending_files(applied_versions(conn)):
                with conn.transaction():
                    conn.execute(path.read_text())  # type: ignore[arg-type]
                    conn.execute(
                        "INSERT INTO app.schema_migrations (version, name) VALUES (%s, %s)", [version, path.stem]
                    )
                applied.append(path.stem)
                log.info("applied migration %s", path.stem)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
    return applied


def migrate_pgstac(dsn: str, attempts: int = 3) -> str:
    """pgstac's roles are cluster-wide: a migration of another database at the same moment can
    collide on them ("tuple concurrently updated"), so such a collision is retried."""
    for attempt in range(1, attempts + 1):
        try:
            return _migrate_pgstac_once(dsn)
        except psycopg.errors.InternalError as exc:
            if "concurrently" not in str(exc) or attempt == attempts:
                raise
            time.sleep(attempt)
    raise AssertionError("unreachable")


def _migrate_pgstac_once(dsn: str) -> str:
    from pypgstac.db import PgstacDB
    from pypgstac.migrate import Migrate

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY + 1])
        try:
            db = PgstacDB(dsn=dsn)
            try:
                version = Migrate(db).run_migration()
            finally:
                db.close()
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY + 1])
    return str(version)


def vector_collection(settings: Settings) -> dict:
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": settings.stac_collection,
        "title": "Ingested vector tables",
        "description": "PostGIS tables loaded by geoetl's ingest_vector job, one item per table.",
        "license": "proprietary",
        "keywords": ["vector", "postgis", "geoetl"],
        "extent": {
            "spatial": {"bbox": [[-180.0, -90.0, 180.0, 90.0]]},
            "temporal": {"interval": [[None, None]]},
        },
        "links": [],
        "stac_extensions": ["https://stac-extensions.github.io/table/v1.2.0/schema.json"],
    }


def ensure_collection(dsn: str, settings: Settings) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pgstac.collections WHERE id = %s", [settings.stac_collection]).fetchone()
        if not exists:
            conn.execute("SELECT pgstac.create_collection(%s::jsonb)", [json.dumps(vector_collection(settings))])


# Item properties whose sort and comparison must not be textual (pgstac casts by the wrapper).
STAC_QUERYABLES: list[tuple[str, dict, str]] = [
    ("table:row_count", {"type": "integer", "title": "Rows in the table"}, "to_int"),
    ("vector:feature_count", {"type": "integer", "title": "Features in the table"}, "to_int"),
    ("created", {"type": "string", "format": "date-time"}, "to_tstz"),
    ("start_datetime", {"type": "string", "format": "date-time"}, "to_tstz"),
    ("end_datetime", {"type": "string", "format": "date-time"}, "to_tstz"),
]


def ensure_queryables(dsn: str, settings: Settings) -> None:
    """pgstac queryables of the vector collection, so that numbers sort as numbers (not as text)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET search_path TO pgstac, public")  # pgstac's triggers name its functions bare
        for name, definition, wrapper in STAC_QUERYABLES:
            conn.execute(
                "INSERT INTO pgstac.queryables (name, collection_ids, definition, property_wrapper)"
                " SELECT %(name)s, ARRAY[%(collection)s], %(definition)s::jsonb, %(wrapper)s"
                " WHERE NOT EXISTS (SELECT 1 FROM pgstac.queryables WHERE name = %(name)s"
                " AND %(collection)s = ANY(collection_ids))",
                {"name": name, "collection": settings.stac_collection, "definition": json.dumps(definition),
                 "wrapper": wrapper},
            )


def migrate(settings: Settings | None = None) -> dict:
    """Bring the database to the current version; safe to run any number of times."""
    settings = settings or get_settings()
    dsn = settings.dsn
    created = ensure_database(dsn)
    applied = migrate_app(dsn)
    pgstac_version = migrate_pgstac(dsn)
    ensure_collection(dsn, settings)
    ensure_queryables(dsn, settings)
    return {"database_created": created, "applied": applied, "pgstac": pgstac_version}
