"""Parts: what stage 1 plans and each stage 2 task reads on its own.

Stage 1 reads a file's description (columns, geometry family, CRS, encoding) and cuts it into
parts; it reads no feature. Each part is a small dict with a `kind` and what to read: a GeoPackage
fid range ("gpkg_fids", slices.py), a Shapefile record range ("shp_records", shapefile_parts.py), a
CSV byte range on record boundaries ("csv_bytes", csv_parts.py), a run of whole GeoJSON features by
byte range ("geojson_features", geojson_parts.py), GeoParquet row groups ("parquet_row_groups",
parquet_parts.py).
A stage 2 task opens its part as a Source (the same reader as a whole file gets, with the part's
first feature number as offset, so messages name file-wide feature numbers), prepares it and COPYs
it. The plan's `source` dict (shared by every part: file versions, layer, encoding, the declared
geometry type) is merged into each task's parameters with the part itself.

A file no kind can plan (or one whose description cannot be trusted to type every feature) is
converted once by prepare.py into GeoParquet chunks, which stage 2 loads as "parquet_chunk" parts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infrastructure.blob import BlobStore
from services.context import TaskContext
from services.vector import csv_parts, geojson_parts, parquet_parts, shapefile_parts, slices
from services.vector.geometry import GeometryStats
from services.vector.identifiers import ColumnNamer
from services.vector.source import Source

Plan = tuple[dict[str, Any], ColumnNamer]


@dataclass(frozen=True)
class PartKind:
    open: Callable[[dict[str, Any], BlobStore, Path], Source]  # the part as a Source, files in a folder
    confirm: Callable[[dict[str, Any], BlobStore], None]  # after the read: it came from the planned version
    describe: Callable[[dict[str, Any]], str]  # for messages ("fids 1..100")
    # after the read, with the part's files still there: what only the whole part can tell
    check: Callable[[dict[str, Any], Source, GeometryStats], None] | None = None


def _nothing_to_confirm(params: dict[str, Any], store: BlobStore) -> None:
    """Every read of the part was conditioned on the planned version already."""


KINDS: dict[str, PartKind] = {
    "gpkg_fids": PartKind(slices.slice_source, slices.check_version, slices.describe_slice),
    "shp_records": PartKind(shapefile_parts.part_source, _nothing_to_confirm, shapefile_parts.describe_part),
    "csv_bytes": PartKind(csv_parts.part_source, _nothing_to_confirm, csv_parts.describe_part, csv_parts.check_part),
    "geojson_features": PartKind(geojson_parts.part_source, _nothing_to_confirm, geojson_parts.describe_part),
    "parquet_row_groups": PartKind(parquet_parts.part_source, _nothing_to_confirm, parquet_parts.describe_part),
}


def plan_parts(params: dict[str, Any], store: BlobStore, ctx: TaskContext) -> Plan | None:
    """The parts of a file whose format allows them; None when it is to be converted once instead."""
    ext = params["file_extension"]
    if ext == "gpkg":
        return slices.plan_slices(params, store)
    if ext in ("shp", "zip"):
        return shapefile_parts.plan_shapefile(params, store, ctx)
    if ext == "csv":
        return csv_parts.plan_csv(params, store, ctx)
    if ext in ("geojson", "json", "geojsonl", "geojsons"):
        return geojson_parts.plan_geojson(params, store, ctx)
    if ext == "parquet":
        return parquet_parts.plan_parquet(params, store, ctx)
    return None


def part_kind(params: dict[str, Any]) -> PartKind | None:
    """The kind of part a stage 2 task reads (None: a GeoParquet chunk stage 1 converted)."""
    return KINDS.get(params.get("kind") or "")
