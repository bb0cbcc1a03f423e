"""Geometry and attribute preparation: repair, types, CRS, dimensions, nulls, column names, big values, dates."""

from __future__ import annotations

import math
import warnings

import pytest
import shapely
from pyproj import Transformer
from shapely.geometry import MultiPolygon, Point, box

from tests import vector_files as vf


def ingest_geojson(db, drain, nonce, name, features, **extra):
    blob = vf.upload(f"{nonce}/{name}.geojson", vf.geojson(features))
    table = f"{name}_{nonce}"
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "geojson", "table_name": table, **extra})
    return job, table


def test_polygon_and_multipolygon_become_multipolygon(db, drain, nonce):
    feats = [(box(0, 0, 1, 1), {"k": 1}), (MultiPolygon([box(2, 2, 3, 3), box(4, 4, 5, 5)]), {"k": 2})]
    job, table = ingest_geojson(db, drain, nonce, "mixedpoly", feats)
    assert job["status"] == "completed", job["error_details"]
    assert vf.geometry_checks(db, "geo", table)["types"] == ["MULTIPOLYGON"]
    gc = db.execute("SELECT type, srid FROM geometry_columns WHERE f_table_name = %s", [table]).fetchone()
    assert gc == {"type": "MULTIPOLYGON", "srid": 4326}
    assert job["result_data"]["summary"]["geometry_type"] == "MultiPolygon"


def test_mixed_families_go_to_one_generic_geometry_column(db, drain, nonce):
    """Documented policy: points + lines + polygons -> geometry(Geometry, 4326), each feature Multi* of its kind."""
    feats = [(Point(1, 1), {}), (box(0, 0, 1, 1), {}), (shapely.LineString([(0, 0), (1, 1)]), {})]
    job, table = ingest_geojson(db, drain, nonce, "families", feats)
    assert job["status"] == "completed", job["error_details"]
    g = vf.geometry_checks(db, "geo", table)
    assert sorted(g["types"]) == ["MULTILINESTRING", "MULTIPOINT", "MULTIPOLYGON"] and g["invalid"] == 0
    assert db.execute("SELECT type FROM geometry_columns WHERE f_table_name = %s", [table]).fetchone()["type"] == (
        "GEOMETRY")
    assert job["result_data"]["summary"]["geometry_type"] == "Geometry"


def test_collection_of_one_family_is_unpacked(db, drain, nonce):
    gc = shapely.GeometryCollection([box(0, 0, 1, 1), box(3, 3, 4, 4)])
    job, table = ingest_geojson(db, drain, nonce, "gcone", [(gc, {}), (box(5, 5, 6, 6), {})])
    assert job["status"] == "completed", job["error_details"]
    assert vf.geometry_checks(db, "geo", table)["types"] == ["MULTIPOLYGON"]
    assert db.execute(f"SELECT max(ST_NumGeometries(geom)) AS n FROM geo.{table}").fetchone()["n"] == 2


def test_collection_mixing_families_fails_naming_the_feature(db, drain, nonce):
    gc = shapely.GeometryCollection([box(0, 0, 1, 1), Point(5, 5)])
    job, table = ingest_geojson(db, drain, nonce, "gcmix", [(box(0, 0, 1, 1), {}), (gc, {})])
    assert job["status"] == "failed"
    err = job["error_details"]["error"]
    assert "feature 1" in err and "GeometryCollection" in err and "gcmix.geojson" in err
    assert not vf.table_exists(db, "geo", table)


def test_invalid_polygons_are_repaired_with_make_valid_area(db, drain, nonce):
    shapes = [vf.bowtie(0, 0), vf.spiky(10, 10), box(20, 20, 21, 21)]
    job, table = ingest_geojson(db, drain, nonce, "invalid", [(s, {"n": i}) for i, s in enumerate(shapes)])
    assert job["status"] == "completed", job["error_details"]
    assert job["result_data"]["summary"]["features_repaired"] == 2
    g = vf.geometry_checks(db, "geo", table)
    assert g["n"] == 3 and g["invalid"] == 0 and g["types"] == ["MULTIPOLYGON"]
    areas = {r["n"]: r["a"] for r in db.execute(f"SELECT n, ST_Area(geom) AS a FROM geo.{table}").fetchall()}
    for i, s in enumerate(shapes):
        assert areas[i] == pytest.approx(shapely.make_valid(s).area, rel=1e-12)
    assert areas[0] == pytest.approx(2.0)  # buffer(0) would have kept only one triangle (1.0)


