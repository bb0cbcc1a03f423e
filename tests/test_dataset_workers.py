"""Datasets' life cycle with real worker processes and the real API: cancel mid-COPY and mid-repair, a
worker killed mid-replace, and readers during the replace of a 1M-row table."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import requests
import shapely

from core.submit import submit_job
from services.vector.table import STAGING_SCHEMA, staging_table
from tests import vector_files as vf
from tests.helpers import wait_for_job

pytestmark = pytest.mark.chaos


def csv_points(n: int, x0: float = 10.0) -> bytes:
    i = np.arange(n)
    lat = 45 + (i % 1000) * 0.001
    lon = x0 + (i // 1000) * 0.001
    body = "\n".join(f"{a},{b:.4f},{c:.4f}" for a, b, c in zip(i.tolist(), lat.tolist(), lon.tolist(), strict=True))
    return ("n,lat,lon\n" + body + "\n").encode()


def params(blob: str, table: str, **extra) -> dict:
    return {"blob_name": blob, "file_extension": "csv", "table_name": table,
            "converter_params": {"lat_name": "lat", "lon_name": "lon"}, **extra}


def copy_running(db, job_id: str) -> bool:
    return db.execute(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'COPY%%'"
        " AND query LIKE %s", [f"%{STAGING_SCHEMA}%{job_id[:32]}%"]).fetchone()["n"] > 0


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)


def leftovers(db, job_id: str, table: str) -> dict:
    return {
        "target": vf.table_exists(db, "geo", table),
        "staging": vf.table_exists(db, STAGING_SCHEMA, staging_table(job_id)),
        "chunks": vf.chunk_blobs(job_id),
        "stac_item": db.execute("SELECT pgstac.get_item(%s, 'system-vectors') AS i", [f"geo.{table}"])
        .fetchone()["i"] is not None,
        "unfinished_tasks": db.execute(
            "SELECT count(*) AS n FROM app.tasks WHERE parent_job_id = %s"
            " AND status IN ('queued', 'processing', 'retrying')", [job_id]).fetchone()["n"],
    }


NOTHING = {"target": False, "staging": False, "chunks": [], "stac_item": False, "unfinished_tasks": 0}


def cleaned(db, job_id: str) -> bool:
    row = vf.job_row(db, job_id)
    return row["cleaned_up_at"] is not None and leftovers(db, job_id, row["parameters"]["table_name"]) == NOTHING


def test_cancel_mid_copy_stops_the_copy_leaves_nothing_and_runs_again(db, workers, api_server, nonce):
    table = f"cxl_{nonce}"
    rows = 8_000
    with vf.slowed_inserts(db, table, per="ROW", sleep_sql="PERFORM pg_sleep(0.01);"):  # 40 s per 4000-row chunk
        blob = vf.upload(f"{nonce}/c.csv", csv_points(rows))
        job_id = submit_job("ingest_vector", params(blob, table, chunk_size=4_000)).job_id
        workers.start(1, concurrency=2)
        wait_until(lambda: copy_running(db, job_id), 90, "a COPY into the staging table")
        r = requests.post(f"{api_server}/jobs/{job_id}/cancel", timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "cancelled" and body["previous_status"] == "processing"
        assert body["idempotent"] is False and body["tasks_stopping"] >= 1 and body["stage"] == 2
        # the COPY would run up to 40 s more: it is interrupted instead, and the job cleaned up
        wait_until(lambda: not copy_running(db, job_id) and cleaned(db, job_id), 25, "the COPY stopped, cleaned")
    status = requests.get(f"{api_server}/jobs/status/{job_id}", timeout=30).json()
    assert status["status"] == "cancelled" and status["error_details"]["cancelled"] is True
    stage2 = {r["status"] for r in db.execute(
        "SELECT status FROM app.tasks WHERE parent_job_id = %s AND stage = 2", [job_id]).fetchall()}
    assert stage2 == {"cancelled"}
    stopped = db.execute("SELECT error_details FROM app.tasks WHERE parent_job_id = %s AND stage = 2"
                         " AND attempts > 0", [job_id]).fetchall()
    assert stopped and all(r["error_details"] == "stopped: the job is cancelled" for r in stopped)
    assert leftovers(db, job_id, table) == NOTHING
    again = requests.post(f"{api_server}/jobs/{job_id}/cancel", timeout=30)
    assert again.status_code == 200 and again.json()["idempotent"] is True
    listed = requests.get(f"{api_server}/jobs", params={"status": "cancelled", "limit": 500}, timeout=30).json()
    assert job_id in {j["job_id"] for j in listed["jobs"]}

    rerun = submit_job("ingest_vector", params(blob, table, chunk_size=4_000))
    assert rerun.status == "rerun" and rerun.job_id == job_id and "cancelled" in (rerun.reason or "")
    assert wait_for_job(job_id, timeout=180) == "completed"
    assert db.execute(f"SELECT count(*) AS n FROM geo.{table}").fetchone()["n"] == rows
    done = requests.post(f"{api_server}/jobs/{job_id}/cancel", timeout=30)
    assert done.status_code == 409 and done.json()["error"] == "job_finished"


def scribbles_csv(batches: int, per_batch: int = 10_000, slow_per_batch: int = 10) -> bytes:
    """Squares, with a few self-intersecting 400-vertex scribbles in every GDAL batch: repairing one
    (make_valid, 'structure') takes about a third of a second, so about 3-4 s per batch."""
    rng = np.random.default_rng(7)
    lines = ["n,wkt"]
    for i in range(batches * per_batch):
        if i % per_batch < slow_per_batch:
            pts = rng.random((400, 2)) * 0.5 + [(i % 300) * 0.5 - 75, 10]
            geom = shapely.Polygon(np.vstack([pts, pts[:1]]))
        else:
            x, y = (i % 1000) * 0.01, (i // 1000) * 0.01
            geom = shapely.box(x, y, x + 0.005, y + 0.005)
        lines.append(f'{i},"{shapely.to_wkt(geom, rounding_precision=6)}"')
    return ("\n".join(lines) + "\n").encode()


def test_cancel_mid_repair_stops_between_batches_and_leaves_nothing(db, workers, api_server, nonce):
    """Repairs run in stage 2, each load task repairing its own chunk batch by batch: a cancel stops the
    running one at its next batch, drops the others, and publishes nothing."""
    table = f"cxr_{nonce}"
    blob = vf.upload(f"{nonce}/scribbles.csv", scribbles_csv(batches=16))  # about a minute of repairs
    job_id = submit_job("ingest_vector", {"blob_name": blob, "file_extension": "csv", "table_name": table,
                                          "converter_params": {"wkt_column": "wkt"}}).job_id
    workers.start(1, concurrency=1)

    def repairing() -> bool:
        rows = db.execute("SELECT progress FROM app.tasks WHERE parent_job_id = %s AND stage = 2"
                          " AND status = 'processing'", [job_id]).fetchall()
        return any((r["progress"] or {}).get("features_repaired", 0) > 0 for r in rows)

    wait_until(repairing, 120, "a stage-2 task repairing")
    r = requests.post(f"{api_server}/jobs/{job_id}/cancel", timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["stage"] == 2 and r.json()["tasks_stopping"] == 1
    wait_until(lambda: cleaned(db, job_id), 40, "the repair stopped and the job cleaned up")
    tasks = db.execute("SELECT status, result_data FROM app.tasks WHERE parent_job_id = %s AND stage = 2",
                       [job_id]).fetchall()
    unfinished = [t for t in tasks if t["status"] != "completed"]
    assert unfinished and all(t["status"] == "cancelled" and t["result_data"] is None for t in unfinished)
    assert vf.job_row(db, job_id)["stage"] == 2 and vf.job_row(db, job_id)["status"] == "cancelled"
    assert db.execute("SELECT count(*) AS n FROM app.tasks WHERE parent_job_id = %s AND stage > 2",
                      [job_id]).fetchone()["n"] == 0
    assert leftovers(db, job_id, table) == NOTHING


def features_count(api: str, table: str, window: tuple[int, int] | None = None) -> int:
    """Rows served. Large tables leave numberMatched out of unfiltered pages, so there the count is read
    off a page spanning `window` (lo, hi): exact inside it, lo - 1 or hi + 1 (never a valid answer) outside."""
    if window is None:
        r = requests.get(f"{api}/features/collections/geo.{table}/items", params={"limit": 1}, timeout=60)
        assert r.status_code == 200, r.text[:300]
        return int(r.json()["numberMatched"])
    lo, hi = window
    r = requests.get(f"{api}/features/collections/geo.{table}/items",
                     params={"offset": lo - 1, "limit": hi - lo + 2, "properties": "n"}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    return lo - 1 + len(r.json()["features"])


def stac_count(api: str, table: str) -> tuple[int, int]:
    r = requests.get(f"{api}/stac/collections/system-vectors/items/geo.{table}", timeout=60)
    assert r.status_code == 200, r.text[:300]
    props = r.json()["properties"]
    return int(props["table:row_count"]), int(props["geoetl:version"])


def test_worker_killed_mid_replace_keeps_the_old_version_served_and_recovers(db, workers, api_server, nonce):
    table = f"kr_{nonce}"
    blob = f"{nonce}/data.csv"
    vf.upload(blob, csv_points(1_500))
    first = submit_job("ingest_vector", params(blob, table, if_exists="replace")).job_id
    workers.start(1, concurrency=2)
    assert wait_for_job(first, timeout=120) == "completed"
    workers.stop_all()
    assert features_count(api_server, table) == 1_500 and stac_count(api_server, table) == (1_500, 1)

    with vf.slowed_inserts(db, table, per="ROW", sleep_sql="PERFORM pg_sleep(0.002);"):  # 4 s per 2000-row chunk
        vf.upload(blob, csv_points(6_000, x0=20.0))
        second = submit_job("ingest_vector", params(blob, table, if_exists="replace", chunk_size=2_000)).job_id
        assert second != first
        victim = workers.start(1, concurrency=2)[0]
        wait_until(lambda: copy_running(db, second), 90, "a COPY of the new version")
        assert features_count(api_server, table) == 1_500  # the old version is served meanwhile
        workers.kill(victim)
        assert features_count(api_server, table) == 1_500 and stac_count(api_server, table) == (1_500, 1)
        assert vf.job_row(db, second)["status"] in ("queued", "processing")  # recoverable: nothing failed
        workers.start(1, concurrency=2)
        assert wait_for_job(second, timeout=180) == "completed", vf.job_row(db, second)["error_details"]
    assert features_count(api_server, table) == 6_000 and stac_count(api_server, table) == (6_000, 2)
    assert db.execute(f"SELECT count(DISTINCT n) AS d FROM geo.{table}").fetchone()["d"] == 6_000
    assert not vf.table_exists(db, STAGING_SCHEMA, staging_table(second))
    redelivered = db.execute("SELECT count(*) AS n FROM app.tasks WHERE parent_job_id = %s AND attempts > 1",
                             [second]).fetchone()["n"]
    assert redelivered >= 1


@pytest.mark.slow
def test_readers_see_the_old_or_the_new_1m_rows_never_an_error_or_a_mix(db, workers, api_server, nonce):
    table = f"big_{nonce}"
    blob = f"{nonce}/big.csv"
    old_rows, new_rows = 1_000_000, 1_000_000 + 4_321
    vf.upload(blob, csv_points(old_rows))
    workers.start(2, concurrency=2)
    first = submit_job("ingest_vector", params(blob, table, if_exists="replace")).job_id
    assert wait_for_job(first, timeout=900) == "completed", vf.job_row(db, first)["error_details"]
    window = (old_rows, new_rows)
    assert features_count(api_server, table, window) == old_rows

    vf.upload(blob, csv_points(new_rows, x0=30.0))
    seen: dict[str, list[int]] = {"features": [], "stac": []}
    errors: list[str] = []
    stop = threading.Event()

    def read(kind: str) -> None:
        while not stop.is_set():
            try:
                if kind == "features":
                    n = features_count(api_server, table, window)
                else:
                    n = stac_count(api_server, table)[0]
                seen[kind].append(n)
            except Exception as exc:  # every failure is what the test reports
                errors.append(f"{kind}: {type(exc).__name__}: {str(exc)[:300]}")
            time.sleep(0.02)

    readers = [threading.Thread(target=read, args=(k,), daemon=True) for k in ("features", "stac", "features")]
    for t in readers:
        t.start()
    try:
        second = submit_job("ingest_vector", params(blob, table, if_exists="replace")).job_id
        assert wait_for_job(second, timeout=900) == "completed", vf.job_row(db, second)["error_details"]
        time.sleep(3)  # and a while after the swap
        deadline = time.monotonic() + 60  # a fast load (read in parts) leaves few reads: enough of them after it
        while (len(seen["features"]) <= 20 or len(seen["stac"]) <= 10) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        for t in readers:
            t.join(60)
    assert errors == []
    for kind, counts in seen.items():
        assert set(counts) <= {old_rows, new_rows}, (kind, set(counts))
        assert counts[0] == old_rows and counts[-1] == new_rows, kind
    # one reader's answers never go back from the new version to the old one
    assert all(not (a == new_rows and b == old_rows) for a, b in zip(seen["stac"], seen["stac"][1:], strict=False))
    assert len(seen["features"]) > 20 and len(seen["stac"]) > 10


def test_worker_killed_inside_the_swap_keeps_the_old_version_served(db, workers, api_server, nonce):
    """The kill lands inside the publishing transaction itself (after the old version was dropped in it):
    the transaction never commits, readers get the old version, and another worker publishes the new one."""
    table = f"ks_{nonce}"
    blob = f"{nonce}/data.csv"
    vf.upload(blob, csv_points(1_200))
    first = submit_job("ingest_vector", params(blob, table, if_exists="replace")).job_id
    workers.start(1, concurrency=2)
    assert wait_for_job(first, timeout=120) == "completed"
    workers.stop_all()

    db.execute(f"""
        CREATE OR REPLACE FUNCTION app.slow_swap_{nonce}() RETURNS event_trigger LANGUAGE plpgsql AS $$
        DECLARE r record;
        BEGIN
            FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
                IF r.object_identity LIKE 'geo.j\\_%' THEN PERFORM pg_sleep(5); END IF;
            END LOOP;
        END $$;
        CREATE EVENT TRIGGER slow_swap_{nonce} ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
            EXECUTE FUNCTION app.slow_swap_{nonce}();
    """)
    try:
        vf.upload(blob, csv_points(3_000, x0=20.0))
        second = submit_job("ingest_vector", params(blob, table, if_exists="replace")).job_id
        victim = workers.start(1, concurrency=2)[0]

        def swapping() -> bool:
            return db.execute(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
                " AND query LIKE 'ALTER TABLE%%SET SCHEMA%%' AND query LIKE %s", [f"%{second[:32]}%"]
            ).fetchone()["n"] > 0

        wait_until(swapping, 120, "the publishing transaction inside its swap")
        workers.kill(victim)
        db.execute(f"DROP EVENT TRIGGER slow_swap_{nonce}")  # the next attempt swaps at full speed
        # readers wait for the dead transaction to end, then read the old version: no error, no mix
        assert features_count(api_server, table) == 1_200 and stac_count(api_server, table) == (1_200, 1)
        assert vf.job_row(db, second)["status"] in ("queued", "processing")
        workers.start(1, concurrency=2)
        assert wait_for_job(second, timeout=180) == "completed", vf.job_row(db, second)["error_details"]
    finally:
        db.execute(f"DROP EVENT TRIGGER IF EXISTS slow_swap_{nonce}")
    assert features_count(api_server, table) == 3_000 and stac_count(api_server, table) == (3_000, 2)
    assert not vf.table_exists(db, STAGING_SCHEMA, staging_table(second))
    stage3 = db.execute("SELECT attempts FROM app.tasks WHERE parent_job_id = %s AND stage = 3", [second]).fetchone()
    assert stage3["attempts"] >= 2  # the killed attempt, then the one that published


def test_readers_get_no_error_when_a_replace_changes_the_columns(db, workers, api_server, nonce):
    """Readers that waited on the swap's lock query the new table with the old catalog's columns; the
    features API then refreshes its catalog and answers from the new version instead of an error."""
    table = f"cols_{nonce}"
    blob = f"{nonce}/cols.csv"

    def version(k: int) -> bytes:
        value = (lambda i: i) if k % 2 else (lambda i: "v")  # the new column's type changes too
        rows = "\n".join(f"{i},{45 + i % 50 * 0.01},{10 + i % 60 * 0.01},{value(i)}" for i in range(5_000 + k))
        return (f"n,lat,lon,c{k}\n" + rows + "\n").encode()

    p = params(blob, table, if_exists="replace")
    vf.upload(blob, version(0))
    workers.start(1, concurrency=2)
    assert wait_for_job(submit_job("ingest_vector", p).job_id, timeout=120) == "completed"
    errors: list[str] = []
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            r = requests.get(f"{api_server}/features/collections/geo.{table}/items", params={"limit": 1}, timeout=60)
            if r.status_code != 200:
                errors.append(f"{r.status_code}: {r.text[:200]}")
                continue
            body = r.json()
            extra = next(c for c in body["features"][0]["properties"] if c.startswith("c"))
            seen.append((body["numberMatched"], extra))

    readers = [threading.Thread(target=read, daemon=True) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        for k in range(1, 4):
            vf.upload(blob, version(k))
            assert wait_for_job(submit_job("ingest_vector", p).job_id, timeout=120) == "completed"
        time.sleep(1)
    finally:
        stop.set()
        for t in readers:
            t.join(60)
    assert errors == []
    assert set(seen) <= {(5_000 + k, f"c{k}") for k in range(4)}  # each answer is one whole version
    assert seen[-1] == (5_003, "c3")
