"""GeoPackage stage 1 in fid-range slices: the slices' results merge into exactly what one task would give."""

from __future__ import annotations

import sqlite3
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import LineString, MultiPolygon, box

from core.errors import PermanentTaskError
from tests import vector_files as vf
from tests.helpers import every_message_twice, submit
from tests.test_ingest_delivery import drain_leftovers


@pytest.fixture
def slices(monkeypatch: pytest.MonkeyPatch):
    """Slice every GeoPackage (no small-file shortcut) into `n` tasks."""
    from config import reset_settings
    from services.vector import prepare

    def use(n: int) -> None:
        monkeypatch.setenv("INGEST_PREPARE_SLICES", str(n))
        monkeypatch.setattr(prepare, "SLICE_MIN_FEATURES", 1)
        reset_settings()

    yield use
    monkeypatch.delenv("INGEST_PREPARE_SLICES", raising=False)
    reset_settings()


def upload_gpkg(nonce: str, name: str, gdf: gpd.GeoDataFrame, drop_fids: list[int] | None = None) -> str:
    folder = vf.tmpdir()
    path = folder / "data.gpkg"
    gdf.to_file(path, layer="layer", driver="GPKG", promote_to_multi=False)
    if drop_fids:  # gaps in the fids: slices are cut by position, not by fid arithmetic
        with sqlite3.connect(path) as con:
            con.executemany("DELETE FROM layer WHERE fid = ?", [(f,) for f in drop_fids])
    return vf.upload(f"{nonce}/{name}.gpkg", path)


def params(blob: str, table: str, **extra: Any) -> dict[str, Any]:
    return {"blob_name": blob, "file_extension": "gpkg", "table_name": table, **extra}


def stage1(db: Any, job_id: str) -> list[dict[str, Any]]:
    return db.execute(
        "SELECT task_id, status, result_data FROM app.tasks WHERE parent_job_id = %s AND stage = 1 ORDER BY task_index",
        [job_id],
    ).fetchall()


