"""Curved geometries load linearised, vertex for vertex as Debian's `ogr2ogr -nlt CONVERT_TO_LINEAR` writes
them: pyogrio's curve fixtures and generated arcs (full circles, arcs across the 0/360 and 180 degree
angles, compound curves mixing lines and arcs, curve polygons with holes, Z), unit by unit and through
real workers; bounded for absurd arcs."""

from __future__ import annotations

import math
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import shapely

from services.vector import curves
from tests import corpus
from tests import vector_files as vf
from tests.helpers import submit, wait_for_job

FIXTURES = ["curve.gpkg", "multisurface.gpkg", "curvepolygon.gpkg"]


def _on_circle(cx: float, cy: float, r: float, *degrees: float) -> str:
    """WKT coordinates of points at these angles on a circle (repr: every digit of the double)."""
    return ",".join(f"{cx + r * math.cos(math.radians(d))!r} {cy + r * math.sin(math.radians(d))!r}" for d in degrees)


# (name, WKT) of generated curves; every arc here has a reference from ogr2ogr
GENERATED = [
    ("half_circle_cw", "CIRCULARSTRING (0 0,1 1,2 0)"),
    ("half_circle_ccw_reversed", "CIRCULARSTRING (2 0,1 1,0 0)"),
    ("full_circle", "CIRCULARSTRING (0 0,1 1,0 0)"),
    ("full_circle_far", "CIRCULARSTRING (30 40,30.5 40.25,30 40)"),
    ("arc_across_0_degrees", f"CIRCULARSTRING ({_on_circle(100, 50, 10, 350, 5, 20)})"),
    ("arc_across_0_degrees_cw", f"CIRCULARSTRING ({_on_circle(100, 50, 10, 20, 5, 350)})"),
    ("arc_across_180_degrees", f"CIRCULARSTRING ({_on_circle(-3, 7, 2.5, 170, 180, 200)})"),
    ("arc_nearly_full", f"CIRCULARSTRING ({_on_circle(0, 0, 1, 1, 180, 359)})"),
    ("arc_longitudes_across_360", "CIRCULARSTRING (359 0,360 1,361 0)"),
    ("several_arcs", "CIRCULARSTRING (-179 10,180 11,179.5 -3,170 0,160 20)"),
    ("small_arc", "CIRCULARSTRING (0 0,1 0.0001,2 0)"),
    ("collinear_no_arc", "CIRCULARSTRING (0 0,1 0,2 0)"),
    ("huge_radius", "CIRCULARSTRING (-1000000 0,0 0.1,1000000 0)"),
    ("large_coordinates", "CIRCULARSTRING (1000000 5000000,1000001 5000001.5,1000003 5000000)"),
    ("compound_lines_and_arcs", "COMPOUNDCURVE ((0 0,1 0),CIRCULARSTRING (1 0,2 1,3 0),(3 0,4 -1,5 -1))"),
    ("compound_arcs_only", "COMPOUNDCURVE (CIRCULARSTRING (0 0,1 1,2 0),CIRCULARSTRING (2 0,3 -1,4 0))"),
    (
        "curve_polygon_with_holes",
        "CURVEPOLYGON (CIRCULARSTRING (0 0,10 0,0 0),"
        "COMPOUNDCURVE (CIRCULARSTRING (4 0,5 1,6 0),(6 0,4 0)),(2 -1,3 -1,3 -2,2 -1),"
        "CIRCULARSTRING (7 -1,7.5 -1.5,7 -1))",
    ),
    ("curve_polygon_compound_ring", "CURVEPOLYGON (COMPOUNDCURVE (CIRCULARSTRING (0 0,2 2,4 0),(4 0,4 -3,0 -3,0 0)))"),
    ("multisurface_mixed", "MULTISURFACE (CURVEPOLYGON (CIRCULARSTRING (0 0,2 0,0 0)),((10 10,11 10,11 11,10 10)))"),
    (
        "multicurve_mixed",
        "MULTICURVE ((0 0,1 1),CIRCULARSTRING (0 0,1 1,2 0),COMPOUNDCURVE (CIRCULARSTRING (5 0,6 1,7 0),(7 0,8 0)))",
    ),
    ("circle_z", "CIRCULARSTRING Z (0 0 1,1 1 2,0 0 5)"),
    ("arcs_z", "CIRCULARSTRING Z (0 0 1,1 1 2,2 0 5,3 -1 0,4 0 -2)"),
    ("compound_z", "COMPOUNDCURVE Z ((0 0 0,1 0 1),CIRCULARSTRING Z (1 0 1,2 1 2,3 0 3))"),
]
NAMES = [name for name, _ in GENERATED]


