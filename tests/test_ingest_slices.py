"""A GeoPackage read in place in fid-range slices: stage 1 plans, each stage 2 task reads, prepares and COPYs
its own slice. Row counts stay exact (gaps in fids, dropped features, redelivery); a file that breaks its own
declaration or changes under the job fails with a clear message; a GEOMETRY layer takes the streaming path."""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
from shapely.geometry import LineString, MultiPolygon, box

from core.errors import PermanentTaskError
from tests import vector_files as vf
from tests.helpers import every_message_twice, submit
from tests.test_ingest_delivery import drain_leftovers


def upload_gpkg(
    nonce: str, name: str, gdf: gpd.GeoDataFrame, drop_fids: list[int] | None = None, declare: str | None = None
) -> str:
    """A one-layer GeoPackage; `declare` forces the layer's declared geometry type (GDAL writes features of
    another type anyway, with a warning, as some producers do)."""
    folder = vf.tmpdir()
    path = folder / "data.gpkg"
    if declare:
        pyogrio.write_dataframe(gdf, path, layer="layer", driver="GPKG", geometry_type=declare)
    else:
        gdf.to_file(path, layer="layer", driver="GPKG", promote_to_multi=False)
    if drop_fids:  # gaps in the fids
        with sqlite3.connect(path) as con:
            con.executemany("DELETE FROM layer WHERE fid = ?", [(f,) for f in drop_fids])
    return vf.upload(f"{nonce}/{name}.gpkg", path)


def params(blob: str, table: str, **extra: Any) -> dict[str, Any]:
    return {"blob_name": blob, "file_extension": "gpkg", "table_name": table, **extra}


def stage_tasks(db: Any, job_id: str, stage: int) -> list[dict[str, Any]]:
    return db.execute(
        "SELECT task_id, status, parameters, result_data FROM app.tasks WHERE parent_job_id = %s AND stage = %s"
        " ORDER BY task_index",
        [job_id, stage],
    ).fetchall()


def test_slices_partition_the_fids_and_load_every_row_once(db, drain, nonce):
    n = 1_000
    gdf = vf.frame(n)
    gdf["maybe"] = pd_int_with_nulls(n, first_null=n // 2)
    blob = upload_gpkg(nonce, "three", gdf, drop_fids=list(range(100, 400)))  # 700 rows left, fid gaps
    table = f"slices_{nonce}"
    job = vf.run_ingest(drain, db, params(blob, table, chunk_size=90))
    assert job["status"] == "completed", job["error_details"]
    s = job["result_data"]["summary"]
    assert s["read_in_place"] is True
    assert s["source_features"] == 700 == s["total_rows_uploaded"] and s["data_complete"]
    got = db.execute(f"SELECT count(*) AS n, count(DISTINCT value) AS d, min(value) AS lo, max(value) AS hi,"
                     f" count(maybe) AS m FROM geo.{table}").fetchone()
    assert got == {"n": 700, "d": 700, "lo": 0, "hi": n - 1, "m": n - n // 2}
    assert vf.columns_of(db, "geo", table)["maybe"] == "bigint"
    (plan,) = stage_tasks(db, job["job_id"], 1)
    assert plan["result_data"]["mode"] == "parts" and "chunks" in plan["result_data"]
    assert plan["result_data"]["rows_estimate"] == 700
    loads = stage_tasks(db, job["job_id"], 2)
    ranges = [t["parameters"]["fids"] for t in loads]
    assert len(ranges) == 8  # ceil(700 / 90) slices over fids 1..1000
    assert ranges[0][0] == 1 and ranges[-1][1] == n + 1
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))  # contiguous, no overlap
    assert sum(t["result_data"]["rows_uploaded"] for t in loads) == 700
    assert sum(t["result_data"]["source_features"] for t in loads) == 700
    from types import SimpleNamespace

    from jobs.ingest_vector import IngestVectorJob

    progress = IngestVectorJob.progress_details(db, SimpleNamespace(job_id=job["job_id"]))
    assert progress == {"chunks_total": 8, "chunks_done": 8, "rows_total": 700, "rows_loaded": 700,
                        "running_tasks": []}


def pd_int_with_nulls(n: int, first_null: int) -> Any:
    """Integers, NULL in the first `first_null` rows (the first slices see only NULLs)."""
    import pandas as pd

    return pd.array([None] * first_null + list(range(first_null, n)), dtype="Int64")


