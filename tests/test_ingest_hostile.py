"""Broken and hostile sources fail the job with a message naming the file, the parameter or the feature."""

from __future__ import annotations

import pytest

from tests import vector_files as vf

pytestmark = pytest.mark.hostile


def test_csv_column_named_in_params_missing_from_file(db, drain, nonce):
    blob = vf.upload(f"{nonce}/pts.csv", vf.csv_text(["y", "x"], [[1, 2]]))
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "csv", "table_name": f"c_{nonce}",
                                    "converter_params": {"lat_name": "latitude", "lon_name": "x"}})
    assert job["status"] == "failed"
    err = job["error_details"]["error"]
    assert "converter_params.lat_name 'latitude'" in err and "pts.csv" in err and "y, x" in err


def test_zip_member_escaping_the_archive_is_ignored(db, drain, nonce):
    files = vf.shapefile(vf.frame(2), vf.tmpdir())
    blob = vf.upload(f"{nonce}/evil.zip", vf.zip_of({f"../evil{s}": p for s, p in files.items()}))
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "zip", "table_name": f"z_{nonce}"})
    assert job["status"] == "failed"
    assert "contains no .shp file" in job["error_details"]["error"] and "evil.zip" in job["error_details"]["error"]


def test_zip_that_inflates_beyond_the_size_cap_is_refused(db, drain, nonce, monkeypatch):
    from config import reset_settings

    gdf = vf.frame(400)
    gdf["padding"] = "x" * 200  # compresses to almost nothing
    files = vf.shapefile(gdf, vf.tmpdir())
    content = vf.zip_of({f"p{s}": p for s, p in files.items()})
    blob = vf.upload(f"{nonce}/bomb.zip", content)
    monkeypatch.setenv("MAX_SOURCE_BYTES", str(len(content) * 4))
    reset_settings()
    try:
        job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "zip", "table_name": f"b_{nonce}"})
    finally:
        monkeypatch.delenv("MAX_SOURCE_BYTES")
        reset_settings()
    assert job["status"] == "failed"
    assert "inflates to" in job["error_details"]["error"] and "bomb.zip" in job["error_details"]["error"]


def test_not_a_zip(db, drain, nonce):
    blob = vf.upload(f"{nonce}/fake.zip", b"this is not a zip archive at all")
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "zip", "table_name": f"nz_{nonce}"})
    assert job["status"] == "failed" and "'" + blob + "' is not a zip archive" in job["error_details"]["error"]


def test_garbage_geojson(db, drain, nonce):
    blob = vf.upload(f"{nonce}/broken.geojson", b'{"type": "FeatureCollection", "features": [ {"type": ')
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "geojson", "table_name": f"g_{nonce}"})
    assert job["status"] == "failed"
    assert "broken.geojson" in job["error_details"]["error"]
    assert job["error_details"]["attempts"] == 1  # bad data is not retried


def test_blob_deleted_after_submit(db, drain, nonce):
    from config import get_settings
    from infrastructure.blob import get_blob_store
    from tests.helpers import submit

    blob = vf.upload(f"{nonce}/gone.geojson", vf.geojson([(vf.squares(1)[0], {})]))
    job_id = submit("ingest_vector", {"blob_name": blob, "file_extension": "geojson", "table_name": f"gone_{nonce}"})
    get_blob_store().delete_prefix(get_settings().source_container, f"{nonce}/")
    assert drain(job_id) == "failed"
    err = vf.job_row(db, job_id)["error_details"]["error"]
    assert f"file '{blob}' not found" in err
