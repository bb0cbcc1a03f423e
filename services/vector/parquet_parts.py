"""GeoParquet in row-group ranges: the "parquet_row_groups" kind of part (parts.py).

Stage 1 reads the file's footer only (range reads conditioned on its ETag): the row groups, the Arrow
schema and the `geo` metadata. Column types come from the Arrow schema, which every row group shares,
so they are the types the whole file would get; the geometry family comes from the metadata's
`geometry_types`, and every part checks each of its geometries against it (a geometry of another
family fails the job, naming the rule). Each stage 2 task reads its row groups straight from the blob
(range reads of the column chunks, conditioned on the planned ETag: a replaced file fails the job),
one row group at a time, through the same GeoParquet reader a whole file gets.

A file whose metadata lists no geometry types (or a type of no family), with a single row group, or
with a row group too large to hold in a worker, is converted once by prepare.py instead.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import PermanentTaskError
from infrastructure.blob import BlobChanged, BlobStore
from services.context import TaskContext
from services.vector import columns as C
from services.vector import geoparquet
from services.vector.chunks import MAX_CHUNKS, auto_chunk_size, too_many_chunks
from services.vector.geometry import Reprojector, column_geometry_type
from services.vector.identifiers import ColumnNamer
from services.vector.slices import declared_family
from services.vector.sniff import check_head
from services.vector.source import LayerSource, Source

PARQUET_GEOMETRY_RULE = "every geometry must be of a type the GeoParquet metadata's geometry_types lists"
MAX_GROUP_BYTES = 256 * 1024**2  # a row group is read whole: larger ones are converted once


@contextmanager
def _open(store: BlobStore, container: str, blob: str, size: int, version: str) -> Iterator[pq.ParquetFile]:
    try:
        with store.open_ranges(container, blob, size, version) as f:
            pf = pq.ParquetFile(f, pre_buffer=True)
            try:
                yield pf
            finally:
                pf.close()
    except BlobChanged as exc:
        raise PermanentTaskError(exc.for_user(blob)) from None
    except (pa.ArrowException, OSError) as exc:
        raise PermanentTaskError(f"could not read GeoParquet '{blob}': {exc}") from None


def plan_parquet(
    params: dict[str, Any], store: BlobStore, ctx: TaskContext
) -> tuple[dict[str, Any], ColumnNamer] | None:
    """Row-group ranges of a GeoParquet file; None when it is to be converted once."""
    blob, container = params["blob_name"], params["container_name"]
    conv = params.get("converter_params") or {}
    version = store.blob_version(container, blob)
    size = store.blob_size(container, blob)
    if version is None or size is None:
        raise PermanentTaskError(f"file '{blob}' not found in container '{container}'")
    if size < 12:
        return None
    check_head(store.read_range(container, blob, 0, 64, version), "parquet", blob)
    label = f"GeoParquet '{blob}'"
    with _open(store, container, blob, size, version) as pf:
        info = geoparquet.describe_file(pf, blob)
        group_bytes = [pf.metadata.row_group(i).total_byte_size for i in range(pf.metadata.num_row_groups)]
    families = {declared_family(t) for t in info.geometry_types}
    if not families or None in families or info.row_groups < 2 or max(group_bytes) > MAX_GROUP_BYTES:
        return None
    namer = ColumnNamer()
    columns = []
    for field in info.schema:
        if field.name == info.geometry_column or field.name in info.drop:
            continue
        columns.append({"name": namer.name(field.name), "source_name": field.name,
                        "type": C.final_type(C.pg_type_of(C.normalized_type(field.type)))})
    C.check_column_count(label, len(columns))
    crs = Reprojector(conv.get("crs") or info.crs, label).description
    per_part = params.get("chunk_size") or auto_chunk_size(info.rows)
    cuts, rows = [0], 0
    for i, n in enumerate(info.group_rows):
        if rows and rows + n > per_part:
            cuts.append(i)
            rows = 0
        rows += n
    cuts.append(info.row_groups)
    if len(cuts) - 1 > MAX_CHUNKS:
        raise too_many_chunks(label, int(per_part))
    first_rows = list(itertools.accumulate([0, *info.group_rows]))
    parts = [{"kind": "parquet_row_groups", "row_groups": [a, b], "rows": [first_rows[a], first_rows[b]]}
             for a, b in itertools.pairwise(cuts)]
    declared = ", ".join(info.geometry_types)
    return {
        "mode": "parts",
        "label": label,
        "source": {
            "version": version,
            "size": size,
            "label": label,
            "declared_geometry_type": declared,
            "geometry_rule": PARQUET_GEOMETRY_RULE,
        },
        "chunks": parts,
        "chunk_size": per_part,
        "chunk_size_auto": not params.get("chunk_size"),
        "rows_estimate": info.rows,
        "columns": columns,
        "geometry_type": column_geometry_type(families),  # type: ignore[arg-type]
        "geometry_families": sorted(families),  # type: ignore[type-var]
        "declared_geometry_type": declared,
        "source_crs": [crs],
        "layers": [],
    }, namer


def part_source(params: dict[str, Any], store: BlobStore, folder: Path) -> Source:
    """The row groups a stage 2 task reads, from the blob itself; feature numbers stay file-wide."""
    blob, label = params["blob_name"], params["label"]
    first_group, end_group = params["row_groups"]

    @contextmanager
    def open_part(path: str, **kwargs: Any) -> Iterator[tuple[dict[str, Any], Iterator[pa.RecordBatch]]]:
        with _open(store, params["container_name"], blob, params["size"], params["version"]) as pf:
            info = geoparquet.describe_file(pf, blob)
            columns = [n for n in info.schema.names if n not in info.drop]
            meta = {"crs": info.crs, "geometry_name": info.geometry_column}
            groups = list(range(first_group, end_group))
            yield meta, _batches(pf, groups, columns, kwargs.get("batch_size") or 65_536, blob)

    return Source(
        blob_name=blob,
        ext="parquet",
        layers=[LayerSource(label, None, label, offset=params["rows"][0], opener=open_part)],
        crs=(params.get("converter_params") or {}).get("crs"),
    )


def _batches(pf: pq.ParquetFile, groups: list[int], columns: list[str], batch_size: int,
             blob: str) -> Iterator[pa.RecordBatch]:
    try:
        yield from pf.iter_batches(batch_size=batch_size, row_groups=groups, columns=columns)
    except BlobChanged as exc:
        raise PermanentTaskError(exc.for_user(blob)) from None
    except (pa.ArrowException, OSError) as exc:
        raise PermanentTaskError(f"could not read GeoParquet '{blob}': {exc}") from None


def describe_part(params: dict[str, Any]) -> str:
    a, b = params["row_groups"]
    return f"row groups {a}..{b - 1}"