def test_three_slices_load_every_row_once(db, drain, nonce, slices):
    slices(3)
    n = 1_000
    gdf = vf.frame(n)
    gdf["maybe"] = pd_int_with_nulls(n, first_null=n // 2)
    blob = upload_gpkg(nonce, "three", gdf, drop_fids=list(range(100, 400)))  # 700 rows left, fid gaps
    table = f"slices_{nonce}"
    job = vf.run_ingest(drain, db, params(blob, table, chunk_size=90))
    assert job["status"] == "completed", job["error_details"]
    s = job["result_data"]["summary"]
    assert s["source_features"] == 700 == s["total_rows_uploaded"] and s["data_complete"]
    got = db.execute(f"SELECT count(*) AS n, count(DISTINCT value) AS d, min(value) AS lo, max(value) AS hi,"
                     f" count(maybe) AS m FROM geo.{table}").fetchone()
    assert got == {"n": 700, "d": 700, "lo": 0, "hi": n - 1, "m": n - n // 2}
    assert vf.columns_of(db, "geo", table)["maybe"] == "bigint"
    tasks = stage1(db, job["job_id"])
    assert [t["status"] for t in tasks] == ["completed"] * 3
    per_slice = [t["result_data"]["total_rows"] for t in tasks]
    assert sum(per_slice) == 700 and min(per_slice) > 0
    paths = [c["path"] for t in tasks for c in t["result_data"]["chunks"]]
    assert all(f"/s{i}/" in c["path"] for i, t in enumerate(tasks) for c in t["result_data"]["chunks"])
    loads = db.execute("SELECT parameters FROM app.tasks WHERE parent_job_id = %s AND stage = 2 ORDER BY task_index",
                       [job["job_id"]]).fetchall()
    assert [p["parameters"]["chunk_path"] for p in loads] == paths  # slice order, every chunk once
    assert s["total_chunks"] == len(paths)
    from types import SimpleNamespace

    from jobs.ingest_vector import IngestVectorJob

    progress = IngestVectorJob.progress_details(db, SimpleNamespace(job_id=job["job_id"]))  # sums the slices
    assert progress["chunks_total"] == len(paths) and progress["rows_total"] == 700


def pd_int_with_nulls(n: int, first_null: int) -> Any:
    """Integers, NULL in the first `first_null` rows (the first slices see only NULLs)."""
    import pandas as pd

    return pd.array([None] * first_null + list(range(first_null, n)), dtype="Int64")


def test_polygons_in_one_slice_and_multipolygons_in_another_give_multipolygon(db, drain, nonce, slices):
    slices(2)
    geoms = [box(i, 0, i + 0.5, 0.5) for i in range(50)]
    geoms += [MultiPolygon([box(i, 2, i + 0.5, 2.5), box(i, 3, i + 0.5, 3.5)]) for i in range(50)]
    blob = upload_gpkg(nonce, "mixed", vf.frame(100, geoms))
    table = f"slicesmp_{nonce}"
    job = vf.run_ingest(drain, db, params(blob, table))
    assert job["status"] == "completed", job["error_details"]
    fams = [t["result_data"]["geometry_families"] for t in stage1(db, job["job_id"])]
    assert fams == [["polygon"], ["polygon"]]
    checks = vf.geometry_checks(db, "geo", table)
    assert checks["n"] == 100 and checks["types"] == ["MULTIPOLYGON"]
    assert job["result_data"]["summary"]["geometry_type"] == "MultiPolygon"


def test_polygons_in_one_slice_and_lines_in_another_give_a_generic_column(db, drain, nonce, slices):
    slices(2)
    geoms = [box(i, 0, i + 0.5, 0.5) for i in range(50)] + [LineString([(i, 5), (i + 1, 6)]) for i in range(50)]
    blob = upload_gpkg(nonce, "polyline", vf.frame(100, geoms))
    table = f"slicespl_{nonce}"
    job = vf.run_ingest(drain, db, params(blob, table))
    assert job["status"] == "completed", job["error_details"]
    assert job["result_data"]["summary"]["geometry_type"] == "Geometry"
    assert sorted(vf.geometry_checks(db, "geo", table)["types"]) == ["MULTILINESTRING", "MULTIPOLYGON"]


def test_only_null_geometries_in_every_slice_fails_with_the_reason(db, drain, nonce, slices):
    slices(3)
    gdf = gpd.GeoDataFrame({"n": np.arange(30)}, geometry=gpd.GeoSeries([None] * 30), crs=4326)
    blob = upload_gpkg(nonce, "allnull", gdf)
    job = vf.run_ingest(drain, db, params(blob, f"slicesnull_{nonce}"))
    assert job["status"] == "failed"
    err = job["error_details"]["error"]
    assert "none with a usable geometry" in err and "allnull.gpkg" in err and "30 null" in err, err
    assert not vf.table_exists(db, "geo", f"slicesnull_{nonce}")


def test_null_geometries_in_one_slice_only_are_dropped(db, drain, nonce, slices):
    slices(2)
    geoms = [None] * 40 + vf.squares(40)
    blob = upload_gpkg(nonce, "halfnull", vf.frame(80, geoms))
    job = vf.run_ingest(drain, db, params(blob, f"sliceshalf_{nonce}"))
    assert job["status"] == "completed", job["error_details"]
    s = job["result_data"]["summary"]
    assert s["total_rows_uploaded"] == 40 and s["features_dropped"]["null_geometry"] == 40
    assert stage1(db, job["job_id"])[0]["result_data"]["total_rows"] == 0


def test_small_geopackage_is_read_by_the_first_slice(db, drain, nonce, monkeypatch):
    from config import reset_settings

    monkeypatch.setenv("INGEST_PREPARE_SLICES", "2")  # the real small-file threshold stays
    reset_settings()
    try:
        blob = upload_gpkg(nonce, "small", vf.frame(25))
        job = vf.run_ingest(drain, db, params(blob, f"slicessmall_{nonce}"))
    finally:
        monkeypatch.delenv("INGEST_PREPARE_SLICES")
        reset_settings()
    assert job["status"] == "completed", job["error_details"]
    tasks = stage1(db, job["job_id"])
    assert [t["result_data"]["total_rows"] for t in tasks] == [25, 0] and tasks[1]["result_data"]["empty"]
    assert job["result_data"]["summary"]["total_rows_uploaded"] == 25


def test_every_slice_and_load_message_delivered_twice_loads_each_row_once(db, drain, nonce, slices):
    slices(3)
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
    assert [t["status"] for t in stage1(db, job_id)] == ["completed"] * 3


def slice_result(i: int, k: int, **over: Any) -> dict[str, Any]:
    base = {
        "slice": i, "slices": k, "blob_name": "f.gpkg", "label": "file 'f.gpkg'",
        "chunks": [{"path": f"j/r1/s{i}/chunk_00000.parquet", "rows": 10}], "chunk_count": 1, "chunk_size": 10,
        "source_features": 10, "total_rows": 10, "features_dropped": {"null_geometry": 0, "collapsed": 0},
        "features_repaired": 1, "geometry_stats": {"null_geometry": 0, "collapsed": 0, "repaired": 1},
        "geometry_families": ["polygon"], "columns": [{"name": "a", "source_name": "A", "type": "text"}],
        "column_types": {"a": "null"}, "source_crs": ["EPSG:4326"], "indexes": {"spatial": True, "attributes": [],
                                                                                "temporal": []},
        "seconds": 1.0,
    }
    return base | over


def test_merge_prepared_merges_types_families_chunks_and_counts():
    from services.vector.prepare import merge_prepared

    r1 = slice_result(1, 2, column_types={"a": "integer"}, columns=[{"name": "a", "source_name": "A",
                                                                       "type": "integer"}],
                      geometry_families=["line"], seconds=2.0)
    merged = merge_prepared([r1, slice_result(0, 2)])  # any order in, slice order out
    assert merged["columns"] == [{"name": "a", "source_name": "A", "type": "integer"}]
    assert merged["geometry_type"] == "Geometry" and merged["geometry_families"] == ["line", "polygon"]
    assert [c["path"] for c in merged["chunks"]] == ["j/r1/s0/chunk_00000.parquet", "j/r1/s1/chunk_00000.parquet"]
    assert merged["total_rows"] == 20 == merged["source_features"] and merged["features_repaired"] == 2
    assert merged["chunk_count"] == 2 and merged["seconds"] == 2.0 and "column_types" not in merged


def test_merge_prepared_refuses_a_missing_slice_and_decides_emptiness_on_totals():
    from services.vector.prepare import merge_prepared

    with pytest.raises(ValueError, match="one per slice"):
        merge_prepared([slice_result(0, 3), slice_result(2, 3)])
    empty = {"slice": 1, "slices": 2, "empty": True, "chunks": [], "source_features": 0, "total_rows": 0}
    with pytest.raises(PermanentTaskError, match="contains no features"):
        merge_prepared([slice_result(0, 2, source_features=0, total_rows=0, chunks=[]) | {"empty": True}, empty])
    nulls = {"null_geometry": 10, "collapsed": 0}
    with pytest.raises(PermanentTaskError, match="20 features but none with a usable geometry"):
        merge_prepared([slice_result(i, 2, total_rows=0, chunks=[], features_dropped=nulls,
                                     geometry_stats=nulls | {"repaired": 0}, geometry_families=[])
                        for i in range(2)])
    only = slice_result(0, 2)
    assert merge_prepared([only, empty])["total_rows"] == 10
