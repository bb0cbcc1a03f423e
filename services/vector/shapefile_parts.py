"""A Shapefile in record ranges: the "shp_records" kind of part (parts.py).

Stage 1 reads the headers and the .shx (8 bytes per record: where each shape lies in the .shp), decides
the encoding (as GDAL does: .cpg, the DBF's language-driver byte, ISO-8859-1; converter_params.encoding
wins) and takes the column types and CRS from GDAL reading a header-only copy of the file: so no
geometry and no record is parsed, and the geometry family comes from the .shp header's shape type.
Each stage 2 task fetches its records' byte ranges of the .shp and .dbf (range reads conditioned on the
ETags stage 1 read: a replaced file fails the job), writes a small Shapefile of its own (the headers
rewritten for its record count, a rebased .shx, the .prj and .cpg as they are) and lets GDAL read it,
so every value is typed and decoded exactly as GDAL would read it from the whole file.

A zipped Shapefile is extracted once in stage 1 (after the zip guards) into the job's chunk area and read
the same way. A MultiPatch or a Null-shape header goes through prepare.py's conversion instead.
"""

from __future__ import annotations

import io
import itertools
import math
import shutil
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyogrio

from config import get_settings
from core.errors import PermanentTaskError
from infrastructure.blob import BlobChanged, BlobStore
from services.context import TaskContext
from services.vector import columns as C
from services.vector.chunks import AUTO_MAX_BYTES, MAX_CHUNKS, auto_chunk_size, chunk_prefix, too_many_chunks
from services.vector.geometry import Reprojector, column_geometry_type
from services.vector.identifiers import ColumnNamer
from services.vector.sniff import check_content, check_head
from services.vector.source import (
    GDAL_ERRORS,
    REQUIRED_SIDECARS,
    SHAPEFILE_SIDECARS,
    TEMP_PREFIX,
    LayerSource,
    Source,
    _check_uncompressed,
    _check_zipped_shapefile,
    _pick_member,
    _zip_members,
    check_distinct_fields,
    download,
    find_sidecar,
    scrub,
    shapefile_encoding,
    shapefile_problem,
    shapefile_stem,
)

# .shp header shape types whose features GDAL reads as one geometry family (Z and M variants included).
SHAPE_TYPES = {
    1: ("Point", "point"), 11: ("PointZ", "point"), 21: ("PointM", "point"),
    8: ("MultiPoint", "point"), 18: ("MultiPointZ", "point"), 28: ("MultiPointM", "point"),
    3: ("PolyLine", "line"), 13: ("PolyLineZ", "line"), 23: ("PolyLineM", "line"),
    5: ("Polygon", "polygon"), 15: ("PolygonZ", "polygon"), 25: ("PolygonM", "polygon"),
}  # fmt: skip
SHAPEFILE_GEOMETRY_RULE = "a Shapefile's shapes must all have the shape type its header declares"
FILES = (".shp", *SHAPEFILE_SIDECARS)


def fetch(
    store: BlobStore, container: str, entry: dict[str, Any], offset: int, length: int | None, out: BinaryIO
) -> None:
    """A byte range of one of the files, from the version stage 1 planned from."""
    try:
        store.download_range(container, entry["name"], offset, length, out, entry["version"])
    except BlobChanged as exc:
        raise PermanentTaskError(exc.for_user(entry["shown"])) from None


def _read(store: BlobStore, container: str, entry: dict[str, Any], offset: int, length: int | None) -> bytes:
    buf = io.BytesIO()
    fetch(store, container, entry, offset, length, buf)
    return buf.getvalue()


