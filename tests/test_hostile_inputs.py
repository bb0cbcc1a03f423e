"""Hostile and broken inputs, generated here, run through the HTTP API and an in-process worker.

Every case says how to build its file(s), what to send and what must happen: a 4xx at submit naming
the problem, a failed job whose error names the file/parameter/feature, or a completed job with the
documented behaviour. After every case: no 500 anywhere, no table left by a failed job, no chunk left
in the intermediate container, no message left in the queue; at the end the worker still serves a
valid job. (Cases already covered by test_ingest_hostile.py / test_ingest_submit.py are not repeated.)
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import shapely
from fastapi.testclient import TestClient
from shapely.geometry import Point, box

from tests import vector_files as vf

pytestmark = [pytest.mark.hostile, pytest.mark.filterwarnings("ignore:Measured \\(M\\) geometry types")]

JOB_IDS: list[str] = []  # every job the cases created: checked once more at the end


# ---------------------------------------------------------------- expected outcomes


@dataclass(frozen=True)
class Rejected:
    """Refused at submit with this status; the message contains `needle` (and names `field`)."""

    status: int
    needle: str
    field: str | None = None


@dataclass(frozen=True)
class Failed:
    """The job fails; error_details["error"] contains every needle."""

    needles: tuple[str, ...]

    def __init__(self, *needles: str) -> None:
        object.__setattr__(self, "needles", needles)


@dataclass(frozen=True)
class Loaded:
    """The job completes with `rows` rows; `check(db, table, job)` asserts the documented behaviour."""

    rows: int
    check: Callable[[Any, str, dict[str, Any]], None] | None = None


@dataclass(frozen=True)
class Case:
    id: str
    files: Callable[[], dict[str, bytes]]  # blob names under the case's folder -> content; first one is ingested
    expect: Rejected | Failed | Loaded
    params: dict[str, Any] = field(default_factory=dict)  # over the defaults (blob, extension, table)
    body: Callable[[dict[str, Any]], bytes] | None = None  # a raw request body built from the params
    env: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- builders (small, generated)


def feature_collection(features: list[dict[str, Any]]) -> bytes:
    return json.dumps({"type": "FeatureCollection", "features": features}).encode()


def feature(geometry: Any, properties: Any) -> dict[str, Any]:
    return {"type": "Feature", "properties": properties, "geometry": geometry}


def pt(x: float = 1.0, y: float = 2.0) -> dict[str, Any]:
    return {"type": "Point", "coordinates": [x, y]}


def ok_geojson() -> dict[str, bytes]:
    return {"ok.geojson": vf.geojson([(Point(1, 1), {"n": 1}), (Point(2, 2), {"n": 2})])}


def gpkg_bytes(n: int = 300) -> bytes:
    return vf.gpkg({"parcels": vf.frame(n)}, vf.tmpdir()).read_bytes()


def gpkg_from_wkb(wkbs: list[bytes], geometry_type: str) -> bytes:
    """A one-layer GeoPackage holding these WKB geometries as they are (e.g. with M values)."""
    import numpy as np
    from pyogrio.raw import write

    path = vf.tmpdir() / "raw.gpkg"
    write(str(path), geometry=np.array(wkbs, dtype=object), field_data=[np.arange(len(wkbs))], fields=["n"],
          geometry_type=geometry_type, driver="GPKG", crs="EPSG:4326", layer="measured")
    return path.read_bytes()


def attribute_only_gpkg() -> bytes:
    """A GeoPackage whose only table has no geometry column."""
    import sqlite3

    path = vf.tmpdir() / "attrs.gpkg"
    gpkg = gpkg_bytes(3)
    path.write_bytes(gpkg)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE plain (a INTEGER)")
        conn.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier)"
                     " VALUES ('plain', 'attributes', 'p')")
        conn.execute("DELETE FROM gpkg_geometry_columns")
        conn.execute("DELETE FROM gpkg_contents WHERE data_type = 'features'")
        conn.execute("DROP TABLE parcels")
    conn.close()
    return path.read_bytes()


def shapefile_members(n: int = 20, stem: str = "p") -> dict[str, bytes]:
    return {f"{stem}{s}": p.read_bytes() for s, p in vf.shapefile(vf.frame(n), vf.tmpdir(), stem).items()}


def zipped(members: dict[str, bytes], name: str = "data.zip") -> dict[str, bytes]:
    return {name: vf.zip_of(members)}


def without(members: dict[str, bytes], suffix: str) -> dict[str, bytes]:
    return {k: v for k, v in members.items() if not k.endswith(suffix)}


def encrypted(content: bytes) -> bytes:
    """The zip with every member flagged as encrypted (what a password-protected archive declares)."""
    data = bytearray(content)
    with zipfile.ZipFile(io.BytesIO(content)) as zf:
        for info in zf.infolist():
            data[info.header_offset + 6] |= 0x1  # local header: general purpose flags
    end = data.rfind(b"PK\x05\x06")
    entries, _, start = struct.unpack("<HII", data[end + 10 : end + 20])
    for _ in range(entries):  # central directory: its copy of the flags
        data[start + 8] |= 0x1
        start += 46 + sum(struct.unpack("<HHH", data[start + 28 : start + 34]))
    return bytes(data)


def truncated_dbf() -> dict[str, bytes]:
    m = shapefile_members(50)
    m["p.dbf"] = m["p.dbf"][: len(m["p.dbf"]) // 2]
    return m


def truncated_shp() -> dict[str, bytes]:
    m = shapefile_members(50)
    m["p.shp"] = m["p.shp"][:300]
    return m


KML_HEAD = b'<?xml version="1.0"?><kml xmlns="http://www.opengis.net/kml/2.2"><Document><!--'
KML_TAIL = f"--><Placemark><name>a</name>{vf.kml_point(1, 2)}</Placemark></Document></kml>".encode()


def bomb(archive: str, member: str, megabytes: int, head: bytes = KML_HEAD, tail: bytes = KML_TAIL,
         extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """An archive whose member is mostly spaces (deflates about 1000:1), streamed so memory stays small."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in (extra or {}).items():
            zf.writestr(name, content)
        with zf.open(member, "w", force_zip64=True) as out:
            out.write(head)
            spaces = b" " * 1024 * 1024
            for _ in range(megabytes):
                out.write(spaces)
            out.write(tail)
    return {archive: buf.getvalue()}


