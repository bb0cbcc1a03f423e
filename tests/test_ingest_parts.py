"""Stage 1 plans parts, each stage 2 task reads its own: a Shapefile in record ranges (the .shx gives each
record's place; every task fetches its byte ranges of the .shp and .dbf and lets GDAL read a Shapefile of
its own). Every row and value must be what GDAL reads from the whole file; a file replaced under the job
fails it; messages name file-wide feature numbers."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from psycopg import sql
from shapely.geometry import MultiPolygon, box

from core.errors import PermanentTaskError
from tests import corpus
from tests import vector_files as vf
from tests.helpers import submit
from tests.test_ingest_slices import stage_tasks


def shp_params(blob: str, table: str, **extra: Any) -> dict[str, Any]:
    ext = "zip" if blob.endswith(".zip") else "shp"
    return {"blob_name": blob, "file_extension": ext, "table_name": table, **extra}


def varied_frame(n: int) -> gpd.GeoDataFrame:
    """Polygons and multipolygons, some null shapes, text outside ASCII, integers, floats with nulls,
    dates with nulls."""
    geoms: list[Any] = []
    for i in range(n):
        if i % 37 == 5:
            geoms.append(None)
        elif i % 3 == 0:
            x = i * 0.15
            geoms.append(MultiPolygon([box(x, 0, x + 0.1, 0.1), box(x, 1, x + 0.1, 1.1)]))
        else:
            geoms.append(box(i * 0.01, 50, i * 0.01 + 0.005, 50.005))
    return gpd.GeoDataFrame(
        {
            "key": np.arange(n, dtype=np.int64),
            "name": [f"Zürich {i} 東京" if i % 5 else None for i in range(n)],
            "ratio": [None if i % 11 == 0 else i / 7 for i in range(n)],
            "day": [None if i % 13 == 0 else dt.date(2000, 1, 1) + dt.timedelta(days=i) for i in range(n)],
        },
        geometry=geoms,
        crs=4326,
    )


def as_multi(geom: Any) -> Any:
    if isinstance(geom, shapely.Polygon):
        return shapely.MultiPolygon([geom])
    if isinstance(geom, shapely.LineString):
        return shapely.MultiLineString([geom])
    if isinstance(geom, shapely.Point):
        return shapely.MultiPoint([geom])
    return geom


def same_value(got: Any, want: Any) -> bool:
    if want is None or (isinstance(want, float) and math.isnan(want)) or want is pd_nat():
        return got is None
    if isinstance(want, np.generic):
        want = want.item()
    if hasattr(want, "to_pydatetime"):  # pandas reads DBF dates as timestamps
        want = want.to_pydatetime().date()
    return got == want


def pd_nat() -> Any:
    import pandas as pd

    return pd.NaT


def assert_as_gdal_reads(db: Any, job: dict[str, Any], table: str, whole: Path, key: str) -> int:
    """Every row, value and geometry of the table equal to what GDAL reads from the whole file."""
    assert job["status"] == "completed", job["error_details"]
    expected = pyogrio.read_dataframe(whole)
    expected = expected[~(expected.geometry.isna() | expected.geometry.is_empty)]
    names = {c["source_name"]: c["name"] for c in job["result_data"]["summary"]["columns"]}
    assert set(names) == set(expected.columns) - {"geometry"}
    query = sql.SQL("SELECT *, ST_AsBinary(geom) AS wkb_ FROM geo.{}").format(sql.Identifier(table))
    rows = {r[names[key]]: r for r in db.execute(query).fetchall()}
    assert len(rows) == len(expected)
    for rec, geom in zip(expected.drop(columns="geometry").to_dict("records"), expected.geometry, strict=True):
        row = rows[rec[key]]
        for col, value in rec.items():
            assert same_value(row[names[col]], value), (col, rec[key], row[names[col]], value)
        got = shapely.from_wkb(bytes(row["wkb_"]))
        want = as_multi(geom)
        assert shapely.equals(got, want) and shapely.normalize(got).equals_exact(shapely.normalize(want), 0), rec[key]
    return len(expected)


def whole_file_job(drain: Any, db: Any, monkeypatch: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The same file converted once in stage 1 (no parts planned): the path every other format takes."""
    from services.vector import prepare

    with monkeypatch.context() as m:
        m.setattr(prepare, "plan_parts", lambda *args: None)
        return vf.run_ingest(drain, db, params)


