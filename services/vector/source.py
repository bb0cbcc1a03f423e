"""Getting a source file onto local disk and deciding which GDAL dataset/layers to read.

Blobs are streamed to a temporary folder (a Shapefile's .shx/.dbf/.prj/.cpg come along).
Archives are never extracted: their members are read through GDAL's /vsizip/, after checking
member names and uncompressed sizes.
"""

from __future__ import annotations

import posixpath
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyogrio
import shapely

from core.errors import PermanentTaskError
from infrastructure.blob import BlobStore
from infrastructure.memory import release_free_memory
from services.vector.ewkb import one_value
from services.vector.formats import FORMAT_NAMES
from services.vector.geojson_geometry import BareGeometry, NestedTooDeep, NotAGeometry, read_bare_geometry
from services.vector.geojson_stream import IntegerOutOfRange, SequenceInfo, to_sequence

# What GDAL raises for unreadable data (pyogrio's errors are RuntimeErrors).
GDAL_ERRORS = (RuntimeError, OSError, ValueError)
SHAPEFILE_SIDECARS = (".shx", ".dbf", ".prj", ".cpg")
REQUIRED_SIDECARS = (".shx", ".dbf")
TEMP_PREFIX = "geoetl-src-"  # the worker's download folder; its path never reaches a user
# A member over RATIO_CHECK_BYTES that deflated more than MAX_COMPRESSION_RATIO:1 is taken for a zip bomb
# (real vector data deflates 3-50:1; a run of one byte, the bomb's trick, about 1000:1).
MAX_COMPRESSION_RATIO = 200
RATIO_CHECK_BYTES = 100 * 1024**2
_LOCAL_PATH = re.compile(r"(?:/vsizip/)?/\S*?" + TEMP_PREFIX + r"[^/\s]+/source\.[a-z]+(?:\.zip)?")
_IN_PLACE_PATH = re.compile(r"/vsiaz/[^\s'\"]+")  # a blob GDAL reads in place (slices.py)
_GDAL_DRIVER_HINT = re.compile(r";? ?It might help to specify the correct driver explicitly.*$", re.S)


@dataclass
class LayerSource:
    """One layer GDAL should read."""

    path: str
    layer: str | None
    label: str  # how messages name it
    where: str | None = None  # attribute filter (a GeoPackage slice's fid range)
    offset: int = 0  # features before this slice: keeps feature numbers in messages file-wide
    opener: Any = None  # reads the layer instead of pyogrio.open_arrow (GeoParquet: geoparquet.opener)


@dataclass
class Source:
    blob_name: str
    ext: str
    layers: list[LayerSource]
    open_options: dict[str, str] = field(default_factory=dict)
    encoding: str | None = None
    crs: str | None = None  # converter_params.crs: wins over what the file declares
    feature_count: int = -1  # -1 when GDAL cannot tell without reading everything
    encoding_used: str | None = None  # the DBF encoding text was decoded from (job result)


def shapefile_stem(blob_name: str) -> str:
    return blob_name[:-4] if blob_name.lower().endswith(".shp") else blob_name


def sidecar_candidates(blob_name: str, suffix: str) -> list[str]:
    stem = shapefile_stem(blob_name)
    upper = blob_name.endswith(".SHP")
    names = [stem + (suffix.upper() if upper else suffix), stem + suffix, stem + suffix.upper()]
    return list(dict.fromkeys(names))


def find_sidecar(store: BlobStore, container: str, blob_name: str, suffix: str) -> tuple[str, int] | None:
    for name in sidecar_candidates(blob_name, suffix):
        size = store.blob_size(container, name)
        if size is not None:
            return name, size
    return None


