"""Stage 1 handler: stream the source in batches, prepare geometries and columns, write GeoParquet chunks.

Memory stays bounded: the blob goes to a temporary file, GDAL hands over Arrow batches, and at
most one chunk's rows are held before they are written.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyogrio

from config import get_settings
from core.errors import PermanentTaskError
from infrastructure.blob import get_blob_store
from services.context import TaskContext
from services.vector import columns as C
from services.vector.chunks import AUTO_MAX_BYTES, MAX_CHUNKS, ChunkWriter, auto_chunk_size, chunk_prefix
from services.vector.geometry import (
    GeometryOptions,
    GeometryStats,
    Reprojector,
    column_geometry_type,
    prepare_geometries,
)
from services.vector.identifiers import GEOMETRY_COLUMN, ColumnNamer
from services.vector.source import (
    TEMP_PREFIX,
    LayerSource,
    Source,
    download,
    gpkg_slice,
    open_source,
    scrub,
    unparsed_csv_geometry,
)

log = logging.getLogger(__name__)
GDAL_BATCH_ROWS = 10_000  # peak RSS of a 1M-polygon prepare: 320 MB at 10k rows, 350 at 20k, ~450 at 50k; same speed
MAX_ATTRIBUTE_COLUMNS = 1600 - 2  # PostgreSQL's limit per table, less id and geom
SLICE_MIN_FEATURES = 50_000  # smaller GeoPackages are read by one slice task: a second download costs more


class _Reader:
    """Reads every layer of a source into the chunk writer, keeping the counts the job reports."""

    def __init__(self, src: Source, options: GeometryOptions, writer: ChunkWriter) -> None:
        self.src, self.options, self.writer = src, options, writer
        self.namer = ColumnNamer()
        self.types: dict[str, str] = {}
        self.stats = GeometryStats()
        self.features_read = 0
        self.crs_seen: list[str] = []

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
            with pyogrio.open_arrow(
                layer.path, layer=layer.layer, batch_size=GDAL_BATCH_ROWS, use_pyarrow=True, **kwargs
            ) as (meta, reader):
                reprojector = Reprojector(self.src.crs or meta.get("crs"), layer.label)
                self.crs_seen.append(reprojector.description)
                geom_name = meta.get("geometry_name") or "wkb_geometry"
                offset = layer.offset
                for batch in reader:
                    if geom_name not in batch.schema.names:
                        raise PermanentTaskError(f"{layer.label} has no geometry column")
                    self._batch(batch, geom_name, reprojector, offset, layer.label)
                    offset += batch.num_rows
        except PermanentTaskError:
            raise
        except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, pyogrio.errors.FieldError) as exc:
            raise PermanentTaskError(f"could not read {layer.label}: {scrub(str(exc), self.src.blob_name)}") from None

    def _batch(self, batch: pa.RecordBatch, geom_name: str, reprojector: Reprojector, offset: int, label: str) -> None:
        self.features_read += batch.num_rows
        prepared = prepare_geometries(batch.column(geom_name), offset, label, reprojector, self.options, self.stats)
        keep, wkb = prepared.keep, prepared.wkb
        names, arrays = [], []
        for field, col in zip(batch.schema, batch.columns, strict=True):
            if field.name == geom_name:
                continue
            clean = self.namer.name(field.name)
            col = C.normalize(col)
            if col.type == pa.string():
                self._check_utf8(col, field.name, offset, label)
            self.types[clean] = C.merge_types(self.types.get(clean, C.NULL), C.pg_type_of(col.type))
            names.append(clean)
            arrays.append(col)
        if len(self.namer.mapping) > MAX_ATTRIBUTE_COLUMNS:
            raise PermanentTaskError(
                f"{label} has {len(self.namer.mapping)} attribute columns; a PostgreSQL table holds at most 1600 "
                f"columns, so at most {MAX_ATTRIBUTE_COLUMNS} besides id and geom"
            )
        if not keep.any():
            return
        mask = pa.array(keep)
        table = pa.table(arrays, names=names).filter(mask) if names else pa.table({})
        table = table.append_column(GEOMETRY_COLUMN, wkb) if names else pa.table({GEOMETRY_COLUMN: wkb})
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


def _resolve_indexes(
    indexes: dict[str, Any], reader: _Reader, columns: list[dict[str, str]], label: str, check_types: bool = True
) -> dict:
    """Requested index columns by their clean names. A slice leaves the temporal type check to the merge,
    which knows the column types of the whole file."""
    types = {c["name"]: c["type"] for c in columns}
    names = ", ".join(c["name"] for c in columns) or "none"
    resolved: dict[str, Any] = {"spatial": bool(indexes.get("spatial", True)), "attributes": [], "temporal": []}
    for kind in ("attributes", "temporal"):
        for requested in indexes.get(kind) or []:
            col = reader.namer.resolve(requested)
            if col is None:
                raise PermanentTaskError(
                    f"indexes.{kind}: column '{requested}' is not in {label}; its columns are: {names}"
                )
            if check_types and kind == "temporal":
                _check_temporal(requested, types[col], label)
            if col not in resolved[kind]:
                resolved[kind].append(col)
    return resolved


def _check_temporal(name: str, pg_type: str, label: str) -> None:
    if pg_type not in C.TEMPORAL_TYPES:
        raise PermanentTaskError(
            f"indexes.temporal: column '{name}' of {label} holds {pg_type} values, not dates or timestamps"
        )


def _sum_dicts(dicts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + int(v)
    return out


def merge_prepared(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Stage 1's results (one per slice, or a single one) as one: what every later step reads.

    Column types merge with the type-merge rules, geometry families give one column type, chunks are
    concatenated in slice order, counts summed. "No features" and "no usable geometry" are decided
    here, on the totals (a slice may hold only null geometries while another has rows).
    """
    if not results:
        raise ValueError("stage 1 left no result")
    results = sorted(results, key=lambda r: int(r.get("slice", 0)))
    expected = int(results[0].get("slices", 1))
    if len(results) != expected or [int(r.get("slice", 0)) for r in results] != list(range(expected)):
        raise ValueError(f"expected {expected} stage-1 results, one per slice, found {len(results)}")
    first = results[0]
    label = first.get("label") or f"file '{first.get('blob_name')}'"
    blob = first.get("blob_name")
    features = sum(int(r.get("source_features") or 0) for r in results)
    if features == 0:
        raise PermanentTaskError(f"file '{blob}' contains no features")
    read = [r for r in results if not r.get("empty")]
    types: dict[str, str] = {}
    sources: dict[str, str] = {}
    for r in read:
        raw = r.get("column_types") or {}
        for c in r["columns"]:
            sources.setdefault(c["name"], c.get("source_name", c["name"]))
            types[c["name"]] = C.merge_types(types.get(c["name"], C.NULL), raw.get(c["name"], c["type"]))
    columns = [{"name": n, "source_name": sources[n], "type": C.final_type(t)} for n, t in types.items()]
    stats = _sum_dicts([r["geometry_stats"] for r in read])
    dropped = _sum_dicts([r["features_dropped"] for r in read])
    rows = sum(int(r["total_rows"]) for r in read)
    if rows == 0:
        raise PermanentTaskError(
            f"file '{blob}' has {features} features but none with a usable geometry "
            f"({stats.get('null_geometry', 0)} null or empty, {stats.get('collapsed', 0)} collapsed when repaired)"
        )
    chunks = [c for r in read for c in r["chunks"]]
    if len(chunks) > MAX_CHUNKS:
        raise PermanentTaskError(
            f"{label}: chunk_size {first.get('chunk_size')} would make more than {MAX_CHUNKS} chunks; "
            "use a larger chunk_size (or leave it out for an automatic one)"
        )
    families = sorted({f for r in read for f in r["geometry_families"]})
    indexes = read[0]["indexes"]
    for name in indexes.get("temporal") or []:
        _check_temporal(name, types[name], label)
    merged = dict(read[0])
    merged.update(
        chunks=chunks,
        chunk_count=len(chunks),
        source_features=features,
        total_rows=rows,
        features_dropped=dropped,
        features_dropped_total=sum(dropped.values()),
        features_repaired=sum(int(r["features_repaired"]) for r in read),
        geometry_stats=stats,
        geometry_type=column_geometry_type(set(families)),
        geometry_families=families,
        columns=columns,
        source_crs=list(dict.fromkeys(c for r in read for c in r["source_crs"])),
        indexes=indexes,
        seconds=max(float(r.get("seconds") or 0) for r in results),
    )
    for key in ("column_types", "slice", "empty"):
        merged.pop(key, None)
    if expected > 1:
        merged["slice_seconds"] = [r.get("seconds") for r in results]
    return merged


