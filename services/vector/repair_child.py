"""The repair of one big invalid geometry, run in a child process so that its time and memory can be bounded.

A GEOS call cannot be interrupted from Python, so the parent (services/vector/repair.py) runs this
module with a timeout and kills it when the budget is spent. The child reads one WKB value on stdin and
writes a status byte, its peak resident memory (VmHWM, kB, 8 bytes little-endian) and the repaired WKB on
stdout (no pickle: only bytes cross the pipe). Its address space is limited (RLIMIT_AS, argv[1] in MB,
REPAIR_MEMORY_MB): a feature that needs more fails its repair with status "M" instead of raising the
machine's memory until the kernel kills the worker.

Method (measured on earth-seas-10m's 1.78M-vertex MultiPolygon: GEOS make_valid 'structure' on the whole
feature 127-153 s, 'linework' 188-247 s; parts below): only the invalid polygons are made valid
('structure': shells unioned, holes subtracted), valid parts are kept as they are; the parts are then
merged where they overlap or touch with GEOS's disjoint-subset union (a full union takes 118 s; checking the
assembled parts' validity alone, 90 s). The result is valid by construction and has
make_valid(method='structure')'s semantics and area. Each copy is dropped as soon as the next one exists
(source WKB, the parsed feature, the invalid originals), since the peak is what bounds the worker.
"""

from __future__ import annotations

import resource
import struct
import sys

import numpy as np
import shapely


def peak_kb() -> int:
    """This process's peak resident set size (VmHWM), in kB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def polygon_parts(geom: shapely.Geometry) -> np.ndarray | None:
    """The polygons of a (multi)polygon or collection of them, or None when it holds anything else."""
    parts = shapely.get_parts(geom)
    while (shapely.get_type_id(parts) >= 4).any():
        parts = shapely.get_parts(parts)
    return parts if (shapely.get_type_id(parts) == 3).all() else None


def _union_repaired(holder: list[np.ndarray]) -> shapely.Geometry:
    """The parts (taken out of `holder`, so that the invalid originals are released once repaired)."""
    parts = holder.pop()
    bad = ~shapely.is_valid(parts)
    fixed = shapely.make_valid(parts[bad], method="structure", keep_collapsed=False)
    kept = parts[~bad]
    del parts
    fixed = shapely.get_parts(fixed[~shapely.is_empty(fixed)])
    polygons = np.concatenate([kept, fixed[shapely.get_type_id(fixed) == 3]])
    del kept, fixed
    return shapely.disjoint_subset_union_all(polygons)


def repair(data: bytes) -> shapely.Geometry:
    """The repaired geometry of one WKB value."""
    geom = shapely.from_wkb(data)
    del data
    if shapely.get_type_id(geom) not in (3, 6, 7):
        return shapely.make_valid(geom)
    parts = polygon_parts(geom)
    if parts is None:
        return shapely.make_valid(geom, method="structure", keep_collapsed=False)
    del geom  # the parts are copies
    holder = [parts]
    del parts
    return _union_repaired(holder)


def main() -> int:
    limit_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    if limit_mb > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))
    status, body = b"K", b""
    try:
        fixed = repair(sys.stdin.buffer.read())
        body = shapely.to_wkb(fixed)
        del fixed
    except MemoryError:
        status = b"M"
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which names the feature
        # GEOS reports a failed allocation as a GEOSException carrying std::bad_alloc
        status, body = (b"M", b"") if "bad_alloc" in str(exc) else (b"E", f"{type(exc).__name__}: {exc}".encode())
    out = sys.stdout.buffer
    out.write(status + struct.pack("<Q", peak_kb()))
    out.write(body)
    out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