def download(store: BlobStore, container: str, blob_name: str, ext: str, folder: Path) -> Path:
    """Stream the blob (and a Shapefile's siblings) into folder; returns the local path of the main file."""
    local = folder / f"source.{ext}"
    if store.blob_size(container, blob_name) is None:
        raise PermanentTaskError(f"file '{blob_name}' not found in container '{container}'")
    store.download_to_file(container, blob_name, local)
    if ext == "shp":
        for suffix in SHAPEFILE_SIDECARS:
            found = find_sidecar(store, container, blob_name, suffix)
            if found is None:
                if suffix in REQUIRED_SIDECARS:
                    raise PermanentTaskError(
                        f"Shapefile '{blob_name}' has no '{shapefile_stem(blob_name)}{suffix}' beside it "
                        f"in container '{container}'; upload the .shp with its .shx and .dbf"
                    )
                continue
            store.download_to_file(container, found[0], folder / f"source{suffix}")
        _check_local_shapefile(folder, blob_name)
    return local


def check_distinct_fields(names: list[str], label: str) -> None:
    """Two fields of one name (a CSV header or a DBF can hold them): which of them a column, a parameter
    or a query means would be a guess, so the file is refused naming the field."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise PermanentTaskError(
                f"{label} has more than one field named '{name}'; give each field its own name and submit again"
            )
        seen.add(name)


def scrub(message: str, blob_name: str) -> str:
    """A GDAL message as a user should read it: the worker's temporary paths become the blob's name."""
    message = _IN_PLACE_PATH.sub(blob_name, _LOCAL_PATH.sub(blob_name, message))
    return _GDAL_DRIVER_HINT.sub("", message).strip()


def shapefile_problem(
    names: tuple[str, str, str], shp: tuple[bytes, int], shx: tuple[bytes, int], dbf: tuple[bytes, int]
) -> str | None:
    """What is wrong with a Shapefile's .shp/.shx/.dbf, judged from their headers and sizes (None when fine).

    GDAL reads a truncated .shp as null geometries and stops at a truncated .dbf's last whole record,
    so a cut-off upload would otherwise load part of its rows without a word.
    """
    shp_name, shx_name, dbf_name = names
    for name, (head, size) in ((shp_name, shp), (shx_name, shx)):
        if len(head) < 100 or struct.unpack(">i", head[:4])[0] != 9994:
            return f"'{name}' is not part of a Shapefile (its header is not a Shapefile header)"
        declared = struct.unpack(">i", head[24:28])[0] * 2
        if size < declared:
            return f"'{name}' is truncated: its header says {declared} bytes, the file has {size}"
    if len(dbf[0]) < 12:
        return f"'{dbf_name}' is truncated: it has no complete dBASE header"
    records, header_len, record_len = struct.unpack("<IHH", dbf[0][4:12])
    declared = header_len + records * record_len
    if dbf[1] < declared:
        return (
            f"'{dbf_name}' is truncated: its header declares {records} records ({declared} bytes), "
            f"the file has {dbf[1]} bytes"
        )
    shapes = (shx[1] - 100) // 8
    if shapes != records:
        return f"'{shp_name}' holds {shapes} shapes but '{dbf_name}' holds {records} records; they must match"
    return None


def _check_local_shapefile(folder: Path, blob_name: str) -> None:
    parts = []
    for suffix in (".shp", ".shx", ".dbf"):
        path = folder / f"source{suffix}"
        with open(path, "rb") as f:
            parts.append((f.read(100), path.stat().st_size))
    stem = shapefile_stem(blob_name)
    problem = shapefile_problem((blob_name, stem + ".shx", stem + ".dbf"), parts[0], parts[1], parts[2])
    if problem:
        raise PermanentTaskError(problem)


def _check_zipped_shapefile(
    local: Path, members: list[zipfile.ZipInfo], chosen: zipfile.ZipInfo, blob_name: str
) -> None:
    """A zipped Shapefile needs its .shx and .dbf beside the .shp, whole."""
    stem = chosen.filename.rsplit(".", 1)[0]
    found: dict[str, zipfile.ZipInfo] = {".shp": chosen}
    for suffix in REQUIRED_SIDECARS:
        sidecar = [m for m in members if m.filename.rsplit(".", 1)[0] == stem and m.filename.lower().endswith(suffix)]
        if not sidecar:
            raise PermanentTaskError(
                f"Shapefile '{chosen.filename}' in '{blob_name}' has no '{stem}{suffix}' beside it; "
                "zip the .shp with its .shx and .dbf"
            )
        found[suffix] = sidecar[0]
    try:
        with zipfile.ZipFile(local) as zf:
            heads = {suffix: (zf.open(m).read(100), m.file_size) for suffix, m in found.items()}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
        raise PermanentTaskError(f"could not read the Shapefile in '{blob_name}': {exc}") from None
    names = (found[".shp"].filename, found[".shx"].filename, found[".dbf"].filename)
    problem = shapefile_problem(names, heads[".shp"], heads[".shx"], heads[".dbf"])
    if problem:
        raise PermanentTaskError(f"Shapefile in '{blob_name}': {problem}")


def _safe_member(name: str) -> bool:
    parts = name.split("/")
    return not (name.startswith("/") or "\\" in name or ".." in parts or name.startswith("__MACOSX/"))


def _zip_members(local: Path, blob_name: str) -> list[zipfile.ZipInfo]:
    if not zipfile.is_zipfile(local):
        raise PermanentTaskError(f"'{blob_name}' is not a zip archive (or it is truncated)")
    with zipfile.ZipFile(local) as zf:
        return [i for i in zf.infolist() if not i.is_dir() and _safe_member(i.filename)]


def _pick_member(
    members: list[zipfile.ZipInfo], suffix: str, wanted: str | None, param: str, blob_name: str, default: str | None
) -> zipfile.ZipInfo:
    candidates = [m for m in members if m.filename.lower().endswith(suffix)]
    listing = ", ".join(m.filename for m in candidates) or "none"
    if wanted:
        exact = [m for m in candidates if m.filename == wanted]
        by_base = [m for m in candidates if posixpath.basename(m.filename) == wanted]
        chosen = exact or by_base
        if len(chosen) != 1:
            why = "is ambiguous in" if len(chosen) > 1 else "is not in"
            raise PermanentTaskError(
                f"converter_params.{param} '{wanted}' {why} '{blob_name}'; its {suffix} files are: {listing}"
            )
        return chosen[0]
    if default:
        for m in candidates:
            if m.filename.lower() == default:
                return m
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise PermanentTaskError(f"'{blob_name}' contains no {suffix} file")
    raise PermanentTaskError(
        f"'{blob_name}' contains several {suffix} files ({listing}); choose one with converter_params.{param}"
    )


def _check_uncompressed(members: list[zipfile.ZipInfo], chosen: zipfile.ZipInfo, blob_name: str, limit: int) -> None:
    """The members GDAL will read: not encrypted, and (zip bomb guard) not inflating beyond the source size
    limit, nor, when big, by a ratio no real data reaches."""
    stem = chosen.filename.rsplit(".", 1)[0]
    read = [m for m in members if m.filename.rsplit(".", 1)[0] == stem]
    _check_members(read, chosen.filename, blob_name, limit)


def _check_members(read: list[zipfile.ZipInfo], name: str, blob_name: str, limit: int) -> None:
    """The zip guards on the members GDAL will read as `name`."""
    total = sum(m.file_size for m in read)
    if total > limit:
        raise PermanentTaskError(
            f"'{name}' in '{blob_name}' inflates to {total} bytes, more than the limit of {limit} bytes"
        )
    for m in read:
        if m.flag_bits & 0x1:
            raise PermanentTaskError(
                f"'{m.filename}' in '{blob_name}' is encrypted; upload the archive without a password"
            )
        ratio = m.file_size / max(m.compress_size, 1)
        if m.file_size > RATIO_CHECK_BYTES and ratio > MAX_COMPRESSION_RATIO:
            raise PermanentTaskError(
                f"'{m.filename}' in '{blob_name}' inflates from {m.compress_size} to {m.file_size} bytes "
                f"(compression ratio {ratio:.0f}:1; more than {MAX_COMPRESSION_RATIO}:1 is refused for members "
                f"over {RATIO_CHECK_BYTES // 1024**2} MiB as a likely zip bomb)"
            )


def _layers_of(path: str, blob_name: str) -> list[tuple[str, str | None]]:
    try:
        return [(str(n), None if t is None else str(t)) for n, t in pyogrio.list_layers(path)]
    except GDAL_ERRORS as exc:
        raise PermanentTaskError(f"could not open '{blob_name}': {scrub(str(exc), blob_name)}") from None


def gpkg_layers(path: str, blob_name: str, layer_name: str | None) -> list[LayerSource]:
    layers = _layers_of(path, blob_name)
    names = [n for n, _ in layers]
    spatial = [n for n, t in layers if t is not None]
    if layer_name:
        if layer_name not in names:
            raise PermanentTaskError(
                f"converter_params.layer_name '{layer_name}' is not a layer of '{blob_name}'; "
                f"its layers are: {', '.join(names) or 'none'}"
            )
        return [LayerSource(path, layer_name, f"'{blob_name}' layer '{layer_name}'")]
    if len(spatial) == 1:
        return [LayerSource(path, spatial[0], f"'{blob_name}' layer '{spatial[0]}'")]
    if not spatial:
        raise PermanentTaskError(f"GeoPackage '{blob_name}' has no layer with geometries")
    raise PermanentTaskError(
        f"GeoPackage '{blob_name}' has {len(spatial)} layers ({', '.join(spatial)}); "
        "choose one with converter_params.layer_name"
    )


def _kml_layers(path: str, blob_name: str, layer_name: str | None) -> list[LayerSource]:
    names = [n for n, _ in _layers_of(path, blob_name)]
    if layer_name:
        if layer_name not in names:
            raise PermanentTaskError(
                f"converter_params.layer_name '{layer_name}' is not a layer of '{blob_name}'; "
                f"its layers are: {', '.join(names) or 'none'}"
            )
        names = [layer_name]
    return [LayerSource(path, n, f"'{blob_name}' layer '{n}'") for n in names]


def csv_fields(local: Path) -> list[str]:
    """The CSV's field names as GDAL names them, from its header alone (read_info counts every record,
    0.6 s for 1M rows)."""
    with pyogrio.open_arrow(str(local), batch_size=1, use_pyarrow=True, AUTODETECT_TYPE="NO") as (meta, reader):
        geometry = meta.get("geometry_name") or ""
        return [f.name for f in reader.schema if f.name != geometry and f.name != "wkb_geometry"]


def csv_options(local: Path, blob_name: str, conv: dict[str, Any]) -> dict[str, str]:
    header = csv_fields(local)
    for param in ("lat_name", "lon_name", "wkt_column"):
        name = conv.get(param)
        if name and name not in header:
            raise PermanentTaskError(
                f"converter_params.{param} '{name}' is not a column of '{blob_name}'; "
                f"its columns are: {', '.join(header) or 'none'}"
            )
    opts = {"AUTODETECT_TYPE": "YES", "AUTODETECT_SIZE_LIMIT": "0", "EMPTY_STRING_AS_NULL": "YES"}
    if conv.get("wkt_column"):
        opts |= {"GEOM_POSSIBLE_NAMES": conv["wkt_column"], "KEEP_GEOM_COLUMNS": "NO"}
    else:
        opts |= {"X_POSSIBLE_NAMES": conv["lon_name"], "Y_POSSIBLE_NAMES": conv["lat_name"], "KEEP_GEOM_COLUMNS": "YES"}
    return opts


def open_source(local: Path, blob_name: str, ext: str, conv: dict[str, Any], max_inflated: int) -> Source:
    """Which layers to read, with which GDAL options, for a downloaded file."""
    src = Source(blob_name=blob_name, ext=ext, layers=[], crs=conv.get("crs"), encoding=conv.get("encoding"))
    kind = FORMAT_NAMES[ext]
    path = str(local)
    if ext in ("geojson", "json"):
        bare = _bare_geometry(local, blob_name)
        if bare is not None:
            src.crs = src.crs or bare.crs_name
            src.layers = [LayerSource(path, None, f"{kind} '{blob_name}'", opener=_one_geometry(bare))]
            src.feature_count = 1
            return src
        streamed = _as_sequence(local, blob_name)
        if streamed is not None:
            sequence, info = streamed
            if info.features == 0:
                raise PermanentTaskError(f"file '{blob_name}' contains no features")
            src.crs = src.crs or info.crs_name
            src.layers = [LayerSource(str(sequence), None, f"{kind} '{blob_name}'")]
            src.feature_count = info.features
            return src
        src.layers = [LayerSource(path, None, f"{kind} '{blob_name}'")]
    elif ext == "shp":
        src.layers = [LayerSource(path, None, f"{kind} '{blob_name}'")]
        cpg = local.with_suffix(".cpg")
        with open(local.with_suffix(".dbf"), "rb") as f:
            dbf_head = f.read(32)
        shapefile_encoding(src, cpg.read_bytes() if cpg.exists() else None, dbf_head)
    elif ext == "csv":
        src.open_options = csv_options(local, blob_name, conv)
        src.layers = [LayerSource(path, None, f"CSV '{blob_name}'")]
    elif ext == "gpkg":
        src.layers = gpkg_layers(path, blob_name, conv.get("layer_name"))
    elif ext == "kml":
        src.layers = _kml_layers(path, blob_name, conv.get("layer_name"))
    elif ext == "kmz":
        members = _zip_members(local, blob_name)
        member = _pick_member(members, ".kml", conv.get("kml_name"), "kml_name", blob_name, "doc.kml")
        _check_uncompressed(members, member, blob_name, max_inflated)
        inner = f"/vsizip/{local}/{member.filename}"
        src.layers = _kml_layers(inner, f"{blob_name}:{member.filename}", conv.get("layer_name"))
    elif ext == "zip":
        members = _zip_members(local, blob_name)
        member = _pick_member(members, ".shp", conv.get("shp_name"), "shp_name", blob_name, None)
        _check_uncompressed(members, member, blob_name, max_inflated)
        _check_zipped_shapefile(local, members, member, blob_name)
        inner = f"/vsizip/{local}/{member.filename}"
        src.layers = [LayerSource(inner, None, f"Shapefile '{member.filename}' in '{blob_name}'")]
        shapefile_encoding(src, *_zipped_sidecars(local, members, member))
    elif ext in _other_formats():
        from services.vector.gdal_formats import open_other

        return open_other(local, blob_name, ext, conv, max_inflated, src)
    else:
        raise PermanentTaskError(f"unsupported file_extension '{ext}'")
    src.feature_count = _count(src)
    return src


def _zipped_sidecars(local: Path, members: list[zipfile.ZipInfo], shp: zipfile.ZipInfo) -> tuple[bytes | None, bytes]:
    """The zipped Shapefile's .cpg (None when absent) and the head of its .dbf."""
    stem = shp.filename.rsplit(".", 1)[0]
    cpg, dbf = None, b""
    with zipfile.ZipFile(local) as zf:
        for m in members:
            if m.filename.rsplit(".", 1)[0] != stem:
                continue
            if m.filename.lower().endswith(".cpg") and m.file_size < 1024:
                cpg = zf.read(m)
            elif m.filename.lower().endswith(".dbf"):
                with zf.open(m) as f:
                    dbf = f.read(32)
    return cpg, dbf


