"""GeoParquet, FlatGeobuf, GeoJSON sequences, zipped File Geodatabase, GML, GPX and TopoJSON: each made
from pyogrio's naturalearth_lowres fixture, loaded end to end, and compared value by value with what
pyogrio reads from the same file."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
import pytest
from shapely.geometry import mapping

from config import get_settings
from tests import vector_files as vf
from tests.helpers import submit, wait_for_job
from tests.test_ingest_slices import stage_tasks

NATURALEARTH = Path(pyogrio.__file__).parent / "tests/fixtures/naturalearth_lowres/naturalearth_lowres.shp"
ATTRIBUTES = ("pop_est", "continent", "name", "iso_a3", "gdp_md_est")


def countries():
    return pyogrio.read_dataframe(NATURALEARTH)


def params(blob: str, ext: str, table: str, **extra: Any) -> dict[str, Any]:
    return {"blob_name": blob, "file_extension": ext, "table_name": table, **extra}


def assert_same_values(db, table: str, expected, key: str = "name", columns=ATTRIBUTES) -> None:
    """Row count and every attribute value equal to what pyogrio read; every geometry valid in EPSG:4326."""
    rows = db.execute(f"SELECT * FROM geo.{table}").fetchall()
    assert len(rows) == len(expected)
    got = {r[key]: r for r in rows}
    assert len(got) == len(rows), "the key column must be unique for the comparison"
    for record in expected.to_dict("records"):
        row = got[record[key]]
        for col in columns:
            want = record[col]
            if isinstance(want, float) and math.isnan(want):
                assert row[col] is None, col
            elif isinstance(want, float):
                assert row[col] == pytest.approx(want, rel=1e-12), col
            else:
                assert row[col] == want, col
    g = vf.geometry_checks(db, "geo", table)
    assert g["invalid"] == 0 and g["srids"] == [4326] and not g["has_z"]
    extent = db.execute(f"SELECT ST_XMin(e) x0, ST_YMin(e) y0, ST_XMax(e) x1, ST_YMax(e) y1"
                        f" FROM (SELECT ST_Extent(geom) e FROM geo.{table}) s").fetchone()  # no axis swap
    want = expected.to_crs(4326).total_bounds if expected.crs else expected.total_bounds
    assert [extent[k] for k in ("x0", "y0", "x1", "y1")] == pytest.approx(list(want), abs=1e-6)


def loaded(job) -> dict[str, Any]:
    assert job["status"] == "completed", job["error_details"]
    summary = job["result_data"]["summary"]
    assert summary["data_complete"] is True
    return summary


def test_geoparquet_row_groups_with_real_workers(db, workers, nonce, tmp_path):
    """Each stage 2 task reads its own row groups from the blob (stage 1 reads the footer only)."""
    df = countries()
    path = tmp_path / "countries.parquet"
    df.to_parquet(path, row_group_size=50)
    assert pq.ParquetFile(path).metadata.num_row_groups == 4
    blob = vf.upload(f"{nonce}/countries.parquet", path)
    workers.start(2, concurrency=2)
    job_id = submit("ingest_vector", params(blob, "parquet", f"pq_{nonce}", chunk_size=90))
    assert wait_for_job(job_id, timeout=180) == "completed"
    job = vf.job_row(db, job_id)
    summary = loaded(job)
    assert summary["total_rows_uploaded"] == 177 and summary["total_chunks"] == 3  # 50 + 50 | 50 | 27
    parts = [t["parameters"] for t in stage_tasks(db, job_id, 2)]
    assert [(p["kind"], p["row_groups"], p["rows"]) for p in parts] == [
        ("parquet_row_groups", [0, 1], [0, 50]), ("parquet_row_groups", [1, 2], [50, 100]),
        ("parquet_row_groups", [2, 4], [100, 177])]
    assert vf.columns_of(db, "geo", f"pq_{nonce}")["pop_est"] == "bigint"
    assert_same_values(db, f"pq_{nonce}", df)


def test_geoparquet_geometry_outside_its_declared_types_fails_the_job(db, drain, nonce, tmp_path):
    df = countries().head(60)
    df.loc[45, "geometry"] = df.loc[45, "geometry"].centroid
    table = pa.Table.from_pandas(df.to_wkb(), preserve_index=False)
    geo = {"version": "1.0.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon", "MultiPolygon"]}}}
    path = tmp_path / "lying.parquet"
    pq.write_table(table.replace_schema_metadata({b"geo": json.dumps(geo).encode()}), path, row_group_size=20)
    blob = vf.upload(f"{nonce}/lying.parquet", path)
    job = vf.run_ingest(drain, db, params(blob, "parquet", f"pql_{nonce}"))
    assert job["status"] == "failed"
    error = job["error_details"]["error"]
    assert "lying.parquet" in error and "geometry_types" in error and "Point" in error, error
    assert not vf.table_exists(db, "geo", f"pql_{nonce}")


def test_geoparquet_replaced_while_its_row_groups_are_read_fails(tmp_path):
    """A part reads only the version stage 1 planned (range reads on the planned ETag)."""
    from core.errors import PermanentTaskError
    from infrastructure.blob import LocalBlobStore
    from services.vector import parquet_parts

    store = LocalBlobStore(tmp_path / "blobs")
    (tmp_path / "blobs" / "box").mkdir(parents=True)
    path = tmp_path / "blobs" / "box" / "c.parquet"
    countries().to_parquet(path, row_group_size=60)
    plan, _ = parquet_parts.plan_parquet({"blob_name": "c.parquet", "container_name": "box",
                                          "file_extension": "parquet", "chunk_size": 60}, store, None)
    part = {**plan["source"], **plan["chunks"][1], "blob_name": "c.parquet", "container_name": "box"}
    src = parquet_parts.part_source(part, store, tmp_path)
    with src.layers[0].opener(src.layers[0].path) as (_, batches):
        assert sum(b.num_rows for b in batches) == 60
    countries().head(100).to_parquet(path, row_group_size=60)
    with pytest.raises(PermanentTaskError, match=r"c\.parquet' was replaced"):
        with src.layers[0].opener(src.layers[0].path) as (_, batches):
            list(batches)


def test_geoparquet_in_another_crs_is_reprojected(db, drain, nonce, tmp_path):
    df = countries().head(20)
    path = tmp_path / "merc.parquet"
    df.to_crs(3857).to_parquet(path)
    blob = vf.upload(f"{nonce}/merc.parquet", path)
    job = vf.run_ingest(drain, db, params(blob, "parquet", f"pqm_{nonce}"))
    loaded(job)
    assert_same_values(db, f"pqm_{nonce}", df)
    assert "3857" in json.dumps(job["result_data"]["summary"]["source_crs"])
    # the same countries, back in degrees: the bounding box of all of them matches the source's
    box = db.execute(f"SELECT ST_XMin(e) x0, ST_YMax(e) y1 FROM (SELECT ST_Extent(geom) e FROM geo.pqm_{nonce}) s")
    row = box.fetchone()
    bounds = df.total_bounds
    assert row["x0"] == pytest.approx(bounds[0], abs=1e-6) and row["y1"] == pytest.approx(bounds[3], abs=1e-6)


@pytest.mark.parametrize("ext, driver", [("fgb", "FlatGeobuf"), ("geojsonl", "GeoJSONSeq"),
                                         ("geojsons", "GeoJSONSeq"), ("gml", "GML")])
def test_gdal_vector_formats(db, drain, nonce, tmp_path, ext, driver):
    path = tmp_path / f"countries.{ext}"
    options = {"RS": "YES"} if ext == "geojsons" else {}
    pyogrio.write_dataframe(countries(), path, driver=driver, layer="countries", **options)
    if ext == "geojsons":
        assert path.read_bytes().startswith(b"\x1e")  # RFC 8142 record separators
    expected = pyogrio.read_dataframe(path)
    blob = vf.upload(f"{nonce}/countries.{ext}", path)
    table = f"{ext}_{nonce}"
    summary = loaded(vf.run_ingest(drain, db, params(blob, ext, table)))
    assert summary["total_rows_uploaded"] == 177 == len(expected)
    assert_same_values(db, table, expected)


def _zipped_gdb(tmp_path: Path, layers: dict[str, Any], folder: str = "world.gdb") -> bytes:
    gdb = tmp_path / folder
    for name, frame in layers.items():
        pyogrio.write_dataframe(frame, gdb, driver="OpenFileGDB", layer=name, promote_to_multi=True,
                               TARGET_ARCGIS_VERSION="ARCGIS_PRO_3_2_OR_LATER")
    return vf.zip_of({f"{folder}/{p.name}": p for p in sorted(gdb.iterdir())})


def test_file_geodatabase_zip(db, drain, nonce, tmp_path):
    df = countries()
    content = _zipped_gdb(tmp_path, {"countries": df, "capitals": _capitals(df)})
    blob = vf.upload(f"{nonce}/world.gdb.zip", content)
    failed = vf.run_ingest(drain, db, params(blob, "gdb.zip", f"gdbx_{nonce}"))
    assert failed["status"] == "failed"
    err = failed["error_details"]["error"]
    assert "countries" in err and "capitals" in err and "layer_name" in err and "world.gdb.zip" in err
    table = f"gdb_{nonce}"
    summary = loaded(vf.run_ingest(drain, db, params(blob, "gdb.zip", table,
                                                     converter_params={"layer_name": "countries"})))
    local = tmp_path / "world.gdb"
    expected = pyogrio.read_dataframe(local, layer="countries")
    assert summary["total_rows_uploaded"] == 177 == len(expected)
    assert_same_values(db, table, expected)


def test_file_geodatabase_zip_guards(db, drain, nonce, tmp_path):
    content = _zipped_gdb(tmp_path, {"countries": countries().head(5)})
    blob = vf.upload(f"{nonce}/escape.gdb.zip", vf.zip_of({"../evil.gdb/a00000001.gdbtable": b"x"}))
    job = vf.run_ingest(drain, db, params(blob, "gdb.zip", f"gdbe_{nonce}"))
    assert job["status"] == "failed"
    assert "../evil.gdb/a00000001.gdbtable" in job["error_details"]["error"]
    assert "'..' are refused" in job["error_details"]["error"] and "escape.gdb.zip" in job["error_details"]["error"]
    blob = vf.upload(f"{nonce}/plain.gdb.zip", vf.zip_of({"x.geojson": vf.geojson([(vf.squares(1)[0], {})])}))
    job = vf.run_ingest(drain, db, params(blob, "gdb.zip", f"gdbn_{nonce}"))
    assert job["status"] == "failed" and "no .gdb folder" in job["error_details"]["error"]
    assert "plain.gdb.zip" in job["error_details"]["error"]
    blob = vf.upload(f"{nonce}/fake.gdb.zip", vf.zip_of({"x.gdb/a.geojson": vf.geojson([(vf.squares(1)[0], {})])}))
    job = vf.run_ingest(drain, db, params(blob, "gdb.zip", f"gdbf_{nonce}"))
    assert job["status"] == "failed"
    assert f"'{nonce}/fake.gdb.zip:x.gdb'" in job["error_details"]["error"]
    assert "not recognized" in job["error_details"]["error"] and "geoetl-src" not in job["error_details"]["error"]
    get_settings.cache_clear()
    os.environ["MAX_SOURCE_BYTES"] = str(len(content) + 10)
    try:
        blob = vf.upload(f"{nonce}/big.gdb.zip", content)
        job = vf.run_ingest(drain, db, params(blob, "gdb.zip", f"gdbb_{nonce}"))
    finally:
        del os.environ["MAX_SOURCE_BYTES"]
        get_settings.cache_clear()
    assert job["status"] == "failed"
    assert "inflates to" in job["error_details"]["error"] and "world.gdb" in job["error_details"]["error"]


def _capitals(df):
    points = df.copy()
    points["geometry"] = df.geometry.representative_point()
    return points


def _gpx(waypoints, tracks) -> bytes:
    parts = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<gpx version="1.1" creator="geoetl tests" xmlns="http://www.topografix.com/GPX/1/1">']
    for name, x, y, ele in waypoints:
        parts.append(f'<wpt lat="{y}" lon="{x}"><ele>{ele}</ele><name>{name}</name></wpt>')
    for name, coords in tracks:
        points = "".join(f'<trkpt lat="{y}" lon="{x}"/>' for x, y in coords)
        parts.append(f"<trk><name>{name}</name><trkseg>{points}</trkseg></trk>")
    parts.append("</gpx>")
    return "\n".join(parts).encode()


def test_gpx_layers(db, drain, nonce, tmp_path):
    points = _capitals(countries())
    waypoints = [(r.name.replace("&", "and"), r.geometry.x, r.geometry.y, i * 10.5)
                 for i, r in enumerate(points.itertuples())]
    only_points = tmp_path / "capitals.gpx"
    only_points.write_bytes(_gpx(waypoints, []))
    expected = pyogrio.read_dataframe(only_points, layer="waypoints")
    blob = vf.upload(f"{nonce}/capitals.gpx", only_points)
    summary = loaded(vf.run_ingest(drain, db, params(blob, "gpx", f"gpxw_{nonce}")))  # the one filled layer
    assert summary["total_rows_uploaded"] == 177 == len(expected)
    assert_same_values(db, f"gpxw_{nonce}", expected, columns=("name", "ele"))

    tracks = [(f"track {i}", [(10 + i, 50), (10.5 + i, 50.5), (11 + i, 50.2)]) for i in range(3)]
    both = tmp_path / "both.gpx"
    both.write_bytes(_gpx(waypoints[:4], tracks))
    blob = vf.upload(f"{nonce}/both.gpx", both)
    failed = vf.run_ingest(drain, db, params(blob, "gpx", f"gpxf_{nonce}"))
    assert failed["status"] == "failed"
    err = failed["error_details"]["error"]
    assert "waypoints" in err and "tracks" in err and "layer_name" in err and "both.gpx" in err
    summary = loaded(vf.run_ingest(drain, db, params(blob, "gpx", f"gpxt_{nonce}",
                                                     converter_params={"layer_name": "tracks"})))
    assert summary["total_rows_uploaded"] == 3 and summary["geometry_type"] == "MultiLineString"
    expected = pyogrio.read_dataframe(both, layer="tracks")
    assert_same_values(db, f"gpxt_{nonce}", expected, columns=("name",))


def _topojson(df, object_name: str = "countries") -> bytes:
    return _topology({object_name: df})


def _topology(objects: dict[str, Any]) -> bytes:
    """A TopoJSON topology without quantization: every ring its own arc."""
    arcs: list[list[list[float]]] = []
    out = {name: _topo_object(frame, arcs) for name, frame in objects.items()}
    return json.dumps({"type": "Topology", "objects": out, "arcs": arcs}).encode()


def _topo_object(df, arcs: list[list[list[float]]]) -> dict[str, Any]:
    geometries = []

    def ring(coords) -> list[int]:
        arcs.append([list(c) for c in coords])
        return [len(arcs) - 1]

    for record in df.to_dict("records"):
        geo = mapping(record.pop("geometry"))
        polygons = [geo["coordinates"]] if geo["type"] == "Polygon" else geo["coordinates"]
        geometries.append({
            "type": "MultiPolygon",
            "arcs": [[ring(r) for r in polygon] for polygon in polygons],
            "properties": {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()},
        })
    return {"type": "GeometryCollection", "geometries": geometries}


def test_topojson_objects_are_layers(db, drain, nonce, tmp_path):
    df = countries()
    africa, europe = df[df.continent == "Africa"], df[df.continent == "Europe"]
    path = tmp_path / "two.topojson"
    path.write_bytes(_topology({"africa": africa, "europe": europe}))
    blob = vf.upload(f"{nonce}/two.topojson", path)
    failed = vf.run_ingest(drain, db, params(blob, "topojson", f"topof_{nonce}"))
    assert failed["status"] == "failed"
    err = failed["error_details"]["error"]
    assert "africa" in err and "europe" in err and "layer_name" in err and "two.topojson" in err
    loaded(vf.run_ingest(drain, db, params(blob, "topojson", f"topoe_{nonce}",
                                           converter_params={"layer_name": "europe"})))
    expected = pyogrio.read_dataframe(path, layer="europe")
    assert len(expected) == len(europe) > 30
    assert_same_values(db, f"topoe_{nonce}", expected)


def test_topojson(db, drain, nonce, tmp_path):
    path = tmp_path / "countries.topojson"
    path.write_bytes(_topojson(countries()))
    expected = pyogrio.read_dataframe(path)
    assert len(expected) == 177
    blob = vf.upload(f"{nonce}/countries.topojson", path)
    summary = loaded(vf.run_ingest(drain, db, params(blob, "topojson", f"topo_{nonce}")))
    assert summary["total_rows_uploaded"] == 177
    assert_same_values(db, f"topo_{nonce}", expected)


@pytest.mark.parametrize("ext, made_as, named", [  # named: the content's format and the one submitted
    ("fgb", "geojson", ("GeoJSON", "FlatGeobuf")),
    ("geojsonl", "geojson", ("GeoJSON", "GeoJSON sequence")),
    ("gml", "fgb", ("FlatGeobuf", "GML")),
    ("topojson", "geojson", ("GeoJSON", "TopoJSON")),
    ("gpx", "gml", ("GML", "GPX")),
    ("parquet", "fgb", ("FlatGeobuf", "GeoParquet")),
    ("fgb", "parquet", ("GeoParquet", "FlatGeobuf")),
])
def test_content_must_match_the_extension(db, drain, nonce, tmp_path, ext, made_as, named):
    df = countries().head(3)
    path = tmp_path / f"made.{made_as}"
    if made_as == "parquet":
        df.to_parquet(path)
    else:
        pyogrio.write_dataframe(df, path, driver={"geojson": "GeoJSON", "fgb": "FlatGeobuf", "gml": "GML"}[made_as])
    blob = vf.upload(f"{nonce}/wrong.{ext}", path)
    job = vf.run_ingest(drain, db, params(blob, ext, f"wrong_{nonce}"))
    assert job["status"] == "failed"
    err = job["error_details"]["error"]
    assert all(name in err for name in named) and f"wrong.{ext}" in err and f"file_extension '{ext}'" in err
    assert not vf.table_exists(db, "geo", f"wrong_{nonce}")


def test_plain_parquet_without_geo_metadata_fails(db, drain, nonce, tmp_path):
    path = tmp_path / "plain.parquet"
    df = countries().head(3)

    pq.write_table(pa.table({"name": list(df["name"]), "geometry": list(df.geometry.to_wkb())}), path)
    blob = vf.upload(f"{nonce}/plain.parquet", path)
    job = vf.run_ingest(drain, db, params(blob, "parquet", f"plain_{nonce}"))
    assert job["status"] == "failed"
    assert "without GeoParquet metadata" in job["error_details"]["error"]
    assert "plain.parquet" in job["error_details"]["error"]


@pytest.mark.parametrize("ext, converter_params, message", [
    ("gpx", {"layer_name": "paths"}, "converter_params.layer_name"),
    ("gpx", {"crs": "EPSG:3857"}, "'converter_params.crs' is not a converter parameter of gpx files"),
    ("fgb", {"layer_name": "x"}, "'converter_params.layer_name' is not a converter parameter of fgb files"),
    ("parquet", {"crs": "EPSG:999999"}, "is not a coordinate reference system"),
    ("gdb.zip", {"crs": 4326}, "'converter_params.crs' is not a converter parameter of gdb.zip files"),
    ("topojson", {"encoding": "latin1"}, "(allowed: crs, layer_name)"),
])
def test_converter_params_checked_at_submit(nonce, ext, converter_params, message):
    from core.errors import JobValidationError
    from core.submit import submit_job

    blob = vf.upload(f"{nonce}/any.{ext}", b"not read at submit")
    with pytest.raises(JobValidationError) as exc:
        submit_job("ingest_vector", params(blob, ext, f"t_{nonce}", converter_params=converter_params))
    assert message in str(exc.value)


def test_geoparquet_covering_bbox_is_not_an_attribute_and_geoarrow_is_refused(db, drain, nonce, tmp_path):
    df = countries().head(12)
    path = tmp_path / "covered.parquet"
    df.to_parquet(path, write_covering_bbox=True)
    assert "bbox" in pq.ParquetFile(path).schema_arrow.names
    blob = vf.upload(f"{nonce}/covered.parquet", path)
    loaded(vf.run_ingest(drain, db, params(blob, "parquet", f"pqc_{nonce}")))
    assert "bbox" not in vf.columns_of(db, "geo", f"pqc_{nonce}")
    assert_same_values(db, f"pqc_{nonce}", df)

    native = tmp_path / "native.parquet"
    df.to_parquet(native, geometry_encoding="geoarrow")
    blob = vf.upload(f"{nonce}/native.parquet", native)
    job = vf.run_ingest(drain, db, params(blob, "parquet", f"pqn_{nonce}"))
    assert job["status"] == "failed"
    assert "only WKB is read" in job["error_details"]["error"] and "native.parquet" in job["error_details"]["error"]


@pytest.mark.parametrize("ext", ["parquet", "fgb"])
def test_crs_override_for_a_file_that_declares_none(db, drain, nonce, tmp_path, ext):
    """Web Mercator coordinates in a file without a CRS: converter_params.crs says what they are."""
    df = countries().head(15)
    merc = df.to_crs(3857).set_crs(None, allow_override=True)
    path = tmp_path / f"nocrs.{ext}"
    if ext == "parquet":
        merc.to_parquet(path)
    else:
        pyogrio.write_dataframe(merc, path, driver="FlatGeobuf")
    blob = vf.upload(f"{nonce}/nocrs.{ext}", path)
    job = vf.run_ingest(drain, db, params(blob, ext, f"nocrs_{ext}_{nonce}"))
    assert job["status"] == "failed"  # metres do not fit in degrees: not silently taken as EPSG:4326
    job = vf.run_ingest(drain, db, params(blob, ext, f"crs_{ext}_{nonce}", converter_params={"crs": "EPSG:3857"}))
    loaded(job)
    assert_same_values(db, f"crs_{ext}_{nonce}", df)
    row = db.execute(f"SELECT ST_XMin(e) x0, ST_YMin(e) y0 FROM (SELECT ST_Extent(geom) e FROM geo.crs_{ext}_{nonce}) s"
                     ).fetchone()
    bounds = df.total_bounds
    assert row["x0"] == pytest.approx(bounds[0], abs=1e-6) and row["y0"] == pytest.approx(bounds[1], abs=1e-6)


def test_geoparquet_arrow_types(db, drain, nonce, tmp_path):
    """Arrow types GDAL never hands over (large strings, dictionaries, zoned timestamps, dates) load as their
    PostgreSQL counterparts, values unchanged."""
    from datetime import UTC, date, datetime

    import geopandas as gpd

    df = countries().head(6)
    geo_only = tmp_path / "geo_only.parquet"
    gpd.GeoDataFrame({"geometry": df.geometry}, crs=4326).to_parquet(geo_only)
    base = pq.read_table(geo_only)
    table = base.append_column("label", pa.array([f"c{i}" for i in range(6)], pa.large_string()))
    table = table.append_column("kind", pa.array(["a", "b", "a", None, "b", "a"]).dictionary_encode())
    stamps = [datetime(2024, 1, i + 1, 12, 30, tzinfo=UTC) for i in range(6)]
    table = table.append_column("seen", pa.array(stamps, pa.timestamp("us", tz="UTC")))
    table = table.append_column("day", pa.array([date(2020, 2, i + 1) for i in range(6)], pa.date32()))
    table = table.append_column("flag", pa.array([True, False, None, True, False, True]))
    table = table.append_column("big", pa.array([2**40 + i for i in range(6)], pa.int64()))
    path = tmp_path / "types.parquet"
    pq.write_table(table.replace_schema_metadata({b"geo": base.schema.metadata[b"geo"]}), path)
    blob = vf.upload(f"{nonce}/types.parquet", path)
    loaded(vf.run_ingest(drain, db, params(blob, "parquet", f"pqt_{nonce}")))
    cols = vf.columns_of(db, "geo", f"pqt_{nonce}")
    assert cols["label"] == "text" and cols["kind"] == "text" and cols["seen"] == "timestamp with time zone"
    assert cols["day"] == "date" and cols["flag"] == "boolean" and cols["big"] == "bigint"
    rows = db.execute(f"SELECT label, kind, seen, day, flag, big FROM geo.pqt_{nonce} ORDER BY label").fetchall()
    assert [r["kind"] for r in rows] == ["a", "b", "a", None, "b", "a"]
    assert [r["seen"] for r in rows] == stamps
    assert [r["day"] for r in rows] == [date(2020, 2, i + 1) for i in range(6)]
    assert [r["flag"] for r in rows] == [True, False, None, True, False, True]
    assert [r["big"] for r in rows] == [2**40 + i for i in range(6)]
