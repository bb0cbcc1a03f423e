"""Every supported format and converter parameter ingests into a valid SRID-4326 table."""

from __future__ import annotations

import pytest
from pyproj import Transformer

from tests import vector_files as vf


def check_loaded(db, job, table, expected_rows, geom_type="MULTIPOLYGON"):
    assert job["status"] == "completed", job["error_details"]
    g = vf.geometry_checks(db, "geo", table)
    assert g["n"] == expected_rows
    assert g["invalid"] == 0
    assert g["srids"] == [4326]
    assert g["types"] == [geom_type]
    assert not g["has_z"]
    summary = job["result_data"]["summary"]
    assert summary["total_rows_uploaded"] == expected_rows
    assert summary["source_features"] - summary["features_dropped_total"] == expected_rows
    assert summary["data_complete"] is True
    return summary


def params(blob, ext, table, **extra):
    return {"blob_name": blob, "file_extension": ext, "table_name": table, **extra}


def test_geojson(db, drain, nonce):
    blob = vf.upload(f"{nonce}/squares.geojson", vf.geojson([(g, {"n": i}) for i, g in enumerate(vf.squares(25))]))
    job = vf.run_ingest(drain, db, params(blob, "geojson", f"gj_{nonce}"))
    check_loaded(db, job, f"gj_{nonce}", 25)
    assert vf.columns_of(db, "geo", f"gj_{nonce}") == {"id": "bigint", "geom": "USER-DEFINED", "n": "integer"}


def test_json_extension(db, drain, nonce):
    blob = vf.upload(f"{nonce}/points.json", vf.geojson([(g, {"k": "v"}) for g in vf.points(7)]))
    job = vf.run_ingest(drain, db, params(blob, "json", f"js_{nonce}"))
    check_loaded(db, job, f"js_{nonce}", 7, "MULTIPOINT")


def test_csv_lat_lon(db, drain, nonce):
    rows = [[i, 50 + i * 0.01, 10 + i * 0.01, f"site {i}"] for i in range(30)] + [[99, None, None, "no coords"]]
    blob = vf.upload(f"{nonce}/sites.csv", vf.csv_text(["site_id", "lat", "lon", "label"], rows))
    job = vf.run_ingest(drain, db, params(blob, "csv", f"csv_{nonce}",
                                          converter_params={"lat_name": "lat", "lon_name": "lon"}))
    summary = check_loaded(db, job, f"csv_{nonce}", 30, "MULTIPOINT")
    assert summary["features_dropped"]["null_geometry"] == 1
    cols = vf.columns_of(db, "geo", f"csv_{nonce}")
    assert cols["site_id"] == "integer" and cols["lat"] == "double precision" and cols["label"] == "text"
    row = db.execute(f"SELECT ST_X(ST_GeometryN(geom, 1)) x, ST_Y(ST_GeometryN(geom, 1)) y FROM geo.csv_{nonce}"
                     " WHERE site_id = 3").fetchone()
    assert row["x"] == pytest.approx(10.03) and row["y"] == pytest.approx(50.03)


def test_csv_wkt(db, drain, nonce):
    rows = [[i, g.wkt] for i, g in enumerate(vf.squares(12))] + [[100, ""]]
    blob = vf.upload(f"{nonce}/wkt.csv", vf.csv_text(["fid_src", "wkt"], rows))
    job = vf.run_ingest(drain, db, params(blob, "csv", f"wkt_{nonce}", converter_params={"wkt_column": "wkt"}))
    check_loaded(db, job, f"wkt_{nonce}", 12)
    assert "wkt" not in vf.columns_of(db, "geo", f"wkt_{nonce}")  # the geometry text is not kept twice