# DBF language-driver ids (byte 29) and their code pages, as GDAL's Shapefile driver maps them (common ones)
_LDID_CODE_PAGES = {
    0x01: "CP437", 0x02: "CP850", 0x03: "CP1252", 0x04: "MacRoman", 0x08: "CP865", 0x09: "CP437", 0x0A: "CP850",
    0x0B: "CP437", 0x0D: "CP437", 0x0E: "CP850", 0x0F: "CP437", 0x10: "CP850", 0x11: "CP437", 0x12: "CP850",
    0x13: "CP932", 0x14: "CP850", 0x15: "CP437", 0x16: "CP850", 0x17: "CP865", 0x18: "CP437", 0x19: "CP437",
    0x1A: "CP850", 0x1B: "CP437", 0x1C: "CP863", 0x1D: "CP850", 0x1F: "CP852", 0x22: "CP852", 0x23: "CP852",
    0x24: "CP860", 0x25: "CP850", 0x26: "CP866", 0x37: "CP850", 0x40: "CP852", 0x4D: "CP936", 0x4E: "CP949",
    0x4F: "CP950", 0x50: "CP874", 0x57: "ISO-8859-1", 0x58: "CP1252", 0x59: "CP1252", 0x64: "CP852",
    0x65: "CP866", 0x66: "CP865", 0x67: "CP861", 0x6A: "CP737", 0x6B: "CP857", 0x6C: "CP863", 0x78: "CP950",
    0x79: "CP949", 0x7A: "CP936", 0x7B: "CP932", 0x7C: "CP874", 0x86: "CP737", 0x87: "CP852", 0x88: "CP857",
    0xC8: "CP1250", 0xC9: "CP1251", 0xCA: "CP1254", 0xCB: "CP1253", 0xCC: "CP1257",
}


