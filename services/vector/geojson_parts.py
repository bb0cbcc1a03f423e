"""GeoJSON in byte ranges of whole features: the "geojson_features" kind of part (parts.py).

Stage 1 downloads the blob (range reads conditioned on its ETag) and scans it once, a block at a time
(geojson_scan.py: array operations, never the whole file in memory), for where each feature starts
and ends in the original file (a FeatureCollection's `features` array, or the records of a GeoJSON
sequence) and the type of each feature's geometry, without decoding coordinates. Parts are runs of
whole features, cut by bytes (PART_BYTES) or by chunk_size features.
Each stage 2 task range-reads its part (conditioned on the planned ETag: a replaced file fails the
job) and lets GDAL read it as a small FeatureCollection (or sequence) of its own. Nothing is
rewritten into the source container and nothing is uploaded.

Types. GDAL widens a field's type across features (int -> int64 -> real -> string, dates -> string,
scalars -> lists, ...), so a part read alone could be typed otherwise than the whole file. Stage 1
asks GDAL itself for the whole file's types: it writes every feature *without its geometry* (the
geometry member becomes null; properties, id and any other member stay byte for byte) to a local
sequence, whose schema GDAL reads with its own rules (properties are a small share of a polygon
file). Each part is then read with a last "carrier" feature (null geometry) whose every property
holds a value of exactly the whole file's type, so GDAL widens the part's fields to those types and
converts the values itself, as it does when reading the whole file; the carrier row is dropped
before anything else sees it. The carrier comes last, not first, because GDAL's widening depends on
order at the edges (an integer at the int64 limit seen in an Integer64 field makes it Real, but
creates an Integer64 field when it comes first): after the part's own features, the fields are
created as the whole file's first features created them. This was preferred to converting values
after the read, because GDAL's conversions (a real written as text, an integer in a list field, a date in a text field)
would have to be re-implemented and could differ in the last digit. Stage 1 checks that GDAL reads
the carrier alone with the whole file's schema; each part's schema is checked against the planned
one, and a part typed otherwise fails the job naming the file and its features: never a silent
change.

The geometry family comes from the scanned geometry types of every feature; a GeometryCollection's
members are read apart in stage 1 (at most MAX_PLANNED_COLLECTIONS of them). Files the scanner
cannot plan safely (not a FeatureCollection, members other than type, id,
properties, geometry and bbox on a feature, duplicate members, deep nesting,
properties GDAL's carrier cannot reproduce) return None: prepare.py converts them once, as before.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyogrio

from core.errors import PermanentTaskError
from infrastructure.blob import BlobChanged, BlobStore
from services.context import TaskContext
from services.vector import columns as C
from services.vector import halves
from services.vector.chunks import MAX_CHUNKS, too_many_chunks
from services.vector.datetimes import label_of, type_label
from services.vector.ewkb import one_value
from services.vector.formats import FORMAT_NAMES
from services.vector.geojson_geometry import NotAGeometry, read_bare_geometry
from services.vector.geojson_scan import RS, FeatureScan, NotPlannable
from services.vector.geojson_stream import INT64_MAX, INT64_MIN, IntegerOutOfRange, legacy_crs_name
from services.vector.geometry import Reprojector, column_geometry_type
from services.vector.identifiers import ColumnNamer
from services.vector.slices import declared_family
from services.vector.sniff import check_head
from services.vector.source import GDAL_ERRORS, TEMP_PREFIX, LayerSource, Source

BLOCK = 4 * 1024 * 1024
PART_BYTES = 4 * 1024 * 1024  # GDAL's GeoJSON driver holds a part in memory, ~16x its size
# A feature larger than this is a part of its own, and its geometry is not read by GDAL (whose tree of a
# 37 MB geometry took a worker to 1 GB) but block by block into WKB (geojson_geometry.py).
HUGE_FEATURE_TEXT = PART_BYTES
MAX_PLANNED_COLLECTIONS = 256  # GeometryCollection features whose members stage 1 reads one by one
GEOJSON_GEOMETRY_RULE = "the geometry types stage 1 read must be the ones GDAL reads"


def _fetch(store: BlobStore, container: str, blob: str, version: str, offset: int, length: int | None,
           out: BinaryIO) -> None:
    """A byte range of the version stage 1 planned from."""
    try:
        store.download_range(container, blob, offset, length, out, version)
    except BlobChanged as exc:
        raise PermanentTaskError(exc.for_user(blob)) from None


@contextmanager
def _stream(store: BlobStore, container: str, blob: str, size: int, version: str) -> Iterator[BinaryIO]:
    """The planned version as a stream (a replaced file fails the job, as _fetch)."""
    try:
        with store.open_stream(container, blob, size, version) as f:
            yield f
    except BlobChanged as exc:
        raise PermanentTaskError(exc.for_user(blob)) from None


# A value of exactly each Arrow type GDAL gives a GeoJSON property (the carrier's properties).
_CARRIER_VALUES: dict[str, Any] = {
    "bool": True,
    "int32": 0,
    "int64": 2**40,
    "double": 0.5,
    "string": "x",
    "extension<arrow.json>": {"x": 0},
    "date32[day]": "2000-01-01",
    "timestamp[ms]": "2000-01-01T00:00:00",
    "time32[ms]": "00:00:00",
    "list<item: int32 not null>": [0],
    "list<item: int64 not null>": [2**40],
    "list<item: double not null>": [0.5],
    "list<item: string not null>": ["x"],
    "list<item: bool not null>": [True],
}
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= i <= 0x39 else 0x2E for i in range(256))  # a digit run -> "000..."
_TZ = re.compile(r"timestamp\[ms, tz=(UTC|[+-]\d\d:\d\d)\]")


def _carrier_value(type_name: str) -> Any:
    if type_name in _CARRIER_VALUES:
        return _CARRIER_VALUES[type_name]
    m = _TZ.fullmatch(type_name)
    if m:
        return "2000-01-01T00:00:00" + ("Z" if m.group(1) == "UTC" else m.group(1))
    raise NotPlannable(f"no carrier for {type_name}")


def _schema_of(path: Path) -> list[list[str]]:
    """[name, Arrow type] of the attribute fields GDAL reads from a file."""
    with pyogrio.open_arrow(str(path), batch_size=1, use_pyarrow=True) as (meta, reader):
        geom = meta.get("geometry_name") or "wkb_geometry"
        return [[f.name, str(f.type)] for f in reader.schema if f.name != geom]


def carrier(schema: list[list[str]]) -> bytes:
    properties = {name: _carrier_value(type_name) for name, type_name in schema}
    return json.dumps({"type": "Feature", "properties": properties, "geometry": None}).encode()


def plan_geojson(
    params: dict[str, Any], store: BlobStore, ctx: TaskContext
) -> tuple[dict[str, Any], ColumnNamer] | None:
    """The feature ranges of a GeoJSON FeatureCollection or sequence; None when it is to be converted once."""
    blob, container, ext = params["blob_name"], params["container_name"], params["file_extension"]
    conv = params.get("converter_params") or {}
    sequence = ext in ("geojsonl", "geojsons")
    version = store.blob_version(container, blob)
    size = store.blob_size(container, blob)
    if version is None or size is None:
        raise PermanentTaskError(f"file '{blob}' not found in container '{container}'")
    if size == 0:
        return None
    head = store.read_range(container, blob, 0, 64, version)
    check_head(head, ext, blob)
    label = f"{FORMAT_NAMES[ext]} '{blob}'"
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as tmp:
        folder = Path(tmp)
        types = folder / "types.geojsons"
        try:  # scanned while it downloads
            with _stream(store, container, blob, size, version) as f, open(types, "wb") as out:
                scan = FeatureScan(f, out, sequence)
                scan.run()
        except (NotPlannable, ValueError, UnicodeDecodeError):
            return None
        if not sequence and scan.top.get("type") != "FeatureCollection":
            return None
        if not scan.count:
            return None  # the convert-once path says "contains no features"
        try:
            long_digits = _check_integers(types, label)
            namer, columns, schema = _columns(_types_schema(types, scan.count, long_digits), label)
            check = folder / "carrier.geojson"
            check.write_bytes(b'{"type":"FeatureCollection","features":[' + carrier(schema) + b"]}")
            if _schema_of(check) != schema:
                return None
        except (NotPlannable, *GDAL_ERRORS):
            return None
        collected = _collection_families(store, container, blob, version, scan, folder)
        if collected is None:
            return None
    families = {declared_family(t) for t in scan.geometry_types} | collected
    if not families:
        return None  # no usable geometry: the convert-once path says so
    crs_name = legacy_crs_name(scan.top.get("crs"))
    crs = Reprojector(conv.get("crs") or crs_name or "EPSG:4326", label).description
    count = scan.count
    parts = _cuts(scan.starts, scan.ends, params.get("chunk_size"))
    if len(parts) > MAX_CHUNKS:
        raise too_many_chunks(label, int(params.get("chunk_size") or 0))
    return {
        "mode": "parts",
        "label": label,
        "source": {
            "version": version,
            "ext": ext,
            "label": label,
            "sequence": sequence,
            "uses_rs": scan.uses_rs,
            "field_types": schema,
            "source_crs_name": crs_name,
            "declared_geometry_type": column_geometry_type(families),
            "geometry_rule": GEOJSON_GEOMETRY_RULE,
        },
        "chunks": parts,
        "chunk_size": params.get("chunk_size") or PART_BYTES,
        "chunk_size_auto": not params.get("chunk_size"),
        "rows_estimate": count,
        "columns": columns,
        "geometry_type": column_geometry_type(families),
        "geometry_families": sorted(families),
        "declared_geometry_type": None,
        "source_crs": [crs],
        "layers": [],
    }, namer


def _collection_families(
    store: BlobStore, container: str, blob: str, version: str, scan: FeatureScan, folder: Path
) -> set[str] | None:
    """The families of the GeometryCollection features' members, each collection read block by block
    from its byte range (the scan knows a collection's type, not its members'); None when there are too
    many to read one by one, or one is not what the block reader takes: the file is converted once."""
    if len(scan.collections) > MAX_PLANNED_COLLECTIONS:
        return None
    spans = scan.geometry_spans
    families: set[str] = set()
    path = folder / "collection.json"
    for number in sorted(scan.collections):
        start, end = spans[number]
        with open(path, "wb") as f:
            _fetch(store, container, blob, version, start, end - start, f)
        try:
            with open(path, "rb") as f:
                kinds = read_bare_geometry(f).kinds
        except (NotAGeometry, ValueError):
            return None
        families |= {family for family in map(declared_family, kinds) if family}
    return families


def _check_integers(types: Path, label: str) -> bool:
    """Integers beyond 64 bits fail the job (GDAL would clamp them), as on the convert-once path. Only
    a copy with a run of 19 digits can hold one, so the records are decoded only then; returns whether
    it has such a run."""
    if not _long_digit_run(types):
        return False
    for index, record in enumerate(_records(types)):
        feature = json.loads(record)
        props = feature.get("properties") if isinstance(feature, dict) else None
        if isinstance(props, dict):
            for name, value in props.items():
                if type(value) is int and not INT64_MIN <= value <= INT64_MAX:
                    raise PermanentTaskError(f"{label}: {IntegerOutOfRange(index, str(name), value)}")
    return True


def _long_digit_run(path: Path) -> bool:
    tail = b""
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            if (tail + block).translate(_DIGITS_AS_ZERO).find(b"0" * 19) >= 0:
                return True
            tail = block[-18:]
    return False


def _records(path: Path) -> Iterator[bytes]:
    """The RS-separated records of the types copy, a block at a time (a record may span lines)."""
    rest = b""
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            *done, rest = (rest + block).split(RS)
            yield from (r for r in done if r.strip())
    if rest.strip():
        yield rest


def _read_schema(path: Path) -> tuple[dict[str, Any], pa.Schema]:
    """GDAL's description and schema of a GeoJSON sequence: its reader types the fields from every
    record when it opens the file, and every batch has that schema, so no record is read here."""
    with pyogrio.open_arrow(str(path), batch_size=1, use_pyarrow=True) as (meta, reader):
        return meta, reader.schema


def _types_schema(types: Path, records: int, long_digits: bool) -> list[pa.Field]:
    """The attribute fields of the geometry-less copy, as GDAL types the whole of it: in two halves at
    once when it is large (halves.py), cut at a record's RS once every RS is known to start a record.
    Not when it holds a 19-digit run: at the int64 limit GDAL's widening depends on the order it sees
    values in."""
    size = types.stat().st_size
    typed = None
    if size >= halves.MIN_BYTES and records >= 2 and not long_digits:
        middle = _record_start_after(types, size // 2, records)
        if middle is not None:
            typed = halves.typed_in_halves(types, 0, middle, size, _read_schema, GDAL_ERRORS)
    meta, schema = typed or _read_schema(types)
    geom = meta.get("geometry_name") or "wkb_geometry"
    return [f for f in schema if f.name != geom]


def _record_start_after(path: Path, offset: int, records: int) -> int | None:
    """Where the first record at or after `offset` starts, when the copy holds exactly one RS per record
    (a raw RS inside a record would make a cut there split a record); None otherwise."""
    found, seen, at = None, 0, 0
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            if found is None and at + len(block) > offset:
                i = block.find(RS, max(0, offset - at))
                found = None if i < 0 else at + i
            seen += block.count(RS)
            at += len(block)
    return found if seen == records and found else None


def _columns(fields: list[pa.Field], label: str) -> tuple[ColumnNamer, list[dict[str, str]], list[list[str]]]:
    """Column names and types as the convert-once path decides them, and the [name, Arrow type] of
    GDAL's fields (the whole file's schema)."""
    namer = ColumnNamer()
    merged: dict[str, str] = {}
    for field in fields:
        clean = namer.name(field.name)
        merged[clean] = C.merge_types(merged.get(clean, C.NULL), C.pg_type_of(C.normalized_type(field.type)))
    columns = [
        {"name": clean, "source_name": raw, "type": C.final_type(merged.get(clean, C.NULL))}
        for raw, clean in namer.mapping.items()
    ]
    C.check_column_count(label, len(columns))
    return namer, columns, [[f.name, str(f.type)] for f in fields]


def _cuts(starts: np.ndarray, ends: np.ndarray, chunk_size: int | None) -> list[dict[str, Any]]:
    """Runs of whole features: chunk_size features each, or the features starting in each PART_BYTES
    of the file; a feature larger than HUGE_FEATURE_TEXT is a part of its own either way."""
    count = len(starts)
    if chunk_size:
        k = max(1, math.ceil(count / chunk_size))
        cuts = [count * i // k for i in range(k)]
    else:
        cuts = [0, *(np.flatnonzero(np.diff(starts // PART_BYTES)) + 1).tolist()]
    huge = np.flatnonzero(ends - starts > HUGE_FEATURE_TEXT)
    cuts = sorted({*cuts, *huge.tolist(), *(huge + 1).tolist(), count})
    return [
        {"kind": "geojson_features", "features": [a, b], "bytes": [int(starts[a]), int(ends[b - 1])]}
        for a, b in itertools.pairwise(cuts)
        if b > a
    ]


def _opener(params: dict[str, Any], label: str, geometry: bytes | None = None) -> Any:
    """Reads the part's file with GDAL, checks its fields have the planned types and drops the carrier row
    (the last one). Fields are matched by name: a field the part's first features lack comes after the
    others, which changes nothing (columns are copied by name). `geometry`: the WKB of a one-feature
    part whose geometry GDAL read as null."""
    planned = {name: label_of(type_name) for name, type_name in params["field_types"]}
    first, end = params["features"]

    @contextmanager
    def open_part(path: str, **kwargs: Any) -> Iterator[tuple[dict[str, Any], Iterator[pa.RecordBatch]]]:
        with pyogrio.open_arrow(path, **kwargs) as (meta, reader):
            geom = meta.get("geometry_name") or "wkb_geometry"
            found = {f.name: type_label(f) for f in reader.schema if f.name != geom}
            if found != planned:
                diff = [f"'{n}' {t} (the whole file: {planned.get(n, 'no such field')})" for n, t in found.items()
                        if planned.get(n) != t] or ["with other fields"]
                raise PermanentTaskError(
                    f"{label}: features {first}..{end - 1} are typed {', '.join(diff)} when read on their own; "
                    "the file cannot be loaded in parts without changing values"
                )
            why = SEQUENCE_FRAMING if params["sequence"] else "the file's text is not GeoJSON as GDAL reads it"
            batches = _without_carrier(reader, end - first, label, first, why)
            if geometry is None:
                yield meta, batches
            else:
                yield meta | {"geometry_name": GEOMETRY_NAME}, _with_geometry(batches, geom, geometry)

    return open_part


GEOMETRY_NAME = "wkb_geometry"


def _with_geometry(batches: Iterator[pa.RecordBatch], name: str, wkb: bytes) -> Iterator[pa.RecordBatch]:
    """The one row of a huge feature's part with its geometry (read apart) in GDAL's null's place."""
    column = one_value(wkb)
    for batch in batches:
        if batch.num_rows != 1:
            raise PermanentTaskError(f"GDAL read {batch.num_rows} rows from a one-feature part")
        names = [n for n in batch.schema.names if n != name]
        arrays = [batch.column(n) for n in names]
        yield pa.RecordBatch.from_arrays([*arrays, column], names=[*names, GEOMETRY_NAME])


