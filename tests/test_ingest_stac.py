"""Stage 3 and the job's end: indexes, ANALYZE, the STAC item in pgstac, the result's shape, chunk cleanup."""

from __future__ import annotations

import json

from psycopg import sql
from shapely.geometry import Point, box

from tests import vector_files as vf


def test_stac_item_indexes_and_result(db, drain, nonce):
    feats = [(box(10 + i, 40 + i, 10.5 + i, 40.5 + i), {"county": f"c{i % 3}", "when": f"2024-0{1 + i % 9}-15"})
             for i in range(40)]
    blob = vf.upload(f"{nonce}/parcels.geojson", vf.geojson(feats))
    table = f"stac_{nonce}"
    job = vf.run_ingest(drain, db, {
        "blob_name": blob, "file_extension": "geojson", "table_name": table, "chunk_size": 15,
        "indexes": {"spatial": True, "attributes": ["county"], "temporal": ["when"]},
        "render_params": {"fill": "#ff0000"},
    })
    assert job["status"] == "completed", job["error_details"]

    # the item is in pgstac and its bbox is the table's extent
    item = db.execute("SELECT pgstac.get_item(%s, 'system-vectors') AS i", [f"geo.{table}"]).fetchone()["i"]
    assert item is not None and item["collection"] == "system-vectors"
    ext = db.execute(sql.SQL("SELECT ST_XMin(e) a, ST_YMin(e) b, ST_XMax(e) c, ST_YMax(e) d"
                             " FROM (SELECT ST_Extent(geom) e FROM {}.{}) s").format(
        sql.Identifier("geo"), sql.Identifier(table))).fetchone()
    assert item["bbox"] == [ext["a"], ext["b"], ext["c"], ext["d"]]
    assert item["bbox"] == [10.0, 40.0, 49.5, 79.5]
    props = item["properties"]
    assert props["etl:job_id"] == job["job_id"]
    assert props["vector:source_format"] == "geojson" and props["vector:source_file"] == blob
    assert props["system:reserved"] is True and props["created"]
    assert props["table:row_count"] == 40 and props["vector:geometry_type"] == "MultiPolygon"
    assert {"name": "county", "type": "text"} in props["table:columns"]
    assert props["start_datetime"].startswith("2024-01-15") and props["end_datetime"].startswith("2024-09-15")
    assert props["geoetl:render_params"] == {"fill": "#ff0000"}
    rels = {link["rel"]: link["href"] for link in item["links"]}
    assert rels["ogc-features"].endswith(f"/api/features/collections/geo.{table}/items")
    assert rels["tiles"].endswith(f"/api/features/collections/geo.{table}/tiles/WebMercatorQuad/tilejson.json")
    assert f"collection={table}" in rels["viewer"]

    # indexes after the load, then ANALYZE
    idx = {r["indexdef"] for r in db.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", [table])}
    assert any("USING gist (geom)" in d for d in idx)
    assert any("USING btree (county)" in d for d in idx)
    assert any("USING btree (\"when\")" in d for d in idx)
    analyzed = db.execute("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = %s", [table]).fetchone()
    assert analyzed["last_analyze"] is not None
    comment = db.execute("SELECT obj_description(%s::regclass, 'pg_class') AS c", [f"geo.{table}"]).fetchone()["c"]
    owner = json.loads(comment)["geoetl"]
    assert owner["job_id"] == job["job_id"] and owner["run"] == 1 and owner["version"] == 1
    assert owner["state"] == "published" and owner["source_etag"] == job["parameters"]["source_etag"]
    assert props["geoetl:version"] == 1 and props["geoetl:source_etag"] == owner["source_etag"]
    assert sorted(job["result_data"]["indexes"]) == sorted(
        r["indexname"] for r in db.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", [table])
    )

    # the result has the seed's keys, really filled
    r = job["result_data"]
    s = r["summary"]
    assert (s["total_chunks"], s["chunks_uploaded"], s["total_rows_uploaded"]) == (3, 3, 40)
    assert s["success_rate"] == "100.0%" and s["data_complete"] is True
    assert s["features_dropped_total"] == 0 and s["features_repaired"] == 0
    assert r["stac"] == {"collection_id": "system-vectors", "stac_id": f"geo.{table}", "bbox": item["bbox"]}
    assert r["ogc_features_url"].endswith(f"/collections/geo.{table}/items") and table in r["viewer_url"]
    assert r["stages_completed"] == 3 and r["total_tasks_executed"] == 5
    assert set(r["seconds_per_stage"]) == {"prepare_chunks", "upload_chunks", "create_stac_record"}
    assert all(v is not None and v >= 0 for v in r["seconds_per_stage"].values())

    # chunks are gone; cleanup was recorded
    assert vf.chunk_blobs(job["job_id"]) == []
    assert vf.job_row(db, job["job_id"])["cleaned_up_at"] is not None


def test_progress_details(db, drain, nonce):
    from core import state
    from infrastructure import database
    from jobs.ingest_vector import IngestVectorJob

    blob = vf.upload(f"{nonce}/pts.geojson", vf.geojson([(Point(i, i), {}) for i in range(10)]))
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "geojson", "table_name": f"prog_{nonce}",
                                    "chunk_size": 4})
    with database.connection() as conn:
        record = state.get_job(conn, job["job_id"])
        details = IngestVectorJob.progress_details(conn, record)
    assert details == {"chunks_total": 3, "chunks_done": 3, "rows_total": 10, "rows_loaded": 10, "running_tasks": []}