def shapefile_encoding(src: Source, cpg: bytes | None, dbf_head: bytes) -> None:
    """The DBF's encoding as GDAL decides it: converter_params.encoding, else the .cpg, else the DBF's
    language-driver byte, else ISO-8859-1. GDAL recodes to UTF-8 itself when it reports UTF-8 (a .cpg it
    understood); otherwise (no .cpg: GDAL reports the language driver's code page or ISO-8859-1) pyogrio's
    Arrow stream hands over the raw bytes, so the encoding is passed on explicitly."""
    if src.encoding:
        src.encoding_used = src.encoding
        return
    layer = src.layers[0]
    try:
        decided = str(pyogrio.read_info(layer.path, layer=layer.layer)["encoding"] or "ISO-8859-1")
    except GDAL_ERRORS:
        return  # reading the file says what is wrong with it
    if decided.upper().replace("-", "") == "UTF8":  # GDAL recodes: from the .cpg, or the language driver
        declared = (cpg or b"").decode("ascii", "replace").strip()
        ldid = dbf_head[29] if len(dbf_head) > 29 else 0
        if declared:
            src.encoding_used = f"{declared} (.cpg)"
        elif ldid:
            src.encoding_used = f"{_LDID_CODE_PAGES.get(ldid, f'LDID {ldid:#04x}')} (DBF language driver)"
        else:
            src.encoding_used = "UTF-8"
        return
    src.encoding = decided
    src.encoding_used = decided


