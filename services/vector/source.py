"""Getting a source file onto local disk and deciding which GDAL dataset/layers to read.

Blobs are streamed to a temporary folder (a Shapefile's .shx/.dbf/.prj/.cpg come along).
Archives are never extracted: their members are read through GDAL's /vsizip/, after checking
member names and uncompressed sizes.
"""

from __future__ import annotations

import posixpath
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyogrio

from core.errors import PermanentTaskError
from infrastructure.blob import BlobStore
from services.vector.formats import FORMAT_NAMES

# What GDAL raises for unreadable data (pyogrio's errors are RuntimeErrors).
GDAL_ERRORS = (RuntimeError, OSError, ValueError)
SHAPEFILE_SIDECARS = (".shx", ".dbf", ".prj", ".cpg")
REQUIRED_SIDECARS = (".shx", ".dbf")


@dataclass
class LayerSource:
    """One layer GDAL should read."""

    path: str
    layer: str | None
    label: str  # how messages name it


@dataclass
class Source:
    blob_name: str
    ext: str
    layers: list[LayerSource]
    open_options: dict[str, str] = field(default_factory=dict)
    encoding: str | None = None
    crs: str | None = None  # converter_params.crs: wins over what the file declares
    feature_count: int = -1  # -1 when GDAL cannot tell without reading everything


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
    return local


def _safe_member(name: str) -> bool:
    parts = name.split("/")
    return not (name.startswith("/") or "\\" in name or ".." in parts or name.startswith("__MACOSX/"))


def _zip_members(local: Path, blob_name: str) -> list[zipfile.ZipInfo]:
    if not zipfile.is_zipfile(local):
        raise PermanentTaskError(f"'{blob_name}' is not a zip archive")
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
    """A zip bomb guard: the members GDAL will read must not inflate beyond the source size limit."""
    stem = chosen.filename.rsplit(".", 1)[0]
    total = sum(m.file_size for m in members if m.filename.rsplit(".", 1)[0] == stem)
    if total > limit:
        raise PermanentTaskError(
            f"'{chosen.filename}' in '{blob_name}' inflates to {total} bytes, more than the limit of {limit} bytes"
        )


def _layers_of(path: str, blob_name: str) -> list[tuple[str, str | None]]:
    try:
        return [(str(n), None if t is None else str(t)) for n, t in pyogrio.list_layers(path)]
    except GDAL_ERRORS as exc:
        raise PermanentTaskError(f"could not open '{blob_name}': {exc}") from None


def _gpkg_layers(path: str, blob_name: str, layer_name: str | None) -> list[LayerSource]:
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


def _csv_options(local: Path, blob_name: str, conv: dict[str, Any]) -> dict[str, str]:
    header = [str(f) for f in pyogrio.read_info(str(local))["fields"]]
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
    if ext in ("geojson", "json", "shp"):
        src.layers = [LayerSource(path, None, f"{kind} '{blob_name}'")]
    elif ext == "csv":
        src.open_options = _csv_options(local, blob_name, conv)
        src.layers = [LayerSource(path, None, f"CSV '{blob_name}'")]
    elif ext == "gpkg":
        src.layers = _gpkg_layers(path, blob_name, conv.get("layer_name"))
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
        inner = f"/vsizip/{local}/{member.filename}"
        src.layers = [LayerSource(inner, None, f"Shapefile '{member.filename}' in '{blob_name}'")]
    else:
        raise PermanentTaskError(f"unsupported file_extension '{ext}'")
    src.feature_count = _count(src)
    return src


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
