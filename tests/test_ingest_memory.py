"""A single huge feature and the worker's memory: the repair child's address space is limited
(REPAIR_MEMORY_MB), its peak is reported in the job result, a feature that needs more fails the job at once
naming it, and the worker goes on serving. Real worker processes, their resident memory sampled with psutil."""

from __future__ import annotations

import hashlib
import re
import threading
import time

import numpy as np
import psutil
import pyarrow as pa
import pyogrio
import pytest
import shapely
import shapely.affinity
from shapely.geometry import box

from core.errors import PermanentTaskError
from services.vector.repair import HUGE_FEATURE_BYTES
from tests import corpus
from tests import vector_files as vf
from tests.helpers import submit, wait_for_job
from tests.test_ingest_repair import big_bowtie

# peaks (MB) reached on earth-seas-10m. The worker reads the bare GeometryCollection document block by block
# into WKB (geojson_geometry.py; GDAL's reader, which holds the document's JSON tree, took it to 999 MB) and
# hands the 28 MB feature to the repair child as a view of its bytes: it never decodes it (its copies along
# the steps took the worker to 630 MB), and the COPY streams it from its buffer (encoding it made three
# copies: 330-400 MB).
SEAS_CHILD_BOUND_MB = 450  # measured 370-382 (whole make_valid: 922, plus 210 when it imported the services)
SEAS_WORKER_BOUND_MB = 400  # the bound; measured 254 (idle worker ~150-220)
_VALID_WKB: set[str] = set()  # digests of repaired geometries GEOS found valid (its check of earth-seas: ~90 s)


def assert_valid_once(wkb: bytes) -> shapely.Geometry:
    """GEOS's validity of these bytes, checked once per session: both forms of earth-seas are repaired
    to the same bytes, so the second run reuses the first's answer (different bytes are checked)."""
    geometry = shapely.from_wkb(wkb)
    digest = hashlib.sha256(wkb).hexdigest()
    if digest not in _VALID_WKB:
        assert shapely.is_valid(geometry), shapely.is_valid_reason(geometry)
        _VALID_WKB.add(digest)
    return geometry


