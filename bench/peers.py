"""The tools a user would otherwise pick, loading the same file into the same database.

(a) ogr2ogr with default options, (b) ogr2ogr tuned (no index during the load, big transactions,
then GiST + ANALYZE), (c) geopandas read_file + to_postgis. Each runs as a subprocess whose
whole process tree is sampled for memory; every table ends with a spatial index.

On the heavy real polygons, (b) loads the invalid geometries as they are (the baseline: what
`ogr2ogr` does) and (b') is the same with `-makevalid`, for reference. GDAL 3.6 (Debian 12) has no
Parquet driver: the ogr2ogr peers of the GeoParquet file then load the GeoPackage of the same rows,
and the result says so (`source`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from typing import Any

from bench import data, pg
from bench.cpu import CpuMeter, postgres_root
from bench.data import HEAVY, Dataset
from bench.rss import run_sampled

PEERS = ("ogr2ogr_default", "ogr2ogr_tuned", "ogr2ogr_makevalid", "geopandas")
PEER_LABELS = {
    "ogr2ogr_default": "(a) ogr2ogr default",
    "ogr2ogr_tuned": "(b) ogr2ogr tuned",
    "ogr2ogr_makevalid": "(b') ogr2ogr tuned -makevalid",
    "geopandas": "(c) geopandas",
    "geoetl": "(d) geoetl end to end",
}
# Which peers run on which dataset: the heavy real file is compared with ogr2ogr without and with repair.
HEAVY_PEERS = ("ogr2ogr_tuned", "ogr2ogr_makevalid")
# Rows above which geopandas is not run: it holds the whole file in memory, twice.
GEOPANDAS_MAX_ROWS = 2_000_000
# A lat/lon CSV has no geometry for GDAL until told which columns hold it; typed columns need AUTODETECT.
CSV_OPEN_OPTIONS = ["-oo", "X_POSSIBLE_NAMES=lon", "-oo", "Y_POSSIBLE_NAMES=lat", "-oo", "AUTODETECT_TYPE=YES",
                    "-a_srs", "EPSG:4326"]
TUNED_OPTIONS = ["-lco", "SPATIAL_INDEX=NONE", "-gt", "100000"]


def ogr2ogr_version() -> str:
    exe = shutil.which("ogr2ogr")
    if exe is None:
        return "not installed"
    return subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout.strip()


def gdal_has_driver(name: str) -> bool:
    """Whether the installed ogr2ogr's GDAL has a vector driver (`ogrinfo --formats`)."""
    exe = shutil.which("ogrinfo")
    if exe is None:
        return False
    out = subprocess.run([exe, "--formats"], capture_output=True, text=True, check=False).stdout
    return any(line.strip().startswith(name + " ") or line.strip().startswith(name + "(") for line in out.splitlines())


def peer_source(peer: str, ds: Dataset) -> tuple[Dataset, str | None]:
    """The file a peer loads for `ds` and, when it is not `ds` itself, why (said in the report)."""
    if ds.kind == "parquet" and peer.startswith("ogr2ogr") and not gdal_has_driver("Parquet"):
        gpkg = data.ensure_dataset("gpkg", ds.rows / data.BASE_ROWS["gpkg"], ds.seed, ds.path.parent)
        assert gpkg.rows == ds.rows
        return gpkg, (f"{ogr2ogr_version().split(',')[0]} has no Parquet driver: ogr2ogr loads the GeoPackage"
                      " of the same rows")
    return ds, None


def ogr2ogr_command(ds: Dataset, table: str, tuned: bool, makevalid: bool = False) -> tuple[list[str], dict[str, str]]:
    target, env = pg.gdal_pg_target()
    cmd = ["ogr2ogr", "-f", "PostgreSQL", target, str(ds.path), "-nln", f"{pg.PEER_SCHEMA}.{table}", "-overwrite"]
    if ds.kind == "csv":
        cmd += CSV_OPEN_OPTIONS
    if tuned:
        cmd += TUNED_OPTIONS
    if makevalid:
        cmd += ["-makevalid"]
    return cmd, env


def printable(cmd: list[str]) -> str:
    """The command as a user would type it (the connection string shortened)."""
    return " ".join("PG:..." if c.startswith("PG:") else (f"'{c}'" if " " in c else c) for c in cmd)


