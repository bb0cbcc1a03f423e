"""GeoParquet read with pyarrow: pyogrio's wheel carries no Parquet driver.

The file is read row group by row group in Arrow batches (memory stays bounded), with the
geometry as the WKB the file stores. `open_arrow` has pyogrio.open_arrow's shape, so the
stream that reads every other format reads these batches too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import PermanentTaskError

MAGIC = b"PAR1"


@dataclass
class GeoParquetInfo:
    geometry_column: str
    crs: str | None  # PROJJSON text, or OGC:CRS84 when the file leaves it out (the GeoParquet default)
    drop: list[str]  # covering (bbox) columns: derived from the geometry, not attributes
    rows: int
    row_groups: int
    geometry_types: list[str]  # as the metadata declares them ([]: not said)
    schema: pa.Schema
    group_rows: list[int]


def is_parquet(path: Path) -> bool:
    """Parquet files start and end with PAR1."""
    size = path.stat().st_size
    if size < 12:
        return False
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(size - 4)
        return head == MAGIC and f.read(4) == MAGIC


def describe(path: Path, blob_name: str) -> GeoParquetInfo:
    """The primary geometry column, its CRS and the file's size, from the footer alone."""
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise PermanentTaskError(f"could not read GeoParquet '{blob_name}': {exc}") from None
    return describe_file(pf, blob_name)


def describe_file(pf: pq.ParquetFile, blob_name: str) -> GeoParquetInfo:
    """describe() of a file already open (its footer read)."""
    raw = (pf.schema_arrow.metadata or {}).get(b"geo")
    if raw is None:
        raise PermanentTaskError(
            f"'{blob_name}' is a Parquet file without GeoParquet metadata (no 'geo' key): "
            "write it as GeoParquet (e.g. GeoDataFrame.to_parquet or ogr2ogr -f Parquet)"
        )
    try:
        geo = json.loads(raw)
        primary = geo["primary_column"]
        column = geo["columns"][primary]
    except (ValueError, KeyError, TypeError):
        raise PermanentTaskError(f"GeoParquet '{blob_name}' has 'geo' metadata that is not valid") from None
    encoding = str(column.get("encoding", "")).upper()
    if encoding != "WKB":
        raise PermanentTaskError(
            f"GeoParquet '{blob_name}': geometry column '{primary}' is encoded as '{column.get('encoding')}'; "
            "only WKB is read (write it with geometry_encoding='WKB')"
        )
    if primary not in pf.schema_arrow.names:
        raise PermanentTaskError(f"GeoParquet '{blob_name}' names geometry column '{primary}', which it lacks")
    if "crs" not in column:
        crs: str | None = "OGC:CRS84"
    else:
        crs = None if column["crs"] is None else json.dumps(column["crs"])
    covering = (column.get("covering") or {}).get("bbox") or {}
    drop = sorted({str(v[0]) for v in covering.values() if isinstance(v, list) and v} - {primary})
    declared = column.get("geometry_types") or []
    meta = pf.metadata
    return GeoParquetInfo(
        primary, crs, drop, meta.num_rows, meta.num_row_groups,
        [str(t) for t in declared] if isinstance(declared, list) else [], pf.schema_arrow,
        [meta.row_group(i).num_rows for i in range(meta.num_row_groups)],
    )


def opener(blob_name: str) -> Any:
    """An open_arrow for this blob (messages name the blob, not the worker's copy)."""

    @contextmanager
    def open_arrow(
        path: str, layer: str | None = None, batch_size: int = 65_536, use_pyarrow: bool = True, **_: Any
    ) -> Iterator[tuple[dict[str, Any], Iterator[pa.RecordBatch]]]:
        """(meta, batches) as pyogrio.open_arrow gives them: meta holds the CRS and the geometry column."""
        info = describe(Path(path), blob_name)
        pf = pq.ParquetFile(path)
        columns = [n for n in pf.schema_arrow.names if n not in info.drop]
        meta = {"crs": info.crs, "geometry_name": info.geometry_column}
        try:
            yield meta, _batches(pf, batch_size, columns, blob_name)
        finally:
            pf.close()

    return open_arrow


def _batches(pf: pq.ParquetFile, batch_size: int, columns: list[str], blob_name: str) -> Iterator[pa.RecordBatch]:
    try:
        yield from pf.iter_batches(batch_size=batch_size, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise PermanentTaskError(f"could not read GeoParquet '{blob_name}': {exc}") from None
