"""The real-data corpus (public files from npm and pyogrio's fixtures), each also converted into the
supported formats: exact row count, every attribute equal to what GDAL (pyogrio) reads, every geometry
valid, repaired areas within 0.1 % of make_valid's."""

from __future__ import annotations

import numpy as np
import pyogrio
import pytest
import shapely

from tests import corpus
from tests import vector_files as vf

pytestmark = pytest.mark.slow


def write_as(gdf, ext: str):
    """(bytes to upload, the path GDAL reads back) of gdf written as ext."""
    folder = vf.tmpdir()
    if ext == "parquet":
        path = folder / "data.parquet"
        gdf.to_parquet(path)
        return path.read_bytes(), path
    if ext == "zip":
        pyogrio.write_dataframe(gdf, folder / "data.shp", driver="ESRI Shapefile")
        data = vf.zip_of({p.name: p for p in folder.glob("data.*")})
        return data, folder / "data.shp"
    driver = {"gpkg": "GPKG", "fgb": "FlatGeobuf", "geojsonl": "GeoJSONSeq", "geojson": "GeoJSON"}[ext]
    path = folder / f"data.{ext}"
    pyogrio.write_dataframe(gdf, path, driver=driver, promote_to_multi=ext == "gpkg")
    return path.read_bytes(), path


def read_back(path):
    if path.suffix == ".parquet":
        import geopandas as gpd

        return gpd.read_parquet(path)
    return pyogrio.read_dataframe(path)


def check_loaded(db, job, table, expected, key):
    assert job["status"] == "completed", job["error_details"]
    names = {c["source_name"]: c["name"] for c in job["result_data"]["summary"]["columns"]}
    g = vf.geometry_checks(db, "geo", table)
    assert g["n"] == len(expected) and g["invalid"] == 0
    rows = {r[names[key]]: r for r in db.execute(f"SELECT *, ST_Area(geom) AS area_ FROM geo.{table}").fetchall()}
    assert len(rows) == len(expected)
    geoms = np.asarray(expected.geometry.array)
    invalid = ~shapely.is_valid(geoms)
    assert job["result_data"]["summary"]["features_repaired"] == int(invalid.sum())
    for i, rec in enumerate(expected.drop(columns="geometry").to_dict("records")):
        row = rows[rec[key]]
        for col, value in rec.items():
            assert row[names[col]] == (value.item() if isinstance(value, np.generic) else value), (col, rec[key])
        want = shapely.make_valid(geoms[i], method="structure").area if invalid[i] else geoms[i].area
        assert row["area_"] == pytest.approx(want, rel=1e-3), rec[key]


@pytest.mark.parametrize("ext", ["geojson", "gpkg", "zip", "fgb", "parquet", "geojsonl"])
def test_countries_maritime_in_every_format(db, drain, nonce, ext):
    source = pyogrio.read_dataframe(corpus.npm_file(*corpus.COUNTRIES_MARITIME))
    data, path = write_as(source, ext)
    expected = read_back(path)
    assert len(expected) == 250
    blob = vf.upload(f"{nonce}/countries.{ext}", data)
    table = f"cm_{ext}_{nonce}"
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": ext, "table_name": table}, timeout=600)
    check_loaded(db, job, table, expected, "A3")


@pytest.mark.parametrize("country", ["france", "canada", "indonesia", "norway"])
def test_world_geojson_countries(db, drain, nonce, country):
    path = corpus.npm_file("world-geojson", f"countries/{country}.json")
    blob = vf.upload(f"{nonce}/{country}.geojson", path.read_bytes())
    table = f"wg_{country}_{nonce}"
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "geojson", "table_name": table})
    assert job["status"] == "completed", job["error_details"]
    expected = pyogrio.read_dataframe(path)
    g = vf.geometry_checks(db, "geo", table)
    assert g["n"] == len(expected) and g["invalid"] == 0
    geoms = np.asarray(expected.geometry.array)
    want = sum(shapely.make_valid(x, method="structure").area for x in geoms)
    got = db.execute(f"SELECT sum(ST_Area(geom)) a FROM geo.{table}").fetchone()["a"]
    assert got == pytest.approx(want, rel=1e-3)


@pytest.mark.parametrize("name", ["test_gpkg_nulls.gpkg", "line_zm.gpkg"])
def test_pyogrio_fixtures(db, drain, nonce, name):
    path = corpus.pyogrio_fixture(name)
    blob = vf.upload(f"{nonce}/{name}", path.read_bytes())
    table = f"fx_{name.split('.')[0]}_{nonce}"
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "gpkg", "table_name": table})
    assert job["status"] == "completed", job["error_details"]
    expected = pyogrio.read_dataframe(path)
    expected = expected[~expected.geometry.isna()]
    names = {c["source_name"]: c["name"] for c in job["result_data"]["summary"]["columns"]}
    rows = db.execute(f"SELECT * FROM geo.{table} ORDER BY id").fetchall()
    assert len(rows) == len(expected)
    for row, rec in zip(rows, expected.drop(columns="geometry").to_dict("records"), strict=True):
        for col, value in rec.items():
            if value is None or (isinstance(value, float) and np.isnan(value)):
                assert row[names[col]] is None, col
            else:
                got = row[names[col]]
                want = value.item() if isinstance(value, np.generic) else value
                assert (got == want) or (hasattr(want, "isoformat") and str(got)[:10] == str(want)[:10]), col


@pytest.mark.parametrize("name", ["curve.gpkg", "multisurface.gpkg", "curvepolygon.gpkg"])
def test_curved_fixtures_load_linearised(db, drain, nonce, name):
    """Curves are stroked as ogr2ogr -nlt CONVERT_TO_LINEAR does (vertex by vertex in test_curves.py)."""
    from tests.test_curves import ogr_linear

    path = corpus.pyogrio_fixture(name)
    refs = ogr_linear(path)
    blob = vf.upload(f"{nonce}/{name}", path.read_bytes())
    table = f"cv_{nonce}"
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "gpkg", "table_name": table})
    assert job["status"] == "completed", job["error_details"]
    assert job["result_data"]["summary"]["geometry_stats"]["linearized"] == len(refs)
    g = vf.geometry_checks(db, "geo", table)
    assert g["n"] == len(refs) and g["invalid"] == 0
    points = db.execute(f"SELECT sum(ST_NPoints(geom)) AS n FROM geo.{table}").fetchone()["n"]
    assert points == sum(shapely.get_num_coordinates(r) for r in refs)
