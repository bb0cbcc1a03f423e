"""Submit-time checks of ingest_vector: 400s that name the parameter, 404s that name the blob, 409 with a hint."""

from __future__ import annotations

import pytest
from shapely.geometry import box

from core.errors import ConflictError, JobValidationError, ResourceNotFoundError
from core.submit import submit_job
from tests import vector_files as vf


@pytest.fixture
def blob(nonce):
    return vf.upload(f"{nonce}/ok.geojson", vf.geojson([(box(0, 0, 1, 1), {"a": 1})]))


def base(blob, table, **extra):
    return {"blob_name": blob, "file_extension": "geojson", "table_name": table, **extra}


def refused(params, kind=None, field=None):
    with pytest.raises(JobValidationError) as info:
        submit_job("ingest_vector", params)
    if kind:
        assert info.value.kind == kind, str(info.value)
    if field:
        assert info.value.field == field, str(info.value)
    return str(info.value)


@pytest.mark.parametrize("missing", ["blob_name", "file_extension", "table_name"])
def test_missing_required_field_is_named(blob, nonce, missing):
    params = base(blob, f"t_{nonce}")
    del params[missing]
    assert f"'{missing}' is required" in refused(params, field=missing)


def test_unsupported_extension_lists_supported(blob, nonce):
    msg = refused(base(blob, f"t_{nonce}", file_extension="xlsx"), kind="unsupported_format", field="file_extension")
    assert "csv" in msg and "gpkg" in msg and "kmz" in msg and "zip" in msg


def test_extension_is_normalised(blob, nonce, drain, db):
    job = vf.run_ingest(drain, db, base(blob, f"norm_{nonce}", file_extension=".GeoJSON"))
    assert job["status"] == "completed" and job["parameters"]["file_extension"] == "geojson"


@pytest.mark.parametrize("name", ["1abc", "Parcels", "a-b", "a b", "select", "order", "x" * 64, "", "tbl;drop"])
def test_unsafe_table_names(blob, name):
    refused(base(blob, name), kind="invalid_table_name" if name else None, field="table_name")


def test_schema_outside_allow_list(blob, nonce):
    msg = refused(base(blob, f"t_{nonce}", schema="public"), kind="schema_not_allowed", field="schema")
    assert "geo" in msg


@pytest.mark.parametrize("value", ["many", -5, 0, 10**9, 1.5, [1]])
def test_bad_chunk_size(blob, nonce, value):
    refused(base(blob, f"t_{nonce}", chunk_size=value), field="chunk_size")


@pytest.mark.parametrize("name", ["../etc/passwd", "/abs/path.geojson", "a/./b.geojson", "a\\b.geojson", "x\x00y"])
def test_hostile_blob_names(nonce, name):
    refused(base(name, f"t_{nonce}"), field="blob_name")


@pytest.mark.parametrize("name", ["Bad_Container", "a", "../x", "-ab"])
def test_hostile_container_names(blob, nonce, name):
    refused(base(blob, f"t_{nonce}", container_name=name), field="container_name")


@pytest.mark.parametrize(
    ("ext", "conv", "needle"),
    [
        ("csv", {}, "lat_name"),
        ("csv", {"lat_name": "y"}, "lat_name"),
        ("csv", {"lat_name": "y", "lon_name": "x", "wkt_column": "w"}, "not both"),
        ("csv", {"lat_name": 5, "lon_name": "x"}, "converter_params.lat_name"),
        ("csv", {"wkt_column": "w", "crs": "EPSG:99999999"}, "converter_params.crs"),
        ("geojson", {"layer_name": "x"}, "'converter_params.layer_name' is not a converter parameter"),
        ("gpkg", {"layer": "x"}, "allowed: layer_name"),
        ("zip", {"kml_name": "x"}, "converter_params.kml_name"),
        ("gpkg", "layer", "converter_params"),
    ],
)
def test_bad_converter_params(blob, nonce, ext, conv, needle):
    msg = refused(base(blob, f"t_{nonce}", file_extension=ext, converter_params=conv))
    assert needle in msg


def test_unknown_parameter_is_refused(blob, nonce):
    assert "'colour' is not a parameter" in refused(base(blob, f"t_{nonce}", colour="red"))
    assert "indexes.spatail" in refused(base(blob, f"t_{nonce}", indexes={"spatail": True}))


def test_missing_blob_is_404_naming_it(nonce):
    with pytest.raises(ResourceNotFoundError, match=f"{nonce}/absent.geojson"):
        submit_job("ingest_vector", base(f"{nonce}/absent.geojson", f"t_{nonce}"))


def test_missing_container_is_404_naming_it(blob, nonce):
    with pytest.raises(ResourceNotFoundError, match="no-such-container"):
        submit_job("ingest_vector", base(blob, f"t_{nonce}", container_name="no-such-container"))


def test_shapefile_without_dbf_is_404_naming_it(nonce):
    files = vf.shapefile(vf.frame(2), vf.tmpdir())
    files.pop(".dbf")
    shp = vf.upload_shapefile(nonce, files)
    with pytest.raises(ResourceNotFoundError, match=r"parcels\.dbf"):
        submit_job("ingest_vector", {"blob_name": shp, "file_extension": "shp", "table_name": f"t_{nonce}"})


def test_empty_blob_is_refused(nonce):
    name = vf.upload(f"{nonce}/empty.geojson", b"")
    refused(base(name, f"t_{nonce}"), kind="empty_file", field="blob_name")


def test_file_over_size_cap_is_refused(blob, nonce, monkeypatch):
    from config import reset_settings

    monkeypatch.setenv("MAX_SOURCE_BYTES", "50")
    reset_settings()
    try:
        msg = refused(base(blob, f"t_{nonce}"), kind="file_too_large", field="blob_name")
        assert "50 bytes" in msg and blob in msg
    finally:
        monkeypatch.delenv("MAX_SOURCE_BYTES")
        reset_settings()


def test_existing_table_is_409_with_drop_hint(db, blob, nonce):
    db.execute(f"CREATE TABLE geo.taken_{nonce} (a int)")
    with pytest.raises(ConflictError) as info:
        submit_job("ingest_vector", base(blob, f"taken_{nonce}"))
    assert f"DROP TABLE geo.taken_{nonce} CASCADE;" in str(info.value)


def test_resubmitting_a_completed_job_is_idempotent_and_new_params_conflict(db, drain, blob, nonce):
    params = base(blob, f"again_{nonce}")
    job = vf.run_ingest(drain, db, params)
    assert job["status"] == "completed"
    again = submit_job("ingest_vector", params)
    assert again.status == "already_completed" and again.job_id == job["job_id"]
    with pytest.raises(ConflictError):
        submit_job("ingest_vector", {**params, "chunk_size": 500})
