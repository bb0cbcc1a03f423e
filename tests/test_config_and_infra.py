"""Settings, migrations, health, blob names, the Service Bus outbox up to the SDK boundary, the janitor."""

from __future__ import annotations

import json
import logging
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


# --- Service Bus, up to the SDK boundary
class RecordingSender:
    def __init__(self, sent, queue):
        self.sent, self.queue = sent, queue

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def send_messages(self, msgs):
        self.sent.extend((self.queue, m) for m in msgs)


class RecordingClient:
    """Stands in for azure.servicebus.ServiceBusClient: no Service Bus runs on a development machine."""

    def __init__(self):
        self.sent = []

    def get_queue_sender(self, queue_name):
        return RecordingSender(self.sent, queue_name)


def test_servicebus_outbox_relays_sdk_messages(db, nonce):
    from azure.servicebus import ServiceBusMessage

    from infrastructure import database as dbm
    from infrastructure.queues import OutgoingMessage
    from infrastructure.queues.servicebus import ServiceBusQueue

    client = RecordingClient()
    q = ServiceBusQueue(client=client)
    with dbm.connection() as conn:
        q.send(conn, "geospatial-tasks", [OutgoingMessage(f"m-{nonce}", {"task_id": nonce}, 30.0)])
        q.send(conn, "geospatial-jobs", [OutgoingMessage(f"j-{nonce}", {"job_id": nonce})])
        conn.rollback()  # a rolled-back state change sends nothing
    q.after_commit()
    assert client.sent == []
    with dbm.connection() as conn:
        q.send(conn, "geospatial-tasks", [OutgoingMessage(f"m-{nonce}", {"task_id": nonce}, 30.0)])
        q.send(conn, "geospatial-jobs", [OutgoingMessage(f"j-{nonce}", {"job_id": nonce})])
    q.after_commit()
    sent = {m.message_id: (queue, m) for queue, m in client.sent}
    assert set(sent) >= {f"m-{nonce}", f"j-{nonce}"}
    queue, msg = sent[f"m-{nonce}"]
    assert queue == "geospatial-tasks" and isinstance(msg, ServiceBusMessage)
    assert json.loads(str(msg)) == {"task_id": nonce} and msg.scheduled_enqueue_time_utc is not None
    assert sent[f"j-{nonce}"][1].scheduled_enqueue_time_utc is None
    unsent = db.execute("SELECT count(*) AS n FROM app.outbox WHERE sent_at IS NULL").fetchone()["n"]
    assert unsent == 0
    q.after_commit()
    assert len(client.sent) == len(sent)  # relayed once


class RecordingReceiver:
    """Stands in for a Service Bus receiver: records, at the moment of each settlement, what another
    database connection sees of the message's task."""

    def __init__(self, look):
        self.look, self.settled = look, []

    def complete_message(self, message):
        self.settled.append(("complete", self.look()))

    def abandon_message(self, message):
        self.settled.append(("abandon", self.look()))


def test_servicebus_message_is_acknowledged_after_its_completion_commits(db, drain, nonce):
    """Acknowledged inside the transaction, a commit that then failed would lose both the message and
    the task's effects; the worker acknowledges a Service Bus message once its transaction committed."""
    from infrastructure.queues import ReceivedMessage
    from infrastructure.queues.servicebus import ServiceBusQueue
    from tests.helpers import receive_own, submit
    from triggers.worker import Worker

    job_id = submit("hello_world", {"n": 1, "message": nonce})
    local = Worker(concurrency=1)
    local.handle(receive_own(local, job_id))  # fan-out through the postgres queue: one task and its message
    task_msg = receive_own(local, job_id)
    task_id = task_msg.body["task_id"]
    assert task_msg.body["parent_job_id"] == job_id

    def task_status():
        return db.execute("SELECT status FROM app.tasks WHERE task_id = %s", [task_id]).fetchone()["status"]

    receiver = RecordingReceiver(task_status)
    bus = ServiceBusQueue(client=RecordingClient())
    worker = Worker(concurrency=1)
    worker.queue = worker.machine.queue = bus
    received = ReceivedMessage(worker.settings.tasks_queue, task_msg.message_id, task_msg.body, 1, "token",
                               handle=(receiver, object()))
    assert worker.handle(received) == "stage_completed"
    assert receiver.settled == [("complete", "completed")]  # the completion was visible to others first
    local.queue.complete(task_msg)
    db.execute("UPDATE app.jobs SET status = 'failed' WHERE job_id = %s", [job_id])  # stage 2 went to the stub


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
