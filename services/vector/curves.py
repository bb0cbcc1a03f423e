"""Curved geometries made linear, as GDAL strokes them (ogr2ogr -nlt CONVERT_TO_LINEAR).

GEOS (and so shapely and PostGIS' geometry checks here) holds only straight segments, while GeoPackage,
GML, FlatGeobuf or WKT can hold ISO SQL/MM curves: CircularString (8), CompoundCurve (9), CurvePolygon
(10), MultiCurve (11) and MultiSurface (12), with their Z/M variants (ISO 1000/2000/3000 offsets, or the
EWKB high bits). Each becomes its linear counterpart (LineString, LineString, Polygon, MultiLineString,
MultiPolygon), so the geometry family follows: curves are lines, curve polygons are polygons.

Arcs are stroked by GDAL's rule, so a loaded table matches what ogr2ogr writes, vertex for vertex:
- an arc is given by a start, a middle and an end point. It is always stroked from the greater endpoint
  (x, then y) to the smaller one and reversed where needed, so an arc shared by two rings in opposite
  directions gives the same vertices;
- start == end (and middle != start) is a full circle whose diameter runs from start to middle,
  counter-clockwise; three points with a (scale-normalised) cross product under 1e-8 are no arc: the
  three points are kept as two straight segments;
- the sweep is cut into int(sweep / 4 degrees + 0.5) equal steps (OGR_ARC_STEPSIZE's default), then
  raised to an odd number of at least 7 (GDAL's default ADD_INTERMEDIATE_POINT=STEALTH constraint);
  Z is interpolated along the angle, M is dropped (GDAL drops it too). GDAL also hides the middle
  point's angle in the lowest byte of some vertices (so it can rebuild the arc); that is not geometry
  and is not reproduced (a difference of at most a few hundred units in the last place);
- a CompoundCurve, or a CircularString of several arcs, joins its pieces without repeating the point
  they share.

Bounded: the number of steps depends only on the sweep angle, never on the radius, so an arc has at most
MAX_STEPS_PER_ARC + 1 vertices (92 at the 4-degree step), and a feature whose linear form would exceed
MAX_VERTICES_PER_FEATURE fails, naming it. A CircularString with an even number of points (or fewer
than 3) is malformed and fails too.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import pyarrow as pa

from services.vector.ewkb import wkb_layout

ARC_STEP_DEGREES = 4.0  # GDAL's default OGR_ARC_STEPSIZE
MIN_ARC_STEP_DEGREES = 0.01  # GDAL's floor for the step
MAX_STEPS_PER_ARC = 9_999  # odd; caps a step under 0.036 degree (never reached at the default: at most 91)
MAX_VERTICES_PER_FEATURE = 5_000_000
MAX_NESTING = 32  # collections within collections: GDAL's WKB reader stops at the same depth
COLLINEAR = 1e-8  # GDAL's threshold on the cross product of the normalised deltas

POINT, LINESTRING, POLYGON, MULTIPOINT, MULTILINESTRING, MULTIPOLYGON, COLLECTION = range(1, 8)
CIRCULARSTRING, COMPOUNDCURVE, CURVEPOLYGON, MULTICURVE, MULTISURFACE = range(8, 13)
CURVED = frozenset(range(CIRCULARSTRING, MULTISURFACE + 1))
NAMES = {
    CIRCULARSTRING: "CircularString",
    COMPOUNDCURVE: "CompoundCurve",
    CURVEPOLYGON: "CurvePolygon",
    MULTICURVE: "MultiCurve",
    MULTISURFACE: "MultiSurface",
    COLLECTION: "GeometryCollection",
}
_LINEAR_OF = {
    CIRCULARSTRING: LINESTRING,
    COMPOUNDCURVE: LINESTRING,
    CURVEPOLYGON: POLYGON,
    MULTICURVE: MULTILINESTRING,
    MULTISURFACE: MULTIPOLYGON,
}
_EWKB_Z, _EWKB_M, _EWKB_SRID = 0x80000000, 0x40000000, 0x20000000


class CurveError(ValueError):
    """A curved geometry that cannot be made linear (malformed, or too many vertices)."""


class _TooDeep(CurveError):
    """Collections nested beyond MAX_NESTING: refused wherever they are (GEOS would read curves inside)."""


# ---------------------------------------------------------------------------------------------- arcs


def _circle(x0: float, y0: float, x1: float, y1: float, x2: float, y2: float) -> tuple[float, ...] | None:
    """(cx, cy, r, a0, a1, a2) of the circle through three points, angles in radians increasing along
    the arc's direction; None when the points make no arc (aligned, or start == middle == end)."""
    if not all(map(math.isfinite, (x0, y0, x1, y1, x2, y2))):
        return None
    if x0 == x2 and y0 == y2:  # closed: a full circle, start-middle is its diameter
        if x0 == x1 and y0 == y1:
            return None
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        a0 = math.atan2(y0 - cy, x0 - cx)
        return cx, cy, _distance(x0 - cx, y0 - cy), a0, a0 + math.pi, a0 + 2 * math.pi
    # deltas scaled to at most 1, so large coordinates do not swamp the cross product
    scale = max(abs(x1 - x0), abs(y1 - y0), abs(x2 - x1), abs(y2 - y1))
    inv = 1.0 / scale
    ux, uy, vx, vy = (x1 - x0) * inv, (y1 - y0) * inv, (x2 - x1) * inv, (y2 - y1) * inv
    cross = ux * vy - vx * uy
    if not abs(cross) >= COLLINEAR:  # also NaN
        return None
    # the center is on both chords' perpendicular bisectors: u.c = u.mid01, v.c = v.mid12
    bu = ux * ((x0 + x1) * inv) + uy * ((y0 + y1) * inv)
    bv = vx * ((x1 + x2) * inv) + vy * ((y1 + y2) * inv)
    cx = 0.5 * scale * (bu * vy - bv * uy) / cross
    cy = 0.5 * scale * (bv * ux - bu * vx) / cross
    a0 = math.atan2((y0 - cy) * inv, (x0 - cx) * inv)
    a1 = math.atan2((y1 - cy) * inv, (x1 - cx) * inv)
    a2 = math.atan2((y2 - cy) * inv, (x2 - cx) * inv)
    turn = 2 * math.pi
    if cross < 0:  # clockwise: angles decrease along the arc
        a1 = a1 - turn if a1 > a0 else a1
        a2 = a2 - turn if a2 > a1 else a2
    else:
        a1 = a1 + turn if a1 < a0 else a1
        a2 = a2 + turn if a2 < a1 else a2
    return cx, cy, _distance(x0 - cx, y0 - cy), a0, a1, a2


