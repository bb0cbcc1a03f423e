"""Datasets' life cycle, in-process: staging then atomic publish, if_exists, versions and ETags, delete,
reconciliation, index names. (Real worker processes: test_dataset_workers.py.)"""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient

from core.errors import ConflictError
from core.submit import submit_job
from services.vector.table import STAGING_SCHEMA, staging_table
from tests import vector_files as vf


@pytest.fixture(scope="module")
def client(database):
    from triggers.app import create_app

    with TestClient(create_app()) as c:
        yield c


def csv_points(n: int, first: int = 0, x0: float = 10.0, extra: str | None = None) -> bytes:
    head = "n,lat,lon" + (f",{extra}" if extra else "")
    rows = [f"{first + i},{45 + (i % 100) * 0.01},{x0 + (i // 100) * 0.01}" + (",x" if extra else "") for i in range(n)]
    return ("\n".join([head, *rows]) + "\n").encode()


def params(blob: str, table: str, **extra) -> dict:
    return {"blob_name": blob, "file_extension": "csv", "table_name": table,
            "converter_params": {"lat_name": "lat", "lon_name": "lon"}, **extra}


def rows_of(db, table: str) -> int:
    return db.execute(f"SELECT count(*) AS n FROM geo.{table}").fetchone()["n"]


def item_of(db, table: str) -> dict | None:
    return db.execute("SELECT pgstac.get_item(%s, 'system-vectors') AS i", [f"geo.{table}"]).fetchone()["i"]


def owner_of(db, table: str) -> dict:
    c = db.execute("SELECT obj_description(%s::regclass, 'pg_class') AS c", [f"geo.{table}"]).fetchone()["c"]
    return json.loads(c)["geoetl"]


