"""One feature prepared in a child process, so that its time and memory can be bounded.

Two kinds of features come here (services/vector/repair.py runs this file): an invalid feature of more
than CHILD_MIN_VERTICES, which the worker has prepared and checked, to be repaired; and a huge feature
(a WKB value above HUGE_FEATURE_BYTES), which the worker never decodes at all: every step of
geometry.prepare_geometries runs here instead (2D, collections unpacked, reprojection, simplify,
quantize, the validity check, the repair by geometry_params.invalid, parts of the feature's own
family kept, Multi*), so that the worker holds the feature's bytes only, never its geometry.

A GEOS call cannot be interrupted from Python, so the parent runs this file with a timeout and kills it
when the budget is spent. It reads one request line (JSON) and one WKB value on stdin, and writes one
answer line (JSON: status, peak resident memory, counts, bounds, the WKB's length) and the prepared WKB
on stdout: no pickle, only bytes cross the pipe. Its address space is limited (RLIMIT_AS, argv[1] in MB,
REPAIR_MEMORY_MB): a feature that needs more fails with status "memory" instead of raising the
machine's memory until the kernel kills the worker. Only shapely and numpy are imported (pyproj when the
feature is reprojected): the services package would hold 210 MB before the work starts.

Repair method (measured on earth-seas-10m's 1.78M-vertex MultiPolygon: GEOS make_valid 'structure' on the
whole feature 127-153 s, 'linework' 188-247 s; parts below): only the invalid polygons are made valid
('structure': shells unioned, holes subtracted), valid parts are kept as they are; the parts are then
merged where they overlap or touch with GEOS's disjoint-subset union (a full union takes 118 s; checking the
assembled parts' validity alone, 90 s). The result is valid by construction and has
make_valid(method='structure')'s semantics and area. Each copy is dropped as soon as the next one exists
(source WKB, the parsed feature, the invalid originals), since the peak is what bounds the child.
"""

from __future__ import annotations

import json
import resource
import sys

import numpy as np
import shapely

CLIP_MIN_VERTICES = 10_000


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


def _polygons_of(geom: shapely.Geometry | np.ndarray) -> np.ndarray:
    parts = shapely.get_parts(geom)
    return parts[(shapely.get_type_id(parts) == 3) & ~shapely.is_empty(parts)]


def _rings_as_polygons(polygon: shapely.Geometry) -> np.ndarray:
    return shapely.polygons(shapely.get_interior_ring(polygon, np.arange(shapely.get_num_interior_rings(polygon))))


def repair_polygon(polygon: shapely.Geometry) -> np.ndarray:
    """make_valid(method='structure') of one polygon, as polygons that may still touch or overlap each other.

    GEOS makes the shell valid, each hole valid, subtracts the union of the holes that meet the shell and
    unions the others to it as shells. Done whole, the subtraction is one overlay of every vertex (on
    earth-seas-10m's 1.77M-vertex polygon with 60,798 holes: 640 MB and 55 s). Here the holes that lie
    strictly inside the shell, made disjoint by a disjoint-subset union, are set into the shell's parts as
    rings (no overlay: valid by construction); only holes that cross the shell's boundary are subtracted."""
    shell = shapely.make_valid(shapely.Polygon(shapely.get_exterior_ring(polygon)), method="structure",
                               keep_collapsed=False)
    holes = _rings_as_polygons(polygon)
    if not len(holes):
        return _polygons_of(shell)
    bad = ~shapely.is_valid(holes)
    if bad.any():
        fixed = shapely.make_valid(holes[bad], method="structure", keep_collapsed=False)
        holes = np.concatenate([holes[~bad], _polygons_of(fixed)])
    holes = holes[~shapely.is_empty(holes)]
    shapely.prepare(shell)
    inside = shapely.contains_properly(shell, holes)
    meets = ~inside & shapely.intersects(shell, holes)
    outside = holes[~inside & ~meets]  # holes outside the shell become shells
    if meets.any():
        shell = shapely.difference(shell, shapely.union_all(holes[meets]))
    merged = _polygons_of(shapely.disjoint_subset_union_all(holes[inside]))
    del holes
    pieces = []
    islands = [_rings_as_polygons(h) for h in merged[shapely.get_num_interior_rings(merged) > 0]]
    tree = shapely.STRtree(merged)
    placed = 0
    for part in _polygons_of(shell):
        within = tree.query(part, predicate="contains_properly")
        placed += len(within)
        own = [shapely.get_interior_ring(part, k) for k in range(shapely.get_num_interior_rings(part))]
        rings = own + list(shapely.get_exterior_ring(merged[within]))
        pieces.append(shapely.Polygon(shapely.get_exterior_ring(part), rings))
    if placed != len(merged):  # a hole in no part or in two: not the case the construction is valid for
        return _polygons_of(shapely.make_valid(polygon, method="structure", keep_collapsed=False))
    return np.concatenate([np.array(pieces, dtype=object), *islands, outside])