def test_non_4326_crs_is_reprojected(db, drain, nonce):
    to_bng = Transformer.from_crs(4326, 27700, always_xy=True)
    lonlat = [(-0.1 + i * 0.01, 51.5) for i in range(5)]
    geoms = [Point(*to_bng.transform(x, y)) for x, y in lonlat]
    path = vf.gpkg({"sites": vf.frame(5, geoms, crs=27700)}, vf.tmpdir())
    blob = vf.upload(f"{nonce}/bng.gpkg", path)
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "gpkg", "table_name": f"bng_{nonce}"})
    assert job["status"] == "completed", job["error_details"]
    assert "27700" in job["result_data"]["summary"]["source_crs"][0]
    rows = db.execute(f"SELECT value, ST_X(ST_GeometryN(geom, 1)) x, ST_Y(ST_GeometryN(geom, 1)) y"
                      f" FROM geo.bng_{nonce}").fetchall()
    for r in rows:
        assert (r["x"], r["y"]) == pytest.approx(lonlat[r["value"]], abs=1e-7)
    assert vf.geometry_checks(db, "geo", f"bng_{nonce}")["srids"] == [4326]


def test_missing_crs_with_lonlat_coordinates_is_taken_as_4326(db, drain, nonce):
    files = vf.shapefile(vf.frame(4), vf.tmpdir())
    files.pop(".prj").unlink()
    blob = vf.upload_shapefile(nonce, files)
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "shp", "table_name": f"noprj_{nonce}"})
    assert job["status"] == "completed", job["error_details"]
    assert vf.geometry_checks(db, "geo", f"noprj_{nonce}")["n"] == 4


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_missing_crs_with_projected_coordinates_fails_clearly(db, drain, nonce):
    files = vf.shapefile(vf.frame(3, [Point(530000 + i, 180000) for i in range(3)], crs=None), vf.tmpdir())
    files.pop(".prj", None)
    blob = vf.upload_shapefile(nonce, files)
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "shp", "table_name": f"proj_{nonce}"})
    assert job["status"] == "failed"
    err = job["error_details"]["error"]
    assert "no coordinate reference system" in err and "converter_params.crs" in err and "parcels.shp" in err
    # and with the CRS given, it loads
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "shp", "table_name": f"proj2_{nonce}",
                                    "converter_params": {"crs": 27700}})
    assert job["status"] == "completed", job["error_details"]


def test_geojson_in_metres_fails_clearly_and_loads_with_crs(db, drain, nonce):
    """GeoJSON implies EPSG:4326: metres loaded as degrees would be wrong everywhere they are served."""
    feats = [(Point(530000 + i, 180000), {"n": i}) for i in range(3)]
    blob = vf.upload(f"{nonce}/metres.geojson", vf.geojson(feats))
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "geojson", "table_name": f"m_{nonce}"})
    assert job["status"] == "failed"
    err = job["error_details"]["error"]
    assert "metres.geojson" in err and "not longitudes/latitudes" in err and "converter_params.crs" in err
    assert not vf.table_exists(db, "geo", f"m_{nonce}")
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "geojson", "table_name": f"m2_{nonce}",
                                    "converter_params": {"crs": "EPSG:27700"}})
    assert job["status"] == "completed", job["error_details"]
    x = db.execute(f'SELECT ST_X(ST_GeometryN(geom, 1)) AS x FROM geo."m2_{nonce}" ORDER BY n LIMIT 1').fetchone()
    assert -1.0 < x["x"] < 0.5  # TQ 30000 80000 is near London


def test_3d_geometries_are_forced_2d(db, drain, nonce):
    feats = [(shapely.Polygon([(0, 0, 5), (1, 0, 6), (1, 1, 7), (0, 0, 5)]), {}), (Point(3, 3, 9), {})]
    job, table = ingest_geojson(db, drain, nonce, "threed", feats)
    assert job["status"] == "completed", job["error_details"]
    g = vf.geometry_checks(db, "geo", table)
    assert g["has_z"] is False and g["n"] == 2
    assert job["result_data"]["summary"]["geometry_stats"]["z_dropped"] == 2