SEQUENCE_FRAMING = (
    "in a GeoJSON sequence each feature must be on a line of its own, or every feature must start with the record"
    " separator (RS, 0x1E): this file mixes the two or holds two features on one line"
)


def _without_carrier(
    reader: Iterator[pa.RecordBatch], features: int, label: str, first: int, why: str
) -> Iterator[pa.RecordBatch]:
    """The part's own features: the rows before the carrier. GDAL reading another number than the scan
    found means the two split the text differently (`why` says how that can be)."""
    seen = 0
    for batch in reader:
        keep = max(0, min(batch.num_rows, features - seen))
        seen += batch.num_rows
        if keep:
            yield batch if keep == batch.num_rows else batch.slice(0, keep)
    if seen != features + 1:
        raise PermanentTaskError(
            f"{label}: GDAL reads {max(seen - 1, 0)} features where features {first}..{first + features - 1} are;"
            f" {why}"
        )


def part_source(params: dict[str, Any], store: BlobStore, folder: Path) -> Source:
    """The features a stage 2 task reads: its byte range of the blob, then a carrier feature, as a small
    FeatureCollection (or sequence) GDAL reads; feature numbers stay file-wide."""
    blob, container = params["blob_name"], params["container_name"]
    lo, hi = params["bytes"]
    first = params["features"][0]
    schema = params["field_types"]
    if params["features"][1] - first == 1 and hi - lo > HUGE_FEATURE_TEXT:
        huge = _huge_feature_source(params, store, folder)
        if huge is not None:
            return huge
    if params["sequence"]:
        path = folder / "part.geojsons"
        with open(path, "wb") as f:
            rs = RS if params["uses_rs"] else b""
            f.write(rs)  # the range starts at its first record's '{'
            _fetch(store, container, blob, params["version"], lo, hi - lo, f)
            f.write(b"\n" + rs + carrier(schema) + b"\n")
    else:  # the collection's features as a sequence: GDAL's GeoJSONSeq driver types them as it typed the
        raw = folder / "part.json"  # types copy (the GeoJSON driver reads integers at the int64 limits as reals)
        with open(raw, "wb") as f:
            f.write(b'{"features":[\n')
            _fetch(store, container, blob, params["version"], lo, hi - lo, f)
            f.write(b"\n]}")
        path = folder / "part.geojsons"
        with open(raw, "rb") as f, open(path, "wb") as out:
            scan = FeatureScan(f, out, sequence=False, whole=True)
            try:
                scan.run()
            except (NotPlannable, ValueError) as exc:
                raise PermanentTaskError(f"{params['label']}: features {first}.. cannot be read again: {exc}") from None
            out.write(RS + carrier(schema) + b"\n")
        raw.unlink()
        if scan.count != params["features"][1] - first:
            raise PermanentTaskError(f"{params['label']}: the bytes of features {first}.. hold another count")
    label = params["label"]
    conv = params.get("converter_params") or {}
    return Source(
        blob_name=blob,
        ext=params["ext"],
        layers=[LayerSource(str(path), None, label, offset=first, opener=_opener(params, label))],
        crs=conv.get("crs") or params.get("source_crs_name"),
    )


