"""Settings objects for tipg and stac-fastapi, built from ours.

Both libraries read overlapping environment names (DATABASE_URL, ROOT_PATH, PREFIX_PATH,
DEBUG, PG*...). Every value that matters is passed explicitly, and the remaining fields read
only a prefix of their own (GEOETL_TIPG_DB_*, GEOETL_STAC_*), so a variable meant for one
library can never reconfigure the other.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from psycopg.conninfo import conninfo_to_dict
from pydantic_settings import SettingsConfigDict
from stac_fastapi.pgstac.config import PostgresSettings as StacPostgresSettings
from stac_fastapi.pgstac.config import Settings as StacSettings
from tipg.settings import DatabaseSettings as TipgDatabaseSettings
from tipg.settings import PostgresSettings as TipgPostgresSettings

from config import Settings

# Session settings of the serving pools. PostGIS functions carry high planner costs, so ordinary
# page and tile queries of a large table looked expensive to the planner: JIT spent ~430 ms
# compiling a 10 ms tile query, and parallel workers took 20-40 ms to start for a 10 ms bbox
# count (10M-row table; see BENCHMARKS.md, "Serving"). Concurrent requests are the parallelism.
SERVING_SERVER_SETTINGS = {"jit": "off", "max_parallel_workers_per_gather": "0"}

# Connection parameters asyncpg understands in a URL query string.
_URL_PARAMS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout", "application_name", "options")


def asyncpg_url(dsn: str) -> str:
    """Our DSN (URL or key=value form) as the URL asyncpg and pydantic accept."""
    parts = conninfo_to_dict(dsn)
    user = quote(str(parts.get("user") or "postgres"), safe="")
    password = parts.get("password")
    auth = f"{user}:{quote(str(password), safe='')}" if password else user
    host = str(parts.get("host") or "127.0.0.1")
    port = str(parts.get("port") or 5432)
    dbname = quote(str(parts.get("dbname") or "postgres"), safe="")
    query = {k: str(parts[k]) for k in _URL_PARAMS if parts.get(k)}
    url = f"postgresql://{auth}@{host}:{port}/{dbname}"
    return f"{url}?{urlencode(query)}" if query else url


def pool_sizes(settings: Settings) -> tuple[int, int]:
    """Each serving pool gets at most half of the per-process budget (two pools per process)."""
    high = max(2, settings.db_pool_max_size // 2)
    return min(settings.db_pool_min_size, high), high


class GeoetlTipgDatabaseSettings(TipgDatabaseSettings):
    """tipg catalog settings; extra tuning only through GEOETL_TIPG_DB_*."""

    model_config = SettingsConfigDict(env_prefix="GEOETL_TIPG_DB_", env_file=None, extra="ignore")


class GeoetlTipgPostgresSettings(TipgPostgresSettings):
    """tipg pool settings; never read from DATABASE_URL/POSTGRES_* behind our back."""

    model_config = SettingsConfigDict(env_prefix="GEOETL_TIPG_PG_", env_file=None, extra="ignore")


class GeoetlStacSettings(StacSettings):
    """stac-fastapi settings; extra tuning only through GEOETL_STAC_*."""

    model_config = SettingsConfigDict(env_prefix="GEOETL_STAC_", env_file=None, extra="ignore")


class GeoetlStacPostgresSettings(StacPostgresSettings):
    """stac-fastapi pool settings that connect with our full DSN (keeps sslmode and friends)."""

    model_config = SettingsConfigDict(env_prefix="GEOETL_STAC_PG_", env_file=None, extra="ignore")
    dsn: str = ""

    @property
    def connection_string(self) -> str:
        return self.dsn


def tipg_database_settings(settings: Settings) -> TipgDatabaseSettings:
    """Only the ingest schemas; no datetime extent (a full scan per table per refresh)."""
    return GeoetlTipgDatabaseSettings(
        schemas=settings.schema_allow_list or ["geo"],
        application_schema="pg_temp",
        datetime_extent=False,
        spatial_extent=True,
        only_spatial_tables=True,
    )


def tipg_postgres_settings(settings: Settings) -> TipgPostgresSettings:
    low, high = pool_sizes(settings)
    return GeoetlTipgPostgresSettings(
        database_url=asyncpg_url(settings.dsn), db_min_conn_size=low, db_max_conn_size=high
    )


def stac_settings(settings: Settings) -> StacSettings:
    """Read-only STAC API served at the mount point's root (links get the prefix from the mount)."""
    values: dict[str, Any] = {
        "stac_fastapi_title": "geoetl STAC API",
        "stac_fastapi_description": "Catalog of the tables loaded by geoetl (collection "
        f"'{settings.stac_collection}': one item per table).",
        "stac_fastapi_version": "0.1.0",
        "stac_fastapi_landing_id": "geoetl",
        "prefix_path": "",
        "root_path": "",
        "openapi_url": "/api",
        "docs_url": "/api.html",
        "enable_transactions_extensions": False,
        "enable_catalogs_extension": False,
        "enabled_extensions": None,
        "enable_metrics": False,
    }
    return GeoetlStacSettings(**values)


def stac_postgres_settings(settings: Settings) -> StacPostgresSettings:
    parts = conninfo_to_dict(settings.dsn)
    low, high = pool_sizes(settings)
    return GeoetlStacPostgresSettings(
        pguser=str(parts.get("user") or "postgres"),
        pgpassword=str(parts.get("password") or ""),
        pghost=str(parts.get("host") or "127.0.0.1"),
        pgport=int(parts.get("port") or 5432),
        pgdatabase=str(parts.get("dbname") or "postgres"),
        dsn=asyncpg_url(settings.dsn),
        db_min_conn_size=low,
        db_max_conn_size=high,
        server_settings={"search_path": "pgstac,public", "application_name": "pgstac", **SERVING_SERVER_SETTINGS},
    )
