"""Opening the formats read through one GDAL driver each (FlatGeobuf, GeoJSON sequences, GML, GPX,
TopoJSON, a zipped File Geodatabase) and GeoParquet (pyarrow).

The file must be what its file_extension says: GDAL opens anything it recognises, so a GeoJSON
submitted as .fgb would otherwise load as if nothing were wrong. The driver GDAL picks is checked
against the extension's before any feature is read.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pyogrio

from core.errors import PermanentTaskError
from services.vector import geoparquet
from services.vector.formats import FORMAT_NAMES, GPX_LAYERS
from services.vector.source import (
    GDAL_ERRORS,
    LayerSource,
    Source,
    _check_members,
    _safe_member,
    _zip_members,
    scrub,
)

# The GDAL driver each extension must open with.
DRIVERS = {
    "fgb": "FlatGeobuf",
    "geojsonl": "GeoJSONSeq",
    "geojsons": "GeoJSONSeq",
    "gml": "GML",
    "gpx": "GPX",
    "topojson": "TopoJSON",
    "gdb.zip": "OpenFileGDB",
}
EXTENSIONS = (*DRIVERS, "parquet")
# How messages name what GDAL found instead, and the extension to submit it with.
_FOUND = {
    "FlatGeobuf": ("FlatGeobuf", "fgb"),
    "GeoJSONSeq": ("GeoJSON sequence", "geojsonl"),
    "GeoJSON": ("GeoJSON", "geojson"),
    "TopoJSON": ("TopoJSON", "topojson"),
    "GML": ("GML", "gml"),
    "GPX": ("GPX", "gpx"),
    "OpenFileGDB": ("File Geodatabase", "gdb.zip"),
    "GPKG": ("GeoPackage", "gpkg"),
    "ESRI Shapefile": ("Shapefile", "shp"),
    "CSV": ("CSV", "csv"),
    "KML": ("KML", "kml"),
    "LIBKML": ("KML", "kml"),
    "Parquet": ("GeoParquet", "parquet"),
}
GPX_DEFAULT_LAYERS = ("waypoints", "routes", "tracks")  # the points of routes/tracks only on request


def open_other(local: Path, blob_name: str, ext: str, conv: dict[str, Any], max_inflated: int, src: Source) -> Source:
    """Fill src with the layers to read of a file in one of EXTENSIONS."""
    kind = FORMAT_NAMES[ext]
    if ext == "parquet":
        return _open_parquet(local, blob_name, src)
    if ext == "gdb.zip":
        path, label = _gdb_in_zip(local, blob_name, conv.get("gdb_name"), max_inflated)
    else:
        path, label = str(local), blob_name
        if geoparquet.is_parquet(local):  # GDAL here has no Parquet driver: it could not say what the file is
            _refuse(path, None, label, ext)
    layers = _layers(path, label, blob_name)
    _check_driver(path, layers[0][0] if layers else None, label, ext)
    names = [n for n, _ in layers]
    spatial = [n for n, t in layers if t is not None]
    wanted = conv.get("layer_name")
    if wanted:
        if wanted not in names:
            raise PermanentTaskError(
                f"converter_params.layer_name '{wanted}' is not a layer of {kind} '{label}'; "
                f"its layers are: {', '.join(names) or 'none'}"
            )
        chosen = wanted
    elif ext == "gpx":
        chosen = _gpx_layer(path, label)
    elif len(spatial) == 1:
        chosen = spatial[0]
    elif not spatial:
        raise PermanentTaskError(f"{kind} '{label}' has no layer with geometries")
    else:
        raise PermanentTaskError(
            f"{kind} '{label}' has {len(spatial)} layers ({', '.join(spatial)}); "
            "choose one with converter_params.layer_name"
        )
    src.layers = [LayerSource(path, chosen, f"{kind} '{label}' layer '{chosen}'")]
    src.feature_count = _features(path, chosen)
    return src


def _open_parquet(local: Path, blob_name: str, src: Source) -> Source:
    if not geoparquet.is_parquet(local):
        _refuse(str(local), None, blob_name, "parquet")
    info = geoparquet.describe(local, blob_name)
    src.layers = [LayerSource(str(local), None, f"GeoParquet '{blob_name}'", opener=geoparquet.opener(blob_name))]
    src.feature_count = info.rows
    return src


def _layers(path: str, label: str, blob_name: str) -> list[tuple[str, str | None]]:
    try:
        return [(str(n), None if t is None else str(t)) for n, t in pyogrio.list_layers(path)]
    except GDAL_ERRORS as exc:
        raise PermanentTaskError(f"could not open '{label}': {scrub(str(exc), blob_name)}") from None


def _driver(path: str, layer: str | None) -> str | None:
    try:
        return str(pyogrio.read_info(path, layer=layer)["driver"])
    except GDAL_ERRORS:
        return None


def _check_driver(path: str, layer: str | None, label: str, ext: str) -> None:
    if _driver(path, layer) != DRIVERS[ext]:
        _refuse(path, layer, label, ext)


def _refuse(path: str, layer: str | None, label: str, ext: str) -> None:
    """Fail naming the format the extension promised and the one the file is (when GDAL knows it)."""
    driver = _driver(path, layer)
    if driver is None and not path.startswith("/vsi") and geoparquet.is_parquet(Path(path)):
        driver = "Parquet"
    expected = FORMAT_NAMES[ext]
    if driver is None:
        raise PermanentTaskError(f"'{label}' is not a {expected} file (file_extension '{ext}'); GDAL cannot read it")
    found, found_ext = _FOUND.get(driver, (driver, None))
    hint = f"; submit it with file_extension '{found_ext}'" if found_ext and found_ext != ext else ""
    raise PermanentTaskError(f"'{label}' is a {found} file, not {expected} (file_extension '{ext}'){hint}")


def _features(path: str, layer: str, count: bool = False) -> int:
    """The layer's feature count; -1 when the driver would have to read it all (unless count)."""
    try:
        return int(pyogrio.read_info(path, layer=layer, force_feature_count=count)["features"])
    except GDAL_ERRORS:
        return -1