def test_csv_with_crs(db, drain, nonce):
    """Web Mercator coordinates with converter_params.crs land in EPSG:4326."""
    to_merc = Transformer.from_crs(4326, 3857, always_xy=True)
    lonlat = [(2.35 + i * 0.01, 48.85 + i * 0.01) for i in range(10)]
    rows = [[i, *to_merc.transform(x, y)] for i, (x, y) in enumerate(lonlat)]
    blob = vf.upload(f"{nonce}/merc.csv", vf.csv_text(["n", "northing", "easting"], [[r[0], r[2], r[1]] for r in rows]))
    job = vf.run_ingest(drain, db, params(blob, "csv", f"crs_{nonce}", converter_params={
        "lat_name": "northing", "lon_name": "easting", "crs": "EPSG:3857"}))
    check_loaded(db, job, f"crs_{nonce}", 10, "MULTIPOINT")
    got = db.execute(f"SELECT n, ST_X(ST_GeometryN(geom,1)) x, ST_Y(ST_GeometryN(geom,1)) y FROM geo.crs_{nonce}"
                     " ORDER BY n").fetchall()
    for r in got:
        assert r["x"] == pytest.approx(lonlat[r["n"]][0], abs=1e-9)
        assert r["y"] == pytest.approx(lonlat[r["n"]][1], abs=1e-9)


def test_gpkg_single_layer_without_layer_name(db, drain, nonce):
    path = vf.gpkg({"parcels": vf.frame(20)}, vf.tmpdir())
    blob = vf.upload(f"{nonce}/one.gpkg", path)
    job = vf.run_ingest(drain, db, params(blob, "gpkg", f"gp1_{nonce}"))
    check_loaded(db, job, f"gp1_{nonce}", 20)


def test_gpkg_layer_name(db, drain, nonce):
    path = vf.gpkg({"roads": vf.frame(5, vf.points(5)), "parcels": vf.frame(15)}, vf.tmpdir())
    blob = vf.upload(f"{nonce}/two.gpkg", path)
    job = vf.run_ingest(drain, db, params(blob, "gpkg", f"gp2_{nonce}", converter_params={"layer_name": "parcels"}))
    check_loaded(db, job, f"gp2_{nonce}", 15)


def test_gpkg_several_layers_without_layer_name_fails_listing_them(db, drain, nonce):
    path = vf.gpkg({"roads": vf.frame(5, vf.points(5)), "parcels": vf.frame(15)}, vf.tmpdir())
    blob = vf.upload(f"{nonce}/two.gpkg", path)
    job = vf.run_ingest(drain, db, params(blob, "gpkg", f"gp3_{nonce}"))
    assert job["status"] == "failed"
    err = job["error_details"]["error"]
    assert "roads" in err and "parcels" in err and "layer_name" in err and "two.gpkg" in err
    assert not vf.table_exists(db, "geo", f"gp3_{nonce}")


def test_gpkg_unknown_layer_name_fails(db, drain, nonce):
    path = vf.gpkg({"parcels": vf.frame(3)}, vf.tmpdir())
    blob = vf.upload(f"{nonce}/one.gpkg", path)
    job = vf.run_ingest(drain, db, params(blob, "gpkg", f"gp4_{nonce}", converter_params={"layer_name": "nope"}))
    assert job["status"] == "failed"
    assert "'nope'" in job["error_details"]["error"] and "parcels" in job["error_details"]["error"]


def _kml_doc():
    return vf.kml({
        "north": [(f"n{i}", vf.kml_square(10 + i * 0.02, 50)) for i in range(4)],
        "south": [(f"s{i}", vf.kml_square(10 + i * 0.02, 40)) for i in range(3)],
    })


def test_kml_reads_every_folder(db, drain, nonce):
    blob = vf.upload(f"{nonce}/doc.kml", _kml_doc())
    job = vf.run_ingest(drain, db, params(blob, "kml", f"kml_{nonce}"))
    check_loaded(db, job, f"kml_{nonce}", 7)
    names = {r["name"] for r in db.execute(f"SELECT name FROM geo.kml_{nonce}").fetchall()}
    assert names == {"n0", "n1", "n2", "n3", "s0", "s1", "s2"}


