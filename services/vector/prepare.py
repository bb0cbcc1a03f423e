"""Stage 1 handler: stream the source in batches, prepare geometries and columns, write GeoParquet chunks.

Memory stays bounded: the blob goes to a temporary file, GDAL hands over Arrow batches, and at
most one chunk's rows are held before they are written.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyogrio

from config import get_settings
from core.errors import PermanentTaskError
from infrastructure.blob import get_blob_store
from services.context import TaskContext, checkpoint
from services.vector import columns as C
from services.vector.chunks import AUTO_MAX_BYTES, ChunkWriter, auto_chunk_size, chunk_prefix
from services.vector.datetimes import is_gdal_datetime, utc_timestamps
from services.vector.geometry import (
    GeometryOptions,
    GeometryStats,
    Reprojector,
    column_geometry_type,
    prepare_geometries,
)
from services.vector.identifiers import GEOMETRY_COLUMN, REPAIR_COLUMN, ColumnNamer
from services.vector.parts import plan_parts
from services.vector.progress import TaskProgress
from services.vector.repair import RepairPolicy
from services.vector.sniff import check_content
from services.vector.source import (
    TEMP_PREFIX,
    LayerSource,
    Source,
    check_distinct_fields,
    download,
    open_source,
    scrub,
    unparsed_csv_geometry,
)

log = logging.getLogger(__name__)
GDAL_BATCH_ROWS = 10_000  # peak RSS of a 1M-polygon prepare: 320 MB at 10k rows, 350 at 20k, ~450 at 50k; same speed


class Sink(Protocol):
    def add(self, table: pa.Table, families: set[str]) -> None: ...


def _batches_of(reader: Iterator[pa.RecordBatch], layer: LayerSource) -> Iterator[pa.RecordBatch]:
    """GDAL's batches; a file on this machine that GDAL stops reading part way is damaged, and reading it
    again will not help (over the network, in place, a failed request may well succeed again)."""
    batches = iter(reader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (OSError, pa.ArrowInvalid) as exc:  # GDAL's read errors, as the Arrow stream reports them
            if layer.path.startswith("/vsi"):
                raise
            raise PermanentTaskError(
                f"could not read {layer.label} to its end: {exc} (the file is likely truncated or damaged)"
            ) from None
        yield batch


class SourceReader:
    """Reads every layer of a source into a sink (chunk files, or a COPY), keeping the counts the job reports."""

    def __init__(self, src: Source, options: GeometryOptions, writer: Sink) -> None:
        self.src, self.options, self.writer = src, options, writer
        self.namer = ColumnNamer()
        self.types: dict[str, str] = {}
        self.stats = GeometryStats()
        self.features_read = 0
        self.values_out_of_range = 0  # DateTime values that name no instant (stored as NULL)
        self.crs_seen: list[str] = []
        self.progress: TaskProgress | None = None

    def read_all(self) -> None:
        for layer in self.src.layers:
            self._read_layer(layer)

    def _read_layer(self, layer: LayerSource) -> None:
        kwargs: dict[str, Any] = dict(self.src.open_options)
        if self.src.encoding:
            kwargs["encoding"] = self.src.encoding
        try:
            if layer.where:
                kwargs["where"] = layer.where
            with (layer.opener or pyogrio.open_arrow)(
                layer.path,
                layer=layer.layer,
                batch_size=GDAL_BATCH_ROWS,
                use_pyarrow=True,
                datetime_as_string=True,  # offsets kept: see datetimes.py
                **kwargs,
            ) as (meta, reader):
                reprojector = Reprojector(self.src.crs or meta.get("crs"), layer.label)
                self.crs_seen.append(reprojector.description)
                geom_name = meta.get("geometry_name") or "wkb_geometry"
                offset = layer.offset
                for batch in _batches_of(reader, layer):
                    if geom_name not in batch.schema.names:
                        raise PermanentTaskError(f"{layer.label} has no geometry column")
                    self._batch(batch, geom_name, reprojector, offset, layer.label)
                    offset += batch.num_rows
        except PermanentTaskError:
            raise
        except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, pyogrio.errors.FieldError) as exc:
            blob = self.src.blob_name
            message = scrub(str(exc).replace(layer.path, blob), blob)
            raise PermanentTaskError(f"could not read {layer.label}: {message}") from None

    def _batch(self, batch: pa.RecordBatch, geom_name: str, reprojector: Reprojector, offset: int, label: str) -> None:
        checkpoint()  # a cancelled job's task stops between batches (before repairing the next one)
        self.features_read += batch.num_rows
        if self.progress is not None:
            self.progress.read(batch.num_rows)
        check_distinct_fields(batch.schema.names, label)
        prepared = prepare_geometries(batch.column(geom_name), offset, label, reprojector, self.options, self.stats)
        keep, wkb = prepared.keep, prepared.wkb
        names, arrays = [], []
        for field, col in zip(batch.schema, batch.columns, strict=True):
            if field.name == geom_name:
                continue
            clean = self.namer.name(field.name)
            if is_gdal_datetime(field):
                col, impossible = utc_timestamps(col)
                self.values_out_of_range += impossible
            col = C.normalize(col)
            if col.type == pa.string():
                self._check_utf8(col, field.name, offset, label)
            self.types[clean] = C.merge_types(self.types.get(clean, C.NULL), C.pg_type_of(col.type))
            names.append(clean)
            arrays.append(col)
        C.check_column_count(label, len(self.namer.mapping))
        if not keep.any():
            return
        mask = pa.array(keep)
        table = pa.table(arrays, names=names).filter(mask) if names else pa.table({})
        table = table.append_column(GEOMETRY_COLUMN, wkb) if names else pa.table({GEOMETRY_COLUMN: wkb})
        if prepared.deferred is not None:  # feature numbers of the rows stage 2 repairs
            numbers = offset + np.flatnonzero(keep)
            table = table.append_column(REPAIR_COLUMN, pa.array(numbers, type=pa.int64(), mask=~prepared.deferred))
        self.writer.add(table, self.stats.families)

    def _check_utf8(self, col: pa.Array, name: str, offset: int, label: str) -> None:
        """Text must be UTF-8 (PostgreSQL refuses anything else); name the column and feature when it is not."""
        try:
            col.validate(full=True)
            return
        except pa.ArrowInvalid:
            pass
        index, sample = next(
            (i, v) for i, v in enumerate(col.cast(pa.binary()).to_pylist()) if v is not None and not _is_utf8(v)
        )
        raise PermanentTaskError(
            f"{label}: column '{name}' of feature {offset + index} is not UTF-8 text ({sample[:60]!r}); "
            f"{_encoding_hint(self.src.ext)}"
        )

    def columns(self) -> list[dict[str, str]]:
        return [
            {"name": clean, "source_name": raw, "type": C.final_type(self.types.get(clean, C.NULL))}
            for raw, clean in self.namer.mapping.items()
        ]


def _encoding_hint(ext: str) -> str:
    if ext in ("shp", "zip"):
        return 'set converter_params.encoding to the encoding of its .dbf (e.g. "latin1")'
    return "save the file as UTF-8"


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def geometry_options(
    params: dict[str, Any], defer_repair: bool = False, progress: TaskProgress | None = None
) -> GeometryOptions:
    geometry = params.get("geometry_params") or {}
    return GeometryOptions(
        simplify_tolerance=geometry.get("simplify_tolerance"),
        preserve_topology=geometry.get("preserve_topology", True),
        quantize_grid=geometry.get("quantize_grid"),
        repair=RepairPolicy(
            geometry.get("invalid") or "repair",
            float(get_settings().repair_seconds_per_feature),
            int(get_settings().repair_memory_mb),
        ),
        defer_repair=defer_repair,
        progress=None if progress is None else progress.repaired,
    )


def _resolve_indexes(indexes: dict[str, Any], namer: ColumnNamer, columns: list[dict[str, str]], label: str) -> dict:
    """Requested index columns by their clean names."""
    types = {c["name"]: c["type"] for c in columns}
    names = ", ".join(c["name"] for c in columns) or "none"
    resolved: dict[str, Any] = {"spatial": bool(indexes.get("spatial", True)), "attributes": [], "temporal": []}
    for kind in ("attributes", "temporal"):
        for requested in indexes.get(kind) or []:
            col = namer.resolve(requested)
            if col is None:
                raise PermanentTaskError(
                    f"indexes.{kind}: column '{requested}' is not in {label}; its columns are: {names}"
                )
            if kind == "temporal":
                _check_temporal(requested, types[col], label)
            if col not in resolved[kind]:
                resolved[kind].append(col)
    return resolved


def _check_temporal(name: str, pg_type: str, label: str) -> None:
    if pg_type not in C.TEMPORAL_TYPES:
        raise PermanentTaskError(
            f"indexes.temporal: column '{name}' of {label} holds {pg_type} values, not dates or timestamps"
        )


def stage1_result(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Stage 1's one result (the plan of a file's parts, or converted chunks): what later steps read."""
    if len(results) != 1:
        raise ValueError(f"expected one stage-1 result, found {len(results)}")
    return results[0]