def _distance(dx: float, dy: float) -> float:
    """sqrt(dx² + dy²) as GDAL rounds it (math.hypot rounds differently, and an arc of huge radius
    magnifies the last bit)."""
    return math.sqrt(dx * dx + dy * dy)


def arc_steps(sweep: float, step_degrees: float = ARC_STEP_DEGREES) -> int:
    """Equal steps an arc of `sweep` radians is cut into: the nearest count to sweep/step, raised to an
    odd number of at least 7, at most MAX_STEPS_PER_ARC."""
    step = math.radians(max(step_degrees, MIN_ARC_STEP_DEGREES))
    n = int(abs(sweep) / step + 0.5)
    n = 7 if n < 7 else n + (n - 7) % 2
    return min(n, MAX_STEPS_PER_ARC)


def stroke_arc(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, step_degrees: float = ARC_STEP_DEGREES) -> np.ndarray:
    """Vertices (rows of x, y[, z]) of the arc start p0, through p1, to p2, both ends included."""
    if p0[0] < p2[0] or (p0[0] == p2[0] and p0[1] < p2[1]):  # one direction for both ways round
        return stroke_arc(p2, p1, p0, step_degrees)[::-1]
    circle = _circle(float(p0[0]), float(p0[1]), float(p1[0]), float(p1[1]), float(p2[0]), float(p2[1]))
    if circle is None:
        return np.vstack([p0, p1, p2])
    cx, cy, r, a0, _, a2 = circle
    n = arc_steps(a2 - a0, step_degrees)
    # angles as GDAL steps them (one addition after the other, up to 1e-8 radian short of the end), so
    # that arcs of huge radius, where the last bit of an angle moves a vertex, come out the same
    step = math.copysign(abs((a2 - a0) / n), a2 - a0)
    angles = np.add.accumulate(np.concatenate([[a0], np.full(n + 1, step)]))[1:]
    angles = angles[(angles - a2) * math.copysign(1.0, step) < -1e-8]
    out = np.empty((len(angles) + 2, len(p0)))
    out[0], out[-1] = p0, p2
    out[1:-1, 0] = cx + r * np.cos(angles)
    out[1:-1, 1] = cy + r * np.sin(angles)
    if len(p0) > 2:
        out[1:-1, 2] = p0[2] + (p2[2] - p0[2]) * (angles - a0) / (a2 - a0)
    return out


# ------------------------------------------------------------------------------------------ WKB in


