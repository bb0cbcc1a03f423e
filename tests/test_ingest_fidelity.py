"""No silent value change: integers beyond 64 bits, comma-separated GDAL options, content that is not the
submitted format, JSON nested too deep, and column names with letters outside ASCII."""

from __future__ import annotations

import json

import pytest
from shapely.geometry import Point, box

from core.errors import JobValidationError
from core.submit import submit_job
from tests import vector_files as vf


def one_feature(props):
    return vf.geojson([(Point(1, 2), props)])


def attempts(db, job):
    return db.execute("SELECT max(attempts) m FROM app.tasks WHERE parent_job_id = %s", [job["job_id"]]).fetchone()["m"]


def test_integer_beyond_int64_fails_naming_property_and_feature(db, drain, nonce):
    doc = json.loads(vf.geojson([(Point(1, 2), {"big": 1}), (Point(3, 4), {"big": 2})]))
    doc["features"][1]["properties"]["big"] = 2**70
    blob = vf.upload(f"{nonce}/big.geojson", json.dumps(doc).encode())
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "geojson", "table_name": f"big_{nonce}"})
    assert job["status"] == "failed"
    err = job["error_details"]["error"]
    assert "big.geojson" in err and "feature 1" in err and "'big'" in err and str(2**70) in err
    assert attempts(db, job) == 1
    assert not vf.table_exists(db, "geo", f"big_{nonce}")


def test_int64_limits_load_exactly(db, drain, nonce):
    feats = [(Point(1, 2), {"v": 2**63 - 1}), (Point(3, 4), {"v": -(2**63)})]
    blob = vf.upload(f"{nonce}/lim.geojson", vf.geojson(feats))
    table = f"lim_{nonce}"
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "geojson", "table_name": table})
    assert job["status"] == "completed", job["error_details"]
    assert sorted(r["v"] for r in db.execute(f"SELECT v FROM geo.{table}").fetchall()) == [-(2**63), 2**63 - 1]
    assert job["result_data"]["summary"]["values_out_of_range"] == 0 and job["result_data"]["summary"]["data_complete"]


@pytest.mark.parametrize("param", ["lat_name", "lon_name", "wkt_column"])
def test_commas_in_csv_column_options_are_refused(db, nonce, param):
    blob = vf.upload(f"{nonce}/c.csv", b'"la,t",lon,wkt\n1,2,POINT(1 2)\n')
    conv = {"wkt_column": "w,kt"} if param == "wkt_column" else {"lat_name": "la,t", "lon_name": "lon"}
    if param == "lon_name":
        conv = {"lat_name": "lat", "lon_name": "lo,n"}
    with pytest.raises(JobValidationError) as info:
        submit_job("ingest_vector", {"blob_name": blob, "file_extension": "csv", "table_name": f"c_{nonce}",
                                     "converter_params": conv})
    assert f"converter_params.{param}" in str(info.value) and "comma" in str(info.value)


@pytest.mark.parametrize("ext", ["gpkg", "csv", "kml"])
def test_geojson_submitted_as_another_format_fails_naming_both(db, drain, nonce, ext):
    blob = vf.upload(f"{nonce}/data.{ext}", vf.geojson([(box(0, 0, 1, 1), {"a": 1})]))
    params = {"blob_name": blob, "file_extension": ext, "table_name": f"m{ext}_{nonce}"}
    if ext == "csv":
        params["converter_params"] = {"lat_name": "a", "lon_name": "a"}
    job = vf.run_ingest(drain, db, params)
    assert job["status"] == "failed"
    err = job["error_details"]["error"]
    assert f"data.{ext}" in err and f"'{ext}'" in err and "GeoJSON" in err, err
    assert attempts(db, job) == 1
    assert not vf.table_exists(db, "geo", f"m{ext}_{nonce}")