def write_part(
    store: BlobStore,
    container: str,
    files: dict[str, dict[str, Any]],
    folder: Path,
    first: int,
    count: int,
    shp_bytes: tuple[int, int],
) -> Path:
    """A Shapefile of `count` records from `first` in folder (source.shp, ...): the .shp and .shx headers
    give its length, the .shx offsets are rebased onto the records' byte range, the .dbf header gives its
    record count; everything else (bounds, field descriptors, language driver, .prj, .cpg) is the file's."""
    lo, hi = shp_bytes
    head = bytearray(_read(store, container, files[".shp"], 0, 100))
    head[24:28] = struct.pack(">i", (100 + hi - lo) // 2)
    shp = folder / "source.shp"
    with open(shp, "wb") as f:
        f.write(head)
        fetch(store, container, files[".shp"], lo, hi - lo, f)
    index = np.frombuffer(_read(store, container, files[".shx"], 100 + 8 * first, 8 * count), dtype=">i4")
    index = index.reshape(-1, 2).copy()
    if len(index) != count:
        raise PermanentTaskError(f"'{files['.shx']['shown']}' ends before record {first + count}")
    placed = index[:, 0] > 0  # an offset of 0 is a missing shape: left as it is
    index[placed, 0] -= (lo - 100) // 2
    head[24:28] = struct.pack(">i", 50 + 4 * count)
    (folder / "source.shx").write_bytes(bytes(head) + index.tobytes())
    dbf_head = _read(store, container, files[".dbf"], 0, 32)
    header_len, record_len = struct.unpack("<HH", dbf_head[8:12])
    header = bytearray(_read(store, container, files[".dbf"], 0, header_len))
    header[4:8] = struct.pack("<I", count)
    with open(folder / "source.dbf", "wb") as f:
        f.write(header)
        fetch(store, container, files[".dbf"], header_len + first * record_len, count * record_len, f)
        f.write(b"\x1a")
    for suffix in (".prj", ".cpg"):
        if suffix in files:
            (folder / f"source{suffix}").write_bytes(_read(store, container, files[suffix], 0, None))
    return shp


def _beside(store: BlobStore, container: str, blob: str) -> dict[str, Any]:
    """The .shp and the sidecars beside it in the source container, each with the version read now."""
    files: dict[str, dict[str, Any]] = {}
    for suffix in FILES:
        found = (blob, 0) if suffix == ".shp" else find_sidecar(store, container, blob, suffix)
        if found is None:
            if suffix in REQUIRED_SIDECARS:
                raise PermanentTaskError(
                    f"Shapefile '{blob}' has no '{shapefile_stem(blob)}{suffix}' beside it "
                    f"in container '{container}'; upload the .shp with its .shx and .dbf"
                )
            continue
        name = found[0]
        version = store.blob_version(container, name)
        size = store.blob_size(container, name)
        if version is None or size is None:
            raise PermanentTaskError(f"file '{name}' not found in container '{container}'")
        if store.blob_version(container, name) != version:
            raise PermanentTaskError(f"file '{name}' was replaced while the job was loading it; submit the job again")
        files[suffix] = {"name": name, "version": version, "size": size, "shown": name}
    return {"container": container, "label": f"Shapefile '{blob}'", "prefix": "", "files": files}


def _extracted(store: BlobStore, params: dict[str, Any], ctx: TaskContext, folder: Path) -> dict[str, Any]:
    """A zipped Shapefile, checked by the zip guards and extracted once into the job's chunk area."""
    blob, container = params["blob_name"], params["container_name"]
    conv = params.get("converter_params") or {}
    settings = get_settings()
    local = download(store, container, blob, "zip", folder)
    check_content(local, "zip", blob)
    members = _zip_members(local, blob)
    member = _pick_member(members, ".shp", conv.get("shp_name"), "shp_name", blob, None)
    _check_uncompressed(members, member, blob, settings.max_source_bytes)
    _check_zipped_shapefile(local, members, member, blob)
    stem = member.filename.rsplit(".", 1)[0]
    target = settings.intermediate_container
    prefix = f"{chunk_prefix(ctx.job_id, ctx.run)}shapefile/"
    files: dict[str, dict[str, Any]] = {}
    try:
        with zipfile.ZipFile(local) as zf:
            for suffix in FILES:
                found = [
                    m for m in members if m.filename.rsplit(".", 1)[0] == stem and m.filename.lower().endswith(suffix)
                ]
                if not found:
                    continue
                m = member if suffix == ".shp" else found[0]
                out = folder / f"member{suffix}"
                with zf.open(m) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1024**2)
                name = f"{prefix}source{suffix}"
                store.upload_file(target, name, out)
                out.unlink()
                version = store.blob_version(target, name)
                files[suffix] = {"name": name, "version": version, "size": m.file_size, "shown": m.filename}
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise PermanentTaskError(f"could not read the Shapefile in '{blob}': {exc}") from None
    local.unlink()
    return {
        "container": target,
        "label": f"Shapefile '{member.filename}' in '{blob}'",
        "prefix": f"Shapefile in '{blob}': ",
        "files": files,
    }