class _Reader:
    """Walks one WKB value (either byte order, ISO or EWKB dimension flags), into nested tuples
    (linear type, payload); coordinates keep x, y and Z (when the top-level geometry has Z)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.dims = data, 0, 0  # dims: 2 or 3, fixed by the outermost header
        self.vertices = 0
        self.curved = False  # whether any curve was met
        self.depth = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise CurveError("its WKB is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def _header(self) -> tuple[str, int, int]:
        order = self._take(1)[0]
        if order not in (0, 1):
            raise CurveError(f"its WKB has an invalid byte order ({order})")
        endian = "<" if order == 1 else ">"
        (code,) = struct.unpack(endian + "I", self._take(4))
        has_z, has_m = bool(code & _EWKB_Z), bool(code & _EWKB_M)
        if code & _EWKB_SRID:
            self._take(4)
        code &= 0x0FFFFFFF
        kind, iso = code % 1000, code // 1000
        has_z, has_m = has_z or iso in (1, 3), has_m or iso in (2, 3)
        if iso > 3 or not POINT <= kind <= MULTISURFACE:
            raise CurveError(f"its WKB geometry type {code} cannot be made linear")
        return endian, kind, 2 + has_z + has_m + (has_z << 4)  # low bits: ordinates; bit 4: Z present

    def _count(self, endian: str) -> int:
        (n,) = struct.unpack(endian + "I", self._take(4))
        return n

    def _points(self, endian: str, layout: int, n: int) -> np.ndarray:
        width = layout & 0xF
        raw = np.frombuffer(self._take(8 * width * n), dtype=endian + "f8").reshape(n, width)
        out = np.zeros((n, self.dims))
        out[:, :2] = raw[:, :2]
        if self.dims == 3 and layout & 0x10:
            out[:, 2] = raw[:, 2]
        return out

    def geometry(self, allowed: frozenset[int] | None = None) -> tuple[int, Any]:
        endian, kind, layout = self._header()
        if not self.dims:
            self.dims = 3 if layout & 0x10 else 2
        self.curved = self.curved or kind in CURVED
        if allowed is not None and kind not in allowed:
            raise CurveError(f"it holds a geometry of WKB type {kind} where only types {sorted(allowed)} may be")
        if kind == POINT:
            pts = self._points(endian, layout, 1)
            return POINT, pts[:0] if np.isnan(pts[0, :2]).all() else pts
        if kind == LINESTRING:
            return LINESTRING, self._points(endian, layout, self._count(endian))
        if kind == CIRCULARSTRING:
            return LINESTRING, self._circular(self._points(endian, layout, self._count(endian)))
        if kind in (POLYGON, CURVEPOLYGON):
            n = self._count(endian)
            if kind == POLYGON:
                return POLYGON, [self._points(endian, layout, self._count(endian)) for _ in range(n)]
            return POLYGON, [self._curve() for _ in range(n)]
        parts = self._count(endian)
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise _TooDeep(f"its collections are nested more than {MAX_NESTING} deep")
        if kind == COMPOUNDCURVE:
            linear = LINESTRING, self._joined([self.geometry(_SEGMENTS)[1] for _ in range(parts)])
        else:
            linear = _LINEAR_OF.get(kind, kind), [self.geometry(_CHILDREN.get(kind)) for _ in range(parts)]
        self.depth -= 1
        return linear

    def _curve(self) -> np.ndarray:
        """A ring of a CurvePolygon: any curve, as its vertices."""
        return self.geometry(_CURVES)[1]

    def _circular(self, pts: np.ndarray) -> np.ndarray:
        if len(pts) == 0:
            return pts
        if len(pts) < 3 or len(pts) % 2 == 0:
            raise CurveError(f"it has a CircularString of {len(pts)} points (arcs need an odd number, at least 3)")
        arcs = []
        for i in range(0, len(pts) - 2, 2):
            arc = stroke_arc(pts[i], pts[i + 1], pts[i + 2])
            self.vertices += len(arc)
            if self.vertices > MAX_VERTICES_PER_FEATURE:
                raise CurveError(f"its arcs stroke into more than {MAX_VERTICES_PER_FEATURE:,} vertices")
            arcs.append(arc if i == 0 else arc[1:])
        return np.vstack(arcs)

    @staticmethod
    def _joined(pieces: list[np.ndarray]) -> np.ndarray:
        """A CompoundCurve's pieces end to end, each after the first without its first point (the one it
        shares with the previous piece)."""
        pieces = [p for p in pieces if len(p)]
        if not pieces:
            return np.zeros((0, 2))
        return np.vstack([pieces[0]] + [p[1:] for p in pieces[1:]])


_SEGMENTS = frozenset({LINESTRING, CIRCULARSTRING})
_CURVES = frozenset({LINESTRING, CIRCULARSTRING, COMPOUNDCURVE})
_CHILDREN: dict[int, frozenset[int] | None] = {
    MULTIPOINT: frozenset({POINT}),
    MULTILINESTRING: frozenset({LINESTRING}),
    MULTIPOLYGON: frozenset({POLYGON}),
    MULTICURVE: _CURVES,
    MULTISURFACE: frozenset({POLYGON, CURVEPOLYGON}),
    COLLECTION: None,
}


# ----------------------------------------------------------------------------------------- WKB out


def _write(kind: int, payload: Any, z: bool, out: list[bytes]) -> None:
    """Little-endian ISO WKB (type + 1000 with Z) of one parsed geometry."""
    out.append(struct.pack("<BI", 1, kind + (1000 if z else 0)))
    if kind == POINT:
        coords = payload if len(payload) else np.full((1, 3 if z else 2), math.nan)  # empty: NaN coordinates
        out.append(np.ascontiguousarray(coords, dtype="<f8").tobytes())
    elif kind == LINESTRING:
        out.append(struct.pack("<I", len(payload)) + np.ascontiguousarray(payload, dtype="<f8").tobytes())
    elif kind == POLYGON:
        out.append(struct.pack("<I", len(payload)))
        for ring in payload:
            out.append(struct.pack("<I", len(ring)) + np.ascontiguousarray(ring, dtype="<f8").tobytes())
    else:
        out.append(struct.pack("<I", len(payload)))
        for child_kind, child in payload:
            _write(child_kind, child, z, out)


# ------------------------------------------------------------------------------------------ entries


def kind_of(value: bytes) -> int | None:
    """The base WKB type (1-17) of a value's outermost header, or None when it has none."""
    if len(value) < 5 or value[0] not in (0, 1):
        return None
    (code,) = struct.unpack("<I" if value[0] == 1 else ">I", value[1:5])
    return (code & 0x0FFFFFFF) % 1000


