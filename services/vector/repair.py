"""Invalid geometries: repaired within a time budget per feature, kept as they are, or refused.

geometry_params.invalid decides: "repair" (default) makes them valid with make_valid(method='structure')
semantics (overlapping parts unioned, holes subtracted: measured 4-6x faster than 'linework' on the
invalid countries of countries-maritime-10m, and 'linework' turns overlaps into holes); "keep" loads them
as they are and counts them (as ogr2ogr does); "fail" fails the job naming the first one.

Small features are repaired in this process, in sub-batches (each well under a second: the largest
invalid country of countries-maritime-10m, 42k vertices, takes 0.1 s). A feature above
CHILD_MIN_VERTICES is repaired in a child process (repair_child.py) that is killed when its budget is
spent: a GEOS call cannot be interrupted from Python, and the child's memory is returned to the
system when it ends, so one huge feature neither blocks a worker for an hour nor raises its peak. The
child's address space is limited to REPAIR_MEMORY_MB: a feature whose repair needs more fails the job at
once, naming the file, the feature and the limit (never an out-of-memory kill of the worker, never a
retry). Its peak resident memory is reported back (RepairPolicy.child_peak_kb, the task's
geometry_stats.repair_peak_mb). A feature above HUGE_FEATURE_BYTES of WKB goes to the same child with all
of its preparation (geometry.prepare_huge): the worker passes its bytes on and never decodes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import shapely

from core.errors import PermanentTaskError
from services.context import checkpoint, current_task, stopped

REPAIR, KEEP, FAIL = "repair", "keep", "fail"
INVALID_POLICIES = (REPAIR, KEEP, FAIL)
CHILD_MIN_VERTICES = 100_000
# A feature whose WKB is larger (1M plain vertices) is never decoded in the worker: the child prepares it
# whole (geometry.prepare_geometries' steps). Its geometry, the copies the steps make and GEOS's validity
# check (~70 bytes a vertex) took a worker from 220 to 630 MB on earth-seas-10m (1.78M vertices).
HUGE_FEATURE_BYTES = 16_000_000
MAX_ANSWER_LINE = 1 << 20
# run as a script, not as services.vector.repair_child: importing the services package (GDAL, Arrow,
# psycopg, Azure) would hold 210 MB resident and 1.4 GB of address space before the repair starts
_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "repair_child.py")
INLINE_BATCH_VERTICES = 200_000  # vertices repaired per in-process call, between progress reports
DEFAULT_SECONDS_PER_FEATURE = 300.0
DEFAULT_MEMORY_MB = 768


@dataclass
class RepairPolicy:
    mode: str = REPAIR
    seconds_per_feature: float = DEFAULT_SECONDS_PER_FEATURE
    memory_mb: int = DEFAULT_MEMORY_MB  # the repair child's address-space limit (0: none)
    child_peak_kb: int = 0  # the highest VmHWM of the repair children run with this policy


Progress = Callable[[int], None]


def refuse_invalid(geom: shapely.Geometry, feature: int, label: str) -> PermanentTaskError:
    return invalid_refused(label, feature, shapely.is_valid_reason(geom))


def invalid_refused(label: str, feature: int, reason: str) -> PermanentTaskError:
    """geometry_params.invalid "fail" met an invalid feature (checked here or by the repair child)."""
    return PermanentTaskError(
        f"{label}: feature {feature} has an invalid geometry ({reason}) and geometry_params.invalid is "
        '"fail"; repair it in the source, or use "repair" (default) or "keep"'
    )


@dataclass
class ChildAnswer:
    """What the child said about one feature (repair_child.py): status "ok" (wkb holds the Multi* of its
    family), "null", "collapsed", or a refusal ("mixed", "invalid", "unprojectable", "undecodable") with a
    message; counts and the source's bounds for the caller's statistics and checks."""

    status: str
    wkb: bytearray
    info: dict[str, Any]

    @property
    def message(self) -> str:
        return str(self.info.get("message", ""))


def _read_exactly(stream: IO[bytes], n: int) -> bytearray:
    """n bytes into one buffer (the answer of a huge feature is read once, not joined from chunks)."""
    out = bytearray(n)
    view, got = memoryview(out), 0
    while got < n:
        read = stream.readinto(view[got:])
        if not read:
            raise EOFError
        got += read
    return out


def run_child(
    data: Any, request: dict[str, Any], feature: int, what: str, label: str, policy: RepairPolicy
) -> ChildAnswer:
    """One feature prepared by repair_child.py, killed when the budget is spent, failing when out of memory.
    `data` is any buffer (an Arrow value's, not copied); `what` describes the feature in messages."""
    budget = policy.seconds_per_feature
    proc = subprocess.Popen(
        [sys.executable, _CHILD, str(policy.memory_mb)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        # one thread each: BLAS/OpenMP pools reserve address space the repair never uses
        env=os.environ | {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
    )
    expired, ended = threading.Event(), threading.Event()
    task = current_task()

    def watch() -> None:
        """Kills the child when its budget is spent or the job is cancelled (a GEOS call cannot be
        interrupted, and a huge feature's repair may take minutes)."""
        deadline = time.monotonic() + budget
        while not ended.wait(min(0.2, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                expired.set()
            if expired.is_set() or (task is not None and stopped(task)):
                proc.kill()
                return

    watcher = threading.Thread(target=watch, daemon=True, name="repair-child-watch")
    watcher.start()
    info: dict[str, Any] = {}
    body = bytearray()
    try:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.write(data)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the child ended early (out of memory, killed): its answer, or its exit, says why
        try:
            info = json.loads(proc.stdout.readline(MAX_ANSWER_LINE) or b"{}")
            body = _read_exactly(proc.stdout, int(info.get("wkb_bytes", 0)))
        except (EOFError, ValueError):
            info = {}
        proc.wait()
    finally:
        ended.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    watcher.join()
    checkpoint()  # a child killed because the job was cancelled: the task stops here
    policy.child_peak_kb = max(policy.child_peak_kb, int(info.get("peak_kb", 0)))
    if expired.is_set() and not info:
        raise PermanentTaskError(
            f"{label}: feature {feature} ({what}) could not be repaired within {budget:g} s "
            '(REPAIR_SECONDS_PER_FEATURE); load it as it is with geometry_params.invalid "keep", or repair it in '
            "the source"
        )
    status = info.get("status")
    if status is None or status == "memory":
        # a child that ran out of its address space either reports it or dies in an allocation
        limit = f"its memory limit of {policy.memory_mb} MB (REPAIR_MEMORY_MB)" if policy.memory_mb else "memory"
        ended = "" if status == "memory" else f" (the repair process ended with exit code {proc.returncode})"
        raise PermanentTaskError(
            f"{label}: feature {feature} ({what}) could not be repaired within {limit}{ended}; "
            'load it as it is with geometry_params.invalid "keep", raise REPAIR_MEMORY_MB, or repair it in '
            "the source"
        )
    if status == "error":
        message = info.get("message", "")
        raise PermanentTaskError(f"{label}: feature {feature} has a geometry that cannot be repaired ({message})")
    return ChildAnswer(status, body, info)


def _child_repair(geom: shapely.Geometry, feature: int, label: str, policy: RepairPolicy) -> shapely.Geometry:
    """One invalid feature the worker prepared, repaired by the child: the Multi* of its family, or an
    empty geometry when nothing of it survives."""
    what = f"{int(shapely.get_num_coordinates(geom))} vertices, {shapely.is_valid_reason(geom)}"
    answer = run_child(shapely.to_wkb(geom), {"mode": REPAIR, "known_invalid": True}, feature, what, label, policy)
    if answer.status != "ok":
        return shapely.from_wkt("GEOMETRYCOLLECTION EMPTY")
    return shapely.from_wkb(bytes(answer.wkb))


def make_valid_all(
    geoms: np.ndarray, features: np.ndarray, label: str, policy: RepairPolicy, progress: Progress | None = None
) -> np.ndarray:
    """Repaired copies of these invalid geometries (same order); `features` numbers them in messages."""
    out = np.empty(len(geoms), dtype=object)
    vertices = shapely.get_num_coordinates(geoms)
    big = vertices > CHILD_MIN_VERTICES
    for i in np.flatnonzero(big):
        out[i] = _child_repair(geoms[i], int(features[i]), label, policy)
        if progress:
            progress(1)
    small = np.flatnonzero(~big)
    start = 0
    while start < len(small):
        end, budget = start, 0
        while end < len(small) and (end == start or budget + vertices[small[end]] <= INLINE_BATCH_VERTICES):
            budget += int(vertices[small[end]])
            end += 1
        sel = small[start:end]
        out[sel] = shapely.make_valid(geoms[sel], method="structure", keep_collapsed=False)
        if progress:
            progress(len(sel))
        start = end
    return out
