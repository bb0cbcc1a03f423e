"""Settings, migrations, health, blob names, the Service Bus outbox up to the SDK boundary, the janitor."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path

import pytest

from config import Settings, reset_settings
from infrastructure.blob import LocalBlobStore, UnsafeBlobName, check_blob_name, check_container_name

ROOT = Path(__file__).resolve().parent.parent


# --- settings
def test_local_settings_values_are_read_and_env_wins(tmp_path, monkeypatch):
    f = tmp_path / "local.settings.json"
    f.write_text(json.dumps({"IsEncrypted": False, "Values": {"JOBS_QUEUE": "from-file", "TASKS_QUEUE": "t-file"}}))
    monkeypatch.setenv("GEOETL_LOCAL_SETTINGS", str(f))
    monkeypatch.setenv("TASKS_QUEUE", "t-env")
    s = Settings()
    assert s.jobs_queue == "from-file" and s.tasks_queue == "t-env"


def test_secrets_do_not_leak_through_repr_or_logs(caplog, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:hunter2@db/x")
    monkeypatch.setenv("API_KEYS", "topsecretkey")
    s = Settings()
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("t").info("settings: %s", s)
    assert "hunter2" not in repr(s) and "topsecretkey" not in repr(s)
    assert "hunter2" not in caplog.text and "topsecretkey" not in caplog.text
    assert s.dsn.endswith("@db/x") and s.api_key_list == ["topsecretkey"]


def test_example_settings_file_documents_every_setting():
    example = json.loads((ROOT / "local.settings.example.json").read_text())
    names = {n.upper() for n in Settings.model_fields}
    assert names <= set(example["Values"]) and names <= set(example["_meaning"])
    assert all(example["_meaning"][n] for n in names)
    readme = (ROOT / "README.md").read_text()
    assert all(f"`{n}`" in readme for n in names)


# --- blob names
@pytest.mark.parametrize("name", ["../x", "a/../../b", "/etc/passwd", "a\\b", "a\x00b", "", "  ", "./a", "C:/x"])
def test_hostile_blob_names_are_refused(name):
    with pytest.raises(UnsafeBlobName):
        check_blob_name(name)


@pytest.mark.parametrize("name", ["UPPER", "a", "x" * 64, "a--b", "-ab", "a_b", "../c"])
def test_bad_container_names_are_refused(name):
    with pytest.raises(UnsafeBlobName):
        check_container_name(name)


def test_local_blob_store_stays_in_its_root(tmp_path):
    store = LocalBlobStore(tmp_path / "root")
    store.create_container("box")
    store.write_bytes("box", "a/b.txt", b"hi")
    assert store.read_bytes("box", "a/b.txt") == b"hi" and store.blob_size("box", "a/b.txt") == 2
    (tmp_path / "root" / "box" / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafeBlobName):
        store.read_bytes("box", "link/secret")
    with pytest.raises(UnsafeBlobName):
        store.write_bytes("box", "../escape", b"x")
    assert store.delete_prefix("box", "a/") == 1 and not store.blob_exists("box", "a/b.txt")


def test_azurite_blob_store_roundtrip(database, tmp_path, nonce):
    from infrastructure.blob import get_blob_store

    store = get_blob_store()
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 100_000)
    store.upload_file("rmhazuregeobronze", f"t/{nonce}/f.bin", src)
    assert store.blob_size("rmhazuregeobronze", f"t/{nonce}/f.bin") == 100_000
    store.download_to_file("rmhazuregeobronze", f"t/{nonce}/f.bin", tmp_path / "g.bin")
    assert (tmp_path / "g.bin").read_bytes() == src.read_bytes()
    assert store.delete_prefix("rmhazuregeobronze", f"t/{nonce}/") == 1
    assert store.blob_size("rmhazuregeobronze", f"t/{nonce}/f.bin") is None


# --- migrations and health
def test_migrations_are_idempotent(database):
    from infrastructure.migrate import migrate

    report = migrate()
    assert report == {"database_created": False, "applied": [], "pgstac": report["pgstac"]}
    assert report["pgstac"].startswith("0.")


def test_health_is_healthy(database):
    from triggers.health import run_checks

    ok, body = run_checks()
    assert ok, body
    comps = body["components"]
    assert comps["database"]["postgis"]["version"] and comps["database"]["pgstac"]["version"]
    assert comps["queue"]["backend"] == "postgres" and "hello_world" in comps["registries"]["jobs"]


def test_health_names_the_failing_part(database, monkeypatch):
    from fastapi.testclient import TestClient

    from infrastructure import blob
    from triggers.app import create_app

    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=eA==;"
        "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;",
    )
    reset_settings()
    blob.get_blob_store.cache_clear()
    try:
        with TestClient(create_app()) as c:
            r = c.get("/api/health")
        assert r.status_code == 503
        body = r.json()
        assert body["failing"] == ["blob"] and body["components"]["database"]["status"] == "healthy"
        assert "AccountKey" not in r.text
    finally:
        monkeypatch.undo()
        reset_settings()
        blob.get_blob_store.cache_clear()


# --- Service Bus, up to the SDK boundary (tests/servicebus_fake.py stands in for the namespace)
def test_servicebus_outbox_relays_sdk_messages(db, nonce):
    from infrastructure import database as dbm
    from infrastructure.queues import OutgoingMessage
    from infrastructure.queues.servicebus import ServiceBusQueue
    from tests.servicebus_fake import FakeServiceBusClient

    db.execute("UPDATE app.outbox SET sent_at = now() WHERE sent_at IS NULL")  # other tests' leftovers
    client = FakeServiceBusClient()
    q = ServiceBusQueue(client=client)
    with dbm.connection() as conn:
        q.send(conn, "geospatial-tasks", [OutgoingMessage(f"m-{nonce}", {"task_id": nonce}, 30.0)])
        q.send(conn, "geospatial-jobs", [OutgoingMessage(f"j-{nonce}", {"job_id": nonce})])
        conn.rollback()  # a rolled-back state change sends nothing
    q.after_commit()
    assert client.log == []
    with dbm.connection() as conn:
        q.send(conn, "geospatial-tasks", [OutgoingMessage(f"m-{nonce}", {"task_id": nonce}, 30.0)])
        q.send(conn, "geospatial-jobs", [OutgoingMessage(f"j-{nonce}", {"job_id": nonce})])
    q.after_commit()
    ops = {e["message_id"]: e for e in client.log}
    assert ops[f"m-{nonce}"]["op"] == "scheduled" and ops[f"m-{nonce}"]["queue"] == "geospatial-tasks"
    assert ops[f"m-{nonce}"]["visible_at"] - ops[f"m-{nonce}"]["at"] > timedelta(seconds=25)
    assert ops[f"j-{nonce}"]["op"] == "sent" and ops[f"j-{nonce}"]["queue"] == "geospatial-jobs"
    unsent = db.execute("SELECT count(*) AS n FROM app.outbox WHERE sent_at IS NULL").fetchone()["n"]
    assert unsent == 0
    q.after_commit()
    assert len(client.log) == 2  # relayed once
    (m,) = client.get_queue_receiver("geospatial-jobs").receive_messages(max_wait_time=0.1)
    assert json.loads(str(m)) == {"job_id": nonce} and m.content_type == "application/json"
    q.close()


def test_servicebus_message_is_acknowledged_after_its_completion_commits(db, nonce, monkeypatch):
    """Acknowledged inside the transaction, a commit that then failed would lose both the message and
    the task's effects; the worker acknowledges a Service Bus message once its transaction committed."""
    import time

    from core.machine import CoreMachine
    from core.submit import submit_job
    from infrastructure.queues.servicebus import ServiceBusQueue
    from tests.servicebus_fake import FakeReceiver, FakeServiceBusClient
    from triggers.worker import Worker

    db.execute("UPDATE app.outbox SET sent_at = now() WHERE sent_at IS NULL")
    bus = ServiceBusQueue(client=FakeServiceBusClient(), poll_seconds=0.05)
    worker = Worker(concurrency=1, machine=CoreMachine(queue=bus), queue=bus)
    job_id = submit_job("hello_world", {"n": 1, "message": nonce}, machine=worker.machine).job_id

    def receive(queue):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            got = bus.receive(queue)
            if got:
                return got[0]
            time.sleep(0.02)
        raise AssertionError(f"nothing arrived on {queue}")

    worker.handle(receive(worker.settings.jobs_queue))  # fan-out: one task and its message
    task_msg = receive(worker.settings.tasks_queue)
    assert task_msg.body["parent_job_id"] == job_id
    task_id = task_msg.body["task_id"]
    settled = []
    complete = FakeReceiver.complete_message

    def complete_and_look(self, message):
        status = db.execute("SELECT status FROM app.tasks WHERE task_id = %s", [task_id]).fetchone()["status"]
        settled.append(("complete", status))
        complete(self, message)

    monkeypatch.setattr(FakeReceiver, "complete_message", complete_and_look)
    assert worker.handle(task_msg) == "stage_completed"
    assert settled == [("complete", "completed")]  # the completion was visible to others first
    bus.close()
    db.execute("UPDATE app.jobs SET status = 'failed' WHERE job_id = %s", [job_id])  # stage 2 is not run here