def prepare_vector_chunks(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Prepare the whole file, or with `slices` > 1 (GeoPackage) one fid range of it; see merge_prepared."""
    started = time.monotonic()
    settings = get_settings()
    store = get_blob_store()
    blob, container, ext = params["blob_name"], params["container_name"], params["file_extension"]
    index, slices = int(params.get("slice", 0)), int(params.get("slices", 1))
    label = f"'{blob}'"
    prefix = chunk_prefix(ctx.job_id, ctx.run) + (f"s{index}/" if slices > 1 else "")
    geometry = params.get("geometry_params") or {}
    options = GeometryOptions(
        simplify_tolerance=geometry.get("simplify_tolerance"),
        preserve_topology=geometry.get("preserve_topology", True),
        quantize_grid=geometry.get("quantize_grid"),
    )
    sliced = {"slice": index, "slices": slices, "blob_name": blob, "label": f"file {label}"} if slices > 1 else {}
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as tmp:
        local = download(store, container, blob, ext, Path(tmp))
        if local.stat().st_size == 0:
            raise PermanentTaskError(f"file '{blob}' in container '{container}' is empty")
        try:
            src = open_source(local, blob, ext, params.get("converter_params") or {}, settings.max_source_bytes)
            chunk_size = params.get("chunk_size") or auto_chunk_size(src.feature_count)
            if slices > 1:
                if ext != "gpkg" or len(src.layers) != 1:
                    raise ValueError(f"only a one-layer GeoPackage is read in slices, not {label}")
                part = gpkg_slice(src.layers[0], index, slices, SLICE_MIN_FEATURES)
                if part is None:  # a small file (slice 0 reads it all) or nothing in this range
                    return _empty_slice(sliced, chunk_size, params, settings.intermediate_container, started)
                src.layers = [part]
            writer = ChunkWriter(
                store,
                settings.intermediate_container,
                prefix,
                chunk_size,
                None if params.get("chunk_size") else AUTO_MAX_BYTES,
                label,
            )
            reader = _Reader(src, options, writer)
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
    if not sliced:  # a slice may legitimately hold nothing usable: merge_prepared decides on the totals
        if reader.features_read == 0:
            raise PermanentTaskError(f"file '{blob}' contains no features")
        if writer.rows == 0:
            raise PermanentTaskError(
                f"file '{blob}' has {reader.features_read} features but none with a usable geometry "
                f"({stats.null_geometry} null or empty, {stats.collapsed} collapsed when repaired)"
            )
    columns = reader.columns()
    dropped = {"null_geometry": stats.null_geometry, "collapsed": stats.collapsed}
    assert reader.features_read - sum(dropped.values()) == writer.rows
    return {
        **sliced,
        "chunks": writer.chunks,
        "chunk_count": len(writer.chunks),
        "chunk_size": chunk_size,
        "chunk_size_auto": not params.get("chunk_size"),
        "intermediate_container": settings.intermediate_container,
        "chunk_prefix": chunk_prefix(ctx.job_id, ctx.run),
        "source_features": reader.features_read,
        "total_rows": writer.rows,
        "features_dropped": dropped,
        "features_dropped_total": sum(dropped.values()),
        "features_repaired": stats.repaired,
        "geometry_stats": stats.as_dict(),
        "geometry_type": column_geometry_type(stats.families) if stats.families else None,
        "geometry_families": sorted(stats.families),
        "columns": columns,
        "column_types": dict(reader.types),
        "source_crs": reader.crs_seen,
        "layers": [layer.layer for layer in src.layers if layer.layer],
        "indexes": _resolve_indexes(params.get("indexes") or {}, reader, columns, label, check_types=not sliced),
        "seconds": round(time.monotonic() - started, 3),
    }


def _empty_slice(
    sliced: dict[str, Any], chunk_size: int, params: dict[str, Any], container: str, started: float
) -> dict[str, Any]:
    """The result of a slice with nothing to read; merge_prepared skips it."""
    return {
        **sliced,
        "empty": True,
        "chunks": [],
        "chunk_count": 0,
        "chunk_size": chunk_size,
        "chunk_size_auto": not params.get("chunk_size"),
        "intermediate_container": container,
        "source_features": 0,
        "total_rows": 0,
        "seconds": round(time.monotonic() - started, 3),
    }