def test_auto_chunk_size_gives_one_chunk_for_small_files(db, drain, nonce):
    blob = vf.upload(f"{nonce}/small.geojson", vf.geojson([(Point(i * 0.1, 0), {}) for i in range(500)]))
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "geojson", "table_name": f"auto_{nonce}"})
    assert job["result_data"]["summary"]["total_chunks"] == 1


def test_auto_chunk_size_rule():
    from services.vector.chunks import auto_chunk_size

    assert auto_chunk_size(10) == 25_000  # one chunk
    assert auto_chunk_size(400_000) == 50_000  # 8 chunks
    assert auto_chunk_size(1_000_000) == 100_000  # 10 chunks
    assert auto_chunk_size(-1) == 100_000  # count unknown (CSV)


def test_failure_cleanup_removes_only_its_own_stac_item(db, drain, nonce):
    """A run that fails after cataloguing removes its item; an item written by another job stays."""
    from infrastructure import database
    from services.vector.stac import delete_owned_item

    blob = vf.upload(f"{nonce}/one.geojson", vf.geojson([(Point(1, 2), {"a": 1})]))
    table = f"stacdel_{nonce}"
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "geojson", "table_name": table})
    assert job["status"] == "completed", job["error_details"]

    def item():
        return db.execute("SELECT pgstac.get_item(%s, 'system-vectors') AS i", [f"geo.{table}"]).fetchone()["i"]

    with database.connection() as conn:
        assert delete_owned_item(conn, "geo", table, "f" * 64) is False
    assert item() is not None
    with database.connection() as conn:
        assert delete_owned_item(conn, "geo", table, job["job_id"]) is True
    assert item() is None


def test_catalog_writes_to_one_collection_take_turns(database):
    """Two jobs' stage-3 transactions never write one collection's items at the same time."""
    import psycopg
    import pytest

    from services.vector.stac import lock_collection

    with psycopg.connect(database) as holder, psycopg.connect(database) as other:
        lock_collection(holder, "system-vectors")
        other.execute("SET lock_timeout = '300ms'")
        lock_collection(other, "another-collection")  # another collection: no wait
        other.rollback()
        other.execute("SET lock_timeout = '300ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            lock_collection(other, "system-vectors")
        other.rollback()
        holder.commit()  # the lock ends with the transaction
        lock_collection(other, "system-vectors")
