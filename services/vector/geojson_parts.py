"""GeoJSON in byte ranges of whole features: the "geojson_features" kind of part (parts.py).

Stage 1 streams the blob once (range reads conditioned on its ETag, a block at a time: never the whole
file in memory) through a scanner that finds where each feature starts and ends in the original file
(a FeatureCollection's `features` array, or the records of a GeoJSON sequence), and the type of each
feature's geometry, without decoding coordinates: runs of numbers, commas and brackets are counted,
not parsed. Parts are runs of whole features, cut by bytes (PART_BYTES) or by chunk_size features.
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
created as the whole file's first features created them. This was preferred to converting values after the read, because
GDAL's conversions (a real written as text, an integer in a list field, a date in a text field)
would have to be re-implemented and could differ in the last digit. Stage 1 checks that GDAL reads
the carrier alone with the whole file's schema; each part's schema is checked against the planned
one, and a part typed otherwise fails the job naming the file and its features: never a silent
change.

The geometry family comes from the scanned geometry types of every feature. Files the scanner
cannot plan safely (not a FeatureCollection, a GeometryCollection, members other than type, id,
properties, geometry and bbox on a feature, duplicate members, nesting deeper than MAX_DEPTH,
properties GDAL's carrier cannot reproduce) return None: prepare.py converts them once, as before.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyogrio

from core.errors import PermanentTaskError
from infrastructure.blob import BlobChanged, BlobStore
from services.context import TaskContext
from services.vector import columns as C
from services.vector.chunks import MAX_CHUNKS, too_many_chunks
from services.vector.formats import FORMAT_NAMES
from services.vector.geojson_stream import INT64_MAX, INT64_MIN, IntegerOutOfRange
from services.vector.geometry import Reprojector, column_geometry_type
from services.vector.identifiers import ColumnNamer
from services.vector.sniff import check_head
from services.vector.source import GDAL_ERRORS, TEMP_PREFIX, LayerSource, Source

BLOCK = 4 * 1024 * 1024
PART_BYTES = 4 * 1024 * 1024  # GDAL's GeoJSON driver holds a part in memory, ~16x its size
MAX_DEPTH = 64  # deeper files take the convert-once path (which names the problem)
RS = b"\x1e"
_FAMILY = {
    "Point": "point", "MultiPoint": "point",
    "LineString": "line", "MultiLineString": "line",
    "Polygon": "polygon", "MultiPolygon": "polygon",
}  # fmt: skip
_FEATURE_MEMBERS = {"type", "id", "properties", "geometry", "bbox"}
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_RUN = re.compile(rb'[^"{}]+')
_DIGIT = re.compile(rb"[0-9]")
_DEEP = b"[" * 16  # arrays this deep are no coordinates
_BETWEEN_RECORDS = re.compile(rb"[ \t\r\n\x1e]*")
GEOJSON_GEOMETRY_RULE = "the geometry types stage 1 read must be the ones GDAL reads"


class NotPlannable(Exception):
    """The file is of a shape these parts do not handle: it is converted once instead."""


class _Scan:
    """One pass over the file: each feature's byte span and geometry type, and a types-only copy of the
    features (geometry member set to null) written to `types_out`. Strings, braces and runs of anything
    else are the tokens; brackets inside runs are counted, so coordinates cost no Python work per vertex."""

    def __init__(self, f: BinaryIO, types_out: BinaryIO, sequence: bool, whole: bool = False) -> None:
        self.f, self.out, self.sequence = f, types_out, sequence
        self.whole = whole  # write each feature as it is (geometry included): a part as a sequence
        self.buf, self.base, self.pos, self.eof = b"", 0, 0, False
        self.depth = 0
        self.fd = 0 if sequence else 2  # depth outside a feature's braces
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.geometry_types: set[str] = set()
        self.uses_rs = False
        self.top: dict[str, Any] = {}  # FeatureCollection members other than features, decoded
        self._key: dict[int, bytes] = {}  # the current member's key at each depth
        self._pending: tuple[bytes, int] | None = None  # a string that may be a key
        self._top_start: int | None = None  # where the current top-level member's value starts
        self._feature_keys: set[bytes] = set()
        self._in_features = False
        self._features_done = False
        self._commas = 0  # commas since the last feature
        self._top_closed = False
        self._geom_type: bytes | None = None
        self._geom_coords = False
        self._piece: int | None = None  # file offset of the feature text still to write out

    def _fill(self) -> bool:
        if self.eof:
            return False
        held = [o - self.base for o in (self._piece, self._top_start) if o is not None]
        keep = min([self.pos, *held])
        more = self.f.read(BLOCK)
        if not more:
            self.eof = True
            return False
        self.buf = self.buf[keep:] + more
        self.base += keep
        self.pos -= keep
        return True

    def _text(self, a: int, b: int) -> bytes:
        return self.buf[a - self.base : b - self.base]

    def _inside(self) -> bool:
        return self.sequence or self._in_features

    def run(self) -> None:
        self._fill()
        if self.buf.startswith(b"\xef\xbb\xbf"):
            self.pos = 3
        while True:
            if self.pos >= len(self.buf) and not self._fill():
                break
            c = self.buf[self.pos]
            at = self.base + self.pos
            if c == 0x22:  # '"'
                m = _STRING.match(self.buf, self.pos)
                if m is None or (m.end() == len(self.buf) and not self.eof):
                    if self._fill():
                        continue
                    if m is None:
                        raise ValueError("the file ends inside a string")
                assert m is not None
                self.pos = m.end()
                self._string(m.group(), at)
            elif c == 0x7B:  # '{'
                self.pos += 1
                self._open_brace(at)
            elif c == 0x7D:  # '}'
                self.pos += 1
                self._close_brace(at)
            else:
                m = _RUN.match(self.buf, self.pos)
                assert m is not None
                self.pos = m.end()
                self._run(m.group())
        if self.depth != 0 or self._pending is not None:
            raise ValueError("the file ends inside an object or array")

    def _string(self, text: bytes, at: int) -> None:
        if self._pending is not None:
            raise NotPlannable("two strings in a row")
        self._pending = (text, at)

    def _resolve(self, run: bytes) -> bytes:
        """A pending string followed by ':' is a member's key, otherwise a value."""
        if self._pending is None:
            return run
        text, at = self._pending
        self._pending = None
        stripped = run.lstrip(b" \t\r\n")
        if stripped.startswith(b":"):
            self._member(text, at, self.base + self.pos - len(stripped) + 1)
            return stripped[1:]
        d = self.depth
        if d == self.fd + 2 and self._key.get(d - 1) == b'"geometry"' and self._key.get(d) == b'"type"':
            self._geom_type = text
        return run

    def _member(self, key: bytes, at: int, value_at: int) -> None:
        d = self.depth
        self._end_member(d, at, by_key=True)
        self._key[d] = key
        if d == 1 and not self.sequence and key != b'"features"':
            self._top_start = value_at
        if d == self.fd + 1 and self._inside():
            if key in self._feature_keys:
                raise NotPlannable("a feature repeats a member")
            self._feature_keys.add(key)
            if json.loads(key) not in _FEATURE_MEMBERS:
                raise NotPlannable("a feature has a foreign member")
            if key == b'"geometry"' and not self.whole:  # the types copy gets the text up to here, then null
                assert self._piece is not None
                self.out.write(self._text(self._piece, value_at) + b" null")
                self._piece = None
                self._geom_type, self._geom_coords = None, False

    def _end_member(self, d: int, at: int, by_key: bool) -> None:
        """The member whose value ran at depth d ends at `at` (the next key, or the closing brace)."""
        key = self._key.pop(d, None)
        if key is None:
            return
        if d == 1 and not self.sequence and self._top_start is not None:
            if at - self._top_start > 1024**2:
                raise NotPlannable("a large top-level member")
            value = self._text(self._top_start, at).strip(b" \t\r\n").rstrip(b",")
            self.top[json.loads(key)] = json.loads(value)
            self._top_start = None
        if d == self.fd + 1 and self._inside() and key == b'"geometry"' and not self.whole:
            self._piece = at
            if by_key:
                self.out.write(b",")
            if self._geom_type is not None and self._geom_coords:
                name = json.loads(self._geom_type)
                if name == "GeometryCollection":
                    raise NotPlannable("a GeometryCollection")
                if name in _FAMILY:
                    self.geometry_types.add(name)

    def _open_brace(self, at: int) -> None:
        self._resolve(b"")
        if self.depth == 0 and not self.sequence:
            if self._top_closed:
                raise NotPlannable("two top-level values")
        elif self.depth == self.fd:
            if not self._inside():
                raise NotPlannable("an object where a member is expected")
            if not self.sequence and self._commas != (1 if self.ends else 0):
                raise NotPlannable("features not separated by one comma")
            self._commas = 0
            self.starts.append(at)
            self.out.write(RS)
            self._feature_keys = set()
            self._piece = at
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise NotPlannable("deep nesting")

    def _close_brace(self, at: int) -> None:
        self._resolve(b"")
        self._end_member(self.depth, at, by_key=False)
        self.depth -= 1
        if self.depth < 0:
            raise ValueError("a '}' closes nothing")
        if self.depth == 0 and not self.sequence:
            self._top_closed = True
        if self.depth == self.fd and self._inside():
            self.ends.append(at + 1)
            assert self._piece is not None
            self.out.write(self._text(self._piece, at + 1) + b"\n")
            self._piece = None

    def _run(self, run: bytes) -> None:
        run = self._resolve(run)
        d = self.depth
        if not self.sequence and d == 0:
            if run.strip(b" \t\r\n"):
                raise NotPlannable("not a JSON object")
            return
        if not self.sequence and d == 1 and self._key.get(1) == b'"features"' and not self._in_features:
            stripped = run.lstrip(b" \t\r\n")
            if self._features_done or not stripped.startswith(b"["):
                raise NotPlannable("features is not one array")
            self._in_features = True
            self.depth = d = 2
            run = stripped[1:]
        if d == self.fd and self._inside():
            if self.sequence:
                if _BETWEEN_RECORDS.fullmatch(run) is None:
                    raise NotPlannable("text between the records of a sequence")
                self.uses_rs = self.uses_rs or RS in run
                return
            closing = run.find(b"]")
            between = run if closing < 0 else run[:closing]
            if between.strip(b" \t\r\n,"):
                raise NotPlannable("text between features")
            self._commas += between.count(b",")
            if closing >= 0:
                if self._commas:
                    raise NotPlannable("a comma after the last feature")
                self._in_features, self._features_done = False, True
                self.depth = 1
                rest = run[closing + 1 :]
                if rest.strip(b" \t\r\n,") or rest.count(b",") > 1:
                    raise NotPlannable("text after the features")
            return
        if self._piece is None and d > self.fd + 1 and not self._geom_coords:
            self._geom_coords = _DIGIT.search(run) is not None
        self.depth += run.count(b"[") - run.count(b"]")
        if self.depth > MAX_DEPTH or _DEEP in run:
            raise NotPlannable("deep nesting")
        if self._inside() and d > self.fd and self.depth <= self.fd:
            raise NotPlannable("an array closes outside its feature")


