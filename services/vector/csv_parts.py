"""A CSV in byte ranges on record boundaries: the "csv_bytes" kind of part (parts.py).

Stage 1 downloads the file once and reads no feature: GDAL's type detection over the whole file gives
the column types (AUTODETECT_TYPE, as a whole-file read has them), and one vectorised pass finds where
each record starts: a newline outside quotes, the quote parity carried across blocks (GDAL joins lines
while a record's quote count is odd, so this is where GDAL's records end too). Each stage 2 task fetches
the header and its byte range (range reads conditioned on the ETag stage 1 read), writes them with a
.csvt of the whole file's types beside, and lets GDAL read that: every part is typed like the whole file.

The plan is not trusted, and the file converted once by prepare.py instead, when record numbers could
differ from GDAL's (blank lines, unbalanced quotes), when the header is not what GDAL took as the
column names (a header-less file), when a column type has no .csvt name, or for WKT geometries (whose
column type depends on every feature).
"""

from __future__ import annotations

import csv
import itertools
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyogrio

from core.errors import PermanentTaskError
from infrastructure.blob import BlobStore
from services.context import TaskContext
from services.vector import columns as C
from services.vector import halves
from services.vector.chunks import AUTO_MAX_BYTES, MAX_CHUNKS, auto_chunk_size, too_many_chunks
from services.vector.geometry import GeometryStats, Reprojector, column_geometry_type
from services.vector.identifiers import ColumnNamer
from services.vector.shapefile_parts import fetch
from services.vector.sniff import check_content
from services.vector.source import (
    GDAL_ERRORS,
    TEMP_PREFIX,
    LayerSource,
    Source,
    check_distinct_fields,
    csv_options,
    scrub,
    unparsed_csv_geometry,
)

SCAN_BLOCK = 4 * 1024**2  # bytes per step of the record scan (its index arrays count in memory)
QUOTE, NEWLINE = 34, 10

# Arrow types of GDAL's CSV fields -> their .csvt names
_CSVT = {
    pa.int32(): "Integer",
    pa.int64(): "Integer64",
    pa.float64(): "Real",
    pa.float32(): "Real(Float32)",
    pa.int16(): "Integer(Int16)",
    pa.bool_(): "Integer(Boolean)",
    pa.string(): "String",
    pa.large_string(): "String",
    pa.date32(): "Date",
}


def _csvt_name(t: pa.DataType) -> str | None:
    if pa.types.is_timestamp(t):
        return "DateTime"
    if pa.types.is_time(t):
        return "Time"
    return _CSVT.get(t)


def record_starts(path: Path) -> tuple[np.ndarray, str | None]:
    """Offsets where records start (after each newline outside quotes), and why they cannot be trusted
    (None when they can)."""
    found = []
    parity = 0
    pos = 0
    last = b""
    with open(path, "rb") as f:
        while block := f.read(SCAN_BLOCK):
            a = np.frombuffer(block, dtype=np.uint8)
            quotes = np.flatnonzero(a == QUOTE)
            newlines = np.flatnonzero(a == NEWLINE)
            outside = ((np.searchsorted(quotes, newlines) + parity) & 1) == 0
            found.append(newlines[outside].astype(np.int64) + pos + 1)
            parity = (parity + len(quotes)) & 1
            pos += len(block)
            last = block[-1:]
    starts = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
    if parity:
        return starts, "its quotes are unbalanced"
    if last != b"\n":
        starts = np.append(starts, pos)  # the last record ends at the end of the file
    if len(starts) < 2:
        return starts, "it has no record after its header"
    lengths = np.diff(starts)
    if (lengths == 1).any():
        return starts, "it has blank lines"
    short = np.flatnonzero(lengths == 2)
    if len(short) > 1000:
        return starts, "it has many one-character lines"
    with open(path, "rb") as f:
        for i in short:
            f.seek(int(starts[i]))
            if f.read(1) == b"\r":
                return starts, "it has blank lines"
    return starts, None


def _header_names(path: Path, header_end: int) -> list[str] | None:
    with open(path, "rb") as f:
        raw = f.read(header_end)
    try:
        text = raw.decode("utf-8").lstrip("\ufeff").rstrip("\r\n")
    except UnicodeDecodeError:
        return None
    rows = list(csv.reader([text]))
    return rows[0] if len(rows) == 1 else None


def _schema(path: Path, options: dict[str, str]) -> tuple[dict[str, Any], pa.Schema]:
    """GDAL's description of a CSV, its field types detected over every record (the open reads them all)."""
    with pyogrio.open_arrow(str(path), batch_size=1, use_pyarrow=True, **options) as (meta, reader):
        return meta, reader.schema