MAX_JSON_DEPTH_HINT = "nested JSON (deeper than Python's recursion limit, about 1000 levels)"


def _other_formats() -> tuple[str, ...]:
    from services.vector.gdal_formats import EXTENSIONS

    return EXTENSIONS


def _bare_geometry(local: Path, blob_name: str) -> BareGeometry | None:
    """A document that is one bare geometry, read without GDAL (whose reader would hold the whole
    document's JSON tree); None for anything else."""
    try:
        with open(local, "rb") as f:
            bare = read_bare_geometry(f)
        release_free_memory()  # the blocks of numbers, freed in pieces too small to be handed back alone
        return bare
    except NotAGeometry:
        return None
    except NestedTooDeep as exc:
        raise PermanentTaskError(f"GeoJSON '{blob_name}' holds {exc}; no geometry is nested that deep") from None
    except ValueError as exc:
        raise PermanentTaskError(f"GeoJSON '{blob_name}' is not valid JSON: {exc}") from None


def _one_geometry(bare: BareGeometry) -> Any:
    """An open_arrow giving the one feature of a bare geometry document (no attributes), in RFC 7946's
    CRS unless the document names another."""

    held = [bare.wkb]  # let go once read: a huge feature's bytes are not kept while its chunk is written

    @contextmanager
    def open_arrow(path: str, **_: Any) -> Iterator[tuple[dict[str, Any], Iterator[pa.RecordBatch]]]:
        if not held:
            raise RuntimeError("a bare geometry document's layer is read once")
        batch = pa.RecordBatch.from_arrays([one_value(held.pop())], names=["wkb_geometry"])
        yield {"crs": "EPSG:4326", "geometry_name": "wkb_geometry"}, iter([batch])

    return open_arrow


