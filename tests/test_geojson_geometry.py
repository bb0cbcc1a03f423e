"""A bare-geometry GeoJSON document read block by block (services/vector/geojson_geometry.py), compared
with GDAL's reading of the same file, WKB for WKB, at block sizes that cut numbers, brackets and keys."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyogrio
import pytest
import shapely
from shapely.geometry import LineString, MultiLineString, MultiPoint, MultiPolygon, Point, Polygon, box

from services.vector import geojson_geometry
from services.vector.geojson_geometry import NotAGeometry, read_bare_geometry

HOLED = Polygon([(0, 0), (10, 0), (10, 10), (0, 10)], [[(1, 1), (2, 1), (2, 2)], [(5, 5), (6, 5), (6, 6)]])
GEOMETRIES = {
    "point": Point(1.5, -2.25),
    "point z": Point(1, 2, 3),
    "linestring": LineString([(0, 0), (1e-7, 3.14159265358979), (-180, 90)]),
    "polygon with holes": HOLED,
    "multipolygon": MultiPolygon([HOLED, box(20, 20, 21, 21), box(-5, -5, -4, -4)]),
    "multipolygon z": shapely.force_3d(MultiPolygon([box(0, 0, 1, 1), box(2, 2, 3, 3)]), 7.5),
    "multilinestring": MultiLineString([[(0, 0), (1, 1)], [(2, 2), (3, 3), (4, 5)]]),
    "multipoint": MultiPoint([(0, 0), (1, 1), (2.5, -3)]),
    "collection": shapely.GeometryCollection([HOLED, Point(3, 4), shapely.GeometryCollection([box(0, 0, 1, 1)])]),
    "empty polygon": shapely.from_wkt("POLYGON EMPTY"),
    "collection z, members first": shapely.GeometryCollection([Point(1, 2, 3), shapely.force_3d(box(0, 0, 1, 1), 2)]),
}


def _gdal_wkb(path: Path) -> bytes:
    return pyogrio.read_arrow(path)[1].column("wkb_geometry")[0].as_py()


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("block", [5, 64, 1 << 20])
def test_same_wkb_as_gdal(name: str, block: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(geojson_geometry, "BLOCK", block)
    doc = json.loads(shapely.to_geojson(GEOMETRIES[name]))
    if name == "linestring":  # members in another order, a bbox, numbers written in every JSON way
        doc = {"coordinates": [[0, 0], [1e-7, 3.14159265358979], [-1.8E2, 9.0e1]], "bbox": [-180, 0, 0, 90],
               "type": "LineString"}
    if name.endswith("members first"):  # `geometries` (and each member's coordinates) before `type`
        doc = {"geometries": [{"coordinates": g["coordinates"], "type": g["type"]} for g in doc["geometries"]],
               "type": doc["type"]}
    path = tmp_path / "g.geojson"
    path.write_text(json.dumps(doc, indent=1 if block == 5 else None))
    with open(path, "rb") as f:
        mine = read_bare_geometry(f)
    if name == "empty polygon":
        assert shapely.from_wkb(bytes(mine.wkb)).is_empty
        return
    assert shapely.from_wkb(bytes(mine.wkb)).equals_exact(shapely.from_wkb(_gdal_wkb(path)), 0)
    assert mine.wkb == _gdal_wkb(path)  # byte for byte: ISO WKB, little-endian


def test_a_legacy_crs_member_is_reported() -> None:
    doc = {"type": "Point", "coordinates": [500000, 4649776],
           "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}}
    got = read_bare_geometry(io.BytesIO(json.dumps(doc).encode()))
    assert got.crs_name == "urn:ogc:def:crs:EPSG::32633"
    assert shapely.from_wkb(bytes(got.wkb)).equals(Point(500000, 4649776))


@pytest.mark.parametrize("doc", [
    {"type": "FeatureCollection", "features": []},
    {"type": "Feature", "properties": {}, "geometry": None},
    {"features": [], "type": "FeatureCollection"},
    {"type": "Point", "coordinates": [1, 2], "properties": {}},
    {"type": "LineString", "coordinates": [[1, 2], [3, 4, 5]]},
    {"type": "Point", "coordinates": [1, 2, 3, 4]},
    {"type": "LineString", "coordinates": [[[1, 2]]]},
    {"type": "Polyhedron", "coordinates": []},
])
def test_other_documents_are_left_to_gdal(doc: dict) -> None:
    with pytest.raises(NotAGeometry):
        read_bare_geometry(io.BytesIO(json.dumps(doc).encode()))


@pytest.mark.parametrize("text", [
    b'{"type": "Point", "coordinates": [NaN, 1]}',
    b'{"type": "Point", "coordinates": [1, "2"]}',
    b'{"type": "LineString", "coordinates": [[1, 2], [3, 4]',
    b'{"type": "Point", "coordinates": [1, 2]} x',
    b'{"type": "Point", "coordinates": [1, 2]]}',
])
def test_text_that_is_not_a_geometry_fails(text: bytes) -> None:
    with pytest.raises((ValueError, NotAGeometry)):
        read_bare_geometry(io.BytesIO(text))
