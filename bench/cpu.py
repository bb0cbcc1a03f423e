"""CPU seconds each group of processes spent during a run, and how much of the machine that was.

On a 2-core machine every contender shares the cores with PostgreSQL and, for geoetl, with the blob
emulator: wall time alone cannot say whether a run was short of work or short of cores. A run's CPU
seconds divided by the core count is the shortest wall time any scheduling could reach with that much
work, which is what a ratio target has to be weighed against.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import psutil

from bench.rss import per_group, process_tree


def tree_cpu(pid: int) -> float:
    """User + system seconds of a process and its live descendants, each with its reaped children
    (0 when it is gone). A process's time moves into its parent's `children_*` once waited for, so exited
    backends of the PostgreSQL server and finished repair children still count, and only once."""
    total = 0.0
    for p in process_tree(pid):
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def postgres_root() -> list[int]:
    """The PostgreSQL server's postmaster (the process named postgres whose parent is not)."""
    for p in psutil.process_iter(["name", "ppid"]):
        if p.info["name"] != "postgres":
            continue
        try:
            parent = psutil.Process(p.info["ppid"]).name()
        except psutil.Error:
            parent = ""
        if parent != "postgres":
            return [p.pid]
    return []


def machine_busy() -> float:
    """Seconds all cores spent not idle (iowait counts as idle) since boot."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


class CpuMeter:
    """CPU seconds per group between entering and leaving; `mark(label)` closes a phase (e.g. a stage).

    `groups` maps a name to a function giving its root pids. "other" is the machine's busy time that no
    group accounts for (a peer's client, this benchmark, anything else running).
    """

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self.phases: list[dict[str, Any]] = []
        self._last: tuple[float, float, dict[str, float]] | None = None
        self._start: tuple[float, float, dict[str, float]] | None = None
        self.total: dict[str, Any] = {}

    def _snapshot(self) -> tuple[float, float, dict[str, float]]:
        return time.perf_counter(), machine_busy(), per_group(self.groups, tree_cpu)

    @staticmethod
    def _delta(a: tuple[float, float, dict[str, float]], b: tuple[float, float, dict[str, float]]) -> dict[str, Any]:
        wall, busy = b[0] - a[0], b[1] - a[1]
        per = {k: round(max(0.0, b[2].get(k, 0.0) - a[2].get(k, 0.0)), 2) for k in b[2]}
        per["other"] = round(max(0.0, busy - sum(per.values())), 2)
        cores = os.cpu_count() or 1
        return {"wall_s": round(wall, 3), "busy_s": round(busy, 2), "cores": cores,
                "use": round(busy / (wall * cores), 3) if wall > 0 else None, "cpu_s": per}

    def mark(self, label: str) -> None:
        now = self._snapshot()
        if self._last is not None:
            self.phases.append({"phase": label, **self._delta(self._last, now)})
        self._last = now

    def __enter__(self) -> CpuMeter:
        self._start = self._last = self._snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._start is not None
        self.total = self._delta(self._start, self._snapshot())

    def result(self) -> dict[str, Any]:
        return {**self.total, "phases": self.phases} if self.phases else dict(self.total)