def _cuts(count: int, chunk_size: int, sizes: np.ndarray | None) -> list[int]:
    """Record indices where parts start (and the end): equal record counts, each part split further when
    `sizes` (bytes per record) puts more than AUTO_MAX_BYTES of geometry in it."""
    k = max(1, math.ceil(count / chunk_size))
    cuts = [count * i // k for i in range(k)] + [count]
    if sizes is None:
        return cuts
    total = np.concatenate([[0], np.cumsum(sizes)])
    out = [0]
    for a, b in itertools.pairwise(cuts):
        pieces = math.ceil(int(total[b] - total[a]) / AUTO_MAX_BYTES)
        for j in range(1, pieces):
            out.append(int(np.searchsorted(total, total[a] + (total[b] - total[a]) * j // pieces)))
        out.append(b)
    return sorted(set(out))


def plan_shapefile(
    params: dict[str, Any], store: BlobStore, ctx: TaskContext
) -> tuple[dict[str, Any], ColumnNamer] | None:
    """The record ranges of a Shapefile (.shp with its sidecars, or zipped); None for a shape type whose
    features GDAL does not read as one geometry family."""
    blob, container = params["blob_name"], params["container_name"]
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as tmp:
        folder = Path(tmp)
        where = (
            _extracted(store, params, ctx, folder)
            if params["file_extension"] == "zip"
            else _beside(store, container, blob)
        )
        return _plan(params, store, where, folder)


def _plan(
    params: dict[str, Any], store: BlobStore, where: dict[str, Any], folder: Path
) -> tuple[dict[str, Any], ColumnNamer] | None:
    blob = params["blob_name"]
    conv = params.get("converter_params") or {}
    files, container, label = where["files"], where["container"], where["label"]
    shp_head = _read(store, container, files[".shp"], 0, 100)
    if params["file_extension"] == "shp":
        check_head(shp_head, "shp", blob)
    shx = _read(store, container, files[".shx"], 0, None)
    dbf_head = _read(store, container, files[".dbf"], 0, 32)
    shown = (files[".shp"]["shown"], files[".shx"]["shown"], files[".dbf"]["shown"])
    sized = [(head, files[s]["size"]) for head, s in ((shp_head, ".shp"), (shx[:100], ".shx"), (dbf_head, ".dbf"))]
    problem = shapefile_problem(shown, *sized)
    if problem:
        raise PermanentTaskError(where["prefix"] + problem)
    shape_type = struct.unpack("<i", shp_head[32:36])[0]
    if shape_type not in SHAPE_TYPES:
        return None
    declared, family = SHAPE_TYPES[shape_type]
    count = (files[".shx"]["size"] - 100) // 8
    if count == 0:
        raise PermanentTaskError(f"file '{blob}' contains no features")
    index = np.frombuffer(shx, dtype=">i4", count=2 * count, offset=100).reshape(count, 2).astype(np.int64) * 2
    starts, ends = index[:, 0], index[:, 0] + 8 + index[:, 1]
    placed = starts > 0
    outside = placed & ((starts < 100) | (ends > files[".shp"]["size"]))
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise PermanentTaskError(
            f"{where['prefix']}'{shown[1]}' places shape {i} at bytes {starts[i]}..{ends[i]} of '{shown[0]}', "
            f"which has {files['.shp']['size']} bytes; the .shx is damaged or belongs to another .shp"
        )

    head = write_part(store, container, files, folder, 0, 0, (100, 100))  # headers only: GDAL describes it
    src = Source(
        blob_name=blob,
        ext="shp",
        layers=[LayerSource(str(head), None, label)],
        crs=conv.get("crs"),
        encoding=conv.get("encoding"),
    )
    cpg = folder / "source.cpg"
    shapefile_encoding(src, cpg.read_bytes() if cpg.exists() else None, dbf_head)
    namer, columns, crs = _describe(src, head, blob, label)

    chunk_size = params.get("chunk_size") or auto_chunk_size(count)
    if math.ceil(count / chunk_size) > MAX_CHUNKS:
        raise too_many_chunks(label, chunk_size)
    sizes = np.where(placed, ends - starts, 0)
    parts = []
    for a, b in itertools.pairwise(_cuts(count, chunk_size, None if params.get("chunk_size") else sizes)):
        inside = placed[a:b]
        lo = int(starts[a:b][inside].min()) if inside.any() else 100
        hi = int(ends[a:b][inside].max()) if inside.any() else 100
        parts.append({"kind": "shp_records", "records": [a, b], "shp_bytes": [lo, hi]})
    if len(parts) > MAX_CHUNKS:
        raise too_many_chunks(label, chunk_size)
    kept = {s: {k: files[s][k] for k in ("name", "version", "shown")} for s in files}
    return {
        "mode": "parts",
        "label": label,
        "source": {
            "part_container": container,
            "files": kept,
            "label": label,
            "encoding": src.encoding,
            "declared_geometry_type": declared,
            "geometry_rule": SHAPEFILE_GEOMETRY_RULE,
        },
        "chunks": parts,
        "chunk_size": chunk_size,
        "chunk_size_auto": not params.get("chunk_size"),
        "rows_estimate": count,
        "columns": columns,
        "geometry_type": column_geometry_type({family}),
        "geometry_families": [family],
        "declared_geometry_type": declared,
        "source_crs": [crs],
        "encoding": src.encoding_used,
        "layers": [],
    }, namer


def _describe(src: Source, path: Path, blob: str, label: str) -> tuple[ColumnNamer, list[dict[str, str]], str]:
    """Column names and types, and the CRS, as GDAL reads them from the (header-only) Shapefile."""
    kwargs: dict[str, Any] = {"encoding": src.encoding} if src.encoding else {}
    try:
        with pyogrio.open_arrow(str(path), batch_size=1, use_pyarrow=True, **kwargs) as (meta, reader):
            schema = reader.schema
    except GDAL_ERRORS as exc:
        raise PermanentTaskError(f"could not read {label}: {scrub(str(exc), blob)}") from None
    except UnicodeDecodeError as exc:
        sample = exc.object[max(0, exc.start - 20) : exc.end + 20]
        raise PermanentTaskError(
            f"'{blob}' has column or layer names that are not UTF-8 text ({sample!r}); "
            'set converter_params.encoding to the encoding of its .dbf (e.g. "latin1")'
        ) from None
    check_distinct_fields(schema.names, label)
    geom_name = meta.get("geometry_name") or "wkb_geometry"
    namer = ColumnNamer()
    columns = []
    for field in schema:
        if field.name == geom_name:
            continue
        stored = C.normalize(pa.array([], type=field.type)).type
        columns.append(
            {"name": namer.name(field.name), "source_name": field.name, "type": C.final_type(C.pg_type_of(stored))}
        )
    C.check_column_count(label, len(columns))
    crs = Reprojector(src.crs or meta.get("crs"), label).description
    return namer, columns, crs


def part_source(params: dict[str, Any], store: BlobStore, folder: Path) -> Source:
    """The records a stage 2 task reads, as a Shapefile of their own in folder; feature numbers stay
    file-wide (the part's first record is its offset)."""
    first, end = params["records"]
    lo, hi = params["shp_bytes"]
    path = write_part(store, params["part_container"], params["files"], folder, first, end - first, (lo, hi))
    return Source(
        blob_name=params["blob_name"],
        ext="shp",
        layers=[LayerSource(str(path), None, params["label"], offset=first)],
        encoding=params.get("encoding"),
        crs=(params.get("converter_params") or {}).get("crs"),
    )


def describe_part(params: dict[str, Any]) -> str:
    return f"records {params['records'][0]}..{params['records'][1] - 1}"
