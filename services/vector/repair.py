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
geometry_stats.repair_peak_mb).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import shapely

from core.errors import PermanentTaskError

REPAIR, KEEP, FAIL = "repair", "keep", "fail"
INVALID_POLICIES = (REPAIR, KEEP, FAIL)
CHILD_MIN_VERTICES = 100_000
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
    reason = shapely.is_valid_reason(geom)
    return PermanentTaskError(
        f"{label}: feature {feature} has an invalid geometry ({reason}) and geometry_params.invalid is "
        '"fail"; repair it in the source, or use "repair" (default) or "keep"'
    )


def _child_repair(geom: shapely.Geometry, feature: int, label: str, policy: RepairPolicy) -> shapely.Geometry:
    """One feature repaired by repair_child.py, killed when the budget is spent, failing when out of memory."""
    vertices = int(shapely.get_num_coordinates(geom))
    budget = policy.seconds_per_feature
    proc = subprocess.Popen(
        [sys.executable, _CHILD, str(policy.memory_mb)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        # one thread each: BLAS/OpenMP pools reserve address space the repair never uses
        env=os.environ | {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
    )
    try:
        out, _ = proc.communicate(shapely.to_wkb(geom), timeout=budget)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise PermanentTaskError(
            f"{label}: feature {feature} ({vertices} vertices, {shapely.is_valid_reason(geom)}) could not be "
            f"repaired within {budget:.0f} s (REPAIR_SECONDS_PER_FEATURE); load it as it is with "
            'geometry_params.invalid "keep", or repair it in the source'
        ) from None
    if len(out) >= 9:
        policy.child_peak_kb = max(policy.child_peak_kb, struct.unpack("<Q", out[1:9])[0])
    if proc.returncode != 0 or len(out) < 9 or out[:1] == b"M":
        # a child that ran out of its address space either reports it ("M") or dies in an allocation
        limit = f"its memory limit of {policy.memory_mb} MB (REPAIR_MEMORY_MB)" if policy.memory_mb else "memory"
        ended = "" if out[:1] == b"M" else f" (the repair process ended with exit code {proc.returncode})"
        raise PermanentTaskError(
            f"{label}: feature {feature} ({vertices} vertices) could not be repaired within {limit}{ended}; "
            'load it as it is with geometry_params.invalid "keep", raise REPAIR_MEMORY_MB, or repair it in '
            "the source"
        )
    if out[:1] != b"K":
        raise PermanentTaskError(
            f"{label}: feature {feature} has a geometry that cannot be repaired ({out[9:].decode(errors='replace')})"
        )
    body = out[9:]
    del out
    return shapely.from_wkb(body)


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