DEEP_ARRAY = "[" * 10_000 + "]" * 10_000
DEEP_COLLECTION = (
    '{"type": "GeometryCollection", "geometries": [' * 5_000 + '{"type": "Point", "coordinates": [1, 2]}' + "]}" * 5_000
)


@pytest.mark.parametrize(("name", "text", "needle"), [
    ("deep", '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"a": ' + DEEP_ARRAY
     + '}, "geometry": {"type": "Point", "coordinates": [1, 2]}}]}', "nested"),
    ("deepgc", DEEP_COLLECTION, "nested more than 64 levels deep"),  # a bare geometry
], ids=["property", "bare-geometry-collection"])
def test_deep_nesting_fails_at_once_naming_the_file(db, drain, nonce, name, text, needle):
    blob = vf.upload(f"{nonce}/{name}.geojson", text.encode())
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "geojson", "table_name": f"{name}_{nonce}"})
    assert job["status"] == "failed"
    err = job["error_details"]["error"]
    assert f"{name}.geojson" in err and needle in err and "RecursionError" not in err
    assert attempts(db, job) == 1


def test_non_ascii_column_names_keep_their_letters_and_their_source_name(db, drain, nonce):
    blob = vf.upload(f"{nonce}/names.geojson", one_feature({"ÉCOLE": "a", "Straße": "b", "名前": "c", "plain": "d"}))
    table = f"names_{nonce}"
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "geojson", "table_name": table})
    assert job["status"] == "completed", job["error_details"]
    assert list(vf.columns_of(db, "geo", table)) == ["id", "geom", "école", "straße", "名前", "plain"]
    row = db.execute(f'SELECT * FROM geo."{table}"').fetchone()
    assert (row["école"], row["straße"], row["名前"], row["plain"]) == ("a", "b", "c", "d")
    item = db.execute("SELECT pgstac.get_item(%s, 'system-vectors') AS i", [f"geo.{table}"]).fetchone()["i"]
    columns = {c["name"]: c for c in item["properties"]["table:columns"]}
    assert columns["école"]["description"] == "source column: ÉCOLE"
    assert columns["straße"]["description"] == "source column: Straße"
    assert "description" not in columns["plain"] and "description" not in columns["名前"]


@pytest.mark.parametrize("ext", ["geojson", "csv"])
def test_columns_named_as_system_columns_or_serving_aliases_load_renamed(db, drain, nonce, ext):
    """xmin, ctid, ... are PostgreSQL's system columns (CREATE TABLE refused them: the job failed at
    stage 2), tipg_id, ... the features API's own aliases (they shadowed the property): renamed _2,
    every value kept, the source name in the STAC item's table columns."""
    names = ["xmin", "CTID", "tableoid", "cmax", "tipg_id", "tipg_matched", "oid"]
    values = [1, "c", 3, 4, "tv", 6, 7]
    table = f"sys_{ext}_{nonce}"
    if ext == "geojson":
        content = one_feature(dict(zip(names, values, strict=True)))
        params = {}
    else:
        content = vf.csv_text(["lat", "lon", *names], [[2, 1, *values]])
        params = {"converter_params": {"lat_name": "lat", "lon_name": "lon"}}
    blob = vf.upload(f"{nonce}/sys.{ext}", content)
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": ext, "table_name": table, **params})
    assert job["status"] == "completed", job["error_details"]
    renamed = ["xmin_2", "ctid_2", "tableoid_2", "cmax_2", "tipg_id_2", "tipg_matched_2", "oid"]
    row = db.execute(f'SELECT * FROM geo."{table}"').fetchone()
    assert [str(row[c]) for c in renamed] == [str(v) for v in values]
    item = db.execute("SELECT pgstac.get_item(%s, 'system-vectors') AS i", [f"geo.{table}"]).fetchone()["i"]
    columns = {c["name"]: c for c in item["properties"]["table:columns"]}
    assert columns["ctid_2"]["description"] == "source column: CTID"
    assert columns["xmin_2"]["description"] == "source column: xmin"