def ogr2ogr(*args: str | Path) -> None:
    exe = shutil.which("ogr2ogr")
    if exe is None:
        pytest.fail("ogr2ogr is not installed: run the tests with `make test` (bootstrap installs gdal-bin)")
    subprocess.run([exe, *map(str, args)], check=True, capture_output=True, timeout=120)


def ogr_linear(src: Path, *open_options: str) -> list[shapely.Geometry]:
    """ogr2ogr's linearised read of a file (GeoJSON with every digit), in feature order.

    GDAL 3.6's ogr2ogr leaves curves with Z as they are under CONVERT_TO_LINEAR (GeoJSON then writes a null
    geometry); OGR_STROKE_CURVE strokes them as they are read, with the same function and default step
    (the 2D output is byte for byte the same with and without it)."""
    out = vf.tmpdir() / "linear.geojson"
    oo = [a for o in open_options for a in ("-oo", o)]
    ogr2ogr(
        "--config",
        "OGR_STROKE_CURVE",
        "TRUE",
        "-f",
        "GeoJSON",
        out,
        src,
        *oo,
        "-nlt",
        "CONVERT_TO_LINEAR",
        "-lco",
        "SIGNIFICANT_FIGURES=17",
    )
    _, table = pyogrio.read_arrow(out)
    return list(shapely.from_wkb(table.column("wkb_geometry").to_numpy(zero_copy_only=False)))


def generated_csv(rows: list[tuple[str, str]] = GENERATED) -> Path:
    path = vf.tmpdir() / "curves.csv"
    path.write_bytes(vf.csv_text(["name", "WKT"], [[name, wkt] for name, wkt in rows]))
    return path


CSV_OPTIONS = ("GEOM_POSSIBLE_NAMES=WKT", "KEEP_GEOM_COLUMNS=NO")


def read_wkb(src: Path, **open_options: str) -> list[bytes]:
    """The WKB the readers hand geoetl (pyogrio's GDAL), curves as they are."""
    meta, table = pyogrio.read_arrow(src, **open_options)
    return table.column(meta.get("geometry_name") or "wkb_geometry").to_pylist()


def assert_same_vertices(mine: shapely.Geometry, ref: shapely.Geometry, what: str, z: bool = True) -> None:
    """Same type, same parts, same vertex count, each vertex equal within a few units in the last place
    (GDAL hides the arc's middle point in the lowest byte of some vertices)."""
    assert mine.geom_type == ref.geom_type, what
    assert shapely.get_num_geometries(mine) == shapely.get_num_geometries(ref), what
    a = shapely.get_coordinates(mine, include_z=z)
    b = shapely.get_coordinates(ref, include_z=z)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=what)


# ------------------------------------------------------------------------------------------------- units


@pytest.fixture(scope="module")
def generated() -> tuple[list[bytes], list[shapely.Geometry]]:
    src = generated_csv()
    return read_wkb(src, **dict(o.split("=") for o in CSV_OPTIONS)), ogr_linear(src, *CSV_OPTIONS)


@pytest.mark.parametrize("name", NAMES)
def test_generated_curves_match_ogr2ogr(generated, name):
    wkbs, refs = generated
    i = NAMES.index(name)
    assert curves.kind_of(wkbs[i]) in curves.CURVED
    mine = shapely.from_wkb(curves.linearize(wkbs[i]))
    assert_same_vertices(mine, refs[i], name)
    assert shapely.has_z(mine) == name.endswith("_z")


@pytest.mark.parametrize("name", FIXTURES)
def test_pyogrio_curve_fixtures_match_ogr2ogr(name):
    path = corpus.pyogrio_fixture(name)
    wkbs, refs = read_wkb(path), ogr_linear(path)
    assert len(wkbs) == len(refs) > 0
    for wkb, ref in zip(wkbs, refs, strict=True):
        assert curves.kind_of(wkb) in curves.CURVED
        assert_same_vertices(shapely.from_wkb(curves.linearize(wkb)), ref, name)


def test_vertex_counts_follow_the_sweep_not_the_radius():
    """4-degree steps, rounded, then odd and at least 7: a half circle has 45 steps, a full circle 91, and
    an arc of a 5e12-unit radius sweeping a hair of angle has 7, whatever its size."""
    assert curves.arc_steps(math.pi) == 45 and curves.arc_steps(2 * math.pi) == 91
    assert curves.arc_steps(1e-9) == 7 and curves.arc_steps(math.radians(34)) == 9
    assert curves.arc_steps(2 * math.pi, step_degrees=1e-9) == curves.MAX_STEPS_PER_ARC  # capped
    big = curves.stroke_arc(np.array([-1e6, 0.0]), np.array([0.0, 0.1]), np.array([1e6, 0.0]))
    assert len(big) == 8 and big[0].tolist() == [-1e6, 0.0] and big[-1].tolist() == [1e6, 0.0]


