"""Chaos: an ingest of 100 chunks while worker processes are SIGKILLed at random moments and replaced.

The job must complete with every source row exactly once, and every stage must advance exactly once.
A statement trigger makes each chunk's COPY take a quarter of a second, so kills land inside loads
(whose rows must then roll back) as well as inside stage 1 and between messages.
"""

from __future__ import annotations

import random
import time

import pytest
from psycopg import sql

from tests import vector_files as vf
from tests.helpers import submit
from tests.test_ingest_delivery import count, csv_params, csv_points
from tests.test_orchestrator_workers import advances, stage_rows

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

ROWS = 100_000
CHUNK_SIZE = 1_000  # -> 100 load tasks
MIN_KILLS, MAX_KILLS = 4, 9


def stage_one_running(db, job_id: str) -> bool:
    row = db.execute("SELECT 1 FROM app.tasks WHERE parent_job_id = %s AND stage = 1 AND status = 'processing'",
                     [job_id]).fetchone()
    return row is not None


def job_state(db, job_id: str) -> tuple[str, int]:
    row = vf.job_row(db, job_id)
    return row["status"], row["stage"]


def test_sigkilled_workers_during_a_100_chunk_ingest(db, workers, nonce):
    rng = random.Random(20_260_115)
    table = f"chaos_{nonce}"
    blob = vf.upload(f"{nonce}/chaos.csv", csv_points(ROWS))
    kills: list[tuple[int, float]] = []  # (stage, seconds since submit)
    with vf.slowed_inserts(db, table, per="STATEMENT", sleep_sql="PERFORM pg_sleep(0.25);"):
        procs = workers.start(3, concurrency=2)
        job_id = submit("ingest_vector", csv_params(blob, table, CHUNK_SIZE))
        started = time.time()
        # stage 1 runs in one process: kill them all while it reads the file and writes chunks
        while not stage_one_running(db, job_id):
            assert time.time() - started < 60, "stage 1 never started"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.05))  # stage 1 of this file takes well under a second on a fast machine
        for victim in procs:
            workers.kill(victim)
            kills.append((job_state(db, job_id)[1], round(time.time() - started, 1)))
        procs = workers.start(3, concurrency=2)
        # then, once the chunks load, one random worker every 1-2 s
        while job_state(db, job_id) in (("queued", 1), ("processing", 1)):
            assert time.time() - started < 90, "stage 1 did not recover from the kills"
            time.sleep(0.05)
        while time.time() - started < 150:
            time.sleep(rng.uniform(1.0, 2.0))
            status, stage = job_state(db, job_id)
            if status in ("completed", "failed") or stage > 2:
                break
            if len(kills) < MAX_KILLS:
                victim = rng.choice(procs)
                workers.kill(victim)
                kills.append((stage, round(time.time() - started, 1)))
                procs = [p for p in procs if p is not victim] + workers.start(1, concurrency=2)
        deadline = time.time() + 120
        while job_state(db, job_id)[0] not in ("completed", "failed"):
            assert time.time() < deadline, f"job stuck at {job_state(db, job_id)} after kills {kills}"
            time.sleep(0.2)

    job = vf.job_row(db, job_id)
    print(f"kills (stage, seconds after submit): {kills}; job took {time.time() - started:.1f}s")
    assert job["status"] == "completed", (job["error_details"], kills)
    assert len(kills) >= MIN_KILLS and all(stage in (1, 2) for stage, _ in kills), kills
    # every source row exactly once: no loss, no duplicate
    assert count(db, table) == {"n": ROWS, "d": ROWS}
    total = db.execute(sql.SQL("SELECT sum(n) AS s FROM {}").format(sql.Identifier("geo", table))).fetchone()["s"]
    assert total == ROWS * (ROWS - 1) // 2
    summary = job["result_data"]["summary"]
    assert summary["total_rows_uploaded"] == ROWS and summary["data_complete"] is True
    # every stage advanced once, the job completed once, every task completed once
    assert advances(db, job_id) == [1, 2]
    events = [r["event"] for r in db.execute(
        "SELECT event FROM app.job_events WHERE job_id = %s ORDER BY id", [job_id]).fetchall()]
    assert events == ["job_created", "stage_advanced", "stage_advanced", "job_completed"], events
    assert stage_rows(db, job_id) == [(1, "completed", 1), (2, "completed", ROWS // CHUNK_SIZE), (3, "completed", 1)]
    attempts = {r["stage"]: (r["max"], r["retried"]) for r in db.execute(
        "SELECT stage, max(attempts) AS max, count(*) FILTER (WHERE attempts > 1) AS retried FROM app.tasks"
        " WHERE parent_job_id = %s GROUP BY stage", [job_id]).fetchall()}
    print(f"attempts per stage (max, tasks redelivered): {attempts}")
    assert attempts[1][0] >= 2, "the kill of stage 1 interrupted nothing"
    assert attempts[2][1] >= 1, f"no kill interrupted a load: {kills}"
    # nothing left behind: chunks deleted, and the killed workers' messages drained once their locks expired
    assert vf.chunk_blobs(job_id) == []
    deadline = time.time() + 30
    while db.execute("SELECT count(*) AS n FROM app.queue_messages WHERE body->>'job_id' = %s"
                     " OR body->>'parent_job_id' = %s", [job_id, job_id]).fetchone()["n"]:
        assert time.time() < deadline, "messages of the finished job are still queued"
        time.sleep(0.5)
