"""The source's WKB reused and promoted to Multi* at the byte level gives exactly shapely's WKB."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import shapely
from shapely.geometry import LineString, MultiLineString, MultiPoint, MultiPolygon, Point, Polygon, box

from services.vector.geometry import (
    GeometryOptions,
    GeometryStats,
    Reprojector,
    _promoted_wkb,
    prepare_geometries,
)

HOLED = Polygon([(0, 0), (4, 0), (4, 4), (0, 4)], [[(1, 1), (2, 1), (2, 2), (1, 2)]])
CASES = {
    "polygons": [box(i, 0, i + 1, 1) for i in range(5)] + [HOLED, MultiPolygon([box(0, 0, 1, 1), box(2, 2, 3, 3)])],
    "lines": [LineString([(i, 0), (i + 1, 1), (i + 2, 0)]) for i in range(5)]
    + [MultiLineString([[(0, 0), (1, 1)], [(2, 2), (3, 3)]])],
    "points": [Point(i * 0.5, -i * 0.25) for i in range(5)] + [MultiPoint([(0, 0), (1, 1)])],
    "plain points": [Point(i * 0.5, -i * 0.25) for i in range(5)] + [Point(-180, 90), Point(180, -90)],
    "with nulls and empties": [box(0, 0, 1, 1), None, Polygon(), LineString([(0, 0), (1, 1)]), Point(3, 3)],
}


def run(wkb, geoms_count: int) -> tuple[np.ndarray, pa.Array, GeometryStats]:
    stats = GeometryStats()
    out = prepare_geometries(wkb, 0, "test", Reprojector(None, "test"), GeometryOptions(), stats)
    assert len(out.keep) == geoms_count
    return out.keep, out.wkb, stats


@pytest.mark.parametrize("name", list(CASES))
def test_fast_path_equals_the_shapely_path(name):
    geoms = np.array(CASES[name], dtype=object)
    wkb_values = shapely.to_wkb(geoms)  # little-endian ISO WKB, as GDAL hands it over
    arrow = pa.array(list(wkb_values), type=pa.binary())
    keep_fast, fast, stats_fast = run(arrow, len(geoms))
    keep_slow, slow, stats_slow = run(np.asarray(wkb_values, dtype=object), len(geoms))  # not Arrow: shapely path
    assert _promoted_wkb(arrow, keep_fast) is not None  # the fast path was taken
    assert (keep_fast == keep_slow).all()
    assert fast.to_pylist() == slow.to_pylist()  # byte for byte
    decoded = shapely.from_wkb(np.array(fast.to_pylist(), dtype=object))
    assert set(shapely.get_type_id(decoded)) <= {4, 5, 6}  # every one Multi*
    assert shapely.equals(decoded, shapely.from_wkb(np.array(slow.to_pylist(), dtype=object))).all()
    assert stats_fast.families == stats_slow.families and stats_fast.null_geometry == stats_slow.null_geometry


def test_big_endian_z_invalid_and_collections_take_the_shapely_path():
    bowtie = Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])
    cases = [
        pa.array(list(shapely.to_wkb(np.array([box(0, 0, 1, 1)]), byte_order=0)), pa.binary()),  # big-endian
        pa.array(list(shapely.to_wkb(np.array([Point(1, 2, 3)]))), pa.binary()),  # Z
        pa.array(list(shapely.to_wkb(np.array([bowtie]))), pa.binary()),  # invalid: repaired
        pa.array([shapely.to_wkb(shapely.GeometryCollection([Point(0, 0), Point(1, 1)]))], pa.binary()),
    ]
    expected = ["MultiPolygon", "MultiPoint", "MultiPolygon", "MultiPoint"]
    for arrow, kind in zip(cases, expected, strict=True):
        keep, out, _ = run(arrow, 1)
        geom = shapely.from_wkb(out.to_pylist()[0])
        assert keep.all() and geom.geom_type == kind and not shapely.has_z(geom) and geom.is_valid
        assert out.to_pylist()[0][0] == 1  # what the chunks hold is little-endian 2D WKB
    assert _promoted_wkb(cases[0], np.array([True])) is None


def test_plain_points_skip_geos_and_are_still_checked(monkeypatch):
    """A batch of plain 2D points is promoted without GEOS; an empty point (NaN coordinates) sends the batch
    through GEOS (which counts it as null), and coordinates that are not degrees still fail naming the feature."""
    points = pa.array(list(shapely.to_wkb(np.array([Point(1, 2), Point(-3.5, 4.25)]))), pa.binary())
    calls = []
    real_from_wkb = shapely.from_wkb
    with monkeypatch.context() as m:
        m.setattr(shapely, "from_wkb", lambda *a, **k: calls.append(1) or real_from_wkb(*a, **k))
        keep, out, stats = run(points, 2)
    assert not calls and keep.all() and stats.families == {"point"}
    assert [shapely.from_wkb(v).wkt for v in out.to_pylist()] == ["MULTIPOINT ((1 2))", "MULTIPOINT ((-3.5 4.25))"]

    with_empty = pa.array(list(shapely.to_wkb(np.array([Point(1, 2), shapely.from_wkt("POINT EMPTY")]))), pa.binary())
    keep, out, stats = run(with_empty, 2)
    assert list(keep) == [True, False] and stats.null_geometry == 1

    far = pa.array(list(shapely.to_wkb(np.array([Point(1, 2), Point(500000, 4649776)]))), pa.binary())
    with pytest.raises(Exception, match="feature 1 has bounds"):
        run(far, 2)
