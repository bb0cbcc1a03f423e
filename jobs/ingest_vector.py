"""ingest_vector: a vector file in blob storage -> one PostGIS table + its STAC item.

Stage 1 (single)  prepare_chunks      stream the file, repair/reproject, write GeoParquet chunks;
                                      a GeoPackage with a declared geometry type: only plan fid-range slices
Stage 2 (fan-out) upload_chunks       table created once (setup_stage), then one COPY task per chunk
                                      (a slice task reads its fid range in place and prepares it itself)
Stage 3 (single)  create_stac_record  indexes, ANALYZE, STAC item in pgstac

Policies (the user-visible decisions):
- Geometry column type comes from every feature: one family -> Multi* of it (Polygon + MultiPolygon ->
  MultiPolygon); points, lines and polygons mixed -> one generic geometry(Geometry, 4326) column, each
  feature still promoted to Multi* of its own family. A GeometryCollection of one family becomes that
  Multi*; one that mixes families fails the job, naming the feature.
- Null/empty geometries are dropped and counted; invalid ones are repaired with make_valid, keeping
  the parts of the feature's own family (so polygon areas are make_valid's); features that collapse
  to nothing are dropped and counted. Row count = source features - reported drops.
- A file without a CRS is taken as EPSG:4326 only when its coordinates fit; converter_params.crs
  (CSV, Shapefile) names or overrides the source CRS.
- Column names: lowercase [a-z0-9_], collisions and the reserved `id`/`geom` get _2, _3...
  Timestamps without a zone are taken as UTC.
- chunk_size absent: 1 chunk up to 25k features, ~8 chunks up to 800k, then 100k rows per chunk
  (and at most ~64 MB of geometry per chunk). A GeoPackage slice is chunk_size fids wide.
- A GeoPackage layer declaring one geometry type (POLYGON, MULTIPOINT, ...) gets the Multi* column of it
  from the declaration; a feature of another type fails the job naming the layer (the GeoPackage
  standard requires features of the declared type). A GEOMETRY layer (or a blob name holding a %XX escape,
  which GDAL would decode) is read whole, as any other file.
  A GeoPackage replaced while its slices are read fails the job ("submit the job again").
- Exactly-once load: each chunk's COPY runs in the transaction that completes its task; a duplicate
  delivery is rolled back by the CoreMachine, a killed worker's COPY never commits.
- KML/KMZ without layer_name read every layer (folder). A 0-byte blob is refused at submit (400).
- GeoParquet (WKB, read with pyarrow: pyogrio's wheel has no Parquet driver), FlatGeobuf, GeoJSON sequences,
  GML, GPX, TopoJSON and a zipped File Geodatabase (GDAL through /vsizip/, zip guards as for Shapefiles)
  stream through stage 1; the GDAL driver that opens the file must be the extension's (the job fails naming
  both). Several layers need converter_params.layer_name; a GPX without it reads the one of waypoints,
  routes and tracks that holds features (services/vector/gdal_formats.py).
- Broken input fails the job naming the file and the feature/column/member: CSV coordinates or WKT GDAL
  cannot parse ('north', 'nan', garbage WKT; empty cells are null geometries), curved geometries,
  coordinates beyond 1e10, text or names that are not UTF-8 (Shapefile: converter_params.encoding),
  more than 1598 attribute columns, a truncated or mismatched .shp/.shx/.dbf, a zipped Shapefile without
  its .shx/.dbf, encrypted archive members, members over 100 MiB deflated more than 200:1 (zip bombs).
  GeoJSON geometry members GDAL cannot read (wrong types) are null geometries: dropped and counted.
  M values are dropped like Z. GDAL ends names and text at a NUL character.
- A failed run drops the table it created (table comment `geoetl:<job_id>:r<run>`) and its STAC
  item; chunks are deleted whenever a job ends. A resubmitted failed job re-runs from stage 1.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import psycopg
from pydantic import BaseModel, ConfigDict, Field

from config import get_settings
from core.errors import ConflictError, JobValidationError, PermanentTaskError, ResourceNotFoundError
from core.models import JobExecutionContext, JobRecord, TaskDefinition, TaskStatus
from infrastructure import database
from infrastructure.blob import UnsafeBlobName, check_blob_name, check_container_name, get_blob_store
from jobs.base import JobBase, JobParameters, Stage, generate_task_id
from services.vector.chunks import chunk_prefix
from services.vector.formats import SUPPORTED_EXTENSIONS, ConverterParamsError, validate_converter_params
from services.vector.identifiers import table_name_problem
from services.vector.prepare import no_usable_geometry, stage1_result
from services.vector.source import REQUIRED_SIDECARS, find_sidecar, shapefile_stem
from services.vector.stac import delete_owned_item, tiles_url
from services.vector.table import create_table, drop_hint, drop_owned_table, table_exists

log = logging.getLogger(__name__)

PREPARE, LOAD, CATALOG = "prepare_vector_chunks", "load_vector_chunk", "create_vector_stac"


class IndexParams(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    spatial: bool = Field(True, description="GiST index on the geometry.")
    attributes: list[str] = Field(default_factory=list, max_length=64, description="Columns to b-tree index.")
    temporal: list[str] = Field(
        default_factory=list, max_length=16, description="Date/timestamp columns: indexed, and the STAC datetime."
    )


class GeometryParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    simplify_tolerance: float | None = Field(None, gt=0, le=10, description="Douglas-Peucker tolerance (degrees).")
    preserve_topology: bool = Field(True, description="Simplify without creating invalid geometries.")
    quantize_grid: float | None = Field(None, gt=0, le=1, description="Snap coordinates to this grid (degrees).")


class IngestVectorParameters(JobParameters):
    blob_name: str = Field(..., description="Path of the file in its container.")
    file_extension: str = Field(..., description=f"One of {', '.join(SUPPORTED_EXTENSIONS)}.")
    table_name: str = Field(..., description="Target table (a new one).")
    container_name: str = Field(default_factory=lambda: get_settings().source_container)
    schema_: str = Field("geo", alias="schema", description="Target schema (from ALLOWED_SCHEMAS).")
    chunk_size: int | None = Field(None, ge=1, le=1_000_000, description="Rows per chunk; automatic when absent.")
    converter_params: dict[str, Any] = Field(default_factory=dict, description="Format-specific options.")
    indexes: IndexParams = Field(default_factory=IndexParams)
    geometry_params: GeometryParams = Field(default_factory=GeometryParams)
    render_params: dict[str, Any] = Field(default_factory=dict, description="Kept for the viewer (STAC item).")


class IngestVectorJob(JobBase):
    job_type = "ingest_vector"
    description = "Load a vector file into a PostGIS table with parallel chunked COPY, and catalog it in STAC"
    stages = [
        Stage(1, "prepare_chunks", PREPARE, "fan_out",
              "read, validate, repair and chunk the file (GeoParquet); a GeoPackage in fid-range slices"),
        Stage(2, "upload_chunks", LOAD, "fan_out", "COPY each chunk into the table created before the fan-out"),
        Stage(3, "create_stac_record", CATALOG, "single", "indexes, ANALYZE and the STAC item"),
    ]
    Parameters = IngestVectorParameters

    # ------------------------------------------------------------------ submission
    @classmethod
    def check_parameters(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Format, identifier, schema, blob-name and converter rules; the extension is normalised."""
        ext = params["file_extension"].lower().lstrip(".")
        if ext not in SUPPORTED_EXTENSIONS:
            raise JobValidationError(
                f"file_extension '{params['file_extension']}' is not supported. "
                f"Supported: {', '.join(SUPPORTED_EXTENSIONS)}",
                field="file_extension",
                kind="unsupported_format",
            )
        params["file_extension"] = ext
        problem = table_name_problem(params["table_name"])
        if problem:
            raise JobValidationError(problem, field="table_name", kind="invalid_table_name")
        allowed = get_settings().schema_allow_list
        if params["schema"] not in allowed:
            raise JobValidationError(
                f"schema '{params['schema']}' is not allowed. Allowed: {', '.join(allowed) or 'none'}",
                field="schema",
                kind="schema_not_allowed",
            )
        for field, check in (("blob_name", check_blob_name), ("container_name", check_container_name)):
            try:
                check(params[field])
            except UnsafeBlobName as exc:
                raise JobValidationError(str(exc), field=field, kind=f"invalid_{field}") from None
        try:
            params["converter_params"] = validate_converter_params(ext, params["converter_params"])
        except ConverterParamsError as exc:
            raise JobValidationError(str(exc), field=exc.field, kind="invalid_converter_params") from None
        for kind in ("attributes", "temporal"):
            if any(not c for c in params["indexes"][kind]):
                raise JobValidationError(f"indexes.{kind} holds an empty column name", field=f"indexes.{kind}")
        return params

    @classmethod
    def check_resources(cls, params: dict[str, Any], conn: psycopg.Connection) -> None:
        store = get_blob_store()
        container, blob = params["container_name"], params["blob_name"]
        if not store.container_exists(container):
            raise ResourceNotFoundError(f"container '{container}' does not exist")
        size = store.blob_size(container, blob)
        if size is None:
            raise ResourceNotFoundError(f"file '{blob}' not found in container '{container}'")
        total = size
        if params["file_extension"] == "shp":
            for suffix in REQUIRED_SIDECARS:
                found = find_sidecar(store, container, blob, suffix)
                if found is None:
                    raise ResourceNotFoundError(
                        f"file '{shapefile_stem(blob)}{suffix}' (part of Shapefile '{blob}') "
                        f"not found in container '{container}'"
                    )
                total += found[1]
        limit = get_settings().max_source_bytes
        if total > limit:
            raise JobValidationError(
                f"file '{blob}' is {total} bytes, more than the limit of {limit} bytes (MAX_SOURCE_BYTES)",
                field="blob_name",
                kind="file_too_large",
            )
        if size == 0:
            raise JobValidationError(f"file '{blob}' is empty (0 bytes)", field="blob_name", kind="empty_file")
        if table_exists(conn, params["schema"], params["table_name"]):
            raise ConflictError(drop_hint(params["schema"], params["table_name"]))

    @classmethod
    def metadata(cls, params: dict[str, Any]) -> dict[str, Any]:
        return super().metadata(params) | {"target": f"{params['schema']}.{params['table_name']}"}

    # ------------------------------------------------------------------ running
    @classmethod
    def setup_stage(
        cls, conn: psycopg.Connection, job: JobRecord, stage: int, previous_results: list[dict[str, Any]]
    ) -> None:
        """Stage 2: create the table once, in the transaction that inserts the load tasks."""
        if stage != 2:
            return
        prep = stage1_result(previous_results)
        p = job.parameters
        create_table(conn, p["schema"], p["table_name"], prep["columns"], prep["geometry_type"], job.job_id, job.run)

    @classmethod
    def create_tasks_for_stage(
        cls, stage: int, params: dict[str, Any], job_id: str, previous_results: list[dict[str, Any]]
    ) -> list[TaskDefinition]:
        target = {"schema": params["schema"], "table_name": params["table_name"]}
        if stage == 1:
            keys = ("blob_name", "container_name", "file_extension", "chunk_size", "converter_params", "indexes",
                    "geometry_params")
            base = {**target, **{k: params[k] for k in keys}}
            return [TaskDefinition(task_id=generate_task_id(job_id, 1, "prepare"), task_type=PREPARE, parameters=base)]
        if stage == 2:
            prep = stage1_result(previous_results)
            columns = [{"name": c["name"], "type": c["type"]} for c in prep["columns"]]
            catalog = {"indexes": prep["indexes"], "geometry_type": prep["geometry_type"], "columns": columns}
            if prep.get("mode") == "slices":
                keys = ("blob_name", "container_name", "converter_params", "geometry_params")
                source = {k: params[k] for k in keys} | {
                    k: prep[k] for k in ("layer", "fid_column", "first_fid", "version", "geometry_families")
                } | {"declared_geometry_type": prep.get("declared_geometry_type")}
                per_chunk = [{"fids": chunk["fids"], **source} for chunk in prep["chunks"]]
            else:
                container = prep["intermediate_container"]
                per_chunk = [
                    {"chunk_path": c["path"], "rows": c["rows"], "intermediate_container": container}
                    for c in prep["chunks"]
                ]
            return [
                TaskDefinition(
                    task_id=generate_task_id(job_id, 2, f"chunk_{i:05d}"),
                    task_type=LOAD,
                    parameters={
                        **target,
                        **chunk,
                        "chunk_index": i,
                        "columns": columns,
                        **({"catalog": catalog} if i == 0 else {}),
                    },
                )
                for i, chunk in enumerate(per_chunk)
            ]
        if stage == 3:
            totals = _counts(previous_results)
            if totals["rows"] == 0:  # only slices get here without rows: stage 1 refuses such a file itself
                raise PermanentTaskError(
                    no_usable_geometry(params["blob_name"], totals["source_features"], totals["geometry_stats"])
                )
            catalog = next((r["catalog"] for r in previous_results if "catalog" in r), None)
            if catalog is None:
                raise ValueError("stage 3 needs the table description that stage 2's first chunk carries")
            return [
                TaskDefinition(
                    task_id=generate_task_id(job_id, 3, "stac"),
                    task_type=CATALOG,
                    parameters={
                        **target,
                        **catalog,
                        "collection_id": get_settings().stac_collection,
                        "source_file": params["blob_name"],
                        "source_format": params["file_extension"],
                        "source_container": params["container_name"],
                        "render_params": params.get("render_params") or {},
                        "job_id": job_id,
                    },
                )
            ]
        raise ValueError(f"ingest_vector has no stage {stage}")

    @classmethod
    def finalize_job(cls, context: JobExecutionContext) -> dict[str, Any]:
        params = context.parameters
        schema, table = params["schema"], params["table_name"]
        settings = get_settings()
        by_type: dict[str, list[Any]] = {PREPARE: [], LOAD: [], CATALOG: []}
        for t in context.task_results:
            by_type.setdefault(t.task_type, []).append(t)
        prepared = [t.result_data for t in by_type[PREPARE] if t.status == TaskStatus.COMPLETED]
        prep = stage1_result(prepared) if prepared else {}
        loads = by_type[LOAD]
        done = [t for t in loads if t.status == TaskStatus.COMPLETED]
        stac = by_type[CATALOG][0].result_data if by_type[CATALOG] else {}
        total_chunks = int(prep.get("chunk_count", len(loads)))
        counts = _counts(prepared + [t.result_data for t in done])
        rows = counts["rows"]
        expected_rows = counts["source_features"] - sum(counts["features_dropped"].values())
        return {
            "job_type": cls.job_type,
            "blob_name": params["blob_name"],
            "container_name": params["container_name"],
            "file_extension": params["file_extension"],
            "schema": schema,
            "table_name": table,
            "table": f"{schema}.{table}",
            "summary": {
                "total_chunks": total_chunks,
                "chunks_uploaded": len(done),
                "total_rows_uploaded": rows,
                "success_rate": f"{(len(done) / total_chunks * 100) if total_chunks else 0.0:.1f}%",
                "data_complete": len(done) == total_chunks and rows == expected_rows,
                "source_features": counts["source_features"],
                "features_dropped": counts["features_dropped"],
                "features_dropped_total": sum(counts["features_dropped"].values()),
                "features_repaired": counts["features_repaired"],
                "geometry_type": prep.get("geometry_type"),
                "geometry_stats": counts["geometry_stats"],
                "columns": prep.get("columns"),
                "source_crs": prep.get("source_crs"),
                "chunk_size": prep.get("chunk_size"),
                "read_in_place": prep.get("mode") == "slices",
                "values_out_of_range": sum(int(t.result_data.get("values_out_of_range", 0)) for t in done),
            },
            "stac": {
                "collection_id": stac.get("collection_id"),
                "stac_id": stac.get("stac_id"),
                "bbox": stac.get("bbox"),
            },
            "ogc_features_url": settings.ogc_features_url(schema, table),
            "tiles_url": tiles_url(schema, table),
            "viewer_url": settings.viewer_url(table),
            "stages_completed": context.current_stage,
            "total_tasks_executed": len(context.task_results),
            "seconds_per_stage": _stage_seconds(context),
        }

    @classmethod
    def cleanup(cls, job: JobRecord, failed: bool) -> None:
        """Delete this run's chunks; after a failure also the table (and STAC item) this run created."""
        get_blob_store().delete_prefix(get_settings().intermediate_container, chunk_prefix(job.job_id, job.run))
        if not failed:
            return
        schema, table = job.parameters["schema"], job.parameters["table_name"]
        with database.connection() as conn:
            if drop_owned_table(conn, schema, table, job.job_id, job.run):
                log.info("dropped %s.%s left by failed job %s", schema, table, job.job_id)
            delete_owned_item(conn, schema, table, job.job_id)

    @classmethod
    def restart_stage(cls, failed_stage: int) -> int:
        return 1  # chunks and the table are deleted when a job fails: start from the file again

    @classmethod
    def progress_details(cls, conn: psycopg.Connection, job: JobRecord) -> dict[str, Any]:
        row = conn.execute(
            "SELECT sum(jsonb_array_length(result_data -> 'chunks')) FILTER (WHERE stage = 1) AS chunks_total,"
            " sum(coalesce(result_data ->> 'total_rows', result_data ->> 'rows_estimate')::bigint)"
            "   FILTER (WHERE stage = 1) AS rows_total,"
            " count(*) FILTER (WHERE stage = 2) AS chunks_done,"
            " coalesce(sum((result_data ->> 'rows_uploaded')::bigint) FILTER (WHERE stage = 2), 0) AS rows_loaded"
            " FROM app.tasks WHERE parent_job_id = %s AND status = 'completed'",
            [job.job_id],
        ).fetchone()
        if row is None:
            return {}
        return {
            "chunks_total": None if row["chunks_total"] is None else int(row["chunks_total"]),
            "chunks_done": int(row["chunks_done"] or 0),
            "rows_total": None if row["rows_total"] is None else int(row["rows_total"]),
            "rows_loaded": int(row["rows_loaded"] or 0),
        }