def _fetch(store: BlobStore, container: str, blob: str, version: str, offset: int, length: int | None,
           out: BinaryIO) -> None:
    """A byte range of the version stage 1 planned from."""
    try:
        store.download_range(container, blob, offset, length, out, version)
    except BlobChanged as exc:
        state = "was deleted" if exc.deleted else "was replaced"
        raise PermanentTaskError(f"file '{blob}' {state} while the job was loading it; submit the job again") from None


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
        local = folder / "source.json"
        with open(local, "wb") as f:
            _fetch(store, container, blob, version, 0, None, f)
        types = folder / "types.geojsons"
        try:
            with open(local, "rb") as f, open(types, "wb") as out:
                scan = _Scan(f, out, sequence)
                scan.run()
        except (NotPlannable, ValueError, UnicodeDecodeError):
            return None
        local.unlink()
        if not sequence and scan.top.get("type") != "FeatureCollection":
            return None
        if not scan.starts:
            return None  # the convert-once path says "contains no features"
        try:
            _check_integers(types, label)
            schema = _schema_of(types)
            namer, columns = _columns(types, label)
            check = folder / "carrier.geojson"
            check.write_bytes(b'{"type":"FeatureCollection","features":[' + carrier(schema) + b"]}")
            if _schema_of(check) != schema:
                return None
        except (NotPlannable, *GDAL_ERRORS):
            return None
    families = {_FAMILY[t] for t in scan.geometry_types}
    if not families:
        return None  # no usable geometry: the convert-once path says so
    crs_name = _crs_name(scan.top)
    crs = Reprojector(conv.get("crs") or crs_name or "EPSG:4326", label).description
    count = len(scan.starts)
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


