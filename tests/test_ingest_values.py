"""Values as the file means them: date-times keep their UTC offsets, an impossible date-time is counted
instead of moved to another day; files that cannot be loaded as they are fail once, naming the file and
the problem (two fields of one name, a file cut short, a sequence framed two ways, a row wider than a
page); a table name the features API would never serve is refused at submit."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyogrio
import pytest
from shapely.geometry import Point

from core.errors import JobValidationError
from core.submit import submit_job
from tests import vector_files as vf

# (text in the file, the instant it names); naive values are taken as UTC
OFFSETS = [
    ("2024-01-01T00:00:00+05:00", datetime(2023, 12, 31, 19, 0, tzinfo=UTC)),
    ("2024-01-01T10:00:00.250+05:30", datetime(2024, 1, 1, 4, 30, 0, 250000, tzinfo=UTC)),
    ("2024-01-01T00:00:00Z", datetime(2024, 1, 1, tzinfo=UTC)),
    ("2024-01-01T10:00:00-03:30", datetime(2024, 1, 1, 13, 30, tzinfo=UTC)),
    ("2024-06-01T00:00:00", datetime(2024, 6, 1, tzinfo=UTC)),
]


def attempts(db, job):
    return db.execute("SELECT max(attempts) m FROM app.tasks WHERE parent_job_id = %s", [job["job_id"]]).fetchone()["m"]


def failed_once(db, job, *needles: str) -> str:
    assert job["status"] == "failed", job["result_data"]
    err = job["error_details"]["error"]
    for needle in needles:
        assert needle in err, err
    assert attempts(db, job) == 1, err  # not retried: reading the file again cannot help
    return err


def feature_lines(values: list[str]) -> list[str]:
    return [json.dumps({"type": "Feature", "geometry": {"type": "Point", "coordinates": [i, 1]},
                        "properties": {"dt": v, "n": i}}) for i, v in enumerate(values)]


def offset_file(fmt: str) -> tuple[bytes, dict]:
    texts = [t for t, _ in OFFSETS]
    if fmt == "csv_latlon":
        return vf.csv_text(["lat", "lon", "n", "dt"], [[1, i, i, t] for i, t in enumerate(texts)]), {
            "file_extension": "csv", "converter_params": {"lat_name": "lat", "lon_name": "lon"}}
    if fmt == "csv_wkt":
        return vf.csv_text(["wkt", "n", "dt"], [[f"POINT ({i} 1)", i, t] for i, t in enumerate(texts)]), {
            "file_extension": "csv", "converter_params": {"wkt_column": "wkt"}}
    if fmt == "geojsonl":
        return ("\n".join(feature_lines(texts)) + "\n").encode(), {"file_extension": "geojsonl"}
    return vf.geojson([(Point(i, 1), {"n": i, "dt": t}) for i, t in enumerate(texts)]), {"file_extension": "geojson"}


@pytest.mark.parametrize("fmt", ["csv_latlon", "csv_wkt", "geojson", "geojsonl"])
def test_date_times_keep_their_utc_offsets(db, drain, nonce, fmt):
    """GDAL's Arrow reader wrote 10:00+05:00 as 10:00 UTC when a column's offsets differ or are unknown
    (every CSV): five hours off, silently."""
    content, params = offset_file(fmt)
    table = f"tz_{fmt}_{nonce}"
    blob = vf.upload(f"{nonce}/tz.{params['file_extension']}", content)
    job = vf.run_ingest(drain, db, {"blob_name": blob, "table_name": table, **params})
    assert job["status"] == "completed", job["error_details"]
    assert vf.columns_of(db, "geo", table)["dt"] == "timestamp with time zone"
    got = [r["dt"] for r in db.execute(f"SELECT dt FROM geo.{table} ORDER BY n").fetchall()]
    assert got == [instant for _, instant in OFFSETS]
    summary = job["result_data"]["summary"]
    assert summary["values_out_of_range"] == 0 and summary["data_complete"]


@pytest.mark.parametrize("ext", ["geojson", "geojsonl"])
def test_an_impossible_date_time_is_stored_null_and_counted_not_moved_to_another_day(db, drain, nonce, ext):
    texts = ["2023-02-29T10:00:00Z", "2024-02-29T10:00:00Z", "2024-01-01T10:00:00Z"]
    if ext == "geojson":
        content = vf.geojson([(Point(i, 1), {"n": i, "dt": t}) for i, t in enumerate(texts)])
    else:
        content = ("\n".join(feature_lines(texts)) + "\n").encode()
    table = f"bad_dt_{ext}_{nonce}"
    blob = vf.upload(f"{nonce}/dates.{ext}", content)
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": ext, "table_name": table})
    assert job["status"] == "completed", job["error_details"]
    got = [r["dt"] for r in db.execute(f"SELECT dt FROM geo.{table} ORDER BY n").fetchall()]
    # February 29th 2023 does not exist: GDAL read it as March 1st
    assert got == [None, datetime(2024, 2, 29, 10, tzinfo=UTC), datetime(2024, 1, 1, 10, tzinfo=UTC)]
    summary = job["result_data"]["summary"]
    assert summary["values_out_of_range"] == 1 and not summary["data_complete"]


@pytest.mark.parametrize("geometry", ["latlon", "wkt"])
def test_two_fields_of_one_name_fail_once_naming_the_file_and_field(db, drain, nonce, geometry):
    if geometry == "latlon":
        content = b"lat,lon,a,a\n1,2,x,y\n"
        conv = {"lat_name": "lat", "lon_name": "lon"}
    else:
        content = b"wkt,a,a\nPOINT (1 2),x,y\n"
        conv = {"wkt_column": "wkt"}
    blob = vf.upload(f"{nonce}/dup.csv", content)
    table = f"dup_{geometry}_{nonce}"
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "csv", "table_name": table,
                                    "converter_params": conv})
    failed_once(db, job, "dup.csv", "more than one field named 'a'")
    assert not vf.table_exists(db, "geo", table)


def test_a_truncated_flatgeobuf_fails_once_saying_so(db, drain, nonce):
    folder = vf.tmpdir()
    path = folder / "cut.fgb"
    pyogrio.write_dataframe(vf.frame(2000), path, driver="FlatGeobuf")
    data = path.read_bytes()
    blob = vf.upload(f"{nonce}/cut.fgb", data[: len(data) * 2 // 3])
    table = f"cut_{nonce}"
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "fgb", "table_name": table})
    failed_once(db, job, "cut.fgb", "truncated or damaged")
    assert not vf.table_exists(db, "geo", table)


@pytest.mark.parametrize("layout", ["rs_on_some", "two_on_a_line"])
def test_a_geojson_sequence_framed_two_ways_fails_once_saying_how_to_frame_it(db, drain, nonce, layout):
    a, b, c = feature_lines(["2024-01-01T00:00:00Z"] * 3)
    text = f"\x1e{a}\n{b}\n\x1e{c}\n" if layout == "rs_on_some" else f"{a}{b}\n{c}\n"
    blob = vf.upload(f"{nonce}/seq.geojsonl", text.encode())
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "geojsonl", "table_name": f"seq_{nonce}"})
    failed_once(db, job, "seq.geojsonl", "on a line of its own", "RS, 0x1E")


def test_a_row_wider_than_a_page_names_the_file_not_the_staging_table(db, drain, nonce):
    props = {f"f{i}": i + 0.5 for i in range(1500)}
    blob = vf.upload(f"{nonce}/wide.geojson", vf.geojson([(Point(1, 2), props)]))
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "geojson", "table_name": f"wide_{nonce}"})
    err = failed_once(db, job, f"loading '{blob}' (features 0..0)", "row is too big", "one PostgreSQL page")
    assert "COPY j_" not in err and "geoetl_staging" not in err


@pytest.mark.parametrize("name", ["spatial_ref_sys", "geometry_columns", "geography_columns"])
def test_postgis_catalog_names_are_refused_as_table_names(db, nonce, name):
    blob = vf.upload(f"{nonce}/p.geojson", vf.geojson([(Point(1, 2), {"a": 1})]))
    with pytest.raises(JobValidationError) as info:
        submit_job("ingest_vector", {"blob_name": blob, "file_extension": "geojson", "table_name": name})
    assert "PostGIS catalog" in str(info.value) and name in str(info.value)


def test_both_parses_of_date_times_agree_and_only_the_field_by_field_one_sees_impossible_values():
    """Arrow's parser takes a column of one kind in one pass; a mixed or impossible one is parsed field by
    field: on the values both take, they must give the same instants."""
    import pyarrow as pa

    from services.vector.datetimes import _parsed_field_by_field, utc_timestamps

    zoned = [t for t, _ in OFFSETS if t[19:]] + ["1969-12-31T23:59:59.999999Z", None]  # each with its offset
    naive = ["2024-06-01T00:00:00", "0001-01-01T00:00:00.5", None]
    for values in (zoned, naive):
        fast, bad = utc_timestamps(pa.array(values))
        slow, slow_bad = _parsed_field_by_field(pa.array(values))
        assert fast.equals(slow) and bad == slow_bad == 0
    mixed = pa.array([t for t, _ in OFFSETS] + ["2023-02-29T10:00:00Z", "2024-01-01T24:00:00Z", "junk", None])
    out, bad = utc_timestamps(mixed)
    assert out.to_pylist() == [instant for _, instant in OFFSETS] + [None] * 4 and bad == 3


DECIMALS = ["123456789012345678901234567.89", "-0.01", "0.00", None, "99999999999999999999999999999999999.99",
            "-31415926535897932384626433832795.02"]


def test_geoparquet_decimals_keep_every_digit_and_are_served(db, drain, nonce, tmp_path, api_server):
    """decimal128(38, 2) became a double: 1.2345678901234568e+26 for the first value. Now a numeric column,
    read back digit for digit, and served by the features API (items, a filter, a tile)."""
    from decimal import Decimal

    import geopandas as gpd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import requests

    geo_only = tmp_path / "geo_only.parquet"
    gpd.GeoDataFrame({"geometry": [Point(i, i) for i in range(len(DECIMALS))]}, crs=4326).to_parquet(geo_only)
    base = pq.read_table(geo_only)
    amounts = pa.array([None if v is None else Decimal(v) for v in DECIMALS], pa.decimal128(38, 2))
    small = pa.array([Decimal(i) / 1000 for i in range(len(DECIMALS))], pa.decimal128(10, 3))
    table = base.append_column("amount", amounts).append_column("small", small)
    path = tmp_path / "dec.parquet"
    pq.write_table(table.replace_schema_metadata({b"geo": base.schema.metadata[b"geo"]}), path)
    name = f"dec_{nonce}"
    job = vf.run_ingest(drain, db, {"blob_name": vf.upload(f"{nonce}/dec.parquet", path),
                                    "file_extension": "parquet", "table_name": name})
    assert job["status"] == "completed", job["error_details"]
    assert vf.columns_of(db, "geo", name)["amount"] == "numeric"
    rows = db.execute(f"SELECT amount::text a, small::text s FROM geo.{name} ORDER BY id").fetchall()
    assert [r["a"] for r in rows] == DECIMALS
    assert [r["s"] for r in rows] == [f"{i / 1000:.3f}" for i in range(len(DECIMALS))]

    features = f"{api_server}/features/collections/geo.{name}"
    r = requests.get(f"{features}/items", params={"limit": 10, "sortby": "id"}, timeout=30)
    assert r.status_code == 200, r.text[:300]
    served = [f["properties"]["amount"] for f in json.loads(r.text, parse_float=Decimal)["features"]]
    assert served == [None if v is None else Decimal(v) for v in DECIMALS]
    r = requests.get(f"{features}/items", params={"filter": "amount > 0", "filter-lang": "cql2-text"}, timeout=30)
    assert r.status_code == 200 and r.json()["numberReturned"] == 2, r.text[:300]
    tile = requests.get(f"{features}/tiles/WebMercatorQuad/0/0/0", timeout=30)
    assert tile.status_code == 200 and len(tile.content) > 50