def test_kml_layer_name(db, drain, nonce):
    blob = vf.upload(f"{nonce}/doc.kml", _kml_doc())
    job = vf.run_ingest(drain, db, params(blob, "kml", f"kmll_{nonce}", converter_params={"layer_name": "south"}))
    check_loaded(db, job, f"kmll_{nonce}", 3)


def test_kmz_default_doc(db, drain, nonce):
    blob = vf.upload(f"{nonce}/doc.kmz", vf.zip_of({"doc.kml": _kml_doc(), "files/icon.png": b"\x89PNG"}))
    job = vf.run_ingest(drain, db, params(blob, "kmz", f"kmz_{nonce}"))
    check_loaded(db, job, f"kmz_{nonce}", 7)


def test_kmz_kml_name(db, drain, nonce):
    other = vf.kml({"pts": [(f"p{i}", vf.kml_point(5 + i * 0.1, 5)) for i in range(6)]})
    blob = vf.upload(f"{nonce}/two.kmz", vf.zip_of({"doc.kml": _kml_doc(), "extra/points.kml": other}))
    job = vf.run_ingest(drain, db, params(blob, "kmz", f"kmzn_{nonce}",
                                          converter_params={"kml_name": "extra/points.kml"}))
    check_loaded(db, job, f"kmzn_{nonce}", 6, "MULTIPOINT")


def test_shp_with_sidecars(db, drain, nonce):
    files = vf.shapefile(vf.frame(18, crs=4326), vf.tmpdir())
    assert {".shp", ".shx", ".dbf", ".prj"} <= set(files)
    blob = vf.upload_shapefile(nonce, files)
    job = vf.run_ingest(drain, db, params(blob, "shp", f"shp_{nonce}"))
    check_loaded(db, job, f"shp_{nonce}", 18)
    assert {"name", "value"} <= set(vf.columns_of(db, "geo", f"shp_{nonce}"))


def test_zip_single_shapefile(db, drain, nonce):
    files = vf.shapefile(vf.frame(9), vf.tmpdir())
    blob = vf.upload(f"{nonce}/parcels.zip", vf.zip_of({f"data/parcels{s}": p for s, p in files.items()}))
    job = vf.run_ingest(drain, db, params(blob, "zip", f"zip_{nonce}"))
    check_loaded(db, job, f"zip_{nonce}", 9)


def test_zip_shp_name(db, drain, nonce):
    a = vf.shapefile(vf.frame(4), vf.tmpdir(), "a")
    b = vf.shapefile(vf.frame(6, vf.points(6)), vf.tmpdir(), "b")
    content = vf.zip_of({**{f"a{s}": p for s, p in a.items()}, **{f"b{s}": p for s, p in b.items()}})
    blob = vf.upload(f"{nonce}/two.zip", content)
    job = vf.run_ingest(drain, db, params(blob, "zip", f"zipn_{nonce}", converter_params={"shp_name": "b.shp"}))
    check_loaded(db, job, f"zipn_{nonce}", 6, "MULTIPOINT")
    failed = vf.run_ingest(drain, db, params(blob, "zip", f"zipm_{nonce}"))
    assert failed["status"] == "failed"
    assert "a.shp" in failed["error_details"]["error"] and "shp_name" in failed["error_details"]["error"]


def test_shp_encoding_param(db, drain, nonce):
    gdf = vf.frame(3)
    gdf["name"] = ["Zürich", "Besançon", "Málaga"]
    folder = vf.tmpdir()
    gdf.to_file(folder / "towns.shp", driver="ESRI Shapefile", encoding="latin1")
    files = {p.suffix: p for p in folder.glob("towns.*") if p.suffix != ".cpg"}
    blob = vf.upload_shapefile(nonce, files, "towns")
    job = vf.run_ingest(drain, db, params(blob, "shp", f"enc_{nonce}", converter_params={"encoding": "latin1"}))
    check_loaded(db, job, f"enc_{nonce}", 3)
    names = {r["name"] for r in db.execute(f"SELECT name FROM geo.enc_{nonce}").fetchall()}
    assert names == {"Zürich", "Besançon", "Málaga"}
