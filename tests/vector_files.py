"""Vector files the ingest tests make, uploads to the test Azurite, and small helpers to run an ingest."""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from shapely.geometry import Point, box

# ---------------------------------------------------------------- geometries


def squares(n: int, size: float = 0.01, x0: float = 10.0, y0: float = 50.0) -> list[Any]:
    """n small non-overlapping squares in a row of rows, around (x0, y0)."""
    cols = int(np.ceil(np.sqrt(n)))
    return [box(x0 + (i % cols) * size * 2, y0 + (i // cols) * size * 2,
                x0 + (i % cols) * size * 2 + size, y0 + (i // cols) * size * 2 + size) for i in range(n)]


def bowtie(x: float = 0.0, y: float = 0.0) -> Any:
    """A self-intersecting polygon: invalid; make_valid turns it into two triangles."""
    return shapely.Polygon([(x, y), (x + 2, y + 2), (x + 2, y), (x, y + 2), (x, y)])


def spiky(x: float = 0.0, y: float = 0.0) -> Any:
    """A square with a zero-width spike: make_valid gives polygon + line; the polygon part is kept."""
    return shapely.Polygon([(x, y), (x + 2, y), (x + 3, y), (x + 2, y), (x + 2, y + 2), (x, y + 2), (x, y)])


# ---------------------------------------------------------------- writers


def geojson(features: list[tuple[Any, dict[str, Any]]], crs: str | None = None) -> bytes:
    """A FeatureCollection; geometry None gives a null geometry. Optional (legacy) crs member."""
    doc: dict[str, Any] = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": props,
             "geometry": None if g is None else shapely.geometry.mapping(g)}
            for g, props in features
        ],
    }
    if crs:
        doc["crs"] = {"type": "name", "properties": {"name": crs}}
    return json.dumps(doc).encode()


def frame(n: int, geoms: list[Any] | None = None, crs: Any = 4326) -> gpd.GeoDataFrame:
    geoms = geoms if geoms is not None else squares(n)
    return gpd.GeoDataFrame(
        {"name": [f"feature {i}" for i in range(len(geoms))], "value": np.arange(len(geoms), dtype=np.int64)},
        geometry=geoms, crs=crs,
    )


def gpkg(layers: dict[str, gpd.GeoDataFrame], folder: Path) -> Path:
    path = folder / "data.gpkg"
    for name, gdf in layers.items():
        gdf.to_file(path, layer=name, driver="GPKG")
    return path


def shapefile(gdf: gpd.GeoDataFrame, folder: Path, stem: str = "parcels") -> dict[str, Path]:
    """The files of a Shapefile by suffix (.shp, .shx, .dbf, .prj, .cpg)."""
    folder.mkdir(parents=True, exist_ok=True)
    gdf.to_file(folder / f"{stem}.shp", driver="ESRI Shapefile")
    return {p.suffix: p for p in folder.glob(f"{stem}.*")}


def zip_of(files: dict[str, bytes | Path]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(name, content.read_bytes() if isinstance(content, Path) else content)
    return buf.getvalue()


def kml(folders: dict[str, list[tuple[str, str]]]) -> bytes:
    """KML with one Folder per entry, each holding (name, coordinates-element) placemarks."""
    parts = ['<?xml version="1.0" encoding="UTF-8"?>', '<kml xmlns="http://www.opengis.net/kml/2.2"><Document>']
    for folder, placemarks in folders.items():
        parts.append(f"<Folder><name>{folder}</name>")
        for name, geometry in placemarks:
            parts.append(f"<Placemark><name>{name}</name>{geometry}</Placemark>")
        parts.append("</Folder>")
    parts.append("</Document></kml>")
    return "\n".join(parts).encode()


def kml_point(x: float, y: float) -> str:
    return f"<Point><coordinates>{x},{y},0</coordinates></Point>"


def kml_square(x: float, y: float, size: float = 0.01) -> str:
    ring = f"{x},{y},0 {x + size},{y},0 {x + size},{y + size},0 {x},{y + size},0 {x},{y},0"
    return f"<Polygon><outerBoundaryIs><LinearRing><coordinates>{ring}</coordinates></LinearRing></outerBoundaryIs></Polygon>"  # noqa: E501


def csv_text(header: list[str], rows: list[list[Any]]) -> bytes:
    def cell(v: Any) -> str:
        s = "" if v is None else str(v)
        return f'"{s}"' if ("," in s or '"' in s) else s

    lines = [",".join(header)] + [",".join(cell(v) for v in r) for r in rows]
    return ("\n".join(lines) + "\n").encode()


# ---------------------------------------------------------------- blob storage and running


def source_container() -> str:
    from config import get_settings

    return get_settings().source_container


def upload(name: str, content: bytes | Path) -> str:
    """Upload to the source container; returns the blob name."""
    from infrastructure.blob import get_blob_store

    store = get_blob_store()
    if isinstance(content, Path):
        store.upload_file(source_container(), name, content)
    else:
        store.write_bytes(source_container(), name, content)
    return name


def upload_shapefile(prefix: str, files: dict[str, Path], stem: str = "parcels") -> str:
    for suffix, path in files.items():
        upload(f"{prefix}/{stem}{suffix}", path)
    return f"{prefix}/{stem}.shp"


def tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="geoetl-test-"))