def csv(header: list[str], rows: list[list[Any]], name: str = "data.csv") -> dict[str, bytes]:
    return {name: vf.csv_text(header, rows)}


def geojson_props(props: list[dict[str, Any]], name: str = "data.geojson") -> dict[str, bytes]:
    return {name: feature_collection([feature(pt(i * 0.1, i * 0.1), p) for i, p in enumerate(props)])}


# ---------------------------------------------------------------- checks of completed jobs


def dropped_as_null(n: int) -> Callable[[Any, str, dict[str, Any]], None]:
    """Geometry members GDAL cannot read count as null geometries: dropped, and reported."""

    def check(db: Any, table: str, job: dict[str, Any]) -> None:
        summary = job["result_data"]["summary"]
        assert summary["features_dropped"]["null_geometry"] == n and summary["source_features"] == n + 1

    return check


def hostile_names_check(db: Any, table: str, job: dict[str, Any]) -> None:
    cols = list(vf.columns_of(db, "geo", table))
    assert cols == ["id", "geom", "he_said_hi", "a_drop_table_app_jobs", "x_select_1_from_pg_user",
                    "column", "名前", "café", "column_2"], cols
    mapping = {c["source_name"]: c["name"] for c in job["result_data"]["summary"]["columns"]}
    assert mapping['a"; DROP TABLE app.jobs; --'] == "a_drop_table_app_jobs"
    assert mapping["名前"] == "名前"
    row = db.execute(f'SELECT * FROM geo."{table}"').fetchone()
    assert row["he_said_hi"] == "q" and row["a_drop_table_app_jobs"] == "s" and row["名前"] == "u"
    assert db.execute("SELECT to_regclass('app.jobs') IS NOT NULL AS ok").fetchone()["ok"]


def truncated_names_check(db: Any, table: str, job: dict[str, Any]) -> None:
    cols = list(vf.columns_of(db, "geo", table))[2:]
    assert len(cols) == 3 and len(set(cols)) == 3 and all(len(c) <= 63 for c in cols), cols
    assert cols[0] == "x" * 63 and cols[1] == "x" * 61 + "_2" and cols[2] == "x" * 61 + "_3"


def wide_check(db: Any, table: str, job: dict[str, Any]) -> None:
    cols = vf.columns_of(db, "geo", table)
    assert len(cols) == 1_202 and cols["c_1199"] == "integer"
    assert db.execute(f'SELECT c_0, c_1199 FROM geo."{table}" ORDER BY c_0').fetchall() == [
        {"c_0": 0, "c_1199": 1199}, {"c_0": 1, "c_1199": 1200}]


BIG = "".join(chr(0x41 + i % 26) for i in range(1024 * 1024 - 3)) + "€"  # 1 MiB + a multi-byte character


def big_strings_check(db: Any, table: str, job: dict[str, Any]) -> None:
    rows = db.execute(f'SELECT n, md5(s) AS h, length(s) AS chars FROM geo."{table}" ORDER BY n').fetchall()
    expected = hashlib.md5(BIG.encode()).hexdigest()
    assert [(r["h"], r["chars"]) for r in rows] == [(expected, len(BIG))] * 3


