"""Keeps one process of the local stack running: restarts it when it dies, and logs each restart.

    python -m triggers.supervisor --name api --run-dir .run -- .venv/bin/geoetl serve --port 7071

`make up` starts the API and each worker under one supervisor each (scripts/stack.sh). A
process that crashes (a segfault in a native library, an OOM kill, an unhandled error) is
started again after RESTART_DELAY seconds, doubling up to MAX_DELAY while it keeps dying
within STABLE_AFTER seconds of its start. The child's pid is in <run>/<name>.child.pid and
the number of restarts in <run>/<name>.restarts (`make status` shows both). SIGTERM or
SIGINT stop the child and then the supervisor, without a restart.

On Azure the Functions host supervises its worker processes itself; this is for the local stack.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

RESTART_DELAY = 1.0
MAX_DELAY = 30.0
STABLE_AFTER = 60.0
STOP_GRACE = 30.0
PASS_ON_AFTER = 5.0


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    def __init__(self, name: str, run_dir: Path, command: list[str]) -> None:
        self.name = name
        self.run_dir = run_dir
        self.command = command
        self.stopping = False
        self.child: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def log(self, message: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp} supervisor[{os.getpid()}] {self.name}: {message}", flush=True)

    def _write(self, suffix: str, value: object) -> None:
        path = self.run_dir / f"{self.name}.{suffix}"
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(f"{value}\n")
        tmp.replace(path)

    def _stop(self, signum: int, _frame: object) -> None:
        # `make down` signals the whole process group, child included; a signal sent to the
        # supervisor alone is passed on if the child is still running a moment later (_wait)
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self._write("restarts", 0)
        delay = RESTART_DELAY
        while not self.stopping:
            started = time.monotonic()
            self.child = subprocess.Popen(self.command)
            self._write("child.pid", self.child.pid)
            self.log(f"started pid {self.child.pid}: {' '.join(self.command)}")
            code = self._wait()
            if self.stopping:
                self.log(f"pid {self.child.pid} {describe_exit(code)} (stopped)")
                break
            delay = RESTART_DELAY if time.monotonic() - started > STABLE_AFTER else delay
            self.restarts += 1
            self._write("restarts", self.restarts)
            self.log(f"pid {self.child.pid} {describe_exit(code)}; restart {self.restarts} in {delay:.0f}s")
            self._sleep(delay)
            delay = min(delay * 2, MAX_DELAY)
        (self.run_dir / f"{self.name}.child.pid").unlink(missing_ok=True)
        return 0

    def _wait(self) -> int:
        assert self.child is not None
        while True:
            try:
                code = self.child.wait(timeout=1.0)
                return code
            except subprocess.TimeoutExpired:
                if self.stopping:
                    return self._stop_child()

    def _stop_child(self) -> int:
        assert self.child is not None
        try:
            return self.child.wait(timeout=PASS_ON_AFTER)
        except subprocess.TimeoutExpired:
            self.child.terminate()
        try:
            return self.child.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.child.kill()
            return self.child.wait()

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="name of the process (its files in the run folder)")
    parser.add_argument("--run-dir", default=".run", type=Path, help="folder of the pid and restart files")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to keep running")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to supervise")
    args.run_dir.mkdir(parents=True, exist_ok=True)
    return Supervisor(args.name, args.run_dir, command).run()


if __name__ == "__main__":
    sys.exit(main())
