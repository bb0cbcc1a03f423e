"""The orchestrator with real worker processes: fan-out at scale, SIGKILLed workers."""

from __future__ import annotations

import random
import time

import pytest

from tests.helpers import job_status, submit, wait_for_job


def stage_rows(db, job_id):
    return [(r["stage"], r["status"], r["n"]) for r in db.execute(
        "SELECT stage, status, count(*) AS n FROM app.tasks WHERE parent_job_id = %s GROUP BY 1, 2 ORDER BY 1, 2",
        [job_id]).fetchall()]


def advances(db, job_id):
    return [r["stage"] for r in db.execute(
        "SELECT stage FROM app.job_events WHERE job_id = %s AND event = 'stage_advanced' ORDER BY id",
        [job_id]).fetchall()]


@pytest.mark.slow
def test_500_tasks_with_four_worker_processes(db, workers, nonce):
    workers.start(4, concurrency=2)
    job_id = submit("hello_world", {"n": 500, "message": nonce})
    assert wait_for_job(job_id, timeout=240) == "completed"
    assert stage_rows(db, job_id) == [(1, "completed", 500), (2, "completed", 1)]
    assert advances(db, job_id) == [1]
    job = db.execute("SELECT result_data FROM app.jobs WHERE job_id = %s", [job_id]).fetchone()
    assert job["result_data"]["sum"] == sum(range(500))
    # every task ran to completion once: completion is guarded, so a task never completes twice
    done = db.execute(
        "SELECT count(*) AS n FROM app.job_events WHERE job_id = %s AND event = 'job_completed'", [job_id]).fetchone()
    assert done["n"] == 1


@pytest.mark.chaos
@pytest.mark.slow
def test_sigkilled_workers_do_not_stop_the_job(db, workers, nonce):
    """Workers are killed at random moments and replaced; the job completes exactly once."""
    rng = random.Random(42)
    procs = workers.start(3, concurrency=2)
    job_id = submit("hello_world", {"n": 200, "sleep_ms": 60, "message": nonce})
    kills = 0
    deadline = time.time() + 240
    while job_status(job_id) not in ("completed", "failed") and time.time() < deadline:
        time.sleep(rng.uniform(0.5, 1.5))
        if kills < 4 and job_status(job_id) == "processing":
            victim = rng.choice([p for p in procs if p.poll() is None])
            workers.kill(victim)
            kills += 1
            procs = [p for p in procs if p.poll() is None] + workers.start(1, concurrency=2)
    assert kills >= 2
    assert wait_for_job(job_id, timeout=120) == "completed"
    assert stage_rows(db, job_id) == [(1, "completed", 200), (2, "completed", 1)]
    assert advances(db, job_id) == [1]
    job = db.execute("SELECT result_data FROM app.jobs WHERE job_id = %s", [job_id]).fetchone()
    assert job["result_data"]["sum"] == sum(range(200))


@pytest.mark.slow
def test_sigterm_lets_running_tasks_finish(db, workers, nonce):
    (proc,) = workers.start(1, concurrency=2)
    job_id = submit("hello_world", {"n": 6, "sleep_ms": 1500, "message": nonce})
    deadline = time.time() + 30
    while time.time() < deadline:
        running = db.execute(
            "SELECT count(*) AS n FROM app.tasks WHERE parent_job_id = %s AND status = 'processing'",
            [job_id]).fetchone()["n"]
        if running:
            break
        time.sleep(0.1)
    assert running
    proc.terminate()
    assert proc.wait(30) == 0
    # what it had started, it finished; nothing was left in processing
    rows = dict(((s, st), n) for s, st, n in stage_rows(db, job_id))
    assert rows.get((1, "processing"), 0) == 0
    assert rows.get((1, "completed"), 0) >= 1
    workers.start(1)
    assert wait_for_job(job_id, timeout=60) == "completed"


@pytest.mark.chaos
@pytest.mark.slow
def test_database_connections_cut_mid_job(db, workers, nonce):
    """Every worker connection is terminated twice mid-job (as a database restart does): the job completes."""
    workers.start(2, concurrency=2)
    job_id = submit("hello_world", {"n": 300, "sleep_ms": 100, "message": nonce})
    cut: set[int] = set()
    cuts = 0
    deadline = time.time() + 60
    while cuts < 2 and time.time() < deadline:
        if job_status(job_id) == "processing":
            rows = db.execute(
                "SELECT pid, pg_terminate_backend(pid) AS terminated FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = 'geoetl'"
            ).fetchall()
            # both workers had connections (pool and LISTEN), and each was really terminated
            assert len(rows) >= 2 and all(r["terminated"] for r in rows), rows
            cut |= {r["pid"] for r in rows}
            cuts += 1
            time.sleep(1.0)
        time.sleep(0.1)
    assert cuts == 2
    gone_by = time.time() + 10
    while db.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE pid = ANY(%s)", [list(cut)]).fetchone()["n"]:
        assert time.time() < gone_by, "terminated backends are still there"
        time.sleep(0.1)
    assert wait_for_job(job_id, timeout=180) == "completed"
    # the workers work on new connections, none of the cut ones (the LISTEN connection reconnected too)
    now = db.execute("SELECT pid, query FROM pg_stat_activity WHERE datname = current_database()"
                     " AND application_name = 'geoetl'").fetchall()
    assert now and not {r["pid"] for r in now} & cut
    assert any(r["query"].startswith("LISTEN") for r in now), now
    assert stage_rows(db, job_id) == [(1, "completed", 300), (2, "completed", 1)]
    assert advances(db, job_id) == [1]


@pytest.mark.slow
def test_long_tasks_keep_their_lock(db, workers, nonce):
    """Tasks running longer than the lock (QUEUE_LOCK_SECONDS=6 here) are renewed, never handed to another worker."""
    workers.start(2, concurrency=2)
    job_id = submit("hello_world", {"n": 2, "sleep_ms": 9000, "message": nonce})
    assert wait_for_job(job_id, timeout=90) == "completed"
    attempts = [r["attempts"] for r in db.execute(
        "SELECT attempts FROM app.tasks WHERE parent_job_id = %s AND stage = 1", [job_id]).fetchall()]
    assert attempts == [1, 1]
    beats = db.execute(
        "SELECT bool_and(heartbeat_at > started_at + interval '2 seconds') AS ok FROM app.tasks"
        " WHERE parent_job_id = %s AND stage = 1", [job_id]).fetchone()
    assert beats["ok"]  # the heartbeat moved while the tasks ran