class TreeSampler:
    """Peak resident memory of a worker process and, separately, of its repair children, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.worker_mb = 0.0
        self.child_mb = 0.0
        self.children_seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.worker_mb = max(self.worker_mb, self.proc.memory_info().rss / 2**20)
                for child in self.proc.children(recursive=True):
                    # between fork and exec a child still shows the worker's memory: only the repair child counts
                    if not any("repair_child" in arg for arg in child.cmdline()):
                        continue
                    self.children_seen += 1
                    self.child_mb = max(self.child_mb, child.memory_info().rss / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.05)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def repair_memory(monkeypatch):
    """REPAIR_MEMORY_MB for the workers started after it is set (they read the environment)."""
    from config import reset_settings

    def set_limit(mb: int) -> None:
        monkeypatch.setenv("REPAIR_MEMORY_MB", str(mb))
        reset_settings()

    yield set_limit
    monkeypatch.delenv("REPAIR_MEMORY_MB", raising=False)
    reset_settings()


def submit_geojson(nonce: str, name: str, features: list) -> tuple[str, str]:
    blob = vf.upload(f"{nonce}/{name}.geojson", vf.geojson(features))
    table = f"{name}_{nonce}"
    return submit("ingest_vector", {"blob_name": blob, "file_extension": "geojson", "table_name": table}), table


def test_too_small_repair_memory_fails_the_job_naming_the_feature_and_the_worker_goes_on(
    db, workers, nonce, repair_memory
):
    repair_memory(160)  # the child's interpreter and shapely take ~106 MB of address space; 600k vertices need ~230
    (proc,) = workers.start(1, concurrency=1)
    job_id, table = submit_geojson(nonce, "toobig", [(box(5, 5, 6, 6), {}), (big_bowtie(600_000), {})])
    assert wait_for_job(job_id, timeout=180) == "failed"
    err = vf.job_row(db, job_id)["error_details"]["error"]
    assert "toobig.geojson" in err and "feature 1 " in err and "600001 vertices" in err
    assert "160 MB (REPAIR_MEMORY_MB)" in err and 'geometry_params.invalid "keep"' in err
    attempts = db.execute("SELECT max(attempts) m FROM app.tasks WHERE parent_job_id = %s", [job_id]).fetchone()
    assert attempts["m"] == 1  # permanent: not retried
    assert not vf.table_exists(db, "geo", table)
    assert proc.poll() is None  # the worker was not killed
    job_id, table = submit_geojson(nonce, "next", [(box(0, 0, 1, 1), {}), (big_bowtie(), {})])
    assert wait_for_job(job_id, timeout=180) == "completed"  # a small feature repairs within the same limit
    assert vf.geometry_checks(db, "geo", table)["invalid"] == 0
    assert proc.poll() is None


def test_repair_child_peak_is_reported(db, workers, nonce):
    workers.start(1, concurrency=1)
    job_id, _ = submit_geojson(nonce, "peak", [(big_bowtie(), {})])
    assert wait_for_job(job_id, timeout=180) == "completed"
    summary = vf.job_row(db, job_id)["result_data"]["summary"]
    assert summary["features_repaired"] == 1
    # the child imports shapely alone (not the services package): ~40 MB, plus the 120k-vertex feature
    assert 20 < summary["repair_child_peak_mb"] < 150


@pytest.mark.slow
@pytest.mark.parametrize("wrapped", [False, True], ids=["bare-geometry", "feature-in-a-collection"])
def test_huge_invalid_feature_keeps_worker_and_child_within_the_bound(db, workers, nonce, wrapped):
    """earth-seas-10m: one 1.78M-vertex MultiPolygon (GEOS make_valid on it whole: 2-4 minutes, ~1 GB),
    repaired in the child within REPAIR_MEMORY_MB and in bounded time: valid, area within 0.1 %. As the
    file is (a bare geometry) and as the one feature of a FeatureCollection (planned as a part)."""
    path = corpus.npm_file(*corpus.EARTH_SEAS)
    text = path.read_bytes()
    if wrapped:  # its GeometryCollection as the geometry of a feature, planned as a part of its own
        text = b'{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"name": "seas"},' \
            b' "geometry": ' + text + b"}]}"
    blob = vf.upload(f"{nonce}/seas.geojson", text)
    table = f"seas_{nonce}"
    (proc,) = workers.start(1, concurrency=1)
    with TreeSampler(proc.pid) as sampled:
        job_id = submit("ingest_vector", {"blob_name": blob, "file_extension": "geojson", "table_name": table})
        status = wait_for_job(job_id, timeout=900)
    job = vf.job_row(db, job_id)
    assert status == "completed", job["error_details"]
    summary = job["result_data"]["summary"]
    child = summary["repair_child_peak_mb"]
    assert sampled.children_seen > 0 and child >= sampled.child_mb * 0.9  # the child's own VmHWM
    print(f"worker peak {sampled.worker_mb:.0f} MB, repair child peak {child:.0f} MB")
    assert child <= SEAS_CHILD_BOUND_MB
    assert sampled.worker_mb <= SEAS_WORKER_BOUND_MB
    assert summary["features_repaired"] == 1
    source = shapely.from_wkb(pyogrio.read_arrow(path)[1].column("wkb_geometry")[0].as_py())
    rows = db.execute(f"SELECT ST_AsBinary(geom) AS g FROM geo.{table}").fetchall()
    assert len(rows) == 1
    # GEOS's validity check of this polygon (60k holes) takes minutes: shapely's GEOS is faster than PostGIS's
    loaded = assert_valid_once(bytes(rows[0]["g"]))
    assert loaded.area == pytest.approx(source.area, rel=1e-3)


def holed_bowtie() -> shapely.Polygon:
    """A self-intersecting shell (two triangles meeting at (5, 5)) with holes of every kind GEOS's
    'structure' repair tells apart: inside, overlapping each other, crossing the shell, outside it, invalid."""
    shell = [(0, 0), (10, 10), (10, 0), (0, 10), (0, 0)]
    holes = [
        box(1, 4, 2, 5).exterior.coords,  # inside the left triangle
        box(8, 4, 9, 5).exterior.coords,  # inside the right one
        box(1, 3, 2.5, 3.5).exterior.coords,  # these two overlap
        box(2, 3.2, 3, 3.8).exterior.coords,
        box(4, 4.5, 6, 5.5).exterior.coords,  # crosses the shell where the triangles meet
        box(4, 8, 6, 9).exterior.coords,  # outside both triangles: becomes a shell
        [(7.5, 3), (8.5, 3.9), (8.5, 3), (7.5, 3.9), (7.5, 3)],  # a bowtie hole
        [(1, 6), (1.2, 6), (1.2, 6.2), (1, 6.2), (1, 6)],  # touches the next one at a point
        [(1.2, 6.2), (1.4, 6.2), (1.4, 6.4), (1.2, 6.4), (1.2, 6.2)],
    ]
    return shapely.Polygon(shell, holes)


@pytest.mark.parametrize(
    "geom",
    [
        holed_bowtie(),
        shapely.MultiPolygon([holed_bowtie(), box(10, -1, 11, 0), box(20, 0, 21, 1), box(20.5, 0.5, 22, 2)]),
        shapely.GeometryCollection([shapely.MultiPolygon([holed_bowtie()]), box(-3, 0, -2, 1)]),
        # four overlapping holes framing an island: their union has a ring, which becomes a part
        shapely.Polygon(
            [(0, 0), (100, 100), (100, 0), (0, 100), (0, 0)],
            [b.exterior.coords for b in (box(10, 45, 20, 46), box(10, 54, 20, 55), box(10, 45, 11, 55),
                                         box(19, 45, 20, 55))],
        ),
    ],
    ids=["polygon", "touching-and-overlapping-parts", "collection", "island"],
)
def test_child_repair_is_make_valid_structure(geom):
    """The child's hole placement and part-wise union give GEOS make_valid(method='structure')'s result."""
    from services.vector import repair_child

    assert not shapely.is_valid(geom)
    fixed = repair_child.repair(geom)
    expected = shapely.make_valid(geom, method="structure", keep_collapsed=False)
    assert shapely.is_valid(fixed), shapely.is_valid_reason(fixed)
    assert fixed.area == pytest.approx(expected.area, rel=1e-9)
    assert shapely.equals(fixed, expected)


def _circle(vertices: int, radius: float = 1.0, x: float = 0.0) -> shapely.Polygon:
    angles = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    return shapely.Polygon(np.column_stack([x + radius * np.cos(angles), radius * np.sin(angles)]))


def _prepare(geoms: list, options=None, crs: str | None = None):
    from services.vector.geometry import GeometryOptions, GeometryStats, Reprojector, prepare_geometries

    options, stats = options or GeometryOptions(), GeometryStats()
    wkb = pa.array([shapely.to_wkb(g, output_dimension=3) for g in geoms], pa.binary())
    return prepare_geometries(wkb, 10, "test", Reprojector(crs, "test"), options, stats), stats, options


HUGE_VERTICES = HUGE_FEATURE_BYTES // 16 + 50_000


def test_huge_features_are_prepared_in_the_child_and_keep_their_place():
    """Above HUGE_FEATURE_BYTES the worker passes the WKB to the child: the child checks it, keeps it (as
    Multi*) or repairs it; the rows around it are prepared in the worker, and the order is the file's."""
    circle = _circle(HUGE_VERTICES)
    bowtie = big_bowtie(HUGE_VERTICES)
    assert len(shapely.to_wkb(circle)) > HUGE_FEATURE_BYTES and shapely.is_valid(circle)
    small_bowtie = shapely.Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])
    rows = [box(0, 0, 1, 1), circle, small_bowtie, bowtie, box(5, 5, 6, 6)]
    prepared, stats, options = _prepare(rows)
    assert options.repair.child_peak_kb > 0  # the child ran
    assert prepared.keep.all() and prepared.deferred is None
    out = shapely.from_wkb(prepared.wkb.to_numpy(zero_copy_only=False))
    assert list(shapely.get_type_id(out)) == [6] * 5
    assert out[0].equals_exact(shapely.MultiPolygon([rows[0]]), 0)
    assert out[1].equals_exact(shapely.MultiPolygon([circle]), 0)  # valid: as it was
    assert out[4].equals_exact(shapely.MultiPolygon([rows[4]]), 0)
    assert shapely.is_valid(out[2]) and shapely.is_valid(out[3])
    assert stats.repaired == 2 and stats.families == {"polygon"}
    assert out[3].area == pytest.approx(shapely.make_valid(bowtie, method="structure").area, rel=1e-9)