def test_a_feature_stroking_into_too_many_vertices_is_refused():
    """Each full circle strokes into 92 vertices: a CircularString of enough of them is refused rather than
    grown without bound."""
    arcs = curves.MAX_VERTICES_PER_FEATURE // 91 + 1
    xy = np.zeros((2 * arcs + 1, 2))
    xy[1::2, 0] = 2.0  # (0 0, 2 0, 0 0, 2 0, ...): full circles
    wkb = struct.pack("<BII", 1, 8, len(xy)) + xy.astype("<f8").tobytes()
    with pytest.raises(curves.CurveError, match="more than 5,000,000 vertices"):
        curves.linearize(wkb)


def test_malformed_circular_strings_are_refused():
    four = struct.pack("<BII", 1, 8, 4) + np.arange(8, dtype="<f8").tobytes()
    with pytest.raises(curves.CurveError, match="CircularString of 4 points"):
        curves.linearize(four)
    with pytest.raises(curves.CurveError, match="truncated"):
        curves.linearize(four[:-8])


def test_deeply_nested_collections_are_refused():
    """Parsing stops 32 collections deep, as GDAL's WKB reader does, rather than recursing without bound."""
    arc = struct.pack("<BII", 1, 8, 3) + np.array([0, 0, 1, 1, 2, 0], dtype="<f8").tobytes()
    nested = arc
    for _ in range(40):
        nested = struct.pack("<BII", 1, 7, 1) + nested
    with pytest.raises(curves.CurveError, match="nested more than 32 deep"):
        curves.linearize(nested)
    shallow = struct.pack("<BII", 1, 7, 1) + struct.pack("<BII", 1, 7, 1) + arc
    assert shapely.get_num_coordinates(shapely.from_wkb(curves.linearize(shallow))) == 46


def test_linear_geometries_and_collections_without_curves_are_left_alone():
    for geom in ["POINT (1 2)", "POLYGON ((0 0,1 0,1 1,0 0))", "GEOMETRYCOLLECTION (POINT (1 2),LINESTRING (0 0,1 1))"]:
        assert curves.linearize(shapely.to_wkb(shapely.from_wkt(geom))) is None
    batch = [shapely.to_wkb(shapely.from_wkt("POINT (1 2)")), None]
    _, count = curves.linearize_batch(batch)
    assert count == 0


def test_big_endian_and_ewkb_flags_read_as_iso(generated):
    """The same CircularString Z as big-endian WKB with EWKB's Z flag and an SRID: the same vertices."""
    refs = generated[1]
    i = NAMES.index("arcs_z")
    xyz = shapely.get_coordinates(shapely.from_wkt("LINESTRING Z (0 0 1,1 1 2,2 0 5,3 -1 0,4 0 -2)"), include_z=True)
    ewkb = struct.pack(">BIII", 0, 8 | 0x80000000 | 0x20000000, 4326, len(xyz)) + xyz.astype(">f8").tobytes()
    assert_same_vertices(shapely.from_wkb(curves.linearize(ewkb)), refs[i], "ewkb")


# ---------------------------------------------------------------------------------------- end to end


def loaded_geometries(db, table: str, key: str = "id") -> dict:
    rows = db.execute(f"SELECT {key} AS k, ST_AsBinary(geom) AS g FROM geo.{table}").fetchall()
    return {r["k"]: shapely.from_wkb(bytes(r["g"])) for r in rows}


def lonlat(geom: shapely.Geometry) -> bool:
    x0, y0, x1, y1 = geom.bounds
    return -180 <= x0 and x1 <= 180 and -90 <= y0 and y1 <= 90


def as_multi(geom: shapely.Geometry) -> shapely.Geometry:
    kind = geom.geom_type
    make = {"LineString": shapely.MultiLineString, "Polygon": shapely.MultiPolygon}.get(kind)
    return make([geom]) if make else geom


def run_with_workers(workers, db, params: dict) -> dict:
    workers.start(1, concurrency=2)
    job_id = submit("ingest_vector", params)
    assert wait_for_job(job_id, timeout=180) in ("completed", "failed")
    job = vf.job_row(db, job_id)
    assert job["status"] == "completed", job["error_details"]
    return job


