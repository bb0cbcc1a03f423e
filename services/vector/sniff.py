"""What a file's first bytes say it is, so that content submitted under another format's file_extension
fails naming both (GDAL would otherwise pick a driver by content, e.g. load GeoJSON sent as .gpkg)."""

from __future__ import annotations

from pathlib import Path

from core.errors import PermanentTaskError
from services.vector.formats import FORMAT_NAMES

# the content each file_extension must have (None: any text GDAL's driver accepts)
_EXPECTED = {"csv": None, "geojson": "JSON", "json": "JSON", "gpkg": "SQLite", "kml": "XML", "kmz": "zip",
             "shp": "Shapefile", "zip": "zip", "parquet": "Parquet", "fgb": "FlatGeobuf", "geojsonl": "JSON",
             "geojsons": "JSON", "gdb.zip": "zip", "gml": "XML", "gpx": "XML", "topojson": "JSON"}
_NAMES = {"JSON": "JSON (GeoJSON)", "SQLite": "SQLite (GeoPackage)", "XML": "XML (KML, GML or GPX)",
          "zip": "a zip archive", "Shapefile": "a Shapefile .shp", "Parquet": "Parquet (GeoParquet)",
          "FlatGeobuf": "FlatGeobuf"}


def content_kind(head: bytes) -> str | None:
    """'JSON', 'SQLite', 'XML', 'zip', 'Shapefile', or None for anything else (text such as CSV)."""
    if head.startswith(b"SQLite format 3\x00"):
        return "SQLite"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head[:4] == b"\x00\x00\x27\x0a":
        return "Shapefile"
    if head.startswith(b"PAR1"):
        return "Parquet"
    if head.startswith(b"fgb\x03"):
        return "FlatGeobuf"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n\x1e")
    if text[:1] in (b"{", b"["):
        return "JSON"
    if text[:1] == b"<":
        return "XML"
    return None


def check_content(local: Path, ext: str, blob_name: str) -> None:
    with open(local, "rb") as f:
        check_head(f.read(64), ext, blob_name)


def check_head(head: bytes, ext: str, blob_name: str) -> None:
    """The file's first bytes must be of the format its file_extension names."""
    expected = _EXPECTED.get(ext, None)
    found = content_kind(head[:64])
    if found is None or found == expected or ext not in _EXPECTED:
        return  # plain text that is not the format: GDAL's own message says what is wrong with it
    what = _NAMES[found]
    raise PermanentTaskError(
        f"'{blob_name}' was submitted with file_extension '{ext}' ({FORMAT_NAMES[ext]}) but its content is {what}; "
        "submit it with the file_extension of its format"
    )
