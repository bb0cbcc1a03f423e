"""One settings object, read from the environment and from local.settings.json `Values`.

The Functions host turns `Values` into environment variables; locally we read the
file ourselves so that `geoetl serve` and `func start` see the same configuration.
Environment variables win over the file.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

AZURITE_CONNECTION_STRING = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
)


class LocalSettingsSource(PydanticBaseSettingsSource):
    """Reads `Values` from local.settings.json (path from GEOETL_LOCAL_SETTINGS or the cwd)."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = Path(os.environ.get("GEOETL_LOCAL_SETTINGS", "local.settings.json"))
        self._values: dict[str, Any] = {}
        if path.is_file():
            data = json.loads(path.read_text())
            self._values = {k.upper(): v for k, v in (data.get("Values") or {}).items()}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name.upper()), field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.settings_cls.model_fields:
            if name.upper() in self._values:
                out[name] = self._values[name.upper()]
        return out


class Settings(BaseSettings):
    """Every setting of geoetl. Names are the environment variable names (case-insensitive)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    # --- database
    database_url: SecretStr = Field(
        SecretStr("postgresql://postgres:postgres@127.0.0.1:5432/geoetl"),
        description="PostgreSQL (PostGIS + pgstac) connection URL.",
    )
    db_pool_min_size: int = Field(1, description="Connections kept open per process.")
    db_pool_max_size: int = Field(10, description="Upper bound of connections per process.")

    # --- blob storage
    blob_backend: Literal["azure", "local"] = Field(
        "azure", description="azure (Azure Blob / Azurite) or local folder."
    )
    azure_storage_connection_string: SecretStr = Field(
        SecretStr(AZURITE_CONNECTION_STRING),
        description="Connection string of the storage account (defaults to Azurite on 127.0.0.1:10000).",
    )
    azure_storage_account_url: str = Field(
        "", description="Account URL for managed identity (used instead of the connection string when set)."
    )
    local_blob_root: str = Field(".run/blobs", description="Root folder of the local blob backend.")
    source_container: str = Field("rmhazuregeobronze", description="Default container of source files.")
    intermediate_container: str = Field(
        "geoetl-intermediate", description="Container for GeoParquet chunks (deleted when a job ends)."
    )
    source_containers: str = Field(
        "",
        description="Comma-separated containers jobs may read source files from (empty: SOURCE_CONTAINER only); "
        "the intermediate container never is one.",
    )
    index_build_memory_mb: int = Field(
        256,
        ge=1,
        le=16384,
        description="maintenance_work_mem (MB) of the session that builds a loaded table's indexes (the GiST "
        "build sorts in memory; 64 MB, PostgreSQL's default, spills a 1M-polygon build to disk).",
    )
    max_source_bytes: int = Field(
        10 * 1024**3, description="Source files larger than this are refused at submit (bytes)."
    )
    tile_overview_min_rows: int = Field(
        1_000_000,
        ge=0,
        description="Point tables of at least this many rows get their crowded low-zoom vector tiles "
        "aggregated once at publish (app.tile_overviews) instead of on every request.",
    )
    repair_seconds_per_feature: float = Field(
        300.0, gt=0, description="Time budget to repair one invalid geometry; a feature that needs more fails the "
        "job naming it (geometry_params.invalid \"keep\" loads it as it is)."
    )
    repair_memory_mb: int = Field(
        768, ge=0, description="Address-space limit (MB) of the child process that repairs one invalid geometry of "
        "more than 100k vertices; a feature that needs more fails the job naming it (0: no limit)."
    )

    # --- queues
    queue_backend: Literal["postgres", "servicebus"] = Field("postgres", description="postgres or servicebus.")
    service_bus_connection_string: SecretStr = Field(SecretStr(""), description="Service Bus connection string.")
    service_bus_namespace: str = Field(
        "", description="Fully qualified Service Bus namespace for managed identity (instead of a string)."
    )
    jobs_queue: str = Field("geospatial-jobs", description="Queue of job (stage) messages.")
    tasks_queue: str = Field("geospatial-tasks", description="Queue of task messages.")
    queue_lock_seconds: int = Field(30, description="Peek-lock duration; workers renew it while a task runs.")
    queue_max_delivery_count: int = Field(
        10,
        description="Deliveries a queue allows a message; on the last one its job is failed and the message"
        " completed. Must equal the Service Bus queues' max delivery count.",
    )
    task_max_retries: int = Field(3, description="Retries of a task after a retryable error.")
    task_retry_backoff_seconds: float = Field(0.5, description="First retry delay; doubles each attempt.")
    job_stuck_after_seconds: int = Field(
        3 * 3600, description="A job with no progress for this long is failed by the janitor."
    )
    janitor_interval_seconds: int = Field(30, description="How often a worker runs the janitor.")
    job_retention_days: int = Field(
        30,
        ge=0,
        description="The janitor deletes finished jobs older than this (with their tasks, events, messages); "
        "0 keeps them forever. The job a published dataset points to is always kept.",
    )
    worker_concurrency: int = Field(2, description="Messages a worker process handles at once.")
    worker_prefetch: int = Field(
        4, ge=1, le=64, description="Task messages a consumer thread receives per round trip (then runs in turn)."
    )

    # --- API
    api_host: str = Field("127.0.0.1", description="Address `geoetl serve` binds.")
    api_port: int = Field(7071, description="Port `geoetl serve` binds.")
    public_base_url: str = Field(
        "http://127.0.0.1:7071", description="Base URL users reach the API at (used in links and job results)."
    )
    api_keys: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated keys; when set, write endpoints need x-functions-key or ?code=.",
    )
    protect_reads: bool = Field(False, description="When true, reads also need a key (if API_KEYS is set).")
    max_request_bytes: int = Field(
        1024 * 1024, ge=1024, description="Request bodies larger than this are refused with 413 (bytes)."
    )
    max_json_depth: int = Field(
        64, ge=4, le=1000, description="JSON request bodies nested deeper than this are refused with 400."
    )
    allowed_schemas: str = Field("geo", description="Comma-separated schemas ingest may write to.")
    stac_collection: str = Field("system-vectors", description="pgstac collection of ingested tables.")
    log_level: str = Field("INFO", description="Python log level.")
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json: one JSON object per line, with job_id and task_id where known."
    )
    applicationinsights_connection_string: SecretStr = Field(
        SecretStr(""),
        description="When set, traces (one per job, across its queue messages) go to Application Insights.",
    )

    @field_validator("allowed_schemas")
    @classmethod
    def _lower(cls, v: str) -> str:
        return ",".join(s.strip().lower() for s in v.split(",") if s.strip())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, LocalSettingsSource(settings_cls))

    # --- derived values
    @property
    def dsn(self) -> str:
        return self.database_url.get_secret_value()

    @property
    def schema_allow_list(self) -> list[str]:
        # geoetl_staging holds tables while they load: never a target, never served
        return [s for s in self.allowed_schemas.split(",") if s and s != "geoetl_staging"]

    @property
    def source_container_list(self) -> list[str]:
        """Containers a job may name as its source; never the intermediate one."""
        named = [c.strip() for c in self.source_containers.split(",") if c.strip()] or [self.source_container]
        return [c for c in named if c != self.intermediate_container]

    @property
    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip()]

    @property
    def base_url(self) -> str:
        return self.public_base_url.rstrip("/")

    def ogc_features_url(self, schema: str, table: str) -> str:
        return f"{self.base_url}/api/features/collections/{schema}.{table}/items"

    def viewer_url(self, table: str) -> str:
        return f"{self.base_url}/api/vector/viewer?collection={table}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests change the environment)."""
    get_settings.cache_clear()