def _relation(big: shapely.Geometry, small: shapely.Geometry) -> str:
    """DE-9IM of two polygons, computed on `big` clipped to around `small` when `big` is large, so that
    neither a relate graph nor a prepared index of all of `big` is built (those take 170-200 MB on
    earth-seas-10m's polygon)."""
    if shapely.get_num_coordinates(big) > CLIP_MIN_VERTICES:
        x0, y0, x1, y1 = shapely.bounds(small)
        margin = max(x1 - x0, y1 - y0, 1.0) * 0.01
        big = shapely.clip_by_rect(big, x0 - margin, y0 - margin, x1 + margin, y1 + margin)
    return str(shapely.relate(big, small))


def union_parts(polygons: np.ndarray) -> shapely.Geometry:
    """The union of valid polygons: those whose interiors meet (or share a boundary line) are unioned
    group by group; polygons that touch only at points are kept as parts of one MultiPolygon."""
    if len(polygons) < 2:
        return polygons[0] if len(polygons) else shapely.Polygon()
    left, right = shapely.STRtree(polygons).query(polygons)
    pairs = left < right
    left, right = left[pairs], right[pairs]
    vertices = shapely.get_num_coordinates(polygons)
    swap = vertices[left] < vertices[right]
    big, small = np.where(swap, right, left), np.where(swap, left, right)
    group = np.arange(len(polygons))

    def root(i: int) -> int:
        while group[i] != i:
            group[i] = group[group[i]]
            i = group[i]
        return i

    for b, s in zip(big, small, strict=True):
        # disjoint ("FF*FF****") or touching at points only ("FF*F0****"): no union needed
        relation = _relation(polygons[b], polygons[s])
        if not (relation[:2] == "FF" and relation[3] == "F" and relation[4] in "F0"):
            group[root(b)] = root(s)
    roots = np.array([root(i) for i in range(len(polygons))])
    out = []
    for r in np.unique(roots):
        members = polygons[roots == r]
        out.extend(members if len(members) == 1 else _polygons_of(shapely.union_all(members)))
    return out[0] if len(out) == 1 else shapely.multipolygons(out)


def _union_repaired(holder: list[np.ndarray]) -> shapely.Geometry:
    """The parts (taken out of `holder`, so that the invalid originals are released once repaired)."""
    parts = holder.pop()
    bad = np.flatnonzero(~shapely.is_valid(parts))
    pieces = [parts[~np.isin(np.arange(len(parts)), bad)]]
    for i in bad:
        pieces.append(repair_polygon(parts[i]))
        parts[i] = None  # the invalid original is released
    del parts
    polygons = np.concatenate(pieces)
    del pieces
    return union_parts(polygons)


def repair(geom: shapely.Geometry) -> shapely.Geometry:
    """make_valid(method='structure') of an invalid geometry; polygons part by part (see the module)."""
    return repair_taken([geom])


def repair_taken(holder: list[shapely.Geometry]) -> shapely.Geometry:
    """repair() of the geometry taken out of `holder`: the caller keeps no reference, so the original is
    released as soon as its parts are copied out."""
    geom = holder.pop()
    if shapely.get_type_id(geom) not in (3, 6, 7):
        return shapely.make_valid(geom)
    parts = polygon_parts(geom)
    if parts is None:
        return shapely.make_valid(geom, method="structure", keep_collapsed=False)
    del geom  # the parts are copies
    holder = [parts]
    del parts
    return _union_repaired(holder)


# shapely type ids by family (0 Point, 1 LineString, 2 LinearRing, 3 Polygon, 4-6 Multi*, 7 collection)
FAMILY_TYPES = {"point": (0, 4), "line": (1, 2, 5), "polygon": (3, 6)}
_MULTI = {"point": shapely.multipoints, "line": shapely.multilinestrings, "polygon": shapely.multipolygons}