def repaired_check(db: Any, table: str, job: dict[str, Any]) -> None:
    g = vf.geometry_checks(db, "geo", table)
    assert g["invalid"] == 0 and g["types"] == ["MULTIPOLYGON"]
    assert job["result_data"]["summary"]["features_repaired"] == 2
    area = db.execute(f'SELECT ST_Area(geom) AS a FROM geo."{table}" WHERE n = 0').fetchone()["a"]
    assert area == pytest.approx(shapely.make_valid(vf.bowtie()).area)


def measures_dropped_check(db: Any, table: str, job: dict[str, Any]) -> None:
    rows = db.execute(f'SELECT ST_NDims(geom) AS d, ST_Zmflag(geom) AS m, ST_AsText(geom) AS t FROM geo."{table}"'
                      " ORDER BY n").fetchall()
    assert all(r["d"] == 2 and r["m"] == 0 for r in rows), rows
    assert rows[0]["t"] == "MULTIPOINT((1 2))"


def linearized_check(db: Any, table: str, job: dict[str, Any]) -> None:
    """The half circle is stroked into 45 segments of 4 degrees, as ogr2ogr -nlt CONVERT_TO_LINEAR does
    (tests/test_curves.py compares vertex for vertex); the point stays a point, in a generic column."""
    rows = db.execute(f'SELECT GeometryType(geom) AS t, ST_NPoints(geom) AS n FROM geo."{table}" ORDER BY n').fetchall()
    assert [(r["t"], r["n"]) for r in rows] == [("MULTIPOINT", 1), ("MULTILINESTRING", 46)]
    assert job["result_data"]["summary"]["geometry_stats"]["linearized"] == 1


def circular_string_wkb(points: list[tuple[float, float]]) -> bytes:
    return struct.pack("<BII", 1, 8, len(points)) + b"".join(struct.pack("<dd", *p) for p in points)


def gpkg_with_four_point_arc() -> bytes:
    """Two CircularStrings, the second cut to 4 points in the file itself (GDAL refuses to write one)."""
    import sqlite3

    five = circular_string_wkb([(0, 0), (1, 1), (2, 0), (3, -1), (4, 0)])
    data = gpkg_from_wkb([circular_string_wkb([(0, 0), (1, 1), (2, 0)]), five], "Unknown")
    path = vf.tmpdir() / "arc.gpkg"
    path.write_bytes(data)
    with sqlite3.connect(path) as conn:
        # the layer's R-tree triggers call these SpatiaLite functions; the envelope stays (0, -1, 4, 1)
        for name, value in {"ST_IsEmpty": 0, "ST_MinX": 0, "ST_MaxX": 4, "ST_MinY": -1, "ST_MaxY": 1}.items():
            conn.create_function(name, 1, lambda _, v=value: v)
        (blob,) = conn.execute("SELECT geom FROM measured WHERE n = 1").fetchone()
        header = bytes(blob)[: len(blob) - len(five)]
        four = struct.pack("<BII", 1, 8, 4) + five[9:-16]
        conn.execute("UPDATE measured SET geom = ? WHERE n = 1", [header + four])
    return path.read_bytes()


def nul_check(db: Any, table: str, job: dict[str, Any]) -> None:
    """GDAL ends names and text at a NUL (C strings); nested values keep it escaped, as JSON text."""
    row = db.execute(f'SELECT * FROM geo."{table}"').fetchone()
    assert (row["a"], row["nested"]) == ("x", '{ "k": "v\\u0000" }'), row


def latin1_shapefile_check(db: Any, table: str, job: dict[str, Any]) -> None:
    names = {r["name"] for r in db.execute(f'SELECT name FROM geo."{table}"').fetchall()}
    assert names == {"Zürich", "Besançon", "Málaga"}


def latin1_shapefile() -> dict[str, bytes]:
    gdf = vf.frame(3)
    gdf["name"] = ["Zürich", "Besançon", "Málaga"]
    folder = vf.tmpdir()
    gdf.to_file(folder / "towns.shp", driver="ESRI Shapefile", encoding="latin1")
    out = {p.name: p.read_bytes() for p in folder.glob("towns.*") if p.suffix != ".cpg"}
    out["towns.cpg"] = b"UTF-8"  # the .cpg lies
    return {"towns.shp": out.pop("towns.shp"), **out}


def point_m_wkb(x: float, y: float, m: float) -> bytes:
    return struct.pack("<BI3d", 1, 2001, x, y, m)  # ISO WKB Point M


# ---------------------------------------------------------------- the table


def with_member(params: dict[str, Any], member: bytes) -> bytes:
    """The params as JSON text with one more member written as raw JSON (NaN, escapes, depth)."""
    return json.dumps(params)[:-1].encode() + b", " + member + b"}"


