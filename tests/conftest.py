"""Test services: a database of their own (geoetl_test), Azurite on its own port, real workers.

Nothing here touches what `make up` started: other database, other blob port, other API port.
A service that cannot be started fails the session loudly.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import job_status

ROOT = Path(__file__).resolve().parent.parent
TEST_DB = os.environ.get("GEOETL_TEST_DATABASE_URL", "postgresql://postgres:postgres@127.0.0.1:5432/geoetl_test")
AZURITE_PORT = int(os.environ.get("GEOETL_TEST_AZURITE_PORT", "10100"))
AZURITE_CONN = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    f"BlobEndpoint=http://127.0.0.1:{AZURITE_PORT}/devstoreaccount1;"
)
RUN_DIR = ROOT / ".run" / "test"

TEST_ENV = {
    "DATABASE_URL": TEST_DB,
    "AZURE_STORAGE_CONNECTION_STRING": AZURITE_CONN,
    "BLOB_BACKEND": "azure",
    "QUEUE_BACKEND": "postgres",
    "QUEUE_LOCK_SECONDS": "6",
    "JANITOR_INTERVAL_SECONDS": "2",
    "TASK_RETRY_BACKOFF_SECONDS": "0.05",
    "TASK_MAX_RETRIES": "3",
    "PUBLIC_BASE_URL": f"http://127.0.0.1:{os.environ.get('GEOETL_TEST_API_PORT', '7171')}",
    "API_KEYS": "",
    "GEOETL_LOCAL_SETTINGS": str(ROOT / ".run" / "no-local-settings.json"),
    "LOG_LEVEL": "INFO",
}
os.environ.update(TEST_ENV)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if port_open(port):
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session", autouse=True)
def azurite() -> Iterator[None]:
    """Azurite on the test port, started for the session (installed by `make test`)."""
    if port_open(AZURITE_PORT):
        yield
        return
    exe = ROOT / ".azurite" / "node_modules" / ".bin" / "azurite-blob"
    if not exe.exists():
        pytest.fail(f"Azurite is not installed at {exe}: run the tests with `make test`", pytrace=False)
    data = RUN_DIR / f"azurite-{AZURITE_PORT}"  # one folder per port: sessions on other ports keep theirs
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    log = open(RUN_DIR / f"azurite-{AZURITE_PORT}.log", "w")
    proc = subprocess.Popen(
        [str(exe), "--blobHost", "127.0.0.1", "--blobPort", str(AZURITE_PORT), "--location", str(data),
         "--disableTelemetry", "--skipApiVersionCheck", "--loose"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_port(AZURITE_PORT)
        yield
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture(scope="session", autouse=True)
def database(azurite: None) -> Iterator[str]:
    """A fresh geoetl_test database, migrated (PostGIS, app schema, pgstac, collection)."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from config import reset_settings
    from infrastructure.migrate import migrate

    reset_settings()
    name = conninfo_to_dict(TEST_DB)["dbname"]
    try:
        with psycopg.connect(make_conninfo(TEST_DB, dbname="postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {TEST_DB}: {exc}. Run the tests with `make test`.", pytrace=False)
    migrate()
    from config import get_settings
    from infrastructure.blob import get_blob_store

    store = get_blob_store()
    for c in (get_settings().source_container, get_settings().intermediate_container):
        store.create_container(c)
    yield TEST_DB
    from infrastructure import database as db

    db.close_pool()


@pytest.fixture
def db(database: str) -> Iterator[Any]:
    """An autocommit connection to the test database, rows as dicts."""
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(database, autocommit=True, row_factory=dict_row) as conn:
        yield conn


@pytest.fixture
def nonce() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def machine(database: str) -> Any:
    from core.machine import CoreMachine

    return CoreMachine()


@pytest.fixture
def drain(database: str) -> Callable[..., str]:
    """Process queue messages in this process until the job finishes; returns its status."""
    from triggers.worker import Worker

    worker = Worker(concurrency=1)

    def run(job_id: str, timeout: float = 120.0, on_message: Callable[[Any], None] | None = None) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = job_status(job_id)
            if status in ("completed", "failed", "cancelled"):
                return status
            msg = worker.receive_one()
            if msg is None:
                time.sleep(0.02)
                continue
            if on_message:
                on_message(msg)
            worker.handle(msg)
        raise AssertionError(f"job {job_id} did not finish within {timeout}s (status {job_status(job_id)})")

    return run


class WorkerPool:
    """Real `geoetl worker` processes against the test database."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        RUN_DIR.mkdir(parents=True, exist_ok=True)

    def start(self, n: int = 1, concurrency: int = 2) -> list[subprocess.Popen[bytes]]:
        started = []
        for _ in range(n):
            log = open(RUN_DIR / f"worker-{len(self.procs)}.log", "ab")
            p = subprocess.Popen(
                [sys.executable, "-m", "triggers.cli", "worker", "--concurrency", str(concurrency)],
                cwd=ROOT, env={**os.environ, **TEST_ENV}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.procs.append(p)
            started.append(p)
        return started

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(10)

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, 15)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                self.kill(p)


@pytest.fixture
def workers(database: str) -> Iterator[WorkerPool]:
    pool = WorkerPool()
    try:
        yield pool
    finally:
        pool.stop_all()


API_PORT = int(os.environ.get("GEOETL_TEST_API_PORT", "7171"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_api(port: int, name: str, *args: str, **env: str) -> Iterator[str]:
    """A real `geoetl serve` on port (log in the test run folder); yields its /api base URL."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    if port_open(port):
        pytest.fail(f"port {port} is taken; the test API needs it", pytrace=False)
    log = open(RUN_DIR / f"api-{name}.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "triggers.cli", "serve", "--port", str(port), *args],
        cwd=ROOT, env={**os.environ, **TEST_ENV, **env}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}/api"
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()


@pytest.fixture(scope="session")
def api_server(database: str) -> Iterator[str]:
    """The real API on the test port, for the whole session."""
    with serve_api(API_PORT, "session") as base:
        yield base