class Refused(Exception):
    """The feature cannot be loaded as asked: the answer's status and message say why."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def leaf_parts(geom: shapely.Geometry) -> np.ndarray:
    """The single, non-empty parts of a geometry, collections and Multi* unpacked at any depth."""
    parts = shapely.get_parts(geom)
    while len(parts) and (shapely.get_type_id(parts) >= 4).any():
        parts = shapely.get_parts(parts)
    return parts[~shapely.is_empty(parts)]


def family_of(parts: np.ndarray) -> str | None:
    """The one family of these single parts; Refused("mixed") when they mix families."""
    ids = set(shapely.get_type_id(parts).tolist())
    found = sorted(f for f, types in FAMILY_TYPES.items() if ids & set(types))
    if len(found) > 1:
        raise Refused("mixed", " and ".join(found))
    return found[0] if found else None


def as_multi(geom: shapely.Geometry, family: str) -> shapely.Geometry | None:
    """The geometry's parts of `family` as one Multi* (None when none survives); the geometry itself when
    it is one already (each copy of a huge feature counts against the memory limit)."""
    type_id = int(shapely.get_type_id(geom))
    if type_id in FAMILY_TYPES[family]:
        return geom if type_id >= 4 else _MULTI[family]([geom])
    parts = leaf_parts(geom)
    del geom
    parts = parts[np.isin(shapely.get_type_id(parts), FAMILY_TYPES[family])]
    return _MULTI[family](parts) if len(parts) else None


def reprojected(geom: shapely.Geometry, crs: str) -> shapely.Geometry:
    from pyproj import CRS, Transformer

    t = Transformer.from_crs(CRS.from_user_input(crs), CRS.from_epsg(4326), always_xy=True)

    def _xy(coords: np.ndarray) -> np.ndarray:
        x, y = t.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    out = shapely.transform(geom, _xy)
    if not np.isfinite(shapely.bounds(out)).all():
        raise Refused("unprojectable", "its coordinates fall outside the projection's area of use")
    return out


def nan_vertex_rows(geoms: np.ndarray) -> np.ndarray:
    """Which geometries have a NaN vertex (GEOS leaves it out of their bounds). A NaN vertex makes a line's
    or a ring's length NaN (no copy of the coordinates); points, which have no length, are few bytes each.
    Here for the child and for the worker's batches (geometry.py)."""
    found = np.isnan(shapely.length(geoms))
    points = np.flatnonzero(np.isin(shapely.get_type_id(geoms), (0, 4)))  # Point, MultiPoint
    if len(points):
        coords, rows = shapely.get_coordinates(geoms[points], return_index=True)
        found[points[np.unique(rows[np.isnan(coords).any(axis=1)])]] = True
    return found


def prepare(data: bytes | bytearray, request: dict, answer: dict) -> bytes:
    """The feature's prepared WKB (empty when nothing is loaded); `answer` gets the status and counts.

    request: mode ("repair", "keep", "fail", or "unchecked": no validity check, stage 2 checks),
    known_invalid (the worker checked it), crs (to reproject from), simplify_tolerance,
    preserve_topology, quantize_grid."""
    try:
        geom = shapely.from_wkb(data)
    except (shapely.errors.GEOSException, NotImplementedError, ValueError) as exc:
        raise Refused("undecodable", str(exc)) from None
    del data
    if geom is None or shapely.is_empty(geom):
        answer["status"] = "null"
        return b""
    answer["source_bounds"] = [float(v) for v in shapely.bounds(geom)]
    if nan_vertex_rows(np.array([geom]))[0]:  # GEOS leaves it out of the bounds; the worker refuses NaN bounds
        answer["source_bounds"] = [float("nan")] * 4
    if shapely.has_z(geom) or shapely.has_m(geom):
        answer["z_dropped"] = int(shapely.has_z(geom))
        geom = shapely.force_2d(geom)
    if shapely.get_type_id(geom) == 7:
        answer["collection_unpacked"] = 1
        parts = leaf_parts(geom)
        del geom
        family = family_of(parts)
        if family is None:
            answer["status"] = "collapsed"
            return b""
        geom = _MULTI[family](parts)
        del parts
    else:
        family = family_of(np.array([geom]))
    answer["family"] = family
    if request.get("crs"):
        geom = reprojected(geom, request["crs"])
    if request.get("simplify_tolerance"):
        geom = shapely.simplify(geom, request["simplify_tolerance"], request.get("preserve_topology", True))
    if request.get("quantize_grid"):
        geom = shapely.set_precision(geom, request["quantize_grid"])
    mode = request.get("mode", "repair")
    if mode != "unchecked" and (request.get("known_invalid") or not shapely.is_valid(geom)):
        if mode == "fail":
            raise Refused("invalid", str(shapely.is_valid_reason(geom)))
        if mode == "keep":
            answer["invalid_kept"] = 1
        else:
            holder = [geom]
            del geom
            geom = repair_taken(holder)
            answer["repaired"] = 1
    multi = as_multi(geom, family)
    del geom
    if multi is None:
        answer["status"] = "collapsed"
        return b""
    answer["status"] = "ok"
    return shapely.to_wkb(multi)


def main() -> int:
    limit_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    if limit_mb > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))
    answer: dict = {}
    body = b""
    try:
        request = json.loads(sys.stdin.buffer.readline())
        body = prepare(sys.stdin.buffer.read(), request, answer)
    except MemoryError:
        answer["status"] = "memory"
    except Refused as exc:
        answer |= {"status": exc.status, "message": str(exc)}
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which names the feature
        # GEOS reports a failed allocation as a GEOSException carrying std::bad_alloc
        bad_alloc = "bad_alloc" in str(exc)
        answer |= {"status": "memory"} if bad_alloc else {"status": "error", "message": f"{type(exc).__name__}: {exc}"}
    answer |= {"peak_kb": peak_kb(), "wkb_bytes": len(body)}
    out = sys.stdout.buffer
    out.write(json.dumps(answer).encode() + b"\n")
    out.write(body)
    out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