def _counts(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Feature counts summed over the tasks that report them: stage 1 for prepared chunks, each stage 2
    slice for a GeoPackage read in place. Rows are what stage 2 copied."""
    dicts: dict[str, dict[str, int]] = {"features_dropped": {}, "geometry_stats": {}}
    for r in results:
        for key, total in dicts.items():
            for k, v in (r.get(key) or {}).items():
                total[k] = total.get(k, 0) + int(v)
    return {
        "rows": sum(int(r.get("rows_uploaded") or 0) for r in results),
        "source_features": sum(int(r.get("source_features") or 0) for r in results),
        "features_repaired": sum(int(r.get("features_repaired") or 0) for r in results),
        **dicts,
    }


def _stage_seconds(context: JobExecutionContext) -> dict[str, float | None]:
    """Wall-clock seconds per stage from the job's stage timings (the last stage ends now)."""
    now = datetime.now(UTC)
    out: dict[str, float | None] = {}
    for stage in IngestVectorJob.stages:
        timing = context.stage_timings.get(str(stage.number)) or {}
        try:
            start = datetime.fromisoformat(timing["started_at"])
            end = datetime.fromisoformat(timing["completed_at"]) if timing.get("completed_at") else now
            out[stage.name] = round((end - start).total_seconds(), 3)
        except (KeyError, TypeError, ValueError):
            out[stage.name] = None
    return out
