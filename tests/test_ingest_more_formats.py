"""GeoParquet, FlatGeobuf, GeoJSON sequences, zipped File Geodatabase, GML and TopoJSON: each loads
with exactly the rows and attribute values GDAL (pyogrio) reads from it, every geometry valid."""

from __future__ import annotations

import shutil

import numpy as np
import pyogrio
import pytest
import shapely

from tests import corpus
from tests import vector_files as vf

NE = "naturalearth_lowres"


def natural_earth():
    return pyogrio.read_dataframe(corpus.pyogrio_fixture(NE) / f"{NE}.shp")


def converted(ext: str):
    """naturalearth_lowres written as `ext` (by GDAL, or pyarrow for GeoParquet): (bytes, the path GDAL reads)."""
    folder = vf.tmpdir()
    gdf = natural_earth()
    if ext == "parquet":
        path = folder / "ne.parquet"
        gdf.to_parquet(path)
        return path.read_bytes(), None
    if ext == "gdb.zip":
        gdb = folder / "ne.gdb"
        pyogrio.write_dataframe(gdf, gdb, driver="OpenFileGDB", layer="countries", promote_to_multi=True)
        archive = shutil.make_archive(str(folder / "ne"), "zip", folder, "ne.gdb")
        data = open(archive, "rb").read()
        return data, gdb
    driver = {"fgb": "FlatGeobuf", "geojsonl": "GeoJSONSeq", "geojsons": "GeoJSONSeq", "gml": "GML"}[ext]
    path = folder / f"ne.{ext}"
    pyogrio.write_dataframe(gdf, path, driver=driver)
    return path.read_bytes(), path


def check_same_as_gdal(db, table, expected, job):
    names = {c["source_name"]: c["name"] for c in job["result_data"]["summary"]["columns"]}
    rows = db.execute(f"SELECT * FROM geo.{table}").fetchall()
    assert len(rows) == len(expected)
    g = vf.geometry_checks(db, "geo", table)
    assert g["invalid"] == 0 and g["srids"] == [4326]
    columns = [c for c in expected.columns if c != "geometry"]
    loaded = sorted((tuple(r[names[c]] for c in columns) for r in rows), key=lambda t: str(t))
    want = sorted((tuple(v.item() if isinstance(v, np.generic) else v for v in rec) for rec in
                   expected[columns].itertuples(index=False)), key=lambda t: str(t))
    assert loaded == want


@pytest.mark.parametrize("ext", ["parquet", "fgb", "geojsonl", "geojsons", "gdb.zip", "gml"])
def test_natural_earth_in_each_format(db, drain, nonce, ext):
    data, gdal_path = converted(ext)
    blob = vf.upload(f"{nonce}/ne.{ext}", data)
    table = f"ne_{ext.replace('.', '_')}_{nonce}"
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": ext, "table_name": table})
    assert job["status"] == "completed", job["error_details"]
    expected = natural_earth() if gdal_path is None else pyogrio.read_dataframe(gdal_path)
    check_same_as_gdal(db, table, expected, job)
    invalid = int((~shapely.is_valid(expected.geometry.values)).sum())
    assert job["result_data"]["summary"]["features_repaired"] == invalid


def test_topojson_layer_of_us_atlas(db, drain, nonce):
    path = corpus.npm_file("us-atlas", "states-10m.json")
    blob = vf.upload(f"{nonce}/states.topojson", path.read_bytes())
    table = f"topo_{nonce}"
    params = {"blob_name": blob, "file_extension": "topojson", "table_name": table}
    several = vf.run_ingest(drain, db, params)
    assert several["status"] == "failed"
    assert "states" in several["error_details"]["error"] and "layer_name" in several["error_details"]["error"]
    job = vf.run_ingest(drain, db, {**params, "table_name": f"topo2_{nonce}",
                                    "converter_params": {"layer_name": "states"}})
    assert job["status"] == "completed", job["error_details"]
    expected = pyogrio.read_dataframe(path, layer="states")
    check_same_as_gdal(db, f"topo2_{nonce}", expected, job)
