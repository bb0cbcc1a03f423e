"""Invalid geometries: geometry_params.invalid (repair / keep / fail), the per-feature time budget of the
child-process repair, repair in stage 2, a running task's progress, and real invalid polygons."""

from __future__ import annotations

import itertools

import numpy as np
import pyogrio
import pytest
import shapely
from shapely.geometry import box

from tests import corpus
from tests import vector_files as vf


def big_bowtie(vertices: int = 120_000):
    """A self-intersecting polygon with more vertices than the in-process repair takes (a child repairs it)."""
    corners = np.array([(0, 0), (2, 2.3), (2, 0), (0, 1.7), (0, 0)])  # edges 1 and 3 cross
    t = np.linspace(0, 1, vertices // 4, endpoint=False)[:, None]
    return shapely.Polygon(np.concatenate([a + (b - a) * t for a, b in itertools.pairwise(corners)]))


def ingest(db, drain, nonce, name, features, timeout=120, **extra):
    blob = vf.upload(f"{nonce}/{name}.geojson", vf.geojson(features))
    table = f"{name}_{nonce}"
    params = {"blob_name": blob, "file_extension": "geojson", "table_name": table, **extra}
    return vf.run_ingest(drain, db, params, timeout=timeout), table


@pytest.fixture
def repair_budget(monkeypatch):
    from config import reset_settings

    def set_budget(seconds: float) -> None:
        monkeypatch.setenv("REPAIR_SECONDS_PER_FEATURE", str(seconds))
        reset_settings()

    yield set_budget
    monkeypatch.delenv("REPAIR_SECONDS_PER_FEATURE", raising=False)
    reset_settings()


def test_invalid_keep_loads_them_as_they_are_and_counts_them(db, drain, nonce):
    feats = [(vf.bowtie(0, 0), {"n": 0}), (box(5, 5, 6, 6), {"n": 1})]
    job, table = ingest(db, drain, nonce, "keep", feats, geometry_params={"invalid": "keep"})
    assert job["status"] == "completed", job["error_details"]
    summary = job["result_data"]["summary"]
    assert summary["geometry_stats"]["invalid_kept"] == 1 and summary["features_repaired"] == 0
    g = vf.geometry_checks(db, "geo", table)
    assert g["n"] == 2 and g["invalid"] == 1


def test_invalid_fail_names_the_first_invalid_feature(db, drain, nonce):
    feats = [(box(5, 5, 6, 6), {}), (box(7, 7, 8, 8), {}), (vf.bowtie(0, 0), {}), (vf.bowtie(3, 3), {})]
    job, table = ingest(db, drain, nonce, "fail", feats, geometry_params={"invalid": "fail"})
    assert job["status"] == "failed"
    err = job["error_details"]["error"]
    assert "fail.geojson" in err and "feature 2 " in err and "Self-intersection" in err and '"keep"' in err
    assert not vf.table_exists(db, "geo", table)


def test_invalid_policy_is_checked_at_submit(db, nonce):
    from core.errors import JobValidationError
    from core.submit import submit_job

    blob = vf.upload(f"{nonce}/ok.geojson", vf.geojson([(box(0, 0, 1, 1), {})]))
    params = {"blob_name": blob, "file_extension": "geojson", "table_name": f"p_{nonce}",
              "geometry_params": {"invalid": "drop"}}
    with pytest.raises(JobValidationError) as info:
        submit_job("ingest_vector", params)
    assert "invalid" in str(info.value) and "repair" in str(info.value)


def test_repair_runs_in_stage_2_and_keeps_feature_numbers(db, drain, nonce):
    """Stage 1 repairs nothing (it plans the parts); each stage-2 part repairs its own (rows are in several)."""
    feats = [(box(i * 3, 0, i * 3 + 1, 1), {"n": i}) for i in range(30)] + [(vf.bowtie(100, 0), {"n": 30})]
    job, table = ingest(db, drain, nonce, "stage2", feats, chunk_size=10)
    assert job["status"] == "completed", job["error_details"]
    tasks = db.execute("SELECT stage, result_data FROM app.tasks WHERE parent_job_id = %s", [job["job_id"]]).fetchall()
    assert sum(t["result_data"].get("features_repaired", 0) for t in tasks if t["stage"] == 2) == 1
    assert len([t for t in tasks if t["stage"] == 2]) > 1
    assert all(t["result_data"].get("features_repaired", 0) == 0 for t in tasks if t["stage"] == 1)
    assert job["result_data"]["summary"]["features_repaired"] == 1
    assert vf.geometry_checks(db, "geo", table)["invalid"] == 0
    area = db.execute(f"SELECT ST_Area(geom) a FROM geo.{table} WHERE n = 30").fetchone()["a"]
    assert area == pytest.approx(2.0)


def test_big_feature_is_repaired_in_a_child_process(db, drain, nonce):
    geom = big_bowtie()
    assert shapely.get_num_coordinates(geom) > 100_000
    job, table = ingest(db, drain, nonce, "bigfix", [(box(5, 5, 6, 6), {}), (geom, {})])
    assert job["status"] == "completed", job["error_details"]
    assert job["result_data"]["summary"]["features_repaired"] == 1
    g = vf.geometry_checks(db, "geo", table)
    assert g["n"] == 2 and g["invalid"] == 0
    total = db.execute(f"SELECT sum(ST_Area(geom)) a FROM geo.{table}").fetchone()["a"]
    expected = shapely.make_valid(geom, method="structure").area + 1.0
    assert total == pytest.approx(expected, rel=1e-3)


def test_repair_beyond_its_budget_is_killed_and_named(db, drain, nonce, repair_budget):
    repair_budget(0.05)
    job, _ = ingest(db, drain, nonce, "budget", [(box(5, 5, 6, 6), {}), (big_bowtie(), {})])
    assert job["status"] == "failed"
    err = job["error_details"]["error"]
    assert "budget.geojson" in err and "feature 1 " in err and "REPAIR_SECONDS_PER_FEATURE" in err
    assert "could not be repaired within" in err
    retries = db.execute("SELECT max(attempts) m FROM app.tasks WHERE parent_job_id = %s", [job["job_id"]]).fetchone()
    assert retries["m"] == 1  # a permanent failure: not retried


def test_a_running_task_shows_its_progress(db, drain, nonce):
    from core import state
    from jobs.ingest_vector import IngestVectorJob
    from services.vector.progress import TaskProgress

    job, _ = ingest(db, drain, nonce, "progress", [(box(0, 0, 1, 1), {})])
    query = "SELECT task_id FROM app.tasks WHERE parent_job_id = %s AND stage = 2"
    task = db.execute(query, [job["job_id"]]).fetchone()
    db.execute("UPDATE app.tasks SET status = 'processing' WHERE task_id = %s", [task["task_id"]])
    progress = TaskProgress(task["task_id"], every=0)
    progress.read(1234)
    progress.repaired(7)
    with db.cursor() as cur:
        details = IngestVectorJob.progress_details(cur.connection, state.get_job(cur.connection, job["job_id"]))
    assert details["running_tasks"] == [
        {"task_id": task["task_id"], "stage": 2, "features_done": 1234, "features_repaired": 7}
    ]


@pytest.mark.slow
def test_real_invalid_countries_are_repaired_within_the_area_bound(db, drain, nonce):
    """countries-maritime-10m: 250 countries, 32 invalid (nested shells); areas are make_valid 'structure''s."""
    path = corpus.npm_file(*corpus.COUNTRIES_MARITIME)
    blob = vf.upload(f"{nonce}/countries.geojson", path.read_bytes())
    table = f"countries_{nonce}"
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "geojson", "table_name": table}, timeout=600)
    assert job["status"] == "completed", job["error_details"]
    df = pyogrio.read_dataframe(path)
    geoms = np.asarray(df.geometry.array)
    bad = ~shapely.is_valid(geoms)
    assert job["result_data"]["summary"]["features_repaired"] == int(bad.sum()) > 0
    g = vf.geometry_checks(db, "geo", table)
    assert g["n"] == len(df) == 250 and g["invalid"] == 0
    loaded = {r["a3"]: r["a"] for r in db.execute(f"SELECT a3, ST_Area(geom) a FROM geo.{table}").fetchall()}
    assert len(loaded) == 250
    for code, geom, invalid in zip(df["A3"], geoms, bad, strict=True):
        expected = shapely.make_valid(geom, method="structure").area if invalid else geom.area
        assert loaded[code] == pytest.approx(expected, rel=1e-3), code