def test_shapefile_in_record_ranges_loads_every_value_as_gdal_reads_the_whole_file(db, drain, nonce, monkeypatch):
    n = 1_000
    files = vf.shapefile(varied_frame(n), vf.tmpdir())
    blob = vf.upload_shapefile(nonce, files)
    table = f"shpparts_{nonce}"
    job = vf.run_ingest(drain, db, shp_params(blob, table, chunk_size=150))
    loaded = assert_as_gdal_reads(db, job, table, files[".shp"], "key")
    s = job["result_data"]["summary"]
    nulls = sum(1 for i in range(n) if i % 37 == 5)
    assert loaded == n - nulls == s["total_rows_uploaded"] and s["data_complete"] and s["read_in_place"]
    assert s["source_features"] == n and s["features_dropped"]["null_geometry"] == nulls
    assert s["geometry_type"] == "MultiPolygon" and s["encoding"] == "UTF-8 (.cpg)"
    (plan,) = stage_tasks(db, job["job_id"], 1)
    assert plan["result_data"]["mode"] == "parts"
    loads = stage_tasks(db, job["job_id"], 2)
    ranges = [t["parameters"]["records"] for t in loads]
    assert {t["parameters"]["kind"] for t in loads} == {"shp_records"}
    assert len(ranges) == 7 and ranges[0][0] == 0 and ranges[-1][1] == n  # ceil(1000 / 150)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert sum(t["result_data"]["source_features"] for t in loads) == n

    # the same file converted once: the same column types and the same rows
    whole = whole_file_job(drain, db, monkeypatch, shp_params(blob, f"shpwhole_{nonce}"))
    assert whole["result_data"]["summary"]["read_in_place"] is False
    assert whole["result_data"]["summary"]["columns"] == s["columns"]
    assert vf.columns_of(db, "geo", f"shpwhole_{nonce}") == vf.columns_of(db, "geo", table)
    diff = db.execute(
        sql.SQL(
            "SELECT count(*) AS n FROM (SELECT key, name, ratio, day, ST_AsEWKB(geom) FROM geo.{a}"
            " EXCEPT SELECT key, name, ratio, day, ST_AsEWKB(geom) FROM geo.{b}) d"
        ).format(a=sql.Identifier(table), b=sql.Identifier(f"shpwhole_{nonce}"))
    ).fetchone()
    assert diff["n"] == 0


def natural_earth_files(folder: Path, without_cpg: bool) -> dict[str, Path]:
    source = corpus.pyogrio_fixture("naturalearth_lowres")
    files = {}
    for p in sorted(source.iterdir()):
        if without_cpg and p.suffix == ".cpg":
            continue
        files[p.suffix] = folder / p.name
        files[p.suffix].write_bytes(p.read_bytes())
    return files


def test_latin1_shapefile_without_cpg_in_parts_is_decoded_as_gdal_decides(db, drain, nonce):
    files = natural_earth_files(vf.tmpdir(), without_cpg=True)
    blob = vf.upload_shapefile(nonce, files, "naturalearth_lowres")
    table = f"shplatin_{nonce}"
    job = vf.run_ingest(drain, db, shp_params(blob, table, chunk_size=40))
    assert assert_as_gdal_reads(db, job, table, files[".shp"], "name") == 177
    s = job["result_data"]["summary"]
    assert s["encoding"] == "ISO-8859-1" and s["total_chunks"] == 5 and s["read_in_place"]
    got = db.execute(
        sql.SQL("SELECT count(*) AS n FROM geo.{} WHERE name = %s").format(sql.Identifier(table)), ["Côte d'Ivoire"]
    ).fetchone()
    assert got["n"] == 1