def _detected_types(path: Path, starts: np.ndarray, options: dict[str, str]) -> tuple[dict[str, Any], pa.Schema]:
    """GDAL's types of the whole file (a large one typed in two halves at once: halves.py)."""
    records = len(starts) - 1

    def read(p: Path) -> tuple[dict[str, Any], pa.Schema]:
        return _schema(p, options)

    if path.stat().st_size >= halves.MIN_BYTES and records >= 2:
        typed = halves.typed_in_halves(path, int(starts[0]), int(starts[records // 2]), int(starts[-1]), read,
                                       GDAL_ERRORS)
        if typed is not None:
            return typed
    return read(path)


def plan_csv(params: dict[str, Any], store: BlobStore, ctx: TaskContext) -> tuple[dict[str, Any], ColumnNamer] | None:
    """The record ranges of a CSV with coordinate columns; None when it is to be converted once."""
    blob, container = params["blob_name"], params["container_name"]
    conv = params.get("converter_params") or {}
    if conv.get("wkt_column"):
        return None
    version = store.blob_version(container, blob)
    if version is None:
        raise PermanentTaskError(f"file '{blob}' not found in container '{container}'")
    try:
        return _plan(params, store, version)
    except UnicodeDecodeError:  # names that are not UTF-8: the conversion says so, naming the file
        return None


def _plan(params: dict[str, Any], store: BlobStore, version: str) -> tuple[dict[str, Any], ColumnNamer] | None:
    blob, container = params["blob_name"], params["container_name"]
    conv = params.get("converter_params") or {}
    entry = {"name": blob, "version": version, "shown": blob}
    label = f"CSV '{blob}'"
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as tmp:
        local = Path(tmp) / "source.csv"
        with open(local, "wb") as f:
            fetch(store, container, entry, 0, None, f)
        if local.stat().st_size == 0:
            raise PermanentTaskError(f"file '{blob}' in container '{container}' is empty")
        check_content(local, "csv", blob)
        options = csv_options(local, blob, conv)
        starts, problem = record_starts(local)
        if problem:
            return None
        header = _header_names(local, int(starts[0]))
        try:
            meta, schema = _detected_types(local, starts, options)
            check_distinct_fields(schema.names, label)
        except GDAL_ERRORS as exc:
            raise PermanentTaskError(f"could not read {label}: {scrub(str(exc), blob)}") from None
        size = local.stat().st_size
    geom_name = meta.get("geometry_name") or "wkb_geometry"
    fields = {f.name: f.type for f in schema if f.name != geom_name}
    if header is None or list(fields) != header or len(set(header)) != len(header):
        return None  # header-less, or names GDAL changed: the plan could not type every part the same
    csvt = [_csvt_name(t) for t in fields.values()]
    if None in csvt:
        return None
    namer = ColumnNamer()
    columns = []
    for name, t in fields.items():
        stored = C.normalize(pa.array([], type=t)).type
        columns.append({"name": namer.name(name), "source_name": name, "type": C.final_type(C.pg_type_of(stored))})
    C.check_column_count(label, len(columns))
    crs = Reprojector(conv.get("crs") or meta.get("crs"), label).description

    bounds = starts  # bounds[0] ends the header; record i spans bounds[i]..bounds[i + 1]
    count = len(bounds) - 1
    chunk_size = params.get("chunk_size") or auto_chunk_size(count)
    if math.ceil(count / chunk_size) > MAX_CHUNKS:
        raise too_many_chunks(label, chunk_size)
    k = max(1, math.ceil(count / chunk_size))
    cuts = [count * i // k for i in range(k)] + [count]
    if not params.get("chunk_size"):  # and at most ~AUTO_MAX_BYTES per part
        refined = [0]
        for a, b in itertools.pairwise(cuts):
            pieces = math.ceil(int(bounds[b] - bounds[a]) / AUTO_MAX_BYTES)
            refined += [a + (b - a) * j // pieces for j in range(1, pieces)] + [b]
        cuts = sorted(set(refined))
    parts = [
        {"kind": "csv_bytes", "records": [a, b], "bytes": [int(bounds[a]), int(bounds[b])]}
        for a, b in itertools.pairwise(cuts)
        if b > a
    ]
    if len(parts) > MAX_CHUNKS:
        raise too_many_chunks(label, chunk_size)
    part_options = {k: v for k, v in options.items() if not k.startswith("AUTODETECT_")} | {"AUTODETECT_TYPE": "NO"}
    return {
        "mode": "parts",
        "label": label,
        "source": {
            "version": version,
            "header_bytes": int(bounds[0]),
            "csvt": ",".join(f'"{t}"' for t in csvt),
            "open_options": part_options,
            "label": label,
            "declared_geometry_type": "Point (coordinate columns)",
            "geometry_rule": "coordinate columns give points",
        },
        "chunks": parts,
        "chunk_size": chunk_size,
        "chunk_size_auto": not params.get("chunk_size"),
        "rows_estimate": count,
        "columns": columns,
        "geometry_type": column_geometry_type({"point"}),
        "geometry_families": ["point"],
        "source_crs": [crs],
        "encoding": None,
        "layers": [],
        "source_bytes": size,
    }, namer


def part_source(params: dict[str, Any], store: BlobStore, folder: Path) -> Source:
    """The header and the records of this part as a CSV of their own, with the whole file's types beside."""
    entry = {"name": params["blob_name"], "version": params["version"], "shown": params["blob_name"]}
    container = params["container_name"]
    lo, hi = params["bytes"]
    path = folder / "source.csv"
    with open(path, "wb") as f:
        fetch(store, container, entry, 0, params["header_bytes"], f)
        fetch(store, container, entry, lo, hi - lo, f)
    (folder / "source.csvt").write_text(params["csvt"])
    return Source(
        blob_name=params["blob_name"],
        ext="csv",
        layers=[LayerSource(str(path), None, params["label"], offset=params["records"][0])],
        open_options=dict(params["open_options"]),
        crs=(params.get("converter_params") or {}).get("crs"),
    )


def check_part(params: dict[str, Any], src: Source, stats: GeometryStats) -> None:
    """Coordinates GDAL could not parse became null geometries: name the first one, file-wide."""
    if not stats.null_geometry:
        return
    path = Path(src.layers[0].path)
    path.with_suffix(".csvt").unlink(missing_ok=True)  # read the cells as the text they are
    conv = params.get("converter_params") or {}
    problem = unparsed_csv_geometry(path, f"CSV '{params['blob_name']}'", conv, offset=params["records"][0])
    if problem:
        raise PermanentTaskError(problem)


def describe_part(params: dict[str, Any]) -> str:
    return f"records {params['records'][0]}..{params['records'][1] - 1}"