def linearize(value: bytes) -> bytes | None:
    """Linear WKB of a geometry holding curves (anywhere, also inside a GeometryCollection); None when it
    holds none. Raises CurveError for a malformed or unbounded one."""
    kind = kind_of(value)
    if kind not in CURVED and kind != COLLECTION:
        return None
    reader = _Reader(value)
    try:
        out_kind, payload = reader.geometry()
    except _TooDeep:
        raise
    except CurveError:
        if kind == COLLECTION and not reader.curved:  # not ours to judge: GEOS names the problem
            return None
        raise
    if not reader.curved:  # a collection of linear parts: left to the usual path
        return None
    if reader.pos != len(value):
        raise CurveError(f"its WKB has {len(value) - reader.pos} bytes past the geometry")
    out: list[bytes] = []
    _write(out_kind, payload, reader.dims == 3, out)
    return b"".join(out)


def _header_kinds(wkb: pa.Array) -> np.ndarray:
    """Base WKB type of each value's outermost header (0 for nulls and values too short to have one)."""
    n = len(wkb)
    offsets, data = wkb_layout(wkb)
    starts = offsets[:-1]
    ok = (np.diff(offsets) >= 5) & ~wkb.is_null().to_numpy(zero_copy_only=False)
    kinds = np.zeros(n, dtype=np.int64)
    if not ok.any():
        return kinds
    s = starts[ok]
    b = [data[s + k].astype(np.uint32) for k in range(1, 5)]
    little = (b[0] | b[1] << 8 | b[2] << 16 | b[3] << 24).astype(np.uint32)
    big = (b[3] | b[2] << 8 | b[1] << 16 | b[0] << 24).astype(np.uint32)
    code = np.where(data[s] == 1, little, big) & np.uint32(0x0FFFFFFF)
    kinds[ok] = code % 1000
    return kinds


class CurvedFeatureError(CurveError):
    """A CurveError tied to the row of its batch."""

    def __init__(self, row: int, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.row, self.kind, self.reason = row, kind, reason


def linearize_batch(wkb: Any) -> tuple[Any, int]:
    """(the batch's WKB with every curved geometry made linear, how many were): the batch itself when
    none is. Only values whose header is a curve or a collection are parsed."""
    if isinstance(wkb, pa.ChunkedArray):
        wkb = wkb.combine_chunks()
    if isinstance(wkb, pa.Array) and (pa.types.is_binary(wkb.type) or pa.types.is_large_binary(wkb.type)):
        candidates = np.flatnonzero(np.isin(_header_kinds(wkb), [*CURVED, COLLECTION]))
        if not len(candidates):
            return wkb, 0
        values = wkb.to_numpy(zero_copy_only=False).copy()
    else:
        values = np.array(wkb, dtype=object)
        kinds = [None if v is None else kind_of(bytes(v)) for v in values]
        candidates = [i for i, k in enumerate(kinds) if k in CURVED or k == COLLECTION]
    changed = 0
    for i in candidates:
        raw = bytes(values[i])
        try:
            linear = linearize(raw)
        except CurveError as exc:
            raise CurvedFeatureError(int(i), NAMES.get(kind_of(raw) or 0, "geometry"), str(exc)) from None
        if linear is not None:
            values[i] = linear
            changed += 1
    if not changed:
        return wkb, 0
    return pa.array(values, type=pa.binary()), changed