@pytest.mark.parametrize("name", ["curve.gpkg", "multisurface.gpkg"])
def test_curve_fixtures_load_through_workers(db, workers, nonce, name):
    path = corpus.pyogrio_fixture(name)
    refs = ogr_linear(path)
    blob = vf.upload(f"{nonce}/{name}", path.read_bytes())
    table = f"cv_{name.split('.')[0]}_{nonce}"
    job = run_with_workers(workers, db, {"blob_name": blob, "file_extension": "gpkg", "table_name": table})
    summary = job["result_data"]["summary"]
    assert summary["total_rows_uploaded"] == len(refs)
    assert summary["geometry_stats"]["linearized"] == len(refs)
    g = vf.geometry_checks(db, "geo", table)
    assert g["n"] == len(refs) and g["invalid"] == 0 and g["srids"] == [4326]
    assert g["types"] == [{"curve.gpkg": "MULTILINESTRING", "multisurface.gpkg": "MULTIPOLYGON"}[name]]
    got = loaded_geometries(db, table)
    for i, ref in enumerate(refs):
        assert_same_vertices(got[i + 1], as_multi(ref), name, z=False)


def test_generated_curves_in_a_csv_load_through_workers(db, workers, nonce):
    """A CSV with curved WKT (converted once in stage 1): lines and polygons in one generic column, each
    feature equal to ogr2ogr's linearised read, Z dropped and counted. (Only the curves whose linear form
    fits longitudes/latitudes: the file declares no CRS.)"""
    everything = ogr_linear(generated_csv(), *CSV_OPTIONS)
    kept = [(row, ref) for row, ref in zip(GENERATED, everything, strict=True) if lonlat(ref)]
    assert len(kept) >= 15
    src = generated_csv([row for row, _ in kept])
    names, refs = [name for (name, _), _ in kept], [ref for _, ref in kept]
    blob = vf.upload(f"{nonce}/curves.csv", src.read_bytes())
    table = f"cv_csv_{nonce}"
    job = run_with_workers(
        workers,
        db,
        {"blob_name": blob, "file_extension": "csv", "table_name": table, "converter_params": {"wkt_column": "WKT"}},
    )
    summary = job["result_data"]["summary"]
    assert summary["total_rows_uploaded"] == len(names)
    assert summary["geometry_stats"]["linearized"] == len(names)
    assert summary["geometry_stats"]["z_dropped"] == sum(n.endswith("_z") for n in names) > 0
    assert vf.geometry_checks(db, "geo", table)["invalid"] == 0
    got = loaded_geometries(db, table, "name")
    assert sorted(got) == sorted(names)
    for name, ref in zip(names, refs, strict=True):
        assert_same_vertices(got[name], as_multi(shapely.force_2d(ref)), name, z=False)


def test_curve_polygons_in_gpkg_slices_through_workers(db, workers, nonce):
    """A GeoPackage layer declared CURVEPOLYGON is read in place in several fid slices (stage 2), each
    slice linearising its own features."""
    polygons = [(name, wkt) for name, wkt in GENERATED if wkt.startswith("CURVEPOLYGON")]
    rows = [[f"{name}_{k}", wkt] for k in range(4) for name, wkt in polygons]
    csv = vf.tmpdir() / "p.csv"
    csv.write_bytes(vf.csv_text(["name", "WKT"], rows))
    gpkg = vf.tmpdir() / "curvepolygons.gpkg"
    ogr2ogr(
        "-f",
        "GPKG",
        gpkg,
        csv,
        "-nlt",
        "CURVEPOLYGON",
        "-a_srs",
        "EPSG:4326",
        *[a for o in CSV_OPTIONS for a in ("-oo", o)],
    )
    refs = ogr_linear(gpkg)
    blob = vf.upload(f"{nonce}/curvepolygons.gpkg", gpkg)
    table = f"cv_slices_{nonce}"
    job = run_with_workers(
        workers, db, {"blob_name": blob, "file_extension": "gpkg", "table_name": table, "chunk_size": 3}
    )
    summary = job["result_data"]["summary"]
    assert summary["total_chunks"] == 3 and summary["total_rows_uploaded"] == len(rows)
    assert summary["geometry_stats"]["linearized"] == len(rows)
    assert vf.geometry_checks(db, "geo", table)["types"] == ["MULTIPOLYGON"]
    got = loaded_geometries(db, table, "name")
    for (name, _), ref in zip(rows, refs, strict=True):
        assert_same_vertices(got[name], as_multi(ref), name, z=False)