def test_null_geometries_are_dropped_and_counted(db, drain, nonce):
    feats = [(box(i, i, i + 1, i + 1), {"n": i}) for i in range(6)] + [(None, {"n": 100}), (None, {"n": 101})]
    job, table = ingest_geojson(db, drain, nonce, "nulls", feats)
    assert job["status"] == "completed", job["error_details"]
    s = job["result_data"]["summary"]
    assert s["features_dropped"]["null_geometry"] == 2 and s["source_features"] == 8
    assert vf.geometry_checks(db, "geo", table)["n"] == 6 == s["total_rows_uploaded"]


def test_only_null_geometries_fails(db, drain, nonce):
    job, _table = ingest_geojson(db, drain, nonce, "allnull", [(None, {"n": 1}), (None, {"n": 2})])
    assert job["status"] == "failed"
    assert "none with a usable geometry" in job["error_details"]["error"]
    assert "allnull.geojson" in job["error_details"]["error"]


def test_empty_feature_collection_fails(db, drain, nonce):
    job, _table = ingest_geojson(db, drain, nonce, "nofeat", [])
    assert job["status"] == "failed"
    assert "contains no features" in job["error_details"]["error"]


def test_colliding_and_reserved_column_names(db, drain, nonce):
    props = {"Name": "a", "name": "b", "NAME ": "c", "id": 7, "geom": "g", "order": 1, "select": 2, "type": "t",
             "a b": 3, "1st": 4, "ünï": 5}
    job, table = ingest_geojson(db, drain, nonce, "names", [(box(0, 0, 1, 1), props)])
    assert job["status"] == "completed", job["error_details"]
    cols = list(vf.columns_of(db, "geo", table))
    assert cols == ["id", "geom", "name", "name_2", "name_3", "id_2", "geom_2", "order", "select", "type",
                    "a_b", "c_1st", "ünï"]  # letters outside ASCII are kept
    row = db.execute(f'SELECT "name", name_2, name_3, id_2, geom_2, "order", "select", "type", a_b, c_1st, "ünï"'
                     f" FROM geo.{table}").fetchone()
    assert row == {"name": "a", "name_2": "b", "name_3": "c", "id_2": 7, "geom_2": "g", "order": 1, "select": 2,
                   "type": "t", "a_b": 3, "c_1st": 4, "ünï": 5}
    mapping = {c["source_name"]: c["name"] for c in job["result_data"]["summary"]["columns"]}
    assert mapping["id"] == "id_2" and mapping["NAME "] == "name_3"


def test_int64_beyond_2_31_is_bigint(db, drain, nonce):
    values = [2**40, -(2**35), 3_000_000_000, 1]
    job, table = ingest_geojson(db, drain, nonce, "bigints", [(Point(i, i), {"big": v}) for i, v in enumerate(values)])
    assert job["status"] == "completed", job["error_details"]
    assert vf.columns_of(db, "geo", table)["big"] == "bigint"
    got = [r["big"] for r in db.execute(f"SELECT big FROM geo.{table} ORDER BY id").fetchall()]
    assert sorted(got) == sorted(values)


def test_far_future_dates(db, drain, nonce):
    feats = [
        (Point(0, 0), {"d": "9999-12-31", "far": "10000-01-01", "ts": "9999-12-31T23:59:59+05:00"}),
        (Point(1, 1), {"d": "2024-02-29", "far": "2020-01-01", "ts": "2024-01-02T03:04:05Z"}),
    ]
    job, table = ingest_geojson(db, drain, nonce, "dates", feats, indexes={"spatial": True, "temporal": ["ts"]})
    assert job["status"] == "completed", job["error_details"]
    cols = vf.columns_of(db, "geo", table)
    assert cols["d"] == "date" and cols["far"] == "date" and cols["ts"] == "timestamp with time zone"
    db.execute("SET TIME ZONE 'UTC'")
    rows = db.execute(f"SELECT d::text, far::text, ts::text FROM geo.{table} ORDER BY d").fetchall()
    assert [tuple(r.values()) for r in rows] == [
        ("2024-02-29", "2020-01-01", "2024-01-02 03:04:05+00"),
        ("9999-12-31", "10000-01-01", "9999-12-31 18:59:59+00"),
    ]
    item = db.execute("SELECT pgstac.get_item(%s, 'system-vectors') AS i", [f"geo.{table}"]).fetchone()["i"]
    assert item["properties"]["start_datetime"].startswith("2024-01-02T03:04:05")
    assert item["properties"]["end_datetime"].startswith("9999-12-31T18:59:59")