def run_peer(peer: str, ds: Dataset, table: str) -> dict[str, Any]:
    """Load `ds` into bench.<table> with one peer; returns timings, peak RSS and the table check."""
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer}")
    with pg.connect() as conn:
        pg.ensure_schema(conn)
        pg.drop_table(conn, pg.PEER_SCHEMA, table)
    result: dict[str, Any] = {"peer": peer, "dataset": ds.kind, "rows_expected": ds.rows, "table": table}
    ds, source_note = peer_source(peer, ds)
    if source_note:
        result["source"] = {"file": ds.path.name, "why": source_note}
    # PostgreSQL is metered; the peer's client is the machine's remaining busy time ("other")
    with CpuMeter({"postgres": postgres_root}) as meter:
        t0 = time.perf_counter()
        if peer == "geopandas":
            cmd = [sys.executable, "-m", "bench.gpd_load", str(ds.path), ds.kind, pg.PEER_SCHEMA, table]
            run = run_sampled(cmd, env=None)
            result["command"] = "geopandas.read_file(path) -> GeoDataFrame.to_postgis(table, engine)"
            if run.returncode == 0 and run.stdout.strip():
                result["phases"] = json.loads(run.stdout.strip().splitlines()[-1])
        else:
            cmd, env = ogr2ogr_command(ds, table, tuned=peer in ("ogr2ogr_tuned", "ogr2ogr_makevalid"),
                                       makevalid=peer == "ogr2ogr_makevalid")
            run = run_sampled(cmd, env=env)
            result["command"] = printable(cmd)
        result["load_s"] = round(run.seconds, 3)
        result["peak_rss_mb"] = {"client": run.peak_mb}
        if run.returncode != 0:
            result["error"] = run.stderr_tail or f"exit code {run.returncode}"
            return result
        index_s = 0.0
        with pg.connect() as conn:
            if peer in ("ogr2ogr_tuned", "ogr2ogr_makevalid"):
                t_idx = time.perf_counter()
                pg.create_spatial_index(conn, pg.PEER_SCHEMA, table, analyze=True)
                index_s = time.perf_counter() - t_idx
                result["post_sql"] = "CREATE INDEX ... USING GIST (<geometry>); ANALYZE"
            elif not pg.table_check(conn, pg.PEER_SCHEMA, table)["spatial_index"]:
                # every contender must end with a spatial index; say when one had to be added
                t_idx = time.perf_counter()
                pg.create_spatial_index(conn, pg.PEER_SCHEMA, table, analyze=False)
                index_s = time.perf_counter() - t_idx
                result["post_sql"] = "CREATE INDEX ... USING GIST (<geometry>) (the tool made none)"
        result["seconds"] = round(time.perf_counter() - t0, 3)
        meter.mark("index")
    result["index_s"] = round(index_s, 3)
    result["cpu"] = meter.result()
    with pg.connect() as conn:
        result["check"] = pg.table_check(conn, pg.PEER_SCHEMA, table)
    if result["check"]["rows"] != ds.rows:
        result["error"] = f"loaded {result['check']['rows']} rows, expected {ds.rows}"
    return result


def runs_on(peer: str, ds: Dataset) -> bool:
    """-makevalid is a reference for the heavy real polygons only (the generated ones are all valid)."""
    return peer != "ogr2ogr_makevalid" or ds.kind == HEAVY


def drop_peer_table(table: str) -> None:
    with pg.connect() as conn:
        pg.drop_table(conn, pg.PEER_SCHEMA, table)


def peer_available(peer: str, ds: Dataset) -> str | None:
    """Why a peer cannot run on this dataset here, or None."""
    if ds.kind == HEAVY and peer not in HEAVY_PEERS:
        return "the heavy real polygons are compared with ogr2ogr tuned, without and with -makevalid"
    if peer.startswith("ogr2ogr") and shutil.which("ogr2ogr") is None:
        return "ogr2ogr is not installed (make bench installs gdal-bin)"
    if peer == "geopandas" and ds.rows > GEOPANDAS_MAX_ROWS:
        return f"skipped above {GEOPANDAS_MAX_ROWS:,} rows: geopandas holds the whole file in memory"
    return None