def deep_json(params: dict[str, Any]) -> bytes:
    return with_member(params, b'"render_params": ' + b"[" * 100_000 + b"]" * 100_000)


def lone_surrogate(params: dict[str, Any]) -> bytes:
    return with_member(params, b'"render_params": {"title": "a\\ud800b"}')


LOWERCASE = "must start with a lowercase letter"

CASES: list[Case] = [
    # ---- broken files: the job fails, naming the file (and what is wrong with it)
    Case("gpkg_truncated", lambda: {"cut.gpkg": gpkg_bytes()[:40_000]}, Failed("cut.gpkg", "malformed")),
    Case("gpkg_truncated_late", lambda: {"late.gpkg": (b := gpkg_bytes())[: len(b) * 9 // 10]},
         Failed("late.gpkg", "malformed")),
    Case("gpkg_random_pages", lambda: {"rand.gpkg": b"SQLite format 3\x00" + bytes(range(256)) * 40},
         Failed("rand.gpkg", "not a database")),
    Case("gpkg_that_is_text", lambda: {"text.gpkg": b"just some text\n"}, Failed("text.gpkg", "not recognized")),
    Case("gpkg_without_spatial_layer", lambda: {"attrs.gpkg": attribute_only_gpkg()},
         Failed("attrs.gpkg", "no layer with geometries")),
    Case("zip_shp_without_shx", lambda: zipped(without(shapefile_members(), ".shx")),
         Failed("data.zip", "p.shx")),
    Case("zip_shp_without_dbf", lambda: zipped(without(shapefile_members(), ".dbf")),
         Failed("data.zip", "p.dbf")),
    Case("zip_shp_truncated", lambda: zipped(truncated_shp()), Failed("p.shp", "truncated")),
    Case("zip_dbf_truncated", lambda: zipped(truncated_dbf()), Failed("p.dbf", "truncated")),
    Case("zip_shp_and_dbf_of_different_files",
         lambda: zipped({**shapefile_members(50), "p.dbf": shapefile_members(40)["p.dbf"]}),
         Failed("data.zip", "'p.shp' holds 50 shapes but 'p.dbf' holds 40 records")),
    Case("shp_without_shx", lambda: {"p.shp": (m := shapefile_members())["p.shp"], "p.dbf": m["p.dbf"]},
         Rejected(404, "p.shx")),
    Case("shp_truncated", lambda: {"p.shp": (m := truncated_shp())["p.shp"], **without(m, ".shp")},
         Failed("p.shp", "truncated")),
    Case("zip_absolute_and_traversal_members_beside_a_good_one",
         lambda: zipped({"/abs/p.shp": b"x", "../../p.shp": b"x", "a/../../p.dbf": b"x", **shapefile_members(7)}),
         Loaded(7)),
    Case("zip_encrypted", lambda: {"locked.zip": encrypted(vf.zip_of(shapefile_members()))},
         Failed("locked.zip", "p.", "encrypted")),
    Case("kmz_encrypted", lambda: {"locked.kmz": encrypted(vf.zip_of({"doc.kml": KML_HEAD + KML_TAIL}))},
         Failed("locked.kmz", "doc.kml", "encrypted")),
    Case("zip_cut_in_half", lambda: {"half.zip": (z := vf.zip_of(shapefile_members(200)))[: len(z) // 2]},
         Failed("half.zip", "not a zip archive (or it is truncated)")),
    Case("zip_inside_zip", lambda: zipped({"inner.zip": vf.zip_of(shapefile_members())}, "outer.zip"),
         Failed("outer.zip", "contains no .shp file")),
    Case("kmz_inside_kmz", lambda: zipped({"inner.kmz": vf.zip_of({"doc.kml": KML_HEAD + KML_TAIL})}, "outer.kmz"),
         Failed("outer.kmz", "contains no .kml file")),
    Case("kmz_bomb_over_the_size_cap", lambda: bomb("bomb.kmz", "doc.kml", 8),
         Failed("bomb.kmz", "doc.kml", "inflates to"), env={"MAX_SOURCE_BYTES": str(4 * 1024 * 1024)}),
    Case("kmz_bomb_under_the_size_cap", lambda: bomb("ratio.kmz", "doc.kml", 160),
         Failed("ratio.kmz", "doc.kml", "compression ratio")),
    Case("zip_bomb_under_the_size_cap",
         lambda: bomb("ratio.zip", "p.dbf", 160, (m := shapefile_members(5)).pop("p.dbf"), b"", m),
         Failed("ratio.zip", "p.dbf", "compression ratio")),
    Case("kml_not_xml", lambda: {"bad.kml": b"this is not xml"}, Failed("bad.kml", "syntax error")),
    Case("kml_cut_short", lambda: {"cut.kml": (KML_HEAD + KML_TAIL)[:-40]}, Failed("cut.kml", "unclosed token")),
    # ---- JSON and GeoJSON
    Case("json_not_json", lambda: {"prose.geojson": b"hello, world"}, Failed("prose.geojson", "not recognized")),
    Case("json_array", lambda: {"array.geojson": b"[1, 2, 3]"}, Failed("array.geojson", "not recognized")),
    Case("geojson_features_not_an_array", lambda: {"fc.geojson": b'{"type": "FeatureCollection", "features": {}}'},
         Failed("fc.geojson", "features")),
    Case("geojson_type_is_a_number", lambda: {"t.geojson": b'{"type": 7, "features": []}'},
         Failed("t.geojson", "Failed to read GeoJSON")),
    Case("geojson_geometries_of_wrong_types",
         lambda: {"wrong.geojson": feature_collection([
             feature("POINT (1 2)", {"n": 1}), feature({"type": "Point", "coordinates": "abc"}, {"n": 2}),
             feature({"type": "Blob", "coordinates": [1, 2]}, {"n": 3}), feature(5, {"n": 4})])},
         Failed("wrong.geojson", "none with a usable geometry", "4 null")),
    Case("geojson_some_geometries_of_wrong_types",
         lambda: {"some.geojson": feature_collection([
             feature("POINT (1 2)", {"n": 1}), feature({"type": "Point", "coordinates": "abc"}, {"n": 2}),
             feature(pt(), {"n": 3})])},
         Loaded(1, dropped_as_null(2))),
    Case("geojson_ring_of_two_points",
         lambda: {"ring.geojson": feature_collection([feature({"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]},
                                                              {"n": 1})])},
         Failed("ring.geojson", "feature 0", "LinearRing")),
    Case("geojson_not_utf8",
         lambda: {"latin1.geojson": '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties":'
                  ' {"name": "Z\xfcrich"}, "geometry": {"type": "Point", "coordinates": [1, 2]}}]}'.encode("latin1")},
         Failed("latin1.geojson", "'name'", "UTF-8")),
    Case("geojson_nul_characters",
         lambda: {"nul.geojson": b'{"type": "FeatureCollection", "features": [{"type": "Feature", "properties":'
                  b' {"a\\u0000b": "x\\u0000y", "nested": {"k": "v\\u0000"}},'
                  b' "geometry": {"type": "Point", "coordinates": [1, 2]}}]}'},
         Loaded(1, nul_check)),
    Case("coordinates_1e300", lambda: {"huge.geojson": feature_collection([feature(pt(1e300, 1e300), {"n": 1})])},
         Failed("huge.geojson", "feature 0", "no coordinate reference system can hold")),
    Case("coordinates_1e300_reprojected",
         lambda: csv(["n", "y", "x"], [[0, 6_000_000, 1_000_000], [1, 1e300, 1e300]], "merc.csv"),
         Failed("merc.csv", "feature 1", "no coordinate reference system can hold"),
         params={"converter_params": {"lat_name": "y", "lon_name": "x", "crs": "EPSG:3857"}}),
    # ---- CSV
    Case("csv_header_only", lambda: csv(["n", "lat", "lon"], []), Failed("data.csv", "contains no features"),
         params={"converter_params": {"lat_name": "lat", "lon_name": "lon"}}),
    Case("csv_all_coordinates_empty", lambda: csv(["n", "lat", "lon"], [[1, None, None], [2, None, None]]),
         Failed("data.csv", "none with a usable geometry"),
         params={"converter_params": {"lat_name": "lat", "lon_name": "lon"}}),
    Case("csv_non_numeric_coordinates", lambda: csv(["n", "lat", "lon"], [[1, 10, 20], [2, "north", 20]]),
         Failed("data.csv", "feature 1", "'north'", "lat"),
         params={"converter_params": {"lat_name": "lat", "lon_name": "lon"}}),
    Case("csv_nan_coordinates", lambda: csv(["n", "lat", "lon"], [[1, 10, 20], [2, "nan", "inf"]]),
         Failed("data.csv", "feature 1", "'nan'"),
         params={"converter_params": {"lat_name": "lat", "lon_name": "lon"}}),
    Case("csv_out_of_range_coordinates", lambda: csv(["n", "lat", "lon"], [[1, 10, 20], [2, 95, 200]]),
         Failed("data.csv", "feature 1", "are not longitudes/latitudes"),
         params={"converter_params": {"lat_name": "lat", "lon_name": "lon"}}),
    Case("csv_wkt_garbage", lambda: csv(["n", "wkt"], [[1, "POINT (1 2)"], [2, "NOT A GEOMETRY; DROP TABLE x"]]),
         Failed("data.csv", "feature 1", "'NOT A GEOMETRY; DROP TABLE x'", "wkt"),
         params={"converter_params": {"wkt_column": "wkt"}}),
    Case("csv_wkt_curves", lambda: csv(["n", "wkt"], [[1, "POINT (1 2)"], [2, "CIRCULARSTRING (0 0, 1 1, 2 0)"]]),
         Loaded(2, linearized_check), params={"converter_params": {"wkt_column": "wkt"}}),
    Case("gpkg_circularstring_of_four_points",
         lambda: {"arc.gpkg": gpkg_with_four_point_arc()},
         Failed("arc.gpkg", "feature 1", "CircularString of 4 points", "odd number")),
    Case("csv_wkt_self_intersections", lambda: csv(["n", "wkt"], [[0, vf.bowtie().wkt], [1, vf.spiky(5, 5).wkt],
                                                               [2, box(9, 9, 10, 10).wkt]]),
         Loaded(3, repaired_check), params={"converter_params": {"wkt_column": "wkt"}}),
    Case("csv_wkt_m_and_zm",
         lambda: csv(["n", "wkt"], [[0, "POINT M (1 2 3)"], [1, "LINESTRING ZM (0 0 1 2, 1 1 1 2)"]]),
         Loaded(2, measures_dropped_check), params={"converter_params": {"wkt_column": "wkt"}}),
    Case("csv_not_utf8", lambda: {"latin1.csv": "n,lat,lon,name\n1,10,20,Z\xfcrich\n".encode("latin1")},
         Failed("latin1.csv", "'name'", "UTF-8"), params={"converter_params": {"lat_name": "lat", "lon_name": "lon"}}),
    Case("csv_header_not_utf8", lambda: {"head.csv": "n,lat,lon,Stra\xdfe\n1,10,20,x\n".encode("latin1")},
         Failed("head.csv", "UTF-8"), params={"converter_params": {"lat_name": "lat", "lon_name": "lon"}}),
    Case("binary_file_as_csv", lambda: {"binary.csv": gpkg_bytes(5)}, Failed("binary.csv", "'csv'", "SQLite"),
         params={"converter_params": {"lat_name": "lat", "lon_name": "lon"}}),
    # ---- geometry kinds
    Case("gpkg_point_m", lambda: {"m.gpkg": gpkg_from_wkb([point_m_wkb(1, 2, 3), point_m_wkb(3, 4, 5)], "PointM")},
         Loaded(2, measures_dropped_check)),
    # ---- attributes and column names
    Case("column_names_quotes_semicolons_sql_unicode",
         lambda: geojson_props([{'he said "hi"': "q", 'a"; DROP TABLE app.jobs; --': "s",
                                 "x'; SELECT 1 FROM pg_user; --": "t", "\U0001F600": "e", "名前": "u",
                                 "café": "c", "": "empty"}]),
         Loaded(1, hostile_names_check)),
    Case("column_names_colliding_after_truncation",
         lambda: geojson_props([{"x" * 70 + "a": 1, "x" * 70 + "b": 2, "X" * 70 + "c": 3}]),
         Loaded(1, truncated_names_check)),
    Case("columns_1200", lambda: geojson_props([{f"c_{i}": i + r for i in range(1200)} for r in range(2)]),
         Loaded(2, wide_check)),
    Case("columns_1200_doubles_wider_than_a_row",
         lambda: geojson_props([{f"c_{i}": i + 0.5 for i in range(1200)}], "wide.geojson"),
         Failed("row is too big")),
    Case("columns_1700", lambda: geojson_props([{f"c_{i}": i for i in range(1700)}], "wide.geojson"),
         Failed("wide.geojson", "1700", "1600")),
    Case("strings_of_1_mb", lambda: geojson_props([{"n": i, "s": BIG} for i in range(3)]),
         Loaded(3, big_strings_check)),
    Case("shapefile_cpg_lies_with_encoding_param", latin1_shapefile, Loaded(3, latin1_shapefile_check),
         params={"converter_params": {"encoding": "latin1"}}),
    Case("shapefile_cpg_lies", latin1_shapefile, Failed("towns.shp", "'name'", "converter_params.encoding")),
    # ---- bad requests: a 4xx naming the parameter, never a job
    Case("table_name_nul", ok_geojson, Rejected(400, LOWERCASE, "table_name"), {"table_name": "ab\x00c"}),
    Case("table_name_unicode", ok_geojson, Rejected(400, LOWERCASE, "table_name"), {"table_name": "tablé"}),
    Case("table_name_sql", ok_geojson, Rejected(400, LOWERCASE, "table_name"),
         {"table_name": "t; DROP TABLE app.jobs; --"}),
    Case("table_name_100k_chars", ok_geojson, Rejected(400, "longer than 63 bytes", "table_name"),
         {"table_name": "t" * 100_000}),
    Case("table_name_not_a_string", ok_geojson, Rejected(400, "valid string", "table_name"), {"table_name": 123}),
    Case("schema_app", ok_geojson, Rejected(400, "schema 'app' is not allowed", "schema"), {"schema": "app"}),
    Case("schema_pg_catalog", ok_geojson, Rejected(400, "is not allowed", "schema"), {"schema": "pg_catalog"}),
    Case("schema_sql", ok_geojson, Rejected(400, "is not allowed", "schema"),
         {"schema": 'geo"; DROP SCHEMA geo CASCADE; --'}),
    Case("schema_not_a_string", ok_geojson, Rejected(400, "valid string", "schema"), {"schema": ["geo"]}),
    Case("blob_name_nested_traversal", ok_geojson, Rejected(400, "'..'", "blob_name"),
         {"blob_name": "a/b/../../../etc/passwd"}),
    Case("blob_name_windows_absolute", ok_geojson, Rejected(400, "not an absolute path", "blob_name"),
         {"blob_name": "C:/Windows/win.ini"}),
    Case("blob_name_blank", ok_geojson, Rejected(400, "non-empty", "blob_name"), {"blob_name": "   "}),
    Case("blob_name_2000_chars", ok_geojson, Rejected(400, "longer than 1024", "blob_name"),
         {"blob_name": "a/" * 1000}),
    Case("blob_name_percent_encoded_traversal", ok_geojson, Rejected(404, "%2e%2e/%2e%2e/etc/passwd"),
         {"blob_name": "%2e%2e/%2e%2e/etc/passwd"}),
    Case("container_name_root", ok_geojson, Rejected(400, "not a valid container name", "container_name"),
         {"container_name": "$root"}),
    Case("container_name_nul", ok_geojson, Rejected(400, "not a valid container name", "container_name"),
         {"container_name": "abc\x00def"}),
    Case("container_name_64_chars", ok_geojson, Rejected(400, "not a valid container name", "container_name"),
         {"container_name": "a" * 64}),
    Case("chunk_size_huge_float", ok_geojson, Rejected(400, "chunk_size", "chunk_size"), {"chunk_size": 1e300}),
    Case("chunk_size_2_pow_63", ok_geojson, Rejected(400, "chunk_size", "chunk_size"), {"chunk_size": 2**63}),
    Case("chunk_size_text", ok_geojson, Rejected(400, "chunk_size", "chunk_size"), {"chunk_size": "a lot"}),
    Case("converter_params_list", ok_geojson, Rejected(400, "converter_params", "converter_params"),
         {"converter_params": ["layer_name", "x"]}),
    Case("converter_params_number", ok_geojson, Rejected(400, "converter_params", "converter_params"),
         {"converter_params": 5}),
    Case("converter_params_null", ok_geojson, Rejected(400, "converter_params", "converter_params"),
         {"converter_params": None}),
    Case("converter_params_operator_object", ok_geojson,
         Rejected(400, "converter_params.layer_name", "converter_params.layer_name"),
         {"file_extension": "gpkg", "converter_params": {"layer_name": {"$ne": 1}}}),
    Case("converter_params_crs_list", ok_geojson, Rejected(400, "converter_params.crs", "converter_params.crs"),
         {"file_extension": "csv", "converter_params": {"wkt_column": "w", "crs": ["EPSG", 4326]}}),
    Case("converter_params_unknown_encoding", ok_geojson,
         Rejected(400, "converter_params.encoding", "converter_params.encoding"),
         {"file_extension": "shp", "converter_params": {"encoding": "no-such-codec"}}),
    Case("converter_params_nul", ok_geojson,
         Rejected(400, "converter_params.layer_name", "converter_params.layer_name"),
         {"file_extension": "gpkg", "converter_params": {"layer_name": "a\x00b"}}),
    Case("render_params_nul_key", ok_geojson, Rejected(400, "NUL character", "render_params"),
         {"render_params": {"ti\x00tle": "x"}}),
    Case("indexes_of_wrong_type", ok_geojson, Rejected(400, "indexes.attributes", "indexes.attributes"),
         {"indexes": {"attributes": "name"}}),
    Case("geometry_params_nan", ok_geojson, Rejected(400, "geometry_params.simplify_tolerance"),
         body=lambda p: with_member(p, b'"geometry_params": {"simplify_tolerance": NaN}')),
    Case("file_extension_traversal", ok_geojson, Rejected(400, "not supported", "file_extension"),
         {"file_extension": "../gpkg"}),
    Case("body_nested_100k_deep", ok_geojson, Rejected(400, "nested"), body=deep_json),
    Case("body_lone_surrogate", ok_geojson, Rejected(400, "render_params.title", "render_params.title"),
         body=lone_surrogate),
    Case("body_a_string", ok_geojson, Rejected(400, "JSON object"), body=lambda p: b'"ingest everything"'),
]


# ---------------------------------------------------------------- running a case


@pytest.fixture(scope="module")
def client(database: str) -> Any:
    from triggers.app import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def no_500(resp: Any) -> Any:
    assert resp.status_code < 500, resp.text
    assert "Traceback" not in resp.text
    return resp


def leftovers(db: Any, job_id: str) -> dict[str, Any]:
    """What a finished job must not leave behind: queue messages, unfinished tasks, chunk blobs."""
    queued = db.execute(
        "SELECT count(*) AS n FROM app.queue_messages WHERE body->>'job_id' = %s OR body->>'parent_job_id' = %s",
        [job_id, job_id]).fetchone()["n"]
    running = db.execute("SELECT count(*) AS n FROM app.tasks WHERE parent_job_id = %s"
                         " AND status IN ('queued', 'processing', 'retrying')", [job_id]).fetchone()["n"]
    return {"queue_messages": queued, "unfinished_tasks": running, "chunks": vf.chunk_blobs(job_id)}


NOTHING_LEFT = {"queue_messages": 0, "unfinished_tasks": 0, "chunks": []}


def jobs_count(db: Any) -> int:
    return db.execute("SELECT count(*) AS n FROM app.jobs").fetchone()["n"]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_case(case: Case, client, db, drain, nonce, monkeypatch):
    from config import reset_settings

    table = f"h_{nonce}"
    files = case.files()
    for name, content in files.items():
        vf.upload(f"{nonce}/{name}", content)
    main = next(iter(files))
    params: dict[str, Any] = {"blob_name": f"{nonce}/{main}", "file_extension": main.rsplit(".", 1)[1],
                              "table_name": table, **case.params}
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    reset_settings()
    try:
        before = jobs_count(db)
        if case.body is not None:
            resp = client.post("/api/jobs/ingest_vector", content=case.body(params),
                               headers={"content-type": "application/json"})
        else:
            resp = client.post("/api/jobs/ingest_vector", json=params)
        no_500(resp)
        body = resp.json()
        if isinstance(case.expect, Rejected):
            assert resp.status_code == case.expect.status, body
            assert case.expect.needle in body["message"], body
            if case.expect.field:
                assert body.get("field") == case.expect.field, body
            assert jobs_count(db) == before
            assert not vf.table_exists(db, "geo", table)
            return
        assert resp.status_code == 202, body
        job_id = body["job_id"]
        JOB_IDS.append(job_id)
        drain(job_id, timeout=60)
    finally:
        for key in case.env:
            monkeypatch.delenv(key)
        reset_settings()

    status = no_500(client.get(f"/api/jobs/status/{job_id}")).json()
    no_500(client.get(f"/api/jobs/{job_id}/tasks"))
    job = vf.job_row(db, job_id)
    if isinstance(case.expect, Failed):
        assert status["status"] == "failed", status.get("result_data", {}).get("summary")
        error = status["error_details"]["error"]
        for needle in case.expect.needles:
            assert needle in error, error
        assert status["error_details"].get("attempts", 1) == 1, "bad input must not be retried"
        assert "/tmp/" not in error, error  # the worker's paths are not the user's business
        assert not vf.table_exists(db, "geo", table)
    else:
        assert status["status"] == "completed", status.get("error_details")
        assert vf.geometry_checks(db, "geo", table)["n"] == case.expect.rows
        assert job["result_data"]["summary"]["total_rows_uploaded"] == case.expect.rows
        if case.expect.check:
            case.expect.check(db, table, job)
    assert leftovers(db, job_id) == NOTHING_LEFT


def test_the_table_covers_enough_cases():
    jobs = [c for c in CASES if not isinstance(c.expect, Rejected)]
    assert len(jobs) >= 30 and len(CASES) - len(jobs) >= 30


def test_worker_still_serves_a_valid_job(client, db, drain, nonce):
    """After the hostile cases (run before this test): nothing stuck or dead-lettered, and a valid job completes."""
    for job_id in JOB_IDS:
        assert vf.job_row(db, job_id)["status"] in ("completed", "failed")
        assert leftovers(db, job_id) == NOTHING_LEFT
    blob = vf.upload(f"{nonce}/fine.geojson", vf.geojson([(box(0, 0, 1, 1), {"n": 1})]))
    resp = no_500(client.post("/api/jobs/ingest_vector", json={"blob_name": blob, "file_extension": "geojson",
                                                               "table_name": f"fine_{nonce}"}))
    assert resp.status_code == 202
    assert drain(resp.json()["job_id"], timeout=30) == "completed"
    assert vf.geometry_checks(db, "geo", f"fine_{nonce}")["n"] == 1
