"""Invalid geometries: repaired within a time budget per feature, kept as they are, or refused.

geometry_params.invalid decides: "repair" (default) makes them valid with make_valid(method='structure')
semantics (overlapping parts unioned, holes subtracted: measured 4-6x faster than 'linework' on the
invalid countries of countries-maritime-10m, and 'linework' turns overlaps into holes); "keep" loads them
as they are and counts them (as ogr2ogr does); "fail" fails the job naming the first one.

Small features are repaired in this process, in sub-batches (each well under a second: the largest
invalid country of countries-maritime-10m, 42k vertices, takes 0.1 s). A feature above
CHILD_MIN_VERTICES is repaired in a child process (repair_child.py) that is killed when its budget is
spent: a GEOS call cannot be interrupted from Python, and the child's memory is returned to the
system when it ends, so one huge feature neither blocks a worker for an hour nor raises its peak.
"""

from __future__ import annotations

import os
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
# the project root, so that the child finds the services package whatever the worker's working directory
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INLINE_BATCH_VERTICES = 200_000  # vertices repaired per in-process call, between progress reports
DEFAULT_SECONDS_PER_FEATURE = 300.0


@dataclass
class RepairPolicy:
    mode: str = REPAIR
    seconds_per_feature: float = DEFAULT_SECONDS_PER_FEATURE


Progress = Callable[[int], None]


def refuse_invalid(geom: shapely.Geometry, feature: int, label: str) -> PermanentTaskError:
    reason = shapely.is_valid_reason(geom)
    return PermanentTaskError(
        f"{label}: feature {feature} has an invalid geometry ({reason}) and geometry_params.invalid is "
        '"fail"; repair it in the source, or use "repair" (default) or "keep"'
    )


def _child_repair(geom: shapely.Geometry, feature: int, label: str, budget: float) -> shapely.Geometry:
    """One feature repaired by repair_child.py, killed when the budget is spent."""
    vertices = int(shapely.get_num_coordinates(geom))
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.vector.repair_child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))},
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
    if proc.returncode != 0 or not out:
        raise RuntimeError(f"{label}: the repair of feature {feature} ended with exit code {proc.returncode}")
    if out[:1] != b"K":
        raise PermanentTaskError(
            f"{label}: feature {feature} has a geometry that cannot be repaired ({out[1:].decode(errors='replace')})"
        )
    return shapely.from_wkb(out[1:])


def make_valid_all(
    geoms: np.ndarray, features: np.ndarray, label: str, policy: RepairPolicy, progress: Progress | None = None
) -> np.ndarray:
    """Repaired copies of these invalid geometries (same order); `features` numbers them in messages."""
    out = np.empty(len(geoms), dtype=object)
    vertices = shapely.get_num_coordinates(geoms)
    big = vertices > CHILD_MIN_VERTICES
    for i in np.flatnonzero(big):
        out[i] = _child_repair(geoms[i], int(features[i]), label, policy.seconds_per_feature)
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
