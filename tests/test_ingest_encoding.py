"""Shapefile text encodings as GDAL decides them (.cpg, then the DBF's language-driver byte, then
ISO-8859-1), converter_params.encoding winning over them, and the job result naming the one used."""

from __future__ import annotations

import pyogrio

from tests import corpus
from tests import vector_files as vf

STEM = "naturalearth_lowres"


def natural_earth(without: tuple[str, ...] = ()) -> dict[str, bytes]:
    folder = corpus.pyogrio_fixture(STEM)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix not in without}


def expected_names() -> list[str]:
    """What GDAL (pyogrio, decoding as it decides) reads from the fixture."""
    return sorted(pyogrio.read_dataframe(corpus.pyogrio_fixture(STEM) / f"{STEM}.shp")["name"])


def loaded_names(db, table):
    return sorted(r["name"] for r in db.execute(f"SELECT name FROM geo.{table}").fetchall())


def test_zipped_shapefile_without_cpg_is_read_as_iso_8859_1(db, drain, nonce):
    blob = vf.upload(f"{nonce}/ne.zip", vf.zip_of(natural_earth(without=(".cpg",))))
    table = f"necpg_{nonce}"
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "zip", "table_name": table})
    assert job["status"] == "completed", job["error_details"]
    names = loaded_names(db, table)
    assert "Côte d'Ivoire" in names and names == expected_names()
    assert job["result_data"]["summary"]["encoding"] == "ISO-8859-1"


def test_shapefile_with_its_cpg_names_the_declared_encoding(db, drain, nonce):
    for name, content in natural_earth().items():
        vf.upload(f"{nonce}/{name}", content)
    table = f"neshp_{nonce}"
    job = vf.run_ingest(drain, db, {"blob_name": f"{nonce}/{STEM}.shp", "file_extension": "shp", "table_name": table})
    assert job["status"] == "completed", job["error_details"]
    assert loaded_names(db, table) == expected_names()
    assert job["result_data"]["summary"]["encoding"] == "ISO-8859-1 (.cpg)"


def test_encoding_parameter_overrides_what_gdal_decides(db, drain, nonce):
    """cp1252 and ISO-8859-1 agree on these letters; the result says which one was asked for."""
    blob = vf.upload(f"{nonce}/ne.zip", vf.zip_of(natural_earth(without=(".cpg",))))
    table = f"neenc_{nonce}"
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "zip", "table_name": table,
                                    "converter_params": {"encoding": "cp1252"}})
    assert job["status"] == "completed", job["error_details"]
    assert job["result_data"]["summary"]["encoding"] == "cp1252"
    assert loaded_names(db, table) == expected_names()


def test_dbf_language_driver_byte_decides_without_cpg(db, drain, nonce):
    """LDID 0x65 is code page 866 (Cyrillic DOS): bytes a Latin-1 reading would turn into other letters."""
    gdf = vf.frame(2)
    gdf["name"] = ["Москва", "Київ"]
    folder = vf.tmpdir()
    gdf.to_file(folder / "towns.shp", driver="ESRI Shapefile", encoding="cp866")
    files = {p.suffix: p for p in folder.glob("towns.*") if p.suffix != ".cpg"}
    dbf = bytearray(files[".dbf"].read_bytes())
    dbf[29] = 0x65
    files[".dbf"].write_bytes(bytes(dbf))
    blob = vf.upload_shapefile(nonce, files, "towns")
    table = f"ldid_{nonce}"
    job = vf.run_ingest(drain, db, {"blob_name": blob, "file_extension": "shp", "table_name": table})
    assert job["status"] == "completed", job["error_details"]
    assert loaded_names(db, table) == sorted(["Москва", "Київ"])
    assert "866" in job["result_data"]["summary"]["encoding"]