def staging_tables(db) -> list[str]:
    return [r["relname"] for r in db.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind = 'r'", [STAGING_SCHEMA]).fetchall()]


def ingest(drain, db, p: dict) -> dict:
    job = vf.run_ingest(drain, db, p)
    assert job["status"] == "completed", job["error_details"]
    return job


def test_the_load_goes_to_staging_and_the_target_appears_only_when_published(db, drain, nonce):
    blob = vf.upload(f"{nonce}/a.csv", csv_points(3_000))
    table = f"stg_{nonce}"
    job_id = submit_job("ingest_vector", params(blob, table, chunk_size=1_000)).job_id
    seen = []

    def look(msg):
        if msg.body.get("task_type") == "create_vector_stac":  # stage 2 loaded everything by now
            seen.append((vf.table_exists(db, "geo", table), vf.table_exists(db, STAGING_SCHEMA, staging_table(job_id)),
                         db.execute(f"SELECT count(*) AS n FROM {STAGING_SCHEMA}.{staging_table(job_id)}")
                         .fetchone()["n"]))

    assert drain(job_id, on_message=look) == "completed"
    assert seen == [(False, True, 3_000)]  # loaded in staging, nothing in geo
    assert rows_of(db, table) == 3_000
    assert not vf.table_exists(db, STAGING_SCHEMA, staging_table(job_id))
    owner = owner_of(db, table)
    assert owner["job_id"] == job_id and owner["version"] == 1 and owner["state"] == "published"
    assert staging_table(job_id) not in staging_tables(db)


def test_staging_schema_is_never_a_target_nor_served(db, nonce, monkeypatch):
    from config import get_settings, reset_settings
    from core.errors import JobValidationError
    from triggers.serving.settings import tipg_database_settings

    blob = vf.upload(f"{nonce}/a.csv", csv_points(10))
    monkeypatch.setenv("ALLOWED_SCHEMAS", f"geo,{STAGING_SCHEMA}")  # even when an operator lists it
    reset_settings()
    try:
        with pytest.raises(JobValidationError) as info:
            submit_job("ingest_vector", params(blob, f"t_{nonce}", schema=STAGING_SCHEMA))
        assert info.value.kind == "schema_not_allowed"
        assert STAGING_SCHEMA not in tipg_database_settings(get_settings()).schemas
    finally:
        monkeypatch.delenv("ALLOWED_SCHEMAS")
        reset_settings()


def test_if_exists_fail_refuses_at_submit_with_the_options(db, drain, nonce):
    blob = vf.upload(f"{nonce}/a.csv", csv_points(20))
    table = f"fail_{nonce}"
    ingest(drain, db, params(blob, table))
    vf.upload(f"{nonce}/b.csv", csv_points(30))
    with pytest.raises(ConflictError) as info:
        submit_job("ingest_vector", params(f"{nonce}/b.csv", table))
    assert '"if_exists": "replace"' in str(info.value) and "append" in str(info.value)


def test_if_exists_fail_is_checked_again_at_publish(db, drain, nonce):
    """Two jobs for one new table: the first to publish wins, the second fails and leaves nothing behind."""
    table = f"race_{nonce}"
    a = submit_job("ingest_vector", params(vf.upload(f"{nonce}/a.csv", csv_points(20)), table)).job_id
    b = submit_job("ingest_vector", params(vf.upload(f"{nonce}/b.csv", csv_points(25)), table)).job_id
    assert drain(a) == "completed"
    assert drain(b) == "failed"
    err = vf.job_row(db, b)["error_details"]["error"]
    assert f"Table geo.{table} already exists" in err and "replace" in err
    assert rows_of(db, table) == 20 and owner_of(db, table)["job_id"] == a
    assert staging_table(b) not in staging_tables(db) and vf.chunk_blobs(b) == []


def test_replace_swaps_in_the_new_version_with_its_version_etag_and_job(db, drain, nonce):
    blob = f"{nonce}/data.csv"
    table = f"repl_{nonce}"
    vf.upload(blob, csv_points(40))
    first = ingest(drain, db, params(blob, table, if_exists="replace", indexes={"attributes": ["n"]}))
    v1 = item_of(db, table)["properties"]
    assert v1["geoetl:version"] == 1 and v1["table:row_count"] == 40

    # the same file again: the same job, nothing loaded
    assert submit_job("ingest_vector", params(blob, table, if_exists="replace",
                                              indexes={"attributes": ["n"]})).status == "already_completed"
    vf.upload(blob, csv_points(55, x0=20.0))  # the file changed upstream: a new ETag, a new job
    second = ingest(drain, db, params(blob, table, if_exists="replace", indexes={"attributes": ["n"]}))
    assert second["job_id"] != first["job_id"]
    assert second["parameters"]["source_etag"] != first["parameters"]["source_etag"]
    assert rows_of(db, table) == 55
    props = item_of(db, table)["properties"]
    assert props["geoetl:version"] == 2 and props["table:row_count"] == 55 and props["etl:job_id"] == second["job_id"]
    assert props["geoetl:source_etag"] == second["parameters"]["source_etag"]
    assert item_of(db, table)["bbox"][0] >= 20.0  # the new extent
    owner = owner_of(db, table)
    assert owner["version"] == 2 and owner["job_id"] == second["job_id"]
    published = second["result_data"]["published"]
    assert published["action"] == "replaced" and published["previous_job_id"] == first["job_id"]
    # the indexes carry the table's name (not the staging one's), and the result lists exactly them
    indexes = sorted(r["indexname"] for r in db.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'geo' AND tablename = %s", [table]).fetchall())
    assert indexes == sorted([f"{table}_geom_gist", f"{table}_pkey", f"{table}_n_idx"])
    assert sorted(second["result_data"]["indexes"]) == indexes
    seq = db.execute("SELECT pg_get_serial_sequence(%s, 'id') AS s", [f"geo.{table}"]).fetchone()["s"]
    assert seq == f"geo.{table}_id_seq"
    assert staging_tables(db) == [] or staging_table(second["job_id"]) not in staging_tables(db)


def test_replace_and_append_refuse_tables_geoetl_did_not_create(db, nonce):
    table = f"theirs_{nonce}"
    db.execute(f"CREATE TABLE geo.{table} (a int)")
    blob = vf.upload(f"{nonce}/a.csv", csv_points(5))
    for mode in ("replace", "append"):
        with pytest.raises(ConflictError) as info:
            submit_job("ingest_vector", params(blob, table, if_exists=mode))
        assert "was not created by geoetl" in str(info.value)
    assert vf.columns_of(db, "geo", table) == {"a": "integer"}


def test_append_twice_gives_exactly_the_sum_and_updates_the_item(db, drain, nonce):
    table = f"app_{nonce}"
    ingest(drain, db, params(vf.upload(f"{nonce}/a.csv", csv_points(100)), table, if_exists="append"))
    second = ingest(drain, db, params(vf.upload(f"{nonce}/b.csv", csv_points(250, first=100, x0=30.0)), table,
                                      if_exists="append"))
    third = ingest(drain, db, params(vf.upload(f"{nonce}/c.csv", csv_points(7, first=350, x0=-5.0)), table,
                                     if_exists="append"))
    assert rows_of(db, table) == 357
    assert db.execute(f"SELECT count(DISTINCT n) AS d FROM geo.{table}").fetchone()["d"] == 357
    item = item_of(db, table)
    assert item["properties"]["table:row_count"] == 357 and item["properties"]["geoetl:version"] == 3
    assert item["bbox"][0] == pytest.approx(-5.0) and item["bbox"][2] >= 30.0
    assert item["properties"]["etl:job_id"] == third["job_id"]
    assert second["result_data"]["published"]["action"] == "appended"
    assert second["result_data"]["published"]["rows_added"] == 250
    assert third["result_data"]["published"]["row_count"] == 357
    assert staging_table(second["job_id"]) not in staging_tables(db)
    # "append" to a missing table created it, indexed as any new table; appends keep its indexes
    indexes = sorted(r["indexname"] for r in db.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'geo' AND tablename = %s", [table]).fetchall())
    assert indexes == sorted([f"{table}_geom_gist", f"{table}_pkey"]) == sorted(third["result_data"]["indexes"])
    fourth = ingest(drain, db, params(vf.upload(f"{nonce}/d.csv", csv_points(3, first=357)), table,
                                      if_exists="append", indexes={"attributes": ["n"]}))
    assert f"{table}_n_idx" in fourth["result_data"]["indexes"] and rows_of(db, table) == 360


def test_append_with_other_columns_fails_naming_them(db, drain, nonce):
    table = f"appx_{nonce}"
    ingest(drain, db, params(vf.upload(f"{nonce}/a.csv", csv_points(10)), table))
    job = vf.run_ingest(drain, db, params(vf.upload(f"{nonce}/b.csv", csv_points(10, extra="color")), table,
                                          if_exists="append"))
    assert job["status"] == "failed"
    err = job["error_details"]["error"]
    assert f"cannot append to geo.{table}" in err and "column 'color' (text) is not in" in err
    assert rows_of(db, table) == 10
    assert staging_table(job["job_id"]) not in staging_tables(db)


def test_completed_job_whose_table_was_deleted_runs_again(db, drain, nonce):
    blob = vf.upload(f"{nonce}/a.csv", csv_points(12))
    table = f"gone_{nonce}"
    first = ingest(drain, db, params(blob, table))
    db.execute(f"DROP TABLE geo.{table}")
    again = submit_job("ingest_vector", params(blob, table))
    assert again.status == "rerun" and again.job_id == first["job_id"]
    assert "no longer exists" in (again.reason or "")
    assert drain(again.job_id) == "completed"
    assert rows_of(db, table) == 12 and vf.job_row(db, again.job_id)["run"] == 2
    # dropped and replaced by somebody else's table: if_exists decides (fail -> 409)
    db.execute(f"DROP TABLE geo.{table}")
    db.execute(f"CREATE TABLE geo.{table} (theirs int)")
    with pytest.raises(ConflictError):
        submit_job("ingest_vector", params(blob, table))


def test_delete_drops_table_and_item_together_and_refuses_others(db, drain, client, nonce):
    table = f"del_{nonce}"
    job = ingest(drain, db, params(vf.upload(f"{nonce}/a.csv", csv_points(30)), table))
    listed = client.get("/api/datasets", params={"limit": 1000}).json()
    mine = [d for d in listed["datasets"] if d["dataset"] == f"geo.{table}"]
    assert len(mine) == 1
    d = mine[0]
    assert d["rows"] == 30 and d["version"] == 1 and d["job_id"] == job["job_id"]
    assert d["geometry_type"] == "MultiPoint" and len(d["bbox"]) == 4 and d["stac_item"] is True
    assert d["links"]["features"].endswith(f"/api/features/collections/geo.{table}/items")
    assert client.get(f"/api/datasets/geo.{table}").json()["rows"] == 30
    assert client.get(f"/api/features/collections/geo.{table}/items?limit=1").status_code == 200

    r = client.delete(f"/api/datasets/geo.{table}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["deleted"] and body["table_dropped"] and body["stac_item_deleted"] and body["rows"] == 30
    assert not vf.table_exists(db, "geo", table) and item_of(db, table) is None
    assert client.get(f"/api/features/collections/geo.{table}/items?limit=1").status_code == 404
    assert client.get(f"/api/stac/collections/system-vectors/items/geo.{table}").status_code == 404
    assert client.delete(f"/api/datasets/geo.{table}").status_code == 404
    assert client.delete(f"/api/datasets/geo.nothing_{nonce}").status_code == 404
    assert client.delete("/api/datasets/geo.Bad-Name").status_code == 400

    db.execute(f"CREATE TABLE geo.hand_{nonce} (a int)")
    r = client.delete(f"/api/datasets/geo.hand_{nonce}")
    assert r.status_code == 409 and "not created by geoetl" in r.json()["message"]
    assert vf.table_exists(db, "geo", f"hand_{nonce}")


def test_janitor_removes_items_of_vanished_tables_and_stale_staging(db, drain, nonce, caplog):
    from core.janitor import Janitor
    from core.machine import CoreMachine
    from infrastructure import database

    table = f"orph_{nonce}"
    kept = f"kept_{nonce}"
    ingest(drain, db, params(vf.upload(f"{nonce}/a.csv", csv_points(9)), table))
    ingest(drain, db, params(vf.upload(f"{nonce}/b.csv", csv_points(8)), kept))
    db.execute(f"DROP TABLE geo.{table}")  # behind geoetl's back: its item is an orphan
    leftover = staging_table("e" * 64)  # a staging table no job owns any more (a crash between steps)
    with database.connection() as conn:
        from services.vector.table import create_table

        create_table(conn, STAGING_SCHEMA, leftover, [], "MultiPoint", "e" * 64, 1)
    with caplog.at_level(logging.WARNING):
        report = Janitor(CoreMachine()).reconcile()
    assert report["stac_items_removed"] >= 1 and report["staging_tables_dropped"] >= 1
    assert item_of(db, table) is None and item_of(db, kept) is not None
    assert leftover not in staging_tables(db)
    assert any(f"geo.{table}" in r.getMessage() for r in caplog.records)


def test_index_names_are_unique_short_and_reported_exactly(db, drain, nonce):
    """roads.type_code and roads_type.code would both be roads_type_code_idx."""
    roads, roads_type = f"r{nonce}", f"r{nonce}_type"
    a = ingest(drain, db, {**params(vf.upload(f"{nonce}/a.csv", b"type_code,lat,lon\n1,1,1\n2,2,2\n"), roads),
                           "indexes": {"attributes": ["type_code"]}})
    b = ingest(drain, db, {**params(vf.upload(f"{nonce}/b.csv", b"code,lat,lon\n1,1,1\n2,2,2\n"), roads_type),
                           "indexes": {"attributes": ["code"]}})
    long_table = ("l" * 40) + nonce
    long_col = "c" * 50
    c = ingest(drain, db, {**params(vf.upload(f"{nonce}/c.csv", f"{long_col},lat,lon\n1,1,1\n".encode()),
                                    long_table), "indexes": {"attributes": [long_col]}})

    def indexes(table):
        return sorted(r["indexname"] for r in db.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'geo' AND tablename = %s", [table]).fetchall())

    for job, table in ((a, roads), (b, roads_type), (c, long_table)):
        assert sorted(job["result_data"]["indexes"]) == indexes(table)
        assert len(indexes(table)) == 3 and all(len(n.encode()) <= 63 for n in indexes(table))
    assert f"{roads}_type_code_idx" in indexes(roads)
    clash = [n for n in indexes(roads_type) if n.endswith("code_idx")]
    assert clash and clash[0] != f"{roads}_type_code_idx"
    defs = [r["indexdef"] for r in db.execute(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'geo' AND tablename = %s", [long_table]).fetchall()]
    assert any(f"({long_col})" in d for d in defs)


def test_a_file_changed_after_submit_fails_the_job_instead_of_loading_another_version(db, drain, nonce):
    blob = vf.upload(f"{nonce}/a.csv", csv_points(10))
    table = f"chg_{nonce}"
    job_id = submit_job("ingest_vector", params(blob, table)).job_id

    def change_it(msg):
        if msg.body.get("stage") == 2 and "task_id" not in msg.body:
            vf.upload(blob, csv_points(11))

    assert drain(job_id, on_message=change_it) == "failed"
    assert "changed after the job was submitted" in vf.job_row(db, job_id)["error_details"]["error"]
    assert not vf.table_exists(db, "geo", table) and staging_table(job_id) not in staging_tables(db)
    fresh = submit_job("ingest_vector", params(blob, table))  # the new version is a new job
    assert fresh.status == "created" and fresh.job_id != job_id


def test_openapi_documents_the_life_cycle_routes(client):
    doc = client.get("/api/openapi.json").json()
    cancel = doc["paths"]["/api/jobs/{job_id}/cancel"]["post"]
    assert set(cancel["responses"]) >= {"200", "400", "404", "409"}
    ref = cancel["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    fields = doc["components"]["schemas"][ref]["properties"]
    assert set(fields) >= {"job_id", "status", "idempotent", "previous_status", "tasks_dropped", "tasks_stopping"}
    assert "delete" in doc["paths"]["/api/datasets/{dataset}"] and "get" in doc["paths"]["/api/datasets"]
    body = doc["paths"]["/api/jobs/ingest_vector"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["if_exists"]["enum"] == ["fail", "replace", "append"]
    status = doc["components"]["schemas"]["JobStatusResponse"]["properties"]["status"]
    assert "cancelled" in status["enum"]


def test_delete_and_cancel_need_a_write_key(monkeypatch, db, drain, client, nonce):
    from config import reset_settings

    table = f"key_{nonce}"
    ingest(drain, db, params(vf.upload(f"{nonce}/a.csv", csv_points(5)), table))
    queued = submit_job("hello_world", {"n": 1, "message": nonce}).job_id
    monkeypatch.setenv("API_KEYS", "k1-secret")
    reset_settings()
    try:
        assert client.delete(f"/api/datasets/geo.{table}").status_code == 401
        assert client.post(f"/api/jobs/{queued}/cancel").status_code == 401
        assert client.get("/api/datasets").status_code == 200  # reads stay public
        assert vf.table_exists(db, "geo", table) and vf.job_row(db, queued)["status"] == "queued"
        r = client.post(f"/api/jobs/{queued}/cancel", headers={"x-functions-key": "k1-secret"})
        assert r.status_code == 200 and r.json()["previous_status"] == "queued"
        assert client.delete(f"/api/datasets/geo.{table}", headers={"x-functions-key": "k1-secret"}).status_code == 200
    finally:
        monkeypatch.delenv("API_KEYS")
        reset_settings()
    assert not vf.table_exists(db, "geo", table) and vf.job_row(db, queued)["status"] == "cancelled"
    from triggers.worker import Worker

    worker = Worker(concurrency=1)  # its queued stage message finds the job cancelled and changes nothing
    while (msg := worker.receive_one()) is not None:
        worker.handle(msg)
    assert vf.job_row(db, queued)["status"] == "cancelled"


def test_a_view_on_the_table_blocks_replace_and_delete_with_a_clear_answer(db, drain, client, nonce):
    blob = f"{nonce}/v.csv"
    table = f"viewed_{nonce}"
    vf.upload(blob, csv_points(15))
    ingest(drain, db, params(blob, table))
    db.execute(f"CREATE VIEW geo.v_{nonce} AS SELECT n FROM geo.{table}")
    try:
        vf.upload(blob, csv_points(16))
        job = vf.run_ingest(drain, db, params(blob, table, if_exists="replace"))
        assert job["status"] == "failed"
        assert "other objects depend on it" in job["error_details"]["error"]
        assert f"v_{nonce}" in job["error_details"]["error"]
        assert rows_of(db, table) == 15 and staging_table(job["job_id"]) not in staging_tables(db)
        r = client.delete(f"/api/datasets/geo.{table}")
        assert r.status_code == 409 and f"v_{nonce}" in r.json()["message"]
        assert rows_of(db, table) == 15 and item_of(db, table) is not None
    finally:
        db.execute(f"DROP VIEW IF EXISTS geo.v_{nonce}")