def test_a_huge_collection_is_unpacked_made_2d_and_reprojected_in_the_child_as_in_the_worker():
    """Every step of the worker's preparation gives the same result in the child: a GeometryCollection of
    polygons with Z in EPSG:3857 becomes a 2D MultiPolygon in EPSG:4326, counted the same way."""
    big = shapely.force_3d(_circle(HUGE_VERTICES, 1000.0, 2e6), 5.0)
    small = shapely.force_3d(_circle(1000, 1000.0, 2e6), 5.0)
    collection = shapely.GeometryCollection([big, shapely.MultiPolygon([box(0, 0, 10, 10)])])
    small_collection = shapely.GeometryCollection([small, shapely.MultiPolygon([box(0, 0, 10, 10)])])
    prepared, stats, _ = _prepare([collection, small_collection], crs="EPSG:3857")
    huge_out, small_out = shapely.from_wkb(prepared.wkb.to_numpy(zero_copy_only=False))
    assert stats.collections_unpacked == 2 and stats.z_dropped == 2
    assert not shapely.has_z(huge_out) and shapely.get_type_id(huge_out) == 6
    assert 17.9 < huge_out.centroid.x < 18.0  # 2,000 km east of Greenwich, in degrees
    # the same first vertex as the worker's own transform of the same coordinates
    first = shapely.get_coordinates(huge_out)[0]
    assert first == pytest.approx(shapely.get_coordinates(small_out)[0], abs=1e-12)