def _crs_name(top: dict[str, Any]) -> str | None:
    crs = top.get("crs")
    if isinstance(crs, dict) and isinstance(crs.get("properties"), dict):
        name = crs["properties"].get("name")
        return name if isinstance(name, str) else None
    return None


def _check_integers(types: Path, label: str) -> None:
    """Every record is a Feature; integers beyond 64 bits fail the job (GDAL would clamp them), as on the
    convert-once path."""
    for index, record in enumerate(_records(types)):
        feature = json.loads(record)
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise NotPlannable("a record that is not a Feature")
        props = feature.get("properties")
        if isinstance(props, dict):
            for name, value in props.items():
                if type(value) is int and not INT64_MIN <= value <= INT64_MAX:
                    raise PermanentTaskError(f"{label}: {IntegerOutOfRange(index, str(name), value)}")


def _records(path: Path) -> Iterator[bytes]:
    """The RS-separated records of the types copy, a block at a time (a record may span lines)."""
    rest = b""
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            *done, rest = (rest + block).split(RS)
            yield from (r for r in done if r.strip())
    if rest.strip():
        yield rest


def _columns(types: Path, label: str) -> tuple[ColumnNamer, list[dict[str, str]]]:
    """Column names and types as the convert-once path decides them from GDAL's batches."""
    namer = ColumnNamer()
    merged: dict[str, str] = {}
    with pyogrio.open_arrow(str(types), batch_size=10_000, use_pyarrow=True) as (meta, reader):
        geom = meta.get("geometry_name") or "wkb_geometry"
        for batch in reader:
            for field, col in zip(batch.schema, batch.columns, strict=True):
                if field.name == geom:
                    continue
                clean = namer.name(field.name)
                merged[clean] = C.merge_types(merged.get(clean, C.NULL), C.pg_type_of(C.normalize(col).type))
    columns = [
        {"name": clean, "source_name": raw, "type": C.final_type(merged.get(clean, C.NULL))}
        for raw, clean in namer.mapping.items()
    ]
    C.check_column_count(label, len(columns))
    return namer, columns