def _gpx_layer(path: str, label: str) -> str:
    """Without layer_name: the one of waypoints, routes, tracks that holds features."""
    counts = {name: _features(path, name, count=True) for name in GPX_DEFAULT_LAYERS}
    filled = [name for name, n in counts.items() if n != 0]
    if len(filled) == 1:
        return filled[0]
    listing = ", ".join(f"{n} ({counts[n]} features)" for n in GPX_DEFAULT_LAYERS)
    if not filled:
        raise PermanentTaskError(f"GPX '{label}' has no waypoints, routes or tracks: {listing}")
    raise PermanentTaskError(
        f"GPX '{label}' holds {' and '.join(filled)}; choose one with converter_params.layer_name "
        f"(one of {', '.join(GPX_LAYERS)}); {listing}"
    )


def _gdb_in_zip(local: Path, blob_name: str, wanted: str | None, max_inflated: int) -> tuple[str, str]:
    """The .gdb folder inside the zip that GDAL reads through /vsizip/, after the zip guards (member
    names, encryption, inflated size) on every member of that folder."""
    members = _zip_members(local, blob_name)
    with zipfile.ZipFile(local) as zf:
        unsafe = [n for n in zf.namelist() if not _safe_member(n) and ".gdb" in n.lower()]
    if unsafe:
        raise PermanentTaskError(
            f"'{blob_name}' has members outside the archive's folder ({', '.join(unsafe[:3])}): "
            "absolute paths and '..' are refused"
        )
    folders: dict[str, list[zipfile.ZipInfo]] = {}
    for m in members:
        parts = m.filename.split("/")
        for i, part in enumerate(parts[:-1]):
            if part.lower().endswith(".gdb"):
                folders.setdefault("/".join(parts[: i + 1]), []).append(m)
                break
    listing = ", ".join(sorted(folders)) or "none"
    if wanted:
        chosen = [f for f in folders if f == wanted or f.rsplit("/", 1)[-1] == wanted]
        if len(chosen) != 1:
            why = "is ambiguous in" if chosen else "is not in"
            raise PermanentTaskError(
                f"converter_params.gdb_name '{wanted}' {why} '{blob_name}'; its .gdb folders are: {listing}"
            )
        folder = chosen[0]
    elif len(folders) == 1:
        folder = next(iter(folders))
    elif not folders:
        raise PermanentTaskError(f"'{blob_name}' contains no .gdb folder (zip the whole <name>.gdb folder)")
    else:
        raise PermanentTaskError(
            f"'{blob_name}' contains several .gdb folders ({listing}); choose one with converter_params.gdb_name"
        )
    _check_members(folders[folder], folder, blob_name, max_inflated)
    return f"/vsizip/{local}/{folder}", f"{blob_name}:{folder}"
