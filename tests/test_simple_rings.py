"""Polygons proven valid without GEOS: never a wrong proof, the same output as the GEOS path."""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from core.errors import PermanentTaskError
from services.vector.geometry import (
    GeometryOptions,
    GeometryStats,
    Reprojector,
    _plain_wkb_types,
    prepare_geometries,
)
from services.vector.simple_rings import MAX_SEGMENTS, proven_valid


def arrow_wkb(geoms) -> pa.Array:
    return pa.array(list(shapely.to_wkb(np.array(geoms, dtype=object))), type=pa.binary())


def prove(geoms) -> tuple[np.ndarray, np.ndarray]:
    wkb = arrow_wkb(geoms)
    return proven_valid(wkb, _plain_wkb_types(wkb))


def random_polygons(seed: int, count: int) -> list:
    """Random rings (mostly self-crossing), star-shaped rings (valid), rings on a 3x3 grid (touching,
    collinear and repeated points) and tiny rings far from the origin (rounding), a third as Multi*."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n, kind = int(rng.integers(3, 14)), int(rng.integers(0, 4))
        if kind == 0:
            pts = rng.random((n, 2))
        elif kind == 1:
            ang = np.sort(rng.random(n)) * 2 * np.pi
            pts = np.c_[np.cos(ang), np.sin(ang)] * (0.5 + rng.random(n))[:, None]
        elif kind == 2:
            pts = rng.integers(0, 3, (n, 2)).astype(float)
        else:
            ang = np.sort(rng.random(n)) * 2 * np.pi
            pts = np.c_[np.cos(ang), np.sin(ang)] * 1e-9 + 1e6
        poly = Polygon(np.vstack([pts, pts[:1]]))
        out.append(MultiPolygon([poly]) if rng.random() < 0.3 else poly)
    return out


def test_no_invalid_polygon_is_ever_proven_valid():
    geoms = np.array(random_polygons(seed=7, count=20_000), dtype=object)
    proven, bounds = prove(geoms)
    valid = shapely.is_valid(geoms)
    assert not (proven & ~valid).any(), [shapely.to_wkt(g) for g in geoms[proven & ~valid][:3]]
    assert proven.sum() > 0.6 * valid.sum()  # most valid ones are proven: the shortcut is used
    np.testing.assert_array_equal(bounds[proven], shapely.bounds(geoms[proven]))
    assert np.isnan(bounds[~proven]).all()


BOWTIE = Polygon([(0, 0), (2, 2), (2, 0), (0, 2), (0, 0)])
TOUCHING = Polygon([(0, 0), (2, 0), (1, 1), (2, 2), (0, 2), (1, 1), (0, 0)])  # pinched at (1, 1)
SPIKE = Polygon([(0, 0), (2, 0), (2, 2), (1, 2), (1, 3), (1, 2), (0, 2), (0, 0)])
PENTAGRAM = Polygon([(np.cos(a), np.sin(a)) for a in np.arange(5) * 4 * np.pi / 5])  # turns one way, winds twice
REPEATED = Polygon([(0, 0), (1, 0), (1, 0), (1, 1), (0, 1), (0, 0)])  # valid, but left to GEOS
STRAIGHT = Polygon([(0, 0), (1, 0), (2, 0), (2, 1), (0, 1), (0, 0)])  # valid, collinear: left to GEOS
NEAR_TOUCH = Polygon([(0, 0), (3, 1), (3, 3), (1.5, 0.5 + 1e-16), (0, 3), (0, 0)])  # within rounding of a touch
HOLED = Polygon([(0, 0), (4, 0), (4, 4), (0, 4)], [[(1, 1), (2, 1), (2, 2), (1, 2)]])
TWO_PARTS = MultiPolygon([box(0, 0, 1, 1), box(2, 2, 3, 3)])
LONG = Polygon([(np.cos(a), np.sin(a)) for a in np.linspace(0, 2 * np.pi, MAX_SEGMENTS + 2)[:-1]])


@pytest.mark.parametrize(
    "geom", [BOWTIE, TOUCHING, SPIKE, PENTAGRAM, REPEATED, STRAIGHT, NEAR_TOUCH, HOLED, TWO_PARTS, LONG],
    ids=["bowtie", "touching", "spike", "pentagram", "repeated", "straight", "near-touch", "holed", "two-parts",
         "long"],
)
def test_left_to_geos(geom):
    proven, _ = prove([box(0, 0, 1, 1), geom])
    assert proven.tolist() == [True, False]


def test_an_unclosed_ring_is_not_proven():
    coords = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0), (0.0, 0.5)]  # shapely would close it
    value = struct.pack("<BIII", 1, 3, 1, len(coords)) + b"".join(struct.pack("<dd", *c) for c in coords)
    wkb = pa.array([value], type=pa.binary())
    assert proven_valid(wkb, _plain_wkb_types(wkb))[0].tolist() == [False]


def prepared(values, source_crs=None) -> tuple[pa.Array, GeometryStats]:
    stats = GeometryStats()
    out = prepare_geometries(values, 0, "test", Reprojector(source_crs, "test"), GeometryOptions(), stats)
    return out.wkb, stats


def test_the_proven_batch_gives_the_bytes_of_the_geos_path():
    geoms = [shapely.affinity.rotate(box(i, i, i + 0.5, i + 0.2), i * 7) for i in range(50)]
    geoms += [MultiPolygon([box(3, 3, 4, 4)]), Polygon([(0, 0), (3, 0), (3, 1), (1, 1), (1, 3), (0, 3), (0, 0)])]
    fast, stats_fast = prepared(arrow_wkb(geoms))
    slow, stats_slow = prepared(np.asarray(shapely.to_wkb(np.array(geoms, dtype=object)), dtype=object))
    assert fast.to_pylist() == slow.to_pylist()
    assert stats_fast.as_dict() == stats_slow.as_dict() and stats_fast.families == {"polygon"}


def test_one_invalid_polygon_sends_the_batch_through_geos_repair():
    wkb, stats = prepared(arrow_wkb([box(0, 0, 1, 1), BOWTIE]))
    assert stats.repaired == 1
    assert shapely.is_valid(shapely.from_wkb(np.array(wkb.to_pylist(), dtype=object))).all()


def test_degrees_are_still_checked_without_geos():
    with pytest.raises(PermanentTaskError, match="not longitudes/latitudes"):
        prepared(arrow_wkb([box(0, 0, 1, 1), box(500_000, 4_000_000, 500_100, 4_000_100)]))
