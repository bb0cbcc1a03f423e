"""The local stack's supervisor: a crashed API or worker is restarted within seconds, and says so.

Runs the supervisor as `make up` does (scripts/stack.sh), on this session's own port, database and
run folder; never on the stack's 7071.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, TEST_ENV, free_port, wait_port

pytestmark = pytest.mark.chaos


@contextmanager
def supervised(run_dir: Path, name: str, *command: str) -> Iterator[subprocess.Popen[bytes]]:
    """The supervisor of `command`, with the pid file stack.sh would write."""
    log = open(run_dir / f"{name}.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "triggers.supervisor", "--name", name, "--run-dir", str(run_dir), "--", *command],
        cwd=ROOT, env={**os.environ, **TEST_ENV}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    (run_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # as `make down` does: the whole group
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def child_pid(run_dir: Path, name: str, other_than: int | None = None, timeout: float = 20) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = run_dir / f"{name}.child.pid"
        if path.exists():
            text = path.read_text().strip()
            if text and int(text) != other_than:
                return int(text)
        time.sleep(0.1)
    raise AssertionError(f"{name}: no new child pid after {timeout}s")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def test_a_segfaulted_api_and_a_killed_worker_are_restarted(database: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    port = free_port()
    health = f"http://127.0.0.1:{port}/api/health"
    with supervised(run_dir, "api", sys.executable, "-m", "triggers.cli", "serve", "--port", str(port)) as api, \
            supervised(run_dir, "worker-1", sys.executable, "-m", "triggers.cli", "worker") as worker:
        wait_port(port, timeout=60)
        first = child_pid(run_dir, "api")
        assert answers(health)

        os.kill(first, signal.SIGSEGV)
        killed_at = time.monotonic()
        second = child_pid(run_dir, "api", other_than=first)
        while not answers(health):
            assert time.monotonic() - killed_at < 30, "the API did not answer again within 30 s"
            time.sleep(0.2)
        assert not alive(first) and alive(second) and api.poll() is None
        assert (run_dir / "api.restarts").read_text().strip() == "1"
        log = (run_dir / "api.log").read_text()
        assert f"pid {first} killed by SIGSEGV; restart 1" in log

        w1 = child_pid(run_dir, "worker-1")
        os.kill(w1, signal.SIGKILL)
        w2 = child_pid(run_dir, "worker-1", other_than=w1)
        assert alive(w2) and worker.poll() is None
        assert (run_dir / "worker-1.restarts").read_text().strip() == "1"
        assert f"pid {w1} killed by SIGKILL; restart 1" in (run_dir / "worker-1.log").read_text()

        status = subprocess.run(["bash", "scripts/stack.sh", "status"], cwd=ROOT, capture_output=True, text=True,
                                env={**os.environ, "GEOETL_RUN_DIR": str(run_dir), "API_PORT": str(port)},
                                timeout=60)
        assert f"api running (pid {api.pid}, process {second}, restarts 1)" in status.stdout, status.stdout
        assert f"worker-1 running (pid {worker.pid}, process {w2}, restarts 1)" in status.stdout, status.stdout

        # stopped as `make down` stops it: no restart, nothing left running
        os.killpg(api.pid, signal.SIGTERM)
        assert api.wait(40) == 0
        assert not alive(second) and not (run_dir / "api.child.pid").exists()
        assert (run_dir / "api.restarts").read_text().strip() == "1"
        assert "(stopped)" in (run_dir / "api.log").read_text()
    assert not alive(w2)


def test_a_supervisor_stopped_alone_stops_its_process(tmp_path: Path) -> None:
    """A SIGTERM to the supervisor only (not its group) is passed on to the process."""
    with supervised(tmp_path, "sleeper", sys.executable, "-c", "import time; time.sleep(600)") as sup:
        child = child_pid(tmp_path, "sleeper")
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(30) == 0
        assert not alive(child)
        assert (tmp_path / "sleeper.restarts").read_text().strip() == "0"


def test_a_process_that_keeps_dying_is_restarted_later_each_time(tmp_path: Path) -> None:
    with supervised(tmp_path, "crasher", sys.executable, "-c", "raise SystemExit(3)"):
        deadline = time.time() + 20
        logged = tmp_path / "crasher.log"
        # the restart count is written before the line that logs it: wait for the line itself
        while time.time() < deadline and not (logged.exists() and "restart 3 in" in logged.read_text()):
            time.sleep(0.1)
        log = logged.read_text()
        assert (tmp_path / "crasher.restarts").read_text().strip() in ("3", "4")
    assert "exited with code 3; restart 1 in 1s" in log
    assert "restart 2 in 2s" in log and "restart 3 in 4s" in log  # backoff doubles while it keeps dying