def test_declared_polygon_layer_holding_a_line_fails_naming_the_layer(db, drain, nonce):
    geoms = [box(i, 0, i + 0.5, 0.5) for i in range(60)] + [LineString([(0, 5), (1, 6)])]
    blob = upload_gpkg(nonce, "liar", vf.frame(61, geoms), declare="Polygon")
    table = f"sliceliar_{nonce}"
    job = vf.run_ingest(drain, db, params(blob, table, chunk_size=20))
    assert job["status"] == "failed"
    err = job["error_details"]["error"]
    assert "liar.gpkg' layer 'layer' declares Polygon geometries but holds LineString ones" in err, err
    assert job["error_details"]["stage"] == 2
    assert not vf.table_exists(db, "geo", table)  # the failed run's table is dropped


def test_generic_layer_takes_the_streaming_path_and_keeps_the_column_policy(db, drain, nonce):
    geoms = [box(i, 0, i + 0.5, 0.5) for i in range(50)] + [LineString([(i, 5), (i + 1, 6)]) for i in range(50)]
    blob = upload_gpkg(nonce, "polyline", vf.frame(100, geoms))
    table = f"slicespl_{nonce}"
    job = vf.run_ingest(drain, db, params(blob, table))
    assert job["status"] == "completed", job["error_details"]
    assert job["result_data"]["summary"]["read_in_place"] is False
    assert job["result_data"]["summary"]["geometry_type"] == "Geometry"
    assert sorted(vf.geometry_checks(db, "geo", table)["types"]) == ["MULTILINESTRING", "MULTIPOLYGON"]


def test_a_name_holding_a_percent_escape_is_downloaded_and_loaded_whole(db, drain, nonce):
    """GDAL would open "a%20b" as "a b": such a GeoPackage takes the streaming path instead."""
    blob = upload_gpkg(nonce, "odd%20name", vf.frame(30))
    table = f"slicespct_{nonce}"
    job = vf.run_ingest(drain, db, params(blob, table))
    assert job["status"] == "completed", job["error_details"]
    s = job["result_data"]["summary"]
    assert s["read_in_place"] is False and s["total_rows_uploaded"] == 30


def test_declared_multipolygon_layer_with_polygons_gives_multipolygon(db, drain, nonce):
    geoms = [box(i, 0, i + 0.5, 0.5) for i in range(50)]
    geoms += [MultiPolygon([box(i, 2, i + 0.5, 2.5), box(i, 3, i + 0.5, 3.5)]) for i in range(50)]
    blob = upload_gpkg(nonce, "mixed", vf.frame(100, geoms), declare="MultiPolygon")
    table = f"slicesmp_{nonce}"
    job = vf.run_ingest(drain, db, params(blob, table, chunk_size=30))
    assert job["status"] == "completed", job["error_details"]
    assert job["result_data"]["summary"]["read_in_place"] is True
    checks = vf.geometry_checks(db, "geo", table)
    assert checks["n"] == 100 and checks["types"] == ["MULTIPOLYGON"]
    assert job["result_data"]["summary"]["geometry_type"] == "MultiPolygon"


def test_only_null_geometries_fails_with_the_reason_and_drops_the_table(db, drain, nonce):
    gdf = gpd.GeoDataFrame({"n": np.arange(30)}, geometry=gpd.GeoSeries([None] * 30), crs=4326)
    blob = upload_gpkg(nonce, "allnull", gdf, declare="Polygon")
    table = f"slicesnull_{nonce}"
    job = vf.run_ingest(drain, db, params(blob, table, chunk_size=10))
    assert job["status"] == "failed"
    err = job["error_details"]["error"]
    assert "none with a usable geometry" in err and "allnull.gpkg" in err and "30 null" in err, err
    assert not vf.table_exists(db, "geo", table)


def test_null_geometries_in_one_slice_only_are_dropped_and_counted(db, drain, nonce):
    geoms = [None] * 40 + vf.squares(40)
    blob = upload_gpkg(nonce, "halfnull", vf.frame(80, geoms), declare="Polygon")
    job = vf.run_ingest(drain, db, params(blob, f"sliceshalf_{nonce}", chunk_size=40))
    assert job["status"] == "completed", job["error_details"]
    s = job["result_data"]["summary"]
    assert s["total_rows_uploaded"] == 40 and s["features_dropped"] == {"null_geometry": 40, "collapsed": 0}
    assert s["source_features"] == 80 and s["data_complete"]
    assert [t["result_data"]["rows_uploaded"] for t in stage_tasks(db, job["job_id"], 2)] == [0, 40]