def test_simplify_and_quantize(db, drain, nonce):
    circle = Point(0, 0).buffer(1, quad_segs=64)  # 257 vertices
    job, table = ingest_geojson(db, drain, nonce, "simplify", [(circle, {})],
                                geometry_params={"simplify_tolerance": 0.05, "quantize_grid": 0.001})
    assert job["status"] == "completed", job["error_details"]
    row = db.execute(f"SELECT ST_NPoints(geom) n, ST_IsValid(geom) v, ST_AsText(geom) t FROM geo.{table}").fetchone()
    assert row["v"] and row["n"] < 40
    coords = shapely.get_coordinates(shapely.from_wkt(row["t"]))
    assert (abs(coords * 1000 - (coords * 1000).round()) < 1e-6).all()


def test_unknown_index_column_fails_naming_it(db, drain, nonce):
    job, _table = ingest_geojson(db, drain, nonce, "badidx", [(Point(0, 0), {"a": 1})],
                                indexes={"attributes": ["nope"]})
    assert job["status"] == "failed"
    assert "indexes.attributes" in job["error_details"]["error"] and "'nope'" in job["error_details"]["error"]


@pytest.mark.parametrize("kind", ["line", "polygon", "point"])
def test_a_nan_coordinate_fails_naming_the_feature(db, drain, nonce, kind):
    """GEOS leaves a NaN vertex out of a geometry's bounds, and repair dropped LINESTRING (0 0, NaN 1) as
    collapsed: a NaN coordinate is corrupt data, in every geometry type, and fails the job naming it."""
    nan = float("nan")
    good, bad = {
        "line": (shapely.LineString([(0, 0), (1, 1)]), [(0, 0), (nan, 1)]),
        "polygon": (box(0, 0, 1, 1), [(0, 0), (1, 0), (nan, 1), (0, 0)]),
        "point": (Point(1, 1), (nan, 1)),
    }[kind]
    with warnings.catch_warnings():  # shapely warns about the NaN it is asked to keep
        warnings.simplefilter("ignore", RuntimeWarning)
        corrupt = {"line": shapely.LineString, "polygon": shapely.Polygon, "point": Point}[kind](bad)
        path = vf.gpkg({"layer": vf.frame(3, [good, corrupt, good])}, vf.tmpdir())
    blob = vf.upload(f"{nonce}/nan_{kind}.gpkg", path)
    table = f"nan_{kind}_{nonce}"
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "gpkg", "table_name": table})
    assert job["status"] == "failed"
    err = job["error_details"]["error"]
    assert "feature 1 has coordinates no coordinate reference system can hold" in err and blob in err, err
    assert not vf.table_exists(db, "geo", table)


def test_the_huge_feature_child_reports_nan_bounds_for_a_nan_vertex():
    """The child that prepares a huge feature measures its bounds for the worker's check: a NaN vertex, which
    GEOS leaves out of the bounds, makes them NaN there too (so the worker fails the job as above)."""
    from services.vector import repair_child

    nan = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cases = {
            "line": shapely.LineString([(0, 0), (nan, 1), (2, 2)]),
            "multipoint": shapely.MultiPoint([(0, 0), (1, nan)]),
            "clean": shapely.LineString([(0, 0), (2, 2)]),
        }
    for name, geom in cases.items():
        answer: dict = {}
        repair_child.prepare(shapely.to_wkb(geom), {"mode": "unchecked"}, answer)
        assert all(map(math.isnan, answer["source_bounds"])) == (name != "clean"), (name, answer)
