"""ingest_vector: a vector file in blob storage -> one PostGIS table + its STAC item.

Stage 1 (single)  prepare_chunks      plan the parts (services/vector/parts.py), reading only the file's
                                      description: a GeoPackage with a declared geometry type -> fid ranges
                                      read in place; a Shapefile (zipped: extracted once into the job's
                                      chunk area) -> record ranges from its .shx; a CSV with coordinate
                                      columns -> byte ranges on record boundaries; a GeoJSON collection or
                                      sequence -> byte ranges of whole features, found by scanning it
                                      once as it downloads (geojson_parts.py, geojson_scan.py); a
                                      GeoParquet of several row groups -> row-group ranges from its footer
                                      (parquet_parts.py). Any other file (and a CSV whose records
                                      cannot be planned) is converted once into raw GeoParquet chunks
                                      (reprojected, typed, promoted, invalid rows only marked)
Stage 2 (fan-out) upload_chunks       staging table created once (setup_stage), then one task per part: it
                                      reads its own part (a fid range in place; a record range by range
                                      reads of the .shp/.dbf into a small Shapefile of its own, a byte
                                      range into a CSV of its own with the header and a .csvt of the whole
                                      file's types: GDAL reads them as it reads the whole file; a GeoJSON
                                      byte range, read by GDAL with a carrier feature of the whole file's
                                      types; GeoParquet row groups read by range reads; or a chunk),
                                      repairs invalid
                                      geometries (geometry_params.invalid, a time budget per feature) and
                                      COPYs into the staging table, updating its progress as it goes
Stage 3 (single)  create_stac_record  indexes and ANALYZE in staging (and, for a point table of
                                      TILE_OVERVIEW_MIN_ROWS rows, its crowded tiles: overviews.py), then publish
                                      in one transaction: move (or append) into the target, owner comment,
                                      STAC item (publish.py)

Policies (the user-visible decisions):
- Geometry column type comes from every feature: one family -> Multi* of it (Polygon + MultiPolygon ->
  MultiPolygon); points, lines and polygons mixed -> one generic geometry(Geometry, 4326) column, each
  feature still promoted to Multi* of its own family. A GeometryCollection of one family becomes that
  Multi*; one that mixes families fails the job, naming the feature.
- Curved geometries (CircularString, CompoundCurve, CurvePolygon, MultiCurve, MultiSurface) are made
  linear as each batch is read, before anything else, as ogr2ogr -nlt CONVERT_TO_LINEAR does (GDAL's
  4-degree arc step; services/vector/curves.py): curves are lines, curve polygons polygons; counted in
  geometry_stats.linearized. At most 5M vertices per feature; a malformed CircularString fails naming it.
- Null/empty geometries are dropped and counted; invalid ones are repaired in stage 2 with
  make_valid(method="structure") semantics, keeping the parts of the feature's own family; a feature
  above 100k vertices is repaired part-wise in a child process killed after REPAIR_SECONDS_PER_FEATURE
  and limited to REPAIR_MEMORY_MB of address space (either way the job fails at once naming it, not
  retried); its holes inside the shell are set in as rings, not subtracted by a whole-feature overlay.
  A feature above 16 MB of WKB (1M vertices) is never decoded in the worker: its whole preparation (2D,
  collections, reprojection, simplify, quantize, the validity check, repair/keep/fail, Multi*) runs in
  that child, which the job's cancel kills at once too; stage 1 leaves its check to stage 2. A GeoJSON
  feature above 4 MB of text is a part of its own, its geometry read block by block into WKB (not by
  GDAL's reader, which holds ~25 times the text). geometry_params.invalid "keep" loads them as they
  are, "fail" fails naming the first. Features that collapse to nothing are dropped and counted.
  Row count = source features - reported drops.
- A file without a CRS is taken as EPSG:4326 only when its coordinates fit; converter_params.crs
  (CSV, Shapefile) names or overrides the source CRS.
- Column names: lowercase letters of any script, digits and _ (ÉCOLE -> école; the source name is kept
  in the result and the STAC item); collisions and the reserved `id`/`geom` get _2, _3...
  Timestamps without a zone are taken as UTC.
- chunk_size absent: 1 chunk up to 25k features, ~8 chunks up to 800k, then 100k rows per chunk
  (and at most ~64 MB of geometry per chunk; for a Shapefile, of .shp bytes). A GeoPackage slice is
  chunk_size fids wide; a Shapefile part chunk_size records.
- A GeoPackage layer declaring one geometry type (POLYGON, MULTIPOINT, ...) gets the Multi* column of it
  from the declaration; a feature of another type fails the job naming the layer (the GeoPackage
  standard requires features of the declared type). A GEOMETRY layer (or a blob name holding a %XX escape,
  which GDAL would decode) is read whole, as any other file.
  A GeoPackage replaced while its slices are read fails the job ("submit the job again").
- A Shapefile's column types, CRS and encoding come from GDAL reading its headers (a header-only copy),
  its geometry family from the .shp header's shape type (MultiPatch and Null-shape headers are converted
  once instead); a shape of another type fails the job. Every range read of its .shp/.shx/.dbf/.prj/.cpg
  is conditioned on the ETag stage 1 read: a file replaced while the job runs fails it ("submit the job
  again"). Feature numbers in messages are file-wide (record numbers from 0), whatever the part.
- A CSV with lat_name/lon_name is downloaded once in stage 1: GDAL's type detection over the whole file
  gives the column types (written as a .csvt beside each part; a large file is typed as two halves at
  once, merged only when they agree up to a numeric widening: services/vector/halves.py) and a scan of
  quote parity gives the record boundaries. Blank lines, unbalanced quotes, a header-less file (or one whose names GDAL
  changed) and WKT geometries (the column type depends on every feature) are converted once instead.
- A GeoJSON FeatureCollection or sequence: stage 1 scans it once (bounded memory) for each feature's byte
  range and geometry type (the geometry family), and GDAL reads a copy of its features without geometries
  for the column types (GDAL's own widening: int -> int64 -> real -> string, dates, lists; two halves at
  once when the copy is large, as for a CSV); parts are runs of
  whole features (~4 MiB, or chunk_size features). Each part is read by GDAL (GeoJSONSeq) followed by a
  carrier feature holding a value of each planned type, so GDAL types and converts the part's values as in
  the whole file; a part read with other types fails the job naming the file and its features. Range reads
  are conditioned on the ETag stage 1 read ("submit the job again"). A single Feature, a GeometryCollection,
  foreign members on a feature, nesting deeper than 64 levels or a property type the carrier cannot
  reproduce: converted once instead. Feature numbers in messages are file-wide.
  A document that is one bare geometry (earth-seas-10m: one GeometryCollection) is converted once, its
  geometry read block by block into WKB without GDAL (geojson_geometry.py), whose reader would hold the
  document's JSON tree (~25x the text).
- Exactly-once load: each chunk's COPY runs in the transaction that completes its task; a duplicate
  delivery is rolled back by the CoreMachine, a killed worker's COPY never commits.
- KML/KMZ without layer_name read every layer (folder). A 0-byte blob is refused at submit (400).
- A GeoParquet of several row groups: column types from its Arrow schema (shared by every row group),
  the geometry family from the `geo` metadata's geometry_types, every row checked against it (a row of
  another type fails the job, naming the rule); without geometry_types, with one row group or a row
  group over 256 MB it is converted once.
- GeoParquet (WKB, read with pyarrow: pyogrio's wheel has no Parquet driver), FlatGeobuf, GeoJSON sequences,
  GML, GPX, TopoJSON and a zipped File Geodatabase (GDAL through /vsizip/, zip guards as for Shapefiles)
  stream through stage 1; the GDAL driver that opens the file must be the extension's (the job fails naming
  both). Several layers need converter_params.layer_name; a GPX without it reads the one of waypoints,
  routes and tracks that holds features (services/vector/gdal_formats.py).
- Broken input fails the job naming the file and the feature/column/member: CSV coordinates or WKT GDAL
  cannot parse ('north', 'nan', garbage WKT; empty cells are null geometries), TIN/PolyhedralSurface,
  coordinates beyond 1e10, text or names that are not UTF-8 (a Shapefile's encoding is GDAL's: .cpg, DBF
  language driver, ISO-8859-1; converter_params.encoding overrides), GeoJSON integers beyond 64 bits,
  JSON nested deeper than ~1000 levels, content of another format than file_extension,
  more than 1598 attribute columns, a truncated or mismatched .shp/.shx/.dbf, a zipped Shapefile without
  its .shx/.dbf, encrypted archive members, members over 100 MiB deflated more than 200:1 (zip bombs).
  GeoJSON geometry members GDAL cannot read (wrong types) are null geometries: dropped and counted.
  M values are dropped like Z. GDAL ends names and text at a NUL character.
- Stage 2 loads into the staging schema (geoetl_staging), which nothing serves; the target appears,
  changes or grows only in stage 3's publishing transaction. if_exists: "fail" (default; checked at
  submit and at publish), "replace" (new version swapped in), "append" (same columns: rows added).
  Only tables geoetl created (JSON table comment naming the job) are replaced or appended to.
- The job id includes the source blob's ETag read at submit: a changed file is a new job. A completed
  job whose table has since been deleted runs again when submitted again.
- A failed or cancelled run drops its staging table; chunks are deleted whenever a job ends. A
  resubmitted failed or cancelled job re-runs from stage 1.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import psycopg
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from config import get_settings
from core.errors import ConflictError, JobValidationError, PermanentTaskError, ResourceNotFoundError, TaskError
from core.models import JobExecutionContext, JobRecord, TaskDefinition, TaskStatus
from infrastructure import database
from infrastructure.blob import UnsafeBlobName, check_blob_name, check_container_name, get_blob_store
from jobs.base import JobBase, JobParameters, Stage, generate_task_id
from jobs.render_params import RenderParams
from services.vector.chunks import chunk_prefix
from services.vector.datasets import reconcile_catalog
from services.vector.formats import SUPPORTED_EXTENSIONS, ConverterParamsError, validate_converter_params
from services.vector.identifiers import table_name_problem
from services.vector.prepare import no_usable_geometry, stage1_result
from services.vector.publish import check_target
from services.vector.source import REQUIRED_SIDECARS, SHAPEFILE_SIDECARS, find_sidecar, shapefile_stem
from services.vector.stac import tiles_url
from services.vector.table import STAGING_SCHEMA, create_table, drop_owned_table, staging_table, table_owner

log = logging.getLogger(__name__)

PREPARE, LOAD, CATALOG = "prepare_vector_chunks", "load_vector_chunk", "create_vector_stac"


ColumnName = Annotated[str, StringConstraints(max_length=63)]  # PostgreSQL identifiers are at most 63 bytes
MAX_CONVERTER_PARAMS_BYTES = 8192


class IndexParams(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    spatial: bool = Field(True, description="GiST index on the geometry.")
    attributes: list[ColumnName] = Field(default_factory=list, max_length=64, description="Columns to b-tree index.")
    temporal: list[ColumnName] = Field(
        default_factory=list, max_length=16, description="Date/timestamp columns: indexed, and the STAC datetime."
    )


class GeometryParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    simplify_tolerance: float | None = Field(None, gt=0, le=10, description="Douglas-Peucker tolerance (degrees).")
    preserve_topology: bool = Field(True, description="Simplify without creating invalid geometries.")
    quantize_grid: float | None = Field(None, gt=0, le=1, description="Snap coordinates to this grid (degrees).")
    invalid: Literal["repair", "keep", "fail"] = Field(
        "repair",
        description="Invalid geometries: repaired (make_valid 'structure', bounded per feature), kept as they are "
        "and counted, or the job fails naming the first one.",
    )


class IngestVectorParameters(JobParameters):
    blob_name: str = Field(..., description="Path of the file in its container.")
    file_extension: str = Field(..., description=f"One of {', '.join(SUPPORTED_EXTENSIONS)}.")
    table_name: str = Field(..., description="Target table (new, or see if_exists).")
    container_name: str = Field(default_factory=lambda: get_settings().source_container)
    schema_: str = Field("geo", alias="schema", description="Target schema (from ALLOWED_SCHEMAS).")
    chunk_size: int | None = Field(None, ge=1, le=1_000_000, description="Rows per chunk; automatic when absent.")
    converter_params: dict[str, Any] = Field(
        default_factory=dict, max_length=16, description="Format-specific options."
    )
    indexes: IndexParams = Field(default_factory=IndexParams)
    geometry_params: GeometryParams = Field(default_factory=GeometryParams)
    render_params: RenderParams = Field(default_factory=RenderParams, description="Kept for the viewer (STAC item).")

    if_exists: Literal["fail", "replace", "append"] = Field(
        "fail",
        description="When the target table exists: 'fail' (409), 'replace' (the new version is swapped in when "
        "it is fully loaded and indexed; readers never see an error or a mix), 'append' (rows added; the file's "
        "columns must exist in the table with the same types). Only tables geoetl created can be replaced or "
        "appended to. 'append' to a missing table creates it.",
    )

    @field_validator("converter_params")
    @classmethod
    def _small(cls, v: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(v, default=str)) > MAX_CONVERTER_PARAMS_BYTES:
            raise ValueError(f"converter_params is larger than {MAX_CONVERTER_PARAMS_BYTES} bytes as JSON")
        return v


# Chunks and rows of one job, from its completed tasks (tasks_job_stage_idx).
PROGRESS_SQL = (
    "SELECT sum(jsonb_array_length(result_data -> 'chunks')) FILTER (WHERE stage = 1) AS chunks_total,"
    " sum(coalesce(result_data ->> 'total_rows', result_data ->> 'rows_estimate')::bigint)"
    "   FILTER (WHERE stage = 1) AS rows_total,"
    " count(*) FILTER (WHERE stage = 2) AS chunks_done,"
    " coalesce(sum((result_data ->> 'rows_uploaded')::bigint) FILTER (WHERE stage = 2), 0) AS rows_loaded"
    " FROM app.tasks WHERE parent_job_id = %s AND status = 'completed'"
)


class IngestVectorJob(JobBase):
    job_type = "ingest_vector"
    description = "Load a vector file into a PostGIS table with parallel chunked COPY, and catalog it in STAC"
    stages = [
        Stage(1, "prepare_chunks", PREPARE, "fan_out",
              "plan the file's parts (GeoPackage fid ranges, Shapefile record ranges, CSV byte ranges), or convert "
              "it once into GeoParquet chunks"),
        Stage(2, "upload_chunks", LOAD, "fan_out",
              "each task reads its part, repairs it and COPYs it into the table created before the fan-out"),
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
        allowed = get_settings().schema_allow_list  # never geoetl_staging
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
        sources = get_settings().source_container_list
        if params["container_name"] not in sources:  # 404 whether it exists or not: nothing to probe
            raise ResourceNotFoundError(
                f"container '{params['container_name'][:70]}' is not a source container "
                f"(allowed: {', '.join(sources) or 'none'}; SOURCE_CONTAINERS)"
            )
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
        exists, owner = table_owner(conn, params["schema"], params["table_name"])
        try:
            check_target(params["if_exists"], exists, owner, params["schema"], params["table_name"])
        except TaskError as exc:
            raise ConflictError(str(exc)) from None

    @classmethod
    def source_version(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The ETag of the file (and of a Shapefile's .dbf/.shx/.prj beside it), as found at submit."""
        store = get_blob_store()
        container, blob = params["container_name"], params["blob_name"]
        if not store.container_exists(container):
            return {}
        tags = [store.blob_version(container, blob)]
        if params["file_extension"] == "shp":
            for suffix in SHAPEFILE_SIDECARS:
                found = find_sidecar(store, container, blob, suffix)
                tags.append(store.blob_version(container, found[0]) if found else None)
        if tags[0] is None:
            return {}  # check_resources answers 404
        return {"source_etag": ",".join(t or "-" for t in tags)}

    @classmethod
    def output_missing(cls, job: JobRecord, conn: psycopg.Connection) -> str | None:
        schema, table = job.parameters["schema"], job.parameters["table_name"]
        exists, owner = table_owner(conn, schema, table)
        if not exists:
            return f"table {schema}.{table}, which this job published, no longer exists"
        if owner is None:
            return f"table {schema}.{table} now exists but was not created by geoetl"
        return None

    @classmethod
    def reconcile(cls) -> dict[str, int]:
        with database.connection() as conn:
            return reconcile_catalog(conn)

    @classmethod
    def metadata(cls, params: dict[str, Any]) -> dict[str, Any]:
        return super().metadata(params) | {"target": f"{params['schema']}.{params['table_name']}"}

    # ------------------------------------------------------------------ running
    @classmethod
    def setup_stage(
        cls, conn: psycopg.Connection, job: JobRecord, stage: int, previous_results: list[dict[str, Any]]
    ) -> None:
        """Stage 2: create the staging table once, in the transaction that inserts the load tasks."""
        if stage != 2:
            return
        prep = stage1_result(previous_results)
        submitted = job.parameters.get("source_etag")
        if submitted and cls.source_version(job.parameters).get("source_etag") != submitted:
            raise PermanentTaskError(
                f"file '{job.parameters['blob_name']}' changed after the job was submitted (its ETag is no longer "
                f"{submitted}); submit the job again to load the new version"
            )
        staging = staging_table(job.job_id)
        create_table(conn, STAGING_SCHEMA, staging, prep["columns"], prep["geometry_type"], job.job_id, job.run)

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
            target = {"schema": STAGING_SCHEMA, "table_name": staging_table(job_id)}  # COPY into staging
            prep = stage1_result(previous_results)
            columns = [{"name": c["name"], "type": c["type"]} for c in prep["columns"]]
            described = [{**c, "source_name": c.get("source_name")} for c in prep["columns"]]
            catalog = {"indexes": prep["indexes"], "geometry_type": prep["geometry_type"], "columns": described}
            if prep.get("mode") == "parts":  # each task reads its own part (services/vector/parts.py)
                keys = ("blob_name", "container_name", "converter_params", "geometry_params")
                shared = {k: params[k] for k in keys} | prep["source"]
                shared["geometry_families"] = prep["geometry_families"]
                per_chunk = [{**shared, **part} for part in prep["chunks"]]
            else:
                container = prep["intermediate_container"]
                repair = {"geometry_params": params["geometry_params"], "source_file": params["blob_name"]}
                per_chunk = [
                    {"chunk_path": c["path"], "rows": c["rows"], "intermediate_container": container, **repair}
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
                        "staging_table": staging_table(job_id),
                        "if_exists": params.get("if_exists", "fail"),
                        "source_etag": params.get("source_etag"),
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
        # stage 1 counts the DateTime values it nulled when it converts the file, stage 2 what COPY could not hold
        out_of_range = sum(int(r.get("values_out_of_range", 0)) for r in [*prepared, *(t.result_data for t in done)])
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
                "data_complete": len(done) == total_chunks and rows == expected_rows and out_of_range == 0,
                "source_features": counts["source_features"],
                "features_dropped": counts["features_dropped"],
                "features_dropped_total": sum(counts["features_dropped"].values()),
                "features_repaired": counts["features_repaired"],
                "repair_child_peak_mb": counts["repair_child_peak_mb"],
                "geometry_type": prep.get("geometry_type"),
                "geometry_stats": counts["geometry_stats"],
                "columns": prep.get("columns"),
                "source_crs": prep.get("source_crs"),
                "encoding": prep.get("encoding"),
                "chunk_size": prep.get("chunk_size"),
                "read_in_place": prep.get("mode") == "parts",
                "values_out_of_range": out_of_range,
            },
            "stac": {
                "collection_id": stac.get("collection_id"),
                "stac_id": stac.get("stac_id"),
                "bbox": stac.get("bbox"),
            },
            "published": {
                "action": stac.get("published"),  # created | replaced | appended
                "if_exists": params.get("if_exists", "fail"),
                "version": stac.get("version"),
                "rows_added": stac.get("rows_added"),
                "row_count": stac.get("row_count"),
                "previous_job_id": stac.get("previous_job_id"),
                "source_etag": params.get("source_etag"),
            },
            "indexes": stac.get("indexes"),
            "tile_overview": stac.get("tile_overview"),  # crowded tiles aggregated at publish (large point tables)
            "ogc_features_url": settings.ogc_features_url(schema, table),
            "tiles_url": tiles_url(schema, table),
            "viewer_url": settings.viewer_url(table),
            "stages_completed": context.current_stage,
            "total_tasks_executed": len(context.task_results),
            "seconds_per_stage": _stage_seconds(context),
        }

    @classmethod
    def cleanup(cls, job: JobRecord, failed: bool) -> None:
        """Delete this run's chunks; after a failure or a cancel also its staging table (a failed run never
        published anything: publishing is the last step's transaction)."""
        get_blob_store().delete_prefix(get_settings().intermediate_container, chunk_prefix(job.job_id, job.run))
        if not failed:
            return
        staging = staging_table(job.job_id)
        with database.connection() as conn:
            if drop_owned_table(conn, STAGING_SCHEMA, staging, job.job_id, job.run):
                log.info("dropped staging table %s.%s of job %s (%s)", STAGING_SCHEMA, staging, job.job_id, job.status)

    @classmethod
    def restart_stage(cls, failed_stage: int) -> int:
        return 1  # chunks and the staging table are deleted when a job fails: start from the file again

    @classmethod
    def progress_details(cls, conn: psycopg.Connection, job: JobRecord) -> dict[str, Any]:
        row = conn.execute(PROGRESS_SQL, [job.job_id]).fetchone()
        if row is None:
            return {}
        running = conn.execute(
            "SELECT task_id, stage, progress FROM app.tasks WHERE parent_job_id = %s AND status = 'processing'"
            " AND progress IS NOT NULL ORDER BY task_id",
            [job.job_id],
        ).fetchall()
        return {
            "chunks_total": None if row["chunks_total"] is None else int(row["chunks_total"]),
            "chunks_done": int(row["chunks_done"] or 0),
            "rows_total": None if row["rows_total"] is None else int(row["rows_total"]),
            "rows_loaded": int(row["rows_loaded"] or 0),
            # what each running task has done so far (features read, features repaired)
            "running_tasks": [{"task_id": r["task_id"], "stage": r["stage"], **r["progress"]} for r in running],
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
        # the largest resident peak of a repair child process (MB), in any task
        "repair_child_peak_mb": max((float(r.get("repair_child_peak_mb") or 0) for r in results), default=0.0),
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