# --- janitor
def test_janitor_fails_stuck_jobs_and_finishes_cleanups(db, machine, nonce, monkeypatch):
    from core.janitor import Janitor
    from tests.helpers import submit

    job_id = submit("hello_world", {"n": 1, "message": nonce})
    db.execute("UPDATE app.jobs SET updated_at = now() - interval '5 hours' WHERE job_id = %s", [job_id])
    report = Janitor(machine).run_once()
    assert report["ran"] and report["stuck_jobs_failed"] >= 1
    job = db.execute("SELECT status, error_details FROM app.jobs WHERE job_id = %s", [job_id]).fetchone()
    assert job["status"] == "failed" and "no progress" in job["error_details"]["error"]
    db.execute("UPDATE app.jobs SET cleaned_up_at = NULL, updated_at = now() - interval '1 minute'"
               " WHERE job_id = %s", [job_id])
    Janitor(machine).run_once()
    cleaned = db.execute("SELECT cleaned_up_at FROM app.jobs WHERE job_id = %s", [job_id]).fetchone()
    assert cleaned["cleaned_up_at"] is not None


def test_janitor_vacuums_the_queue_table_once_dead_rows_pile_up(db, machine):
    """Receiving walks over dead rows: the janitor vacuums the queue whatever autovacuum does."""
    import time

    from core.janitor import VACUUM_DEAD_ROWS, Janitor

    n = VACUUM_DEAD_ROWS + 2_000
    # autovacuum would race the janitor for these dead rows (between the DELETE and the check)
    db.execute("ALTER TABLE app.queue_messages SET (autovacuum_enabled = false)")
    try:
        db.execute(
            "INSERT INTO app.queue_messages (queue, message_id, body)"
            " SELECT 'vacuum-probe', 'vacuum-probe-' || i, '{}'::jsonb FROM generate_series(1, %s) i",
            [n],
        )
        db.execute("DELETE FROM app.queue_messages WHERE queue = 'vacuum-probe'")

        def dead() -> int:
            db.execute("SELECT pg_stat_clear_snapshot()")
            row = db.execute(
                "SELECT n_dead_tup FROM pg_stat_user_tables WHERE schemaname = 'app' AND relname = 'queue_messages'"
            ).fetchone()
            return int(row["n_dead_tup"])

        deadline = time.monotonic() + 10
        while dead() < n and time.monotonic() < deadline:  # statistics reach the view within a second or so
            time.sleep(0.2)
        assert dead() >= n
        report = Janitor(machine).run_once()
        assert report["ran"] and "queue_messages" in report["tables_vacuumed"], report
        assert dead() < VACUUM_DEAD_ROWS
    finally:
        db.execute("ALTER TABLE app.queue_messages RESET (autovacuum_enabled)")


# --- allocator
@pytest.mark.parametrize("start", [
    "from infrastructure.memory import limit_allocator_growth; limit_allocator_growth()",  # geoetl worker
    "import function_app",  # the Functions host
])
def test_worker_processes_give_arrow_the_system_allocator(start):
    """Arrow's C++ default pool is fixed when pyarrow loads: worker processes must choose it first, or
    freed batches stay resident in mimalloc's region between jobs."""
    import subprocess
    import sys

    code = f"{start}\nimport pyarrow as pa\nprint(pa.default_memory_pool().backend_name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "system", out.stderr[-2000:]