def prepare_vector_chunks(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Plan the file's parts, each read by its own stage 2 task (parts.py), or, for a format that cannot be
    split cheaply, convert it once into GeoParquet chunks."""
    started = time.monotonic()
    planned = plan_parts(params, get_blob_store(), ctx)
    if planned is not None:
        plan, namer = planned
        indexes = _resolve_indexes(params.get("indexes") or {}, namer, plan["columns"], plan["label"])
        return {**plan, "indexes": indexes, "chunk_count": len(plan["chunks"]),
                "seconds": round(time.monotonic() - started, 3)}
    return _prepare_chunks(params, ctx, started)


def _prepare_chunks(params: dict[str, Any], ctx: TaskContext, started: float) -> dict[str, Any]:
    """Download the file and stream it through GDAL into GeoParquet chunks in the intermediate container."""
    settings = get_settings()
    store = get_blob_store()
    blob, container, ext = params["blob_name"], params["container_name"], params["file_extension"]
    label = f"'{blob}'"
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as tmp:
        local = download(store, container, blob, ext, Path(tmp))
        if local.stat().st_size == 0:
            raise PermanentTaskError(f"file '{blob}' in container '{container}' is empty")
        check_content(local, ext, blob)
        try:
            src = open_source(local, blob, ext, params.get("converter_params") or {}, settings.max_source_bytes)
            chunk_size = params.get("chunk_size") or auto_chunk_size(src.feature_count)
            writer = ChunkWriter(
                store,
                settings.intermediate_container,
                chunk_prefix(ctx.job_id, ctx.run),
                chunk_size,
                None if params.get("chunk_size") else AUTO_MAX_BYTES,
                label,
            )
            progress = TaskProgress(ctx.task_id)
            reader = SourceReader(src, geometry_options(params, defer_repair=True), writer)
            reader.progress = progress
            try:
                reader.read_all()
                writer.close()
            finally:
                writer.discard()
            if ext == "csv" and reader.stats.null_geometry:
                problem = unparsed_csv_geometry(local, f"CSV {label}", params.get("converter_params") or {})
                if problem:
                    raise PermanentTaskError(problem)
        except UnicodeDecodeError as exc:  # names (columns, layers) GDAL hands over are not UTF-8
            sample = exc.object[max(0, exc.start - 20) : exc.end + 20]
            raise PermanentTaskError(
                f"{label} has column or layer names that are not UTF-8 text ({sample!r}); {_encoding_hint(ext)}"
            ) from None

    stats = reader.stats
    if reader.features_read == 0:
        raise PermanentTaskError(f"file '{blob}' contains no features")
    if writer.rows == 0:
        raise PermanentTaskError(no_usable_geometry(blob, reader.features_read, stats.as_dict()))
    columns = reader.columns()
    dropped = {"null_geometry": stats.null_geometry, "collapsed": stats.collapsed}
    assert reader.features_read - sum(dropped.values()) == writer.rows
    return {
        "mode": "chunks",
        "chunks": writer.chunks,
        "chunk_count": len(writer.chunks),
        "chunk_size": chunk_size,
        "chunk_size_auto": not params.get("chunk_size"),
        "intermediate_container": settings.intermediate_container,
        "chunk_prefix": chunk_prefix(ctx.job_id, ctx.run),
        "source_features": reader.features_read,
        "values_out_of_range": reader.values_out_of_range,
        "total_rows": writer.rows,
        "features_dropped": dropped,
        "features_dropped_total": sum(dropped.values()),
        "features_repaired": stats.repaired,
        "geometry_stats": stats.as_dict(),
        "geometry_type": column_geometry_type(stats.families) if stats.families else None,
        "geometry_families": sorted(stats.families),
        "columns": columns,
        "source_crs": reader.crs_seen,
        "encoding": src.encoding_used,
        "layers": [layer.layer for layer in src.layers if layer.layer],
        "indexes": _resolve_indexes(params.get("indexes") or {}, reader.namer, columns, label),
        "seconds": round(time.monotonic() - started, 3),
    }


def no_usable_geometry(blob: str, features: int, stats: dict[str, int]) -> str:
    return (
        f"file '{blob}' has {features} features but none with a usable geometry "
        f"({stats.get('null_geometry', 0)} null or empty, {stats.get('collapsed', 0)} collapsed when repaired)"
    )