def _as_sequence(local: Path, blob_name: str) -> tuple[Path, SequenceInfo] | None:
    """A FeatureCollection rewritten as a GeoJSON text sequence, which GDAL streams; None when the
    document is something else (a single Feature, malformed JSON): GDAL then reads it, and says why not."""
    sequence = local.with_name(local.name + ".geojsons")
    try:
        return sequence, to_sequence(local, sequence)
    except (ValueError, UnicodeDecodeError):  # NotAFeatureCollection and JSON errors are ValueErrors
        sequence.unlink(missing_ok=True)
        return None
    except RecursionError:
        sequence.unlink(missing_ok=True)
        raise PermanentTaskError(
            f"GeoJSON '{blob_name}' holds {MAX_JSON_DEPTH_HINT}; no geometry or property is nested that deep"
        ) from None
    except IntegerOutOfRange as exc:
        sequence.unlink(missing_ok=True)
        raise PermanentTaskError(f"GeoJSON '{blob_name}': {exc}") from None


def _count(src: Source) -> int:
    """Feature count when the driver knows it cheaply (for automatic chunk sizes)."""
    if src.ext == "csv":
        return -1
    total = 0
    for layer in src.layers:
        try:
            n = int(pyogrio.read_info(layer.path, layer=layer.layer, encoding=src.encoding)["features"])
        except GDAL_ERRORS:
            return -1
        if n < 0:
            return -1
        total += n
    return total