def test_zipped_shapefile_is_extracted_once_and_read_in_parts(db, drain, nonce):
    folder = vf.tmpdir()
    files = natural_earth_files(folder, without_cpg=True)
    blob = vf.upload(f"{nonce}/ne.zip", vf.zip_of({f"data/{p.name}": p for p in files.values()}))
    table = f"shpzip_{nonce}"
    job = vf.run_ingest(drain, db, shp_params(blob, table, chunk_size=50))
    assert assert_as_gdal_reads(db, job, table, files[".shp"], "name") == 177
    s = job["result_data"]["summary"]
    assert s["encoding"] == "ISO-8859-1" and s["total_chunks"] == 4 and s["read_in_place"]
    loads = stage_tasks(db, job["job_id"], 2)
    assert loads[0]["parameters"]["files"][".dbf"]["shown"] == "data/naturalearth_lowres.dbf"
    assert vf.chunk_blobs(job["job_id"]) == []  # the extracted copy is deleted with the job's chunks


def test_a_replaced_dbf_fails_the_part_read_with_a_clear_message(nonce):
    """Unit level: the plan's ETags condition every range read."""
    from types import SimpleNamespace

    from infrastructure.blob import get_blob_store
    from services.vector.shapefile_parts import part_source, plan_shapefile

    store = get_blob_store()
    files = vf.shapefile(vf.frame(50), vf.tmpdir())
    blob = vf.upload_shapefile(nonce, files)
    p = {"blob_name": blob, "container_name": vf.source_container(), "file_extension": "shp", "chunk_size": 20}
    ctx = SimpleNamespace(job_id=f"unit-{nonce}", run=1)
    plan, _ = plan_shapefile(p, store, ctx)
    task = p | plan["source"] | plan["chunks"][1]
    src = part_source(task, store, vf.tmpdir())
    assert plan["chunks"][1]["records"] == [16, 33]  # 50 records in ceil(50 / 20) parts
    part = pyogrio.read_dataframe(src.layers[0].path)
    assert src.layers[0].offset == 16 and list(part["value"]) == list(range(16, 33))
    vf.upload(f"{nonce}/parcels.dbf", files[".dbf"])  # same content, new ETag
    with pytest.raises(PermanentTaskError, match=r"parcels\.dbf' was replaced while the job was loading it; submit"):
        part_source(task, store, vf.tmpdir())


