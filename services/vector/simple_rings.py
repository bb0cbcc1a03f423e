"""Proof, without GEOS, that small polygons without holes are valid.

GEOS decodes and checks polygons one at a time (from_wkb + is_valid: about 3.7 µs for an 8-vertex
polygon here, the largest share of a worker's time on a GeoPackage of small polygons). A polygon
with one ring and no holes is valid when its ring is closed, has at least four points and does not
cross or touch itself. This module reads the rings straight out of the WKB buffer and tests every
pair of segments of every ring at once with numpy.

It answers "proven valid" or "not proven", never "invalid": holes, several parts, repeated or
collinear consecutive points, anything within rounding distance of touching and rings of more than
MAX_SEGMENTS segments are left to GEOS, which then decodes, checks and repairs them as before.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pyarrow as pa

from services.vector.ewkb import wkb_layout

MAX_SEGMENTS = 32  # pairs grow with the square of a ring's length; longer rings go to GEOS
PAIRS_PER_PASS = 1 << 18  # ring-segment pairs tested per numpy pass (bounds the scratch memory)
# An orientation sign is trusted when the determinant exceeds this share of its terms' magnitudes:
# thousands of times the rounding error of a 2x2 determinant of differences (about 3.3e-16).
ORIENTATION_MARGIN = 1e-12
_POLYGON, _MULTIPOLYGON = 3, 6


def _uint32(data: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Little-endian uint32 values at arbitrary byte offsets."""
    b = data[at[:, None] + np.arange(4)].astype(np.int64)
    return b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16) | (b[:, 3] << 24)


def _single_ring(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, types: np.ndarray):
    """(rows, offset of their first coordinate, point count) of the values that hold exactly one
    polygon with exactly one ring, with no bytes before or after it."""
    rows = np.flatnonzero((types == _POLYGON) | (types == _MULTIPOLYGON))
    rows = rows[lengths[rows] >= 13]
    starts, lengths, types = starts[rows], lengths[rows], types[rows]
    multi = types == _MULTIPOLYGON
    ok = np.ones(len(rows), dtype=bool)
    if multi.any():  # one part, itself a little-endian 2D polygon: its header is 9 bytes further on
        m = np.flatnonzero(multi)
        ok[m] = lengths[m] >= 22
        m = m[ok[m]]
        ok[m] = (_uint32(data, starts[m] + 5) == 1) & (data[starts[m] + 9] == 1) & (_uint32(data, starts[m] + 10) == 3)
    polygon_at = starts + np.where(multi, 9, 0)
    rows, polygon_at, lengths, starts = rows[ok], polygon_at[ok], lengths[ok], starts[ok]
    rings = _uint32(data, polygon_at + 5)
    points = _uint32(data, polygon_at + 9)
    coords_at = polygon_at + 13
    exact = (rings == 1) & (points >= 4) & (points <= MAX_SEGMENTS + 1) & (coords_at + 16 * points == starts + lengths)
    return rows[exact], coords_at[exact], points[exact]


@lru_cache(maxsize=MAX_SEGMENTS + 1)
def _pairs(segments: int) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (i, j) of segments of a closed ring that share no point."""
    i, j = np.triu_indices(segments, k=2)
    far = ~((i == 0) & (j == segments - 1))  # the first and last segments meet at the closing point
    return i[far], j[far]


def _sign(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Sign of left - right: +1 or -1 where certain, 0 where rounding could flip it."""
    det = left - right
    certain = np.abs(det) > ORIENTATION_MARGIN * (np.abs(left) + np.abs(right))
    return np.where(certain, np.sign(det), 0.0)