def test_every_message_delivered_twice_loads_each_row_once(db, drain, nonce):
    blob = upload_gpkg(nonce, "dup", vf.frame(500))
    table = f"slicesdup_{nonce}"
    with every_message_twice(db):
        job_id = submit("ingest_vector", params(blob, table, chunk_size=60))
        assert drain(job_id) == "completed"
        drain_leftovers()
    drain_leftovers()
    got = db.execute(f"SELECT count(*) AS n, count(DISTINCT value) AS d FROM geo.{table}").fetchone()
    assert got == {"n": 500, "d": 500}
    job = vf.job_row(db, job_id)
    assert job["result_data"]["summary"]["total_rows_uploaded"] == 500
    assert len(stage_tasks(db, job_id, 2)) == 9


def test_a_file_replaced_after_planning_fails_the_slice_with_a_clear_message(nonce):
    from infrastructure.blob import get_blob_store
    from services.vector.slices import plan_slices, slice_source

    store = get_blob_store()
    blob = upload_gpkg(nonce, "replaced", vf.frame(50))
    p = {"blob_name": blob, "container_name": vf.source_container(), "file_extension": "gpkg"}
    plan, _ = plan_slices(p, store)
    task = p | plan["source"] | plan["chunks"][0]
    assert slice_source(task, store).layers[0].where == '"fid" >= 1 AND "fid" < 51'
    upload_gpkg(nonce, "replaced", vf.frame(60))
    with pytest.raises(PermanentTaskError, match=r"replaced\.gpkg' was replaced while the job was loading it"):
        slice_source(task, store)
    store.delete_prefix(vf.source_container(), blob)
    with pytest.raises(PermanentTaskError, match="was deleted while the job was loading it"):
        slice_source(task, store)


def test_a_file_replaced_during_a_slice_read_fails_the_job_end_to_end(db, drain, nonce, monkeypatch):
    """The file changes while a load task reads its slice (after the check before the read passed): the
    check after the read fails the job, the table it created is dropped and nothing of it is served."""
    from services.vector import prepare

    blob = upload_gpkg(nonce, "moving", vf.frame(400))
    replaced: list[str] = []
    original = prepare.SourceReader._batch

    def batch_then_replace(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if not replaced and self.src.ext == "gpkg" and "fid" in (self.src.layers[0].where or ""):
            replaced.append(self.src.layers[0].where)
            upload_gpkg(nonce, "moving", vf.frame(401))  # same name, new content (a new ETag)

    monkeypatch.setattr(prepare.SourceReader, "_batch", batch_then_replace)
    table = f"moving_{nonce}"
    job_id = submit("ingest_vector", params(blob, table, chunk_size=100))
    assert drain(job_id) == "failed"
    assert len(replaced) == 1  # a slice read had begun, so the check before it had passed
    job = vf.job_row(db, job_id)
    assert "moving.gpkg' was replaced while the job was loading it; submit the job again" in json.dumps(
        job["error_details"])
    assert not vf.table_exists(db, "geo", table)
    assert vf.job_row(db, job_id)["result_data"] is None


def test_a_worker_gives_back_a_one_at_a_time_task_while_its_slot_is_taken():
    from services.context import must_wait, one_at_a_time, slot_busy
    from triggers.worker import Worker

    started, release = threading.Event(), threading.Event()
    heavy = one_at_a_time(lambda params, ctx: started.set() or release.wait(10) or {})
    light = lambda params, ctx: {}  # noqa: E731
    assert not must_wait(heavy) and not slot_busy()
    runner = threading.Thread(target=heavy, args=({}, None))
    runner.start()
    try:
        assert started.wait(5)
        assert must_wait(heavy) and not must_wait(light) and not must_wait(None)
        worker = Worker(concurrency=1)
        msg = type("Msg", (), {"queue": worker.settings.tasks_queue, "body": {"task_type": "load_vector_chunk"}})()
        assert worker._busy_for(msg)
        msg.body = {"task_type": "hello_world_greet"}
        assert not worker._busy_for(msg)
    finally:
        release.set()
        runner.join(5)
    assert not slot_busy()
