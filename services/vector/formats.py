"""Supported source formats and the converter parameters each accepts (checked at submit)."""

from __future__ import annotations

import codecs
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SUPPORTED_EXTENSIONS = (
    "csv", "geojson", "json", "gpkg", "kml", "kmz", "shp", "zip",
    "parquet", "fgb", "geojsonl", "geojsons", "gdb.zip", "gml", "gpx", "topojson",
)

# What GDAL calls each format, for messages.
FORMAT_NAMES = {
    "csv": "CSV",
    "geojson": "GeoJSON",
    "json": "GeoJSON",
    "gpkg": "GeoPackage",
    "kml": "KML",
    "kmz": "KMZ",
    "shp": "Shapefile",
    "zip": "zipped Shapefile",
    "parquet": "GeoParquet",
    "fgb": "FlatGeobuf",
    "geojsonl": "GeoJSON sequence",
    "geojsons": "GeoJSON sequence",
    "gdb.zip": "zipped File Geodatabase",
    "gml": "GML",
    "gpx": "GPX",
    "topojson": "TopoJSON",
}


def check_crs(value: str | int | None) -> str | None:
    """A CRS users may give as 'EPSG:27700', 27700 or WKT; normalised to a string pyproj accepts."""
    if value is None:
        return None
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    text = str(value).strip()
    if text.isdigit():
        text = f"EPSG:{text}"
    try:
        CRS.from_user_input(text)
    except CRSError as exc:
        raise ValueError(f"{value!r} is not a coordinate reference system PROJ knows ({exc})") from None
    return text


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class _WithCrs(_Params):
    crs: str | int | None = Field(
        None, description="CRS of the coordinates (e.g. EPSG:27700); wins over what the file declares."
    )

    @field_validator("crs")
    @classmethod
    def _crs(cls, v: str | int | None) -> str | None:
        return check_crs(v)


class CsvParams(_WithCrs):
    lat_name: str | None = Field(None, min_length=1, description="Column holding latitude (y).")
    lon_name: str | None = Field(None, min_length=1, description="Column holding longitude (x).")
    wkt_column: str | None = Field(None, min_length=1, description="Column holding WKT geometry.")

    @field_validator("lat_name", "lon_name", "wkt_column")
    @classmethod
    def _no_comma(cls, v: str | None) -> str | None:
        if v is not None and "," in v:
            raise ValueError(
                f"{v!r} holds a comma; GDAL reads this option as a comma-separated list of names, so it would "
                "take other columns: rename the column in the file"
            )
        return v

    @model_validator(mode="after")
    def _one_geometry_source(self) -> CsvParams:
        has_xy = self.lat_name is not None or self.lon_name is not None
        if self.wkt_column and has_xy:
            raise ValueError("give either lat_name and lon_name, or wkt_column, not both")
        if not self.wkt_column and not (self.lat_name and self.lon_name):
            raise ValueError("a CSV needs lat_name and lon_name, or wkt_column, to build geometries")
        return self


class GeoJsonParams(_WithCrs):
    """crs: for files written in another CRS without saying so (GeoJSON implies EPSG:4326)."""


class GpkgParams(_Params):
    layer_name: str | None = Field(None, min_length=1, description="Layer to read (required when several).")


class KmlParams(_Params):
    layer_name: str | None = Field(None, min_length=1, description="Folder/layer to read; all layers when absent.")


class KmzParams(KmlParams):
    kml_name: str | None = Field(None, min_length=1, description="KML document inside the KMZ (default doc.kml).")


class ShpParams(_WithCrs):
    encoding: str | None = Field(None, min_length=1, description="DBF encoding when the .cpg is missing or wrong.")

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                codecs.lookup(v)
            except LookupError:
                raise ValueError(f"{v!r} is not a known text encoding (e.g. latin1, cp1252, utf-8)") from None
        return v


class ZipParams(ShpParams):
    shp_name: str | None = Field(None, min_length=1, description="Shapefile inside the zip (when several).")


class CrsParams(_WithCrs):
    """Formats with one layer whose declared CRS a user may need to override (GeoParquet, FlatGeobuf,
    GeoJSON sequences)."""


class LayeredCrsParams(_WithCrs):
    layer_name: str | None = Field(None, min_length=1, description="Layer to read (required when several).")


class GdbParams(_Params):
    layer_name: str | None = Field(None, min_length=1, description="Feature class to read (required when several).")
    gdb_name: str | None = Field(None, min_length=1, description="The .gdb folder inside the zip (when several).")


GPX_LAYERS = ("waypoints", "routes", "tracks", "route_points", "track_points")


class GpxParams(_Params):
    layer_name: Literal["waypoints", "routes", "tracks", "route_points", "track_points"] | None = Field(
        None, description="GPX layer; when absent, the one of waypoints/routes/tracks that holds features."
    )


CONVERTER_PARAMS: dict[str, type[_Params]] = {
    "csv": CsvParams,
    "geojson": GeoJsonParams,
    "json": GeoJsonParams,
    "gpkg": GpkgParams,
    "kml": KmlParams,
    "kmz": KmzParams,
    "shp": ShpParams,
    "zip": ZipParams,
    "parquet": CrsParams,
    "fgb": CrsParams,
    "geojsonl": CrsParams,
    "geojsons": CrsParams,
    "gdb.zip": GdbParams,
    "gml": LayeredCrsParams,
    "gpx": GpxParams,
    "topojson": LayeredCrsParams,
}


class ConverterParamsError(ValueError):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def validate_converter_params(ext: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Check converter_params against the format's model; unknown keys are refused by name."""
    model = CONVERTER_PARAMS[ext]
    try:
        parsed = model.model_validate(raw)
    except ValidationError as exc:
        parts, field = [], "converter_params"
        allowed = ", ".join(model.model_fields) or "none"
        for err in exc.errors():
            loc = str(err["loc"][0]) if err["loc"] else ""  # the parameter, not the union member that failed
            where = f"converter_params.{loc}" if loc else "converter_params"
            if field == "converter_params":
                field = where
            if err["type"] == "extra_forbidden":
                parts.append(f"'{where}' is not a converter parameter of {ext} files (allowed: {allowed})")
            else:
                parts.append(f"'{where}': {err['msg'].removeprefix('Value error, ')}")
        raise ConverterParamsError("; ".join(parts), field) from None
    return parsed.model_dump(exclude_none=True)