def job_row(db: Any, job_id: str) -> dict[str, Any]:
    return db.execute("SELECT * FROM app.jobs WHERE job_id = %s", [job_id]).fetchone()


def run_ingest(drain: Any, db: Any, params: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    """Submit and drain an ingest in-process; returns the job row."""
    from tests.helpers import submit

    job_id = submit("ingest_vector", params)
    drain(job_id, timeout=timeout)
    return job_row(db, job_id)


def columns_of(db: Any, schema: str, table: str) -> dict[str, str]:
    rows = db.execute(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        [schema, table],
    ).fetchall()
    return {r["column_name"]: r["data_type"] for r in rows}


def geometry_checks(db: Any, schema: str, table: str) -> dict[str, Any]:
    """Row count, invalid count, SRIDs and geometry types of a loaded table."""
    from psycopg import sql

    q = sql.SQL(
        "SELECT count(*) AS n, count(*) FILTER (WHERE NOT ST_IsValid(geom)) AS invalid,"
        " array_agg(DISTINCT ST_SRID(geom)) AS srids, array_agg(DISTINCT GeometryType(geom)) AS types,"
        " bool_or(ST_NDims(geom) > 2) AS has_z FROM {}.{}"
    ).format(sql.Identifier(schema), sql.Identifier(table))
    return db.execute(q).fetchone()


def table_exists(db: Any, schema: str, table: str) -> bool:
    return db.execute("SELECT to_regclass(%s) IS NOT NULL AS e", [f"{schema}.{table}"]).fetchone()["e"]


def chunk_blobs(job_id: str) -> list[str]:
    from azure.storage.blob import BlobServiceClient

    from config import get_settings

    s = get_settings()
    client = BlobServiceClient.from_connection_string(s.azure_storage_connection_string.get_secret_value())
    cc = client.get_container_client(s.intermediate_container)
    return [b.name for b in cc.list_blobs(name_starts_with=f"{job_id}/")]


def points(n: int, x0: float = 0.0, y0: float = 0.0) -> list[Any]:
    return [Point(x0 + i * 0.001, y0 + i * 0.001) for i in range(n)]


@contextmanager
def slowed_inserts(db: Any, table: str, *, per: str, sleep_sql: str) -> Iterator[None]:
    """While inside, the table a job creates as geo.<table>, and every staging table jobs load into, gets a
    trigger that runs sleep_sql on every insert (per "ROW" or "STATEMENT"), so that a COPY lasts long
    enough for a kill to land inside it."""
    name = f"slow_{table}"
    result = "NEW" if per == "ROW" else "NULL"
    db.execute(f"""
        CREATE OR REPLACE FUNCTION app.{name}_insert() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN {sleep_sql} RETURN {result}; END $$;
        CREATE OR REPLACE FUNCTION app.{name}_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
        DECLARE r record;
        BEGIN
            FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE command_tag = 'CREATE TABLE' LOOP
                IF r.object_identity = 'geo.{table}' OR r.object_identity LIKE 'geoetl\\_staging.j\\_%' THEN
                    EXECUTE 'CREATE TRIGGER slow BEFORE INSERT ON ' || r.object_identity
                            || ' FOR EACH {per} EXECUTE FUNCTION app.{name}_insert()';
                END IF;
            END LOOP;
        END $$;
        CREATE EVENT TRIGGER {name} ON ddl_command_end EXECUTE FUNCTION app.{name}_ddl();
    """)
    try:
        yield
    finally:
        db.execute(f"DROP EVENT TRIGGER IF EXISTS {name}")