def test_a_shapefile_replaced_while_its_parts_load_fails_the_job(db, drain, nonce, monkeypatch):
    from services.vector import prepare

    files = vf.shapefile(vf.frame(300), vf.tmpdir())
    blob = vf.upload_shapefile(nonce, files)
    replaced: list[int] = []
    original = prepare.SourceReader._batch

    def batch_then_replace(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if not replaced and self.src.ext == "shp":
            replaced.append(self.src.layers[0].offset)
            vf.upload(f"{nonce}/parcels.shp", files[".shp"])  # same name, new ETag

    monkeypatch.setattr(prepare.SourceReader, "_batch", batch_then_replace)
    table = f"shpmoving_{nonce}"
    job_id = submit("ingest_vector", shp_params(blob, table, chunk_size=100))
    assert drain(job_id) == "failed"
    assert replaced == [0]
    job = vf.job_row(db, job_id)
    assert "parcels.shp' was replaced while the job was loading it; submit the job again" in json.dumps(
        job["error_details"]
    )
    assert not vf.table_exists(db, "geo", table)


def test_a_broken_record_in_a_later_part_is_named_by_its_file_wide_number(db, drain, nonce, monkeypatch):
    geoms = vf.squares(300)
    geoms[250] = box(1e20, 1e20, 2e20, 2e20)  # no CRS holds these coordinates
    files = vf.shapefile(vf.frame(300, geoms), vf.tmpdir())
    blob = vf.upload_shapefile(nonce, files)
    job = vf.run_ingest(drain, db, shp_params(blob, f"shpbroken_{nonce}", chunk_size=100))
    assert job["status"] == "failed"
    err = job["error_details"]["error"]
    assert f"Shapefile '{blob}': feature 250 has coordinates no coordinate reference system can hold" in err, err
    assert job["error_details"]["stage"] == 2
    whole = whole_file_job(drain, db, monkeypatch, shp_params(blob, f"shpbrokenw_{nonce}"))
    assert whole["error_details"]["error"].split(" (bounds")[0] == err.split(" (bounds")[0]


def test_a_shx_pointing_past_the_shp_fails_naming_both(db, drain, nonce):
    files = vf.shapefile(vf.frame(30), vf.tmpdir())
    shx = bytearray(files[".shx"].read_bytes())
    shx[100 + 8 * 12 : 104 + 8 * 12] = (10**6).to_bytes(4, "big")  # record 12 at byte 2,000,000
    files[".shx"].write_bytes(bytes(shx))
    blob = vf.upload_shapefile(nonce, files)
    job = vf.run_ingest(drain, db, shp_params(blob, f"shpshx_{nonce}"))
    assert job["status"] == "failed"
    err = job["error_details"]["error"]
    assert f"'{nonce}/parcels.shx' places shape 12 at bytes 2000000.." in err and "parcels.shp'" in err, err


# ---------------------------------------------------------------- CSV byte ranges

CSV_OPTIONS = {"AUTODETECT_TYPE": "YES", "AUTODETECT_SIZE_LIMIT": "0", "EMPTY_STRING_AS_NULL": "YES",
               "X_POSSIBLE_NAMES": "lon", "Y_POSSIBLE_NAMES": "lat", "KEEP_GEOM_COLUMNS": "YES"}  # fmt: skip


def csv_params(blob: str, table: str, **extra: Any) -> dict[str, Any]:
    conv = {"lat_name": "lat", "lon_name": "lon"}
    return {"blob_name": blob, "file_extension": "csv", "table_name": table, "converter_params": conv, **extra}


def varied_csv(n: int, late: dict[int, dict[str, str]] | None = None) -> bytes:
    """Quoted commas, doubled quotes and newlines inside quotes, empty cells, dates; `late` overrides cells
    of some rows (a type only the end of the file reveals)."""
    rows = []
    for i in range(n):
        row = {
            "key": str(i),
            "name": f'"line {i}, with ""quotes""\nand a second line"' if i % 4 == 0 else f"plain {i}",
            "count": str(i * 3),
            "big": str(i),
            "ratio": "" if i % 9 == 0 else f"{i / 7:.6f}",
            "day": f"2020-{1 + i % 12:02d}-{1 + i % 28:02d}",
            "lat": f"{45 + (i % 90) / 10:.4f}",
            "lon": f"{-5 + (i % 100) / 10:.4f}",
        }
        row |= (late or {}).get(i, {})
        rows.append(",".join(row.values()))
    return ("key,name,count,big,ratio,day,lat,lon\n" + "\n".join(rows) + "\n").encode()


def test_csv_in_byte_ranges_is_typed_and_read_as_gdal_reads_the_whole_file(db, drain, nonce, monkeypatch):
    n = 700
    late = {650: {"count": "not a number"}, 680: {"big": "9999999999"}, 690: {"ratio": "12345678901234"}}
    data = varied_csv(n, late)
    path = vf.tmpdir() / "points.csv"
    path.write_bytes(data)
    blob = vf.upload(f"{nonce}/points.csv", data)
    table = f"csvparts_{nonce}"
    job = vf.run_ingest(drain, db, csv_params(blob, table, chunk_size=100))
    assert job["status"] == "completed", job["error_details"]
    expected = pyogrio.read_dataframe(path, **CSV_OPTIONS)
    assert expected["count"].dtype.kind not in "iuf"  # the last parts make it text for every part
    names = {c["source_name"]: c["name"] for c in job["result_data"]["summary"]["columns"]}
    query = sql.SQL("SELECT *, ST_AsBinary(geom) AS wkb_ FROM geo.{}").format(sql.Identifier(table))
    rows = {r["key"]: r for r in db.execute(query).fetchall()}
    assert len(rows) == n == len(expected)
    for rec, geom in zip(expected.drop(columns="geometry").to_dict("records"), expected.geometry, strict=True):
        row = rows[rec["key"]]
        for col, value in rec.items():
            assert same_value(row[names[col]], value), (col, rec["key"], row[names[col]], value)
        assert shapely.from_wkb(bytes(row["wkb_"])).equals(as_multi(geom)), rec["key"]
    s = job["result_data"]["summary"]
    assert s["read_in_place"] and s["total_chunks"] == 7 and s["data_complete"]
    loads = stage_tasks(db, job["job_id"], 2)
    assert {t["parameters"]["kind"] for t in loads} == {"csv_bytes"}
    assert [t["parameters"]["records"][0] for t in loads] == list(range(0, n, 100))

    whole = whole_file_job(drain, db, monkeypatch, csv_params(blob, f"csvwhole_{nonce}"))
    assert whole["result_data"]["summary"]["columns"] == s["columns"]
    assert vf.columns_of(db, "geo", f"csvwhole_{nonce}") == vf.columns_of(db, "geo", table)
    got = vf.columns_of(db, "geo", table)
    assert (got["count"], got["big"], got["day"]) == ("text", "bigint", "date")


@pytest.mark.parametrize(
    "case, data",
    [
        ("blank", b"key,lat,lon\n1,1,2\n\n2,3,4\n3,5,6\n"),
        ("headerless", b"1,1,2\n2,3,4\n3,5,6\n"),
        ("crlf_blank", b"key,lat,lon\r\n1,1,2\r\n\r\n2,3,4\r\n"),
    ],
)
def test_csv_whose_records_cannot_be_planned_is_converted_once(db, drain, nonce, case, data):
    blob = vf.upload(f"{nonce}/{case}.csv", data)
    table = f"csvfb_{case}_{nonce}"
    conv = {"lat_name": "field_2", "lon_name": "field_3"} if case == "headerless" else {}
    params = csv_params(blob, table, chunk_size=1)
    params["converter_params"] |= conv
    job = vf.run_ingest(drain, db, params)
    assert job["status"] == "completed", job["error_details"]
    s = job["result_data"]["summary"]
    assert s["read_in_place"] is False
    path = vf.tmpdir() / "x.csv"
    path.write_bytes(data)
    expected = pyogrio.read_dataframe(
        path,
        **(
            CSV_OPTIONS
            | {
                "X_POSSIBLE_NAMES": params["converter_params"]["lon_name"],
                "Y_POSSIBLE_NAMES": params["converter_params"]["lat_name"],
            }
        ),
    )
    assert s["total_rows_uploaded"] == len(expected)


def test_csv_coordinates_gdal_cannot_parse_in_a_later_part_name_the_file_wide_feature(db, drain, nonce, monkeypatch):
    data = varied_csv(300, {250: {"lat": "north"}})
    blob = vf.upload(f"{nonce}/north.csv", data)
    job = vf.run_ingest(drain, db, csv_params(blob, f"csvnorth_{nonce}", chunk_size=100))
    assert job["status"] == "failed"
    err = job["error_details"]["error"]
    assert f"CSV '{blob}': feature 250 has 'north' in column 'lat' (converter_params.lat_name)" in err, err
    assert job["error_details"]["stage"] == 2
    whole = whole_file_job(drain, db, monkeypatch, csv_params(blob, f"csvnorthw_{nonce}"))
    assert whole["error_details"]["error"] == err


def test_a_csv_replaced_while_its_parts_load_fails_the_job(db, drain, nonce, monkeypatch):
    from services.vector import prepare

    data = varied_csv(300)
    blob = vf.upload(f"{nonce}/moving.csv", data)
    replaced: list[int] = []
    original = prepare.SourceReader._batch

    def batch_then_replace(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if not replaced and self.src.ext == "csv":
            replaced.append(self.src.layers[0].offset)
            vf.upload(blob, data)  # same name, new ETag

    monkeypatch.setattr(prepare.SourceReader, "_batch", batch_then_replace)
    table = f"csvmoving_{nonce}"
    job_id = submit("ingest_vector", csv_params(blob, table, chunk_size=100))
    assert drain(job_id) == "failed"
    assert replaced == [0]
    err = json.dumps(vf.job_row(db, job_id)["error_details"])
    assert "moving.csv' was replaced while the job was loading it; submit the job again" in err
    assert not vf.table_exists(db, "geo", table)
