"""GeoJSON in parts: stage 1 streams the file once and plans runs of whole features by byte range; each stage 2
task range-reads its features and lets GDAL read them behind a carrier feature of the whole file's types.
Every row and value must be what GDAL reads from the whole file, types included when a field changes type
late in the file; a file replaced under the job fails it; messages name file-wide feature numbers."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pyogrio
import pytest
from psycopg import sql

from tests import corpus
from tests import vector_files as vf
from tests.helpers import submit
from tests.test_ingest_corpus import check_loaded
from tests.test_ingest_parts import assert_as_gdal_reads, whole_file_job
from tests.test_ingest_slices import stage_tasks


def square(i: int) -> dict[str, Any]:
    x, y = (i % 40) * 0.02, (i // 40) * 0.02
    ring = [[x, y], [x + 0.01, y], [x + 0.01, y + 0.01], [x, y + 0.01], [x, y]]
    if i % 3 == 0:
        return {"type": "MultiPolygon", "coordinates": [[ring], [[[p[0], p[1] + 5] for p in ring]]]}
    return {"type": "Polygon", "coordinates": [ring]}


def features(n: int, late: int | None = None) -> list[dict[str, Any]]:
    """Polygons and multipolygons, null geometries, text outside ASCII, missing properties, and (from `late` on)
    fields that change type: int then float, int then string, int beyond int32."""
    late = n - 3 if late is None else late
    out = []
    for i in range(n):
        props: dict[str, Any] = {
            "key": i,
            "name": None if i % 5 == 0 else f"Zürich {i} 東京 \"{{q}}\"",
            "ratio": 2.5 + i if i >= late else i,
            "code": f"c{i}" if i == late + 1 else i,
            "big": 2**40 + i if i == late + 2 else i,
            "flag": i % 2 == 0,
        }
        if i % 7 == 3:
            del props["flag"]
        out.append({"type": "Feature", "properties": props, "geometry": None if i % 37 == 5 else square(i)})
    return out


def feature_collection(feats: list[dict[str, Any]], folder: Path, indent: int | None = None) -> Path:
    path = folder / "data.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}, indent=indent, ensure_ascii=False))
    return path


def sequence(feats: list[dict[str, Any]], folder: Path, rs: bool) -> Path:
    path = folder / ("data.geojsons" if rs else "data.geojsonl")
    sep = "\x1e" if rs else ""
    path.write_text("".join(sep + json.dumps(f, ensure_ascii=False) + "\n" for f in feats))
    return path


def params(blob: str, table: str, **extra: Any) -> dict[str, Any]:
    return {"blob_name": blob, "file_extension": blob.rsplit(".", 1)[1], "table_name": table, **extra}


def same_as_converted_once(db: Any, a: str, b: str) -> None:
    """Both tables hold the same columns and rows (every column, geometry as EWKB)."""
    assert vf.columns_of(db, "geo", a) == vf.columns_of(db, "geo", b)
    cols = [c for c in vf.columns_of(db, "geo", a) if c not in ("id", "geom")]
    select = sql.SQL("SELECT {}, ST_AsEWKB(geom) FROM geo.{}")
    fields = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
    for x, y in ((a, b), (b, a)):
        diff = db.execute(
            sql.SQL("SELECT count(*) AS n FROM ({} EXCEPT ALL {}) d").format(
                select.format(fields, sql.Identifier(x)), select.format(fields, sql.Identifier(y))
            )
        ).fetchone()
        assert diff["n"] == 0, (x, y)


def check_parts(db: Any, job: dict[str, Any], n: int, parts: int) -> None:
    (plan,) = stage_tasks(db, job["job_id"], 1)
    assert plan["result_data"]["mode"] == "parts"
    loads = stage_tasks(db, job["job_id"], 2)
    assert {t["parameters"]["kind"] for t in loads} == {"geojson_features"}
    ranges = [t["parameters"]["features"] for t in loads]
    assert len(ranges) == parts and ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert sum(t["result_data"]["source_features"] for t in loads) == n
    assert vf.chunk_blobs(job["job_id"]) == []  # nothing rewritten, nothing uploaded


@pytest.mark.parametrize("layout", ["collection", "indented", "geojsonl", "geojsons"])
def test_geojson_in_parts_loads_every_value_as_gdal_reads_the_whole_file(db, drain, nonce, monkeypatch, layout):
    n = 400
    feats = features(n, late=n - 3)
    folder = vf.tmpdir()
    if layout in ("collection", "indented"):
        path = feature_collection(feats, folder, indent=2 if layout == "indented" else None)
    else:
        path = sequence(feats, folder, rs=layout == "geojsons")
    blob = vf.upload(f"{nonce}/{path.name}", path)
    table = f"gjparts_{layout}_{nonce}"
    job = vf.run_ingest(drain, db, params(blob, table, chunk_size=60))
    loaded = assert_as_gdal_reads(db, job, table, path, "key")
    nulls = sum(1 for i in range(n) if i % 37 == 5)
    s = job["result_data"]["summary"]
    assert loaded == n - nulls == s["total_rows_uploaded"] and s["data_complete"] and s["read_in_place"]
    assert s["source_features"] == n and s["features_dropped"]["null_geometry"] == nulls
    assert s["geometry_type"] == "MultiPolygon"
    check_parts(db, job, n, 7)  # ceil(400 / 60)
    types = {c["source_name"]: c["type"] for c in s["columns"]}
    # the whole file's types, although the first six parts hold only integers
    assert types == {"key": "integer", "name": "text", "ratio": "double precision", "code": "text",
                     "big": "bigint", "flag": "boolean"}, types  # fmt: skip

    whole = whole_file_job(drain, db, monkeypatch, params(blob, f"gjwhole_{layout}_{nonce}"))
    assert whole["result_data"]["summary"]["read_in_place"] is False
    assert whole["result_data"]["summary"]["columns"] == s["columns"]
    same_as_converted_once(db, table, f"gjwhole_{layout}_{nonce}")


def test_types_that_only_gdal_decides_are_the_whole_files_in_every_part(db, drain, nonce, monkeypatch):
    """Dates then a date-time, integers then a list, reals then an object, a field first seen late: each part is
    read as GDAL reads the whole file, values converted by GDAL itself."""
    n = 120
    feats = []
    for i in range(n):
        props: dict[str, Any] = {
            "key": i,
            "day": "2020-01-01T10:00:00" if i == n - 1 else f"2020-01-{1 + i % 28:02d}",
            "tags": [1, 2] if i == n - 2 else i,
            "info": {"k": [i]} if i == n - 3 else i + 0.25,
            "stamp": f"2021-06-01T10:{i % 60:02d}:00Z",
        }
        if i > n - 5:
            props["late"] = f"only at the end {i}"
        feats.append({"type": "Feature", "id": f"f{i}", "properties": props, "geometry": square(i)})
    path = feature_collection(feats, vf.tmpdir())
    blob = vf.upload(f"{nonce}/typed.geojson", path)
    table = f"gjtyped_{nonce}"
    job = vf.run_ingest(drain, db, params(blob, table, chunk_size=25))
    assert job["status"] == "completed", job["error_details"]
    check_parts(db, job, n, 5)
    whole = whole_file_job(drain, db, monkeypatch, params(blob, f"gjtypedw_{nonce}"))
    assert whole["result_data"]["summary"]["columns"] == job["result_data"]["summary"]["columns"]
    same_as_converted_once(db, table, f"gjtypedw_{nonce}")
    gdal = pyogrio.read_dataframe(path)
    assert {c["source_name"] for c in job["result_data"]["summary"]["columns"]} == set(gdal.columns) - {"geometry"}


def test_a_broken_feature_in_a_later_part_is_named_by_its_file_wide_number(db, drain, nonce, monkeypatch):
    feats = features(300)
    feats[250]["geometry"] = {"type": "Polygon", "coordinates": [[[1e20, 1e20], [2e20, 1e20], [2e20, 2e20],
                                                                  [1e20, 1e20]]]}  # fmt: skip
    path = feature_collection(feats, vf.tmpdir())
    blob = vf.upload(f"{nonce}/broken.geojson", path)
    job = vf.run_ingest(drain, db, params(blob, f"gjbroken_{nonce}", chunk_size=100))
    assert job["status"] == "failed"
    err = job["error_details"]["error"]
    assert f"GeoJSON '{blob}': feature 250 has coordinates no coordinate reference system can hold" in err, err
    assert job["error_details"]["stage"] == 2
    whole = whole_file_job(drain, db, monkeypatch, params(blob, f"gjbrokenw_{nonce}"))
    assert whole["error_details"]["error"].split(" (bounds")[0] == err.split(" (bounds")[0]


def test_a_geojson_replaced_while_its_parts_load_fails_the_job(db, drain, nonce, monkeypatch):
    from services.vector import prepare

    path = feature_collection(features(300), vf.tmpdir())
    blob = vf.upload(f"{nonce}/moving.geojson", path)
    replaced: list[int] = []
    original = prepare.SourceReader._batch

    def batch_then_replace(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if not replaced:
            replaced.append(self.src.layers[0].offset)
            vf.upload(blob, path)  # same content, new ETag

    monkeypatch.setattr(prepare.SourceReader, "_batch", batch_then_replace)
    table = f"gjmoving_{nonce}"
    job_id = submit("ingest_vector", params(blob, table, chunk_size=100))
    assert drain(job_id) == "failed"
    assert replaced == [0]
    job = vf.job_row(db, job_id)
    assert f"'{blob}' was replaced while the job was loading it; submit the job again" in json.dumps(
        job["error_details"]
    )
    assert not vf.table_exists(db, "geo", table)


@pytest.mark.parametrize(
    "document",
    [
        {"type": "Feature", "properties": {"a": 1}, "geometry": {"type": "Point", "coordinates": [1, 2]}},
        {"type": "FeatureCollection", "features": [
            {"type": "Feature", "properties": {"a": 1}, "foreign": {"b": 1},
             "geometry": {"type": "Point", "coordinates": [1, 2]}}]},
    ],
    ids=["a-feature", "foreign-member"],
)
def test_files_parts_cannot_plan_safely_are_converted_once(db, drain, nonce, document):
    blob = vf.upload(f"{nonce}/other.geojson", json.dumps(document).encode())
    job = vf.run_ingest(drain, db, params(blob, f"gjonce_{nonce}"))
    assert job["status"] == "completed", job["error_details"]
    assert job["result_data"]["summary"]["read_in_place"] is False
    assert job["result_data"]["summary"]["total_rows_uploaded"] == 1


@pytest.mark.slow
def test_countries_maritime_loads_in_several_parts_as_gdal_reads_it(db, drain, nonce):
    path = corpus.npm_file(*corpus.COUNTRIES_MARITIME)
    expected = pyogrio.read_dataframe(path)
    blob = vf.upload(f"{nonce}/countries.geojson", path)
    table = f"cmparts_{nonce}"
    job = vf.run_ingest(drain, db, params(blob, table), timeout=600)
    check_loaded(db, job, table, expected, "A3")
    loads = stage_tasks(db, job["job_id"], 2)
    assert len(loads) > 1 and {t["parameters"]["kind"] for t in loads} == {"geojson_features"}
    assert job["result_data"]["summary"]["read_in_place"]


def test_integers_at_the_int64_limits_stay_exact_in_every_part(db, drain, nonce):
    values = [5, 2**63 - 1, -(2**63), 7, 2**63 - 1, 1]
    feats = [
        {"type": "Feature", "properties": {"key": i, "v": v}, "geometry": square(i)} for i, v in enumerate(values)
    ]
    blob = vf.upload(f"{nonce}/limits.geojson", feature_collection(feats, vf.tmpdir()))
    table = f"gjlimits_{nonce}"
    job = vf.run_ingest(drain, db, params(blob, table, chunk_size=2))
    assert job["status"] == "completed", job["error_details"]
    check_parts(db, job, len(values), 3)
    rows = db.execute(sql.SQL("SELECT key, v FROM geo.{} ORDER BY key").format(sql.Identifier(table))).fetchall()
    assert [r["v"] for r in rows] == values
    assert vf.columns_of(db, "geo", table)["v"] == "bigint"


def test_an_integer_beyond_64_bits_late_in_the_file_fails_naming_its_feature(db, drain, nonce):
    feats = features(200)
    feats[150]["properties"]["key"] = 2**70
    blob = vf.upload(f"{nonce}/huge.geojson", feature_collection(feats, vf.tmpdir()))
    job = vf.run_ingest(drain, db, params(blob, f"gjhuge_{nonce}", chunk_size=50))
    assert job["status"] == "failed"
    err = job["error_details"]["error"]
    assert f"GeoJSON '{blob}': feature 150 has the integer {2**70} in property 'key', beyond the 64-bit range" in err


def ring(n: int, x: float, y: float, r: float) -> list[list[float]]:
    angles = [2 * math.pi * k / n for k in range(n)]
    pts = [[round(x + r * math.cos(a), 9), round(y + r * math.sin(a), 9)] for a in angles]
    return [*pts, pts[0]]


@pytest.mark.parametrize("layout", ["collection", "geojsonl"])
def test_a_huge_feature_is_a_part_of_its_own_and_its_geometry_is_not_read_by_gdal(db, drain, nonce, monkeypatch,
                                                                                  layout):
    """A feature larger than HUGE_FEATURE_TEXT (GDAL's tree of its text would be ~25 times its size) is planned
    alone, and its geometry is read block by block into WKB while GDAL reads its properties: every value and
    vertex as GDAL reads the whole file."""
    from services.vector import geojson_geometry, geojson_parts

    read: list[int] = []
    original = geojson_geometry.read_bare_geometry

    def counted(f):
        got = original(f)
        read.append(len(got.wkb))
        return got

    monkeypatch.setattr(geojson_parts, "read_bare_geometry", counted)
    feats = features(30)
    big = {"type": "Polygon", "coordinates": [ring(150_000, 10, 10, 1), ring(2_000, 10, 10, 0.5)]}
    two = {"type": "MultiPolygon", "coordinates": [[ring(100_000, 20, 0, 1)], [ring(100_000, 25, 0, 1)]]}
    feats.insert(12, {"type": "Feature", "properties": {"key": 1000, "name": "huge Ωmega", "flag": True},
                      "geometry": big})
    feats.append({"type": "Feature", "properties": {"key": 1001, "ratio": 0.5}, "geometry": two})
    folder = vf.tmpdir()
    path = feature_collection(feats, folder) if layout == "collection" else sequence(feats, folder, rs=False)
    blob = vf.upload(f"{nonce}/{path.name}", path)
    table = f"gjhuge_{layout}_{nonce}"
    job = vf.run_ingest(drain, db, params(blob, table))
    assert_as_gdal_reads(db, job, table, path, "key")
    ranges = [t["parameters"]["features"] for t in stage_tasks(db, job["job_id"], 2)]
    assert [12, 13] in ranges and [31, 32] in ranges  # each huge feature alone
    assert len(read) == 2 and min(read) > 2_400_000  # both geometries read apart from GDAL


def test_geometry_collections_are_planned_in_parts_their_members_read_apart(db, drain, nonce, monkeypatch):
    """GeometryCollection features no longer send the file down the convert-once path: stage 1 reads each
    collection's members (block by block, from its byte range) for the column's family, and every part loads
    what the convert-once path loads, each collection as the Multi* of its family."""
    feats = features(90)
    for i in (3, 40, 77):
        square_i = square(i)
        members = [square_i, {"type": "GeometryCollection", "geometries": [square(i + 1)]}]
        feats[i]["geometry"] = {"type": "GeometryCollection", "geometries": members}
    path = feature_collection(feats, vf.tmpdir())
    blob = vf.upload(f"{nonce}/collections.geojson", path)
    table = f"gjgc_{nonce}"
    job = vf.run_ingest(drain, db, params(blob, table, chunk_size=30))
    assert job["status"] == "completed", job["error_details"]
    s = job["result_data"]["summary"]
    assert s["read_in_place"] and s["geometry_type"] == "MultiPolygon"
    assert s["geometry_stats"]["collections_unpacked"] == 3
    check_parts(db, job, 90, 3)
    whole = whole_file_job(drain, db, monkeypatch, params(blob, f"gjgcw_{nonce}"))
    assert whole["result_data"]["summary"]["read_in_place"] is False
    same_as_converted_once(db, table, f"gjgcw_{nonce}")


def test_a_collection_mixing_families_fails_naming_the_feature_in_parts_too(db, drain, nonce):
    feats = features(40)
    feats[25]["geometry"] = {"type": "GeometryCollection", "geometries": [
        square(25), {"type": "Point", "coordinates": [1, 2]}]}
    blob = vf.upload(f"{nonce}/mixed.geojson", feature_collection(feats, vf.tmpdir()))
    job = vf.run_ingest(drain, db, params(blob, f"gjmixed_{nonce}", chunk_size=10))
    assert job["status"] == "failed"
    assert "feature 25 is a GeometryCollection mixing point and polygon parts" in job["error_details"]["error"]