def test_a_huge_feature_is_left_unchecked_by_stage_1_and_repaired_by_stage_2():
    from services.vector.geometry import GeometryOptions, GeometryStats, repair_marked

    bowtie = big_bowtie(HUGE_VERTICES)
    prepared, stats, _ = _prepare([box(0, 0, 1, 1), bowtie], GeometryOptions(defer_repair=True))
    assert list(prepared.deferred) == [False, True]  # marked without a validity check
    assert stats.families == {"polygon"} and stats.repaired == 0
    marks = pa.array([None, 11], pa.int64())
    stage2 = GeometryStats()
    keep, wkb = repair_marked(prepared.wkb, marks, "test", GeometryOptions(), stage2)
    assert keep.all() and stage2.repaired == 1
    fixed = shapely.from_wkb(wkb[1].as_py())
    assert shapely.is_valid(fixed) and wkb[0].as_py() == prepared.wkb[0].as_py()


@pytest.mark.parametrize(
    ("geom", "options", "message"),
    [
        (shapely.GeometryCollection([_circle(HUGE_VERTICES), shapely.Point(0, 0)]), {},
         "feature 10 is a GeometryCollection mixing point and polygon parts"),
        (big_bowtie(HUGE_VERTICES), {"invalid": "fail"}, "feature 10 has an invalid geometry (Self-intersection"),
        (shapely.affinity.translate(_circle(HUGE_VERTICES), 500), {}, "coordinates are not longitudes/latitudes"),
    ],
    ids=["mixed-collection", "invalid-fail", "not-degrees"],
)
def test_a_huge_feature_refused_by_the_child_fails_as_in_the_worker(geom, options, message):
    from services.vector.geometry import GeometryOptions
    from services.vector.repair import RepairPolicy

    opts = GeometryOptions(repair=RepairPolicy(options.get("invalid", "repair")))
    with pytest.raises(PermanentTaskError, match=re.escape(message)):
        _prepare([geom], opts)


def test_huge_features_kept_as_they_are_are_counted():
    from services.vector.geometry import GeometryOptions
    from services.vector.repair import RepairPolicy

    prepared, stats, _ = _prepare([big_bowtie(HUGE_VERTICES)], GeometryOptions(repair=RepairPolicy("keep")))
    assert stats.invalid_kept == 1 and stats.repaired == 0
    assert not shapely.is_valid(shapely.from_wkb(prepared.wkb[0].as_py()))


def _repair_children(pid: int) -> list[psutil.Process]:
    out = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if any("repair_child" in arg for arg in child.cmdline()):
                out.append(child)
        except psutil.Error:
            pass
    return out


@pytest.mark.slow
def test_cancelling_a_job_kills_the_repair_child_at_once(db, workers, api_server, nonce):
    """earth-seas-10m's repair takes ~15 s in the child, and a GEOS call cannot be interrupted: a cancel
    kills the child within a second or two, the task stops, and the worker goes on serving."""
    import requests

    path = corpus.npm_file(*corpus.EARTH_SEAS)
    blob = vf.upload(f"{nonce}/seas.geojson", path.read_bytes())
    (proc,) = workers.start(1, concurrency=1)
    job_id = submit("ingest_vector", {"blob_name": blob, "file_extension": "geojson", "table_name": f"cx_{nonce}"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the stage 2 repair (stage 1's child only prepares, in ~2 s)
        stage2 = db.execute("SELECT 1 FROM app.tasks WHERE parent_job_id = %s AND stage = 2 AND status = 'processing'",
                            [job_id]).fetchone()
        if stage2 and _repair_children(proc.pid):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the stage 2 repair child never ran")
    time.sleep(1)
    assert _repair_children(proc.pid)
    cancelled_at = time.monotonic()
    r = requests.post(f"{api_server}/jobs/{job_id}/cancel", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    while _repair_children(proc.pid) and time.monotonic() - cancelled_at < 10:
        time.sleep(0.05)
    assert not _repair_children(proc.pid)
    assert time.monotonic() - cancelled_at < 5  # not the ~15 s the repair needs
    assert wait_for_job(job_id, timeout=60) == "cancelled"
    assert proc.poll() is None
    job_id, _ = submit_geojson(nonce, "after", [(box(0, 0, 1, 1), {})])
    assert wait_for_job(job_id, timeout=120) == "completed"  # the worker goes on serving