def _cuts(starts: list[int], ends: list[int], chunk_size: int | None) -> list[dict[str, Any]]:
    """Runs of whole features: chunk_size features each, or about PART_BYTES of text each."""
    count = len(starts)
    cuts = [0]
    if chunk_size:
        k = max(1, math.ceil(count / chunk_size))
        cuts = [count * i // k for i in range(k)]
    else:
        for i in range(1, count):
            if ends[i] - starts[cuts[-1]] > PART_BYTES:
                cuts.append(i)
    cuts.append(count)
    return [
        {"kind": "geojson_features", "features": [a, b], "bytes": [starts[a], ends[b - 1]]}
        for a, b in itertools.pairwise(cuts)
        if b > a
    ]


def _opener(params: dict[str, Any], label: str) -> Any:
    """Reads the part's file with GDAL, checks its fields have the planned types and drops the carrier row
    (the last one). Fields are matched by name: a field the part's first features lack comes after the
    others, which changes nothing (columns are copied by name)."""
    planned = {name: type_name for name, type_name in params["field_types"]}
    first, end = params["features"]

    @contextmanager
    def open_part(path: str, **kwargs: Any) -> Iterator[tuple[dict[str, Any], Iterator[pa.RecordBatch]]]:
        with pyogrio.open_arrow(path, **kwargs) as (meta, reader):
            geom = meta.get("geometry_name") or "wkb_geometry"
            found = {f.name: str(f.type) for f in reader.schema if f.name != geom}
            if found != planned:
                diff = [f"'{n}' {t} (the whole file: {planned.get(n, 'no such field')})" for n, t in found.items()
                        if planned.get(n) != t] or ["with other fields"]
                raise PermanentTaskError(
                    f"{label}: features {first}..{end - 1} are typed {', '.join(diff)} when read on their own; "
                    "the file cannot be loaded in parts without changing values"
                )
            yield meta, _without_carrier(reader, end - first)

    return open_part


def _without_carrier(reader: Iterator[pa.RecordBatch], features: int) -> Iterator[pa.RecordBatch]:
    """The part's own features: the rows before the carrier."""
    seen = 0
    for batch in reader:
        keep = max(0, min(batch.num_rows, features - seen))
        seen += batch.num_rows
        if keep:
            yield batch if keep == batch.num_rows else batch.slice(0, keep)
    if seen != features + 1:
        raise PermanentTaskError(f"GDAL read {seen - 1} features from a part planned with {features}")


def part_source(params: dict[str, Any], store: BlobStore, folder: Path) -> Source:
    """The features a stage 2 task reads: its byte range of the blob, then a carrier feature, as a small
    FeatureCollection (or sequence) GDAL reads; feature numbers stay file-wide."""
    blob, container = params["blob_name"], params["container_name"]
    lo, hi = params["bytes"]
    first = params["features"][0]
    schema = params["field_types"]
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
            scan = _Scan(f, out, sequence=False, whole=True)
            try:
                scan.run()
            except (NotPlannable, ValueError) as exc:
                raise PermanentTaskError(f"{params['label']}: features {first}.. cannot be read again: {exc}") from None
            out.write(RS + carrier(schema) + b"\n")
        raw.unlink()
        if len(scan.starts) != params["features"][1] - first:
            raise PermanentTaskError(f"{params['label']}: the bytes of features {first}.. hold another count")
    label = params["label"]
    conv = params.get("converter_params") or {}
    return Source(
        blob_name=blob,
        ext=params["ext"],
        layers=[LayerSource(str(path), None, label, offset=first, opener=_opener(params, label))],
        crs=conv.get("crs") or params.get("source_crs_name"),
    )


def describe_part(params: dict[str, Any]) -> str:
    return f"features {params['features'][0]}..{params['features'][1] - 1}"