def _huge_feature_source(params: dict[str, Any], store: BlobStore, folder: Path) -> Source | None:
    """One feature larger than HUGE_FEATURE_TEXT: GDAL reads it with a null geometry (its properties typed
    as in the whole file), and its geometry's text is read block by block into WKB, which takes the null's
    place. None when that text is not one geometry the block reader takes (null, or unusual): GDAL then
    reads the feature whole."""
    blob, container, label = params["blob_name"], params["container_name"], params["label"]
    lo, hi = params["bytes"]
    raw = folder / "feature.json"
    with open(raw, "wb") as f:
        f.write(b"" if params["sequence"] else b'{"features":[\n')
        _fetch(store, container, blob, params["version"], lo, hi - lo, f)
        f.write(b"\n" if params["sequence"] else b"\n]}")
    path = folder / "part.geojsons"
    with open(raw, "rb") as f, open(path, "wb") as out:
        scan = FeatureScan(f, out, sequence=params["sequence"])
        try:
            scan.run()
        except (NotPlannable, ValueError) as exc:
            raise PermanentTaskError(f"{label}: feature {params['features'][0]} cannot be read again: {exc}") from None
        out.write(RS + carrier(params["field_types"]) + b"\n")
    if scan.count != 1 or len(scan.geometry_spans) != 1:
        raise PermanentTaskError(f"{label}: the bytes of feature {params['features'][0]} hold another count")
    start, end = scan.geometry_spans[0]
    try:
        with open(raw, "rb") as f:
            f.seek(start)
            geometry = read_bare_geometry(_Bounded(f, end - start))
    except NotAGeometry:
        return None
    except ValueError as exc:
        raise PermanentTaskError(f"{label}: feature {params['features'][0]} has a geometry that is not valid "
                                 f"GeoJSON: {exc}") from None
    finally:
        raw.unlink()
    conv = params.get("converter_params") or {}
    opener = _opener(params, label, geometry.wkb)
    return Source(
        blob_name=blob,
        ext=params["ext"],
        layers=[LayerSource(str(path), None, label, offset=params["features"][0], opener=opener)],
        crs=conv.get("crs") or params.get("source_crs_name"),
    )


class _Bounded(io.RawIOBase):
    """The next `size` bytes of a file, as a file of their own."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.left = f, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        got = self.f.readinto(memoryview(buffer)[:n]) if n else 0
        self.left -= got
        return got


def describe_part(params: dict[str, Any]) -> str:
    return f"features {params['features'][0]}..{params['features'][1] - 1}"

