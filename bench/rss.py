"""Peak resident memory of groups of processes (each with its children), sampled in a thread.

Long-lived processes (the API, the workers) carry a lifetime high-water mark from before the
run, so /proc's VmHWM would not say what *this* run cost: sampling does.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

MB = 1024 * 1024


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and all its live descendants ([] when it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_rss(pid: int) -> int:
    """RSS in bytes of a process and all its descendants (0 when it is gone)."""
    total = 0
    for p in process_tree(pid):
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def per_group(groups: dict[str, Callable[[], list[int]]], measure: Callable[[int], float]) -> dict[str, Any]:
    """measure(pid) summed over each group's root pids (a group whose pids cannot be read counts 0)."""
    out: dict[str, Any] = {}
    for name, roots in groups.items():
        try:
            pids = roots()
        except OSError:
            pids = []
        out[name] = sum(measure(pid) for pid in pids)
    return out


class RssSampler:
    """Samples every `interval` seconds; `groups` maps a name to a function giving its root pids.

    A group's value at one instant is the sum over its roots' trees. Use as a context manager;
    `peaks_mb` then holds each group's peak, and `peak_total_mb` the peak of all groups together.
    """

    def __init__(self, groups: dict[str, Callable[[], list[int]]], interval: float = 0.1) -> None:
        self.groups = groups
        self.interval = interval
        self.peaks: dict[str, int] = dict.fromkeys(groups, 0)
        self.baseline: dict[str, int] = {}
        self.peak_total = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> dict[str, int]:
        return per_group(self.groups, tree_rss)

    def _record(self, now: dict[str, int]) -> None:
        for name, value in now.items():
            self.peaks[name] = max(self.peaks[name], value)
        self.peak_total = max(self.peak_total, sum(now.values()))
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._record(self.sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.baseline = self.sample()
        self._record(self.baseline)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peaks_mb(self) -> dict[str, float]:
        return {k: round(v / MB, 1) for k, v in self.peaks.items()}

    @property
    def baseline_mb(self) -> dict[str, float]:
        return {k: round(v / MB, 1) for k, v in self.baseline.items()}

    @property
    def peak_total_mb(self) -> float:
        return round(self.peak_total / MB, 1)


@dataclass
class Sampled:
    """What one sampled command did."""

    seconds: float
    returncode: int
    peak_mb: float
    stdout: str
    stderr_tail: str


def run_sampled(cmd: list[str], env: dict[str, str] | None = None, interval: float = 0.1,
                timeout: float = 7200) -> Sampled:
    """Run a command to its end while sampling the RSS of its process tree."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with RssSampler({"proc": lambda: [proc.pid]}, interval=interval) as sampler:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    tail = "\n".join((err or "").strip().splitlines()[-15:])
    return Sampled(seconds, proc.returncode, sampler.peaks_mb["proc"], out or "", tail)