def _turns(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Sign of the turn from each edge (vectors as (segments, k) arrays) to the next, 0 if uncertain."""
    return _sign(dx * np.roll(dy, -1, axis=0), dy * np.roll(dx, -1, axis=0))


def _convex(dx: np.ndarray, dy: np.ndarray, turn: np.ndarray) -> np.ndarray:
    """Rings (edge vectors as (segments, k) arrays) that turn the same way at every vertex and wind
    once: such a ring is a convex polygon's boundary, hence simple. Winding once shows as the edges'
    direction crossing the horizontal exactly twice (a pentagram's crosses it four times)."""
    one_way = (turn != 0).all(axis=0) & (turn == turn[0]).all(axis=0)
    up = np.sign(dy)
    up = np.where(up == 0, np.roll(up, -1, axis=0), up)  # a horizontal edge sits between two that are not
    return one_way & ((up != np.roll(up, 1, axis=0)).sum(axis=0) == 2)


def _no_crossings(x: np.ndarray, y: np.ndarray, dx: np.ndarray, dy: np.ndarray, turn: np.ndarray) -> np.ndarray:
    """Rings ((points, k) arrays) in which no two segments meet except neighbours at their shared
    point, and neighbours never fold back along one line: every pair of segments is tested."""
    ax, ay, bx, by = x[:-1], y[:-1], x[1:], y[1:]
    i, j = _pairs(len(dx))
    lox, hix, loy, hiy = np.minimum(ax, bx), np.maximum(ax, bx), np.minimum(ay, by), np.maximum(ay, by)
    apart = (hix[i] < lox[j]) | (hix[j] < lox[i]) | (hiy[i] < loy[j]) | (hiy[j] < loy[i])

    def side(s: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:  # of segment s, for points p
        return _sign(dx[s] * (py - ay[s]), dy[s] * (px - ax[s]))

    o1, o2 = side(i, ax[j], ay[j]), side(i, bx[j], by[j])
    o3, o4 = side(j, ax[i], ay[i]), side(j, bx[i], by[i])
    one_side = ((o1 != 0) & (o1 == o2)) | ((o3 != 0) & (o3 == o4))
    return (turn != 0).all(axis=0) & (apart | one_side).all(axis=0)


def _simple_rings(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which closed rings ((points, k) arrays) are certainly simple; the cheap convex test first."""
    dx, dy = np.diff(x, axis=0), np.diff(y, axis=0)
    turn = _turns(dx, dy)
    simple = _convex(dx, dy, turn)
    rest = np.flatnonzero(~simple)
    if len(rest):
        simple[rest] = _no_crossings(x[:, rest], y[:, rest], dx[:, rest], dy[:, rest], turn[:, rest])
    return simple


def _coordinates(data: np.ndarray, first: np.ndarray, byte: np.ndarray) -> np.ndarray:
    """The coordinate bytes of rings of one length, one row each: a strided copy when they lie at equal
    intervals in the buffer (values of one length, one after another), else gathered byte by byte."""
    step = np.diff(first)
    if len(first) > 1 and (step == step[0]).all() and step[0] >= len(byte):
        rows = np.lib.stride_tricks.as_strided(
            data[first[0] :], shape=(len(first), len(byte)), strides=(int(step[0]), 1), writeable=False
        )
        return np.ascontiguousarray(rows)
    return np.ascontiguousarray(data[first[:, None] + byte])


def proven_valid(wkb: pa.Array, types: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows proven valid, their bounds minx, miny, maxx, maxy) of a batch of plain little-endian 2D
    WKB values whose type codes are `types`; bounds are NaN for the rows not proven."""
    n = len(wkb)
    offsets, data = wkb_layout(wkb)
    proven = np.zeros(n, dtype=bool)
    bounds = np.full((n, 4), np.nan)
    rows, coords_at, points = _single_ring(data, offsets[:-1], np.diff(offsets), types)
    for count in np.unique(points):
        group, at = rows[points == count], coords_at[points == count]
        per_pass = max(1, PAIRS_PER_PASS // max(1, len(_pairs(int(count) - 1)[0])))
        byte = np.arange(16 * int(count))
        for s in range(0, len(group), per_pass):
            g, first = group[s : s + per_pass], at[s : s + per_pass]
            xy = _coordinates(data, first, byte).view("<f8").reshape(len(g), int(count) * 2)
            x, y = np.ascontiguousarray(xy[:, 0::2].T), np.ascontiguousarray(xy[:, 1::2].T)
            ok = np.isfinite(xy).all(axis=1) & (x[0] == x[-1]) & (y[0] == y[-1])
            ok[ok] = _simple_rings(x[:, ok], y[:, ok])
            x, y = x[:, ok], y[:, ok]
            proven[g[ok]] = True
            bounds[g[ok]] = np.column_stack([x.min(axis=0), y.min(axis=0), x.max(axis=0), y.max(axis=0)])
    return proven, bounds