def _not_numbers(col: pa.Array) -> tuple[int, str] | None:
    """(index, text) of the first non-empty value that is not a finite number."""
    text = pc.fill_null(pc.utf8_trim_whitespace(col), "")
    filled = pc.not_equal(text, "")
    where = np.flatnonzero(filled.to_numpy(zero_copy_only=False))
    values = pc.filter(text, filled)
    try:
        bad = ~np.isfinite(pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        bad = np.array([not _finite(v) for v in values.to_pylist()], dtype=bool)
    if not bad.any():
        return None
    j = int(np.flatnonzero(bad)[0])
    return int(where[j]), str(values[j])


def _finite(text: str) -> bool:
    try:
        return bool(np.isfinite(float(text)))
    except ValueError:
        return False


def _not_wkt(col: pa.Array) -> tuple[int, str] | None:
    """(index, text) of the first non-empty value that is not WKT."""
    text = pc.fill_null(pc.utf8_trim_whitespace(col), "")
    filled = pc.not_equal(text, "")
    where = np.flatnonzero(filled.to_numpy(zero_copy_only=False))
    values = pc.filter(text, filled).to_numpy(zero_copy_only=False)
    bad = shapely.is_missing(shapely.from_wkt(values, on_invalid="ignore"))
    if not bad.any():
        return None
    j = int(np.flatnonzero(bad)[0])
    return int(where[j]), str(values[j])


def unparsed_csv_geometry(local: Path, label: str, conv: dict[str, Any], offset: int = 0) -> str | None:
    """Why CSV rows came without a geometry although their coordinate/WKT columns hold text.

    GDAL turns coordinates it cannot parse ('north', '1,5', 'nan') and WKT it cannot read into a
    NULL geometry without a word; this second pass, run only when null geometries were seen, finds
    the first such row so that the job can name it instead of dropping it as "null" (`offset`: the
    records before this file, when it is a part of a bigger one).
    """
    if conv.get("wkt_column"):
        checks = [(conv["wkt_column"], "wkt_column", _not_wkt, "WKT")]
    else:
        checks = [(conv[p], p, _not_numbers, "a finite number") for p in ("lat_name", "lon_name")]
    with pyogrio.open_arrow(
        str(local), columns=[c[0] for c in checks], read_geometry=False, batch_size=50_000, use_pyarrow=True
    ) as (_meta, reader):
        for batch in reader:
            for column, param, find, what in checks:
                found = find(batch.column(column))
                if found is not None:
                    index, text = found
                    shown = text if len(text) <= 80 else text[:77] + "..."
                    return (
                        f"{label}: feature {offset + index} has {shown!r} in column '{column}' "
                        f"(converter_params.{param}), which is not {what}"
                    )
            offset += batch.num_rows
    return None


def sqlite_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
