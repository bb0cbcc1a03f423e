"""Deterministic benchmark data: seeded polygons (GeoPackage, GeoJSON, Shapefile, GeoParquet), points (CSV).

Geometries are written as WKB built straight from numpy arrays (a regular octagon is a
fixed-size record), so 10M polygons never become 10M Python objects. Rows are produced
in batches whose RNG is seeded by (seed, kind, batch index): a larger scale starts with
exactly the rows of a smaller one, and the same seed always gives the same values.
The Shapefile and GeoParquet files hold the very rows of the GeoPackage (same batches, same RNG),
so their numbers compare format against format. The heavy real polygons are not generated: they are
the test corpus's countries-maritime-10m GeoJSON (installed by `scripts/bootstrap.sh --bench`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

# Bump when the generated content changes, so cached files are not reused by mistake.
GEN_VERSION = 1
DEFAULT_SEED = 20250101
BATCH_ROWS = 1_000_000
DATA_DIR = Path(__file__).resolve().parent / "data"

# Rows at --scale 1 (issues 7, 13): 1M polygons (GeoPackage, and the same rows as Shapefile and GeoParquet),
# 1M points (CSV), 200k features (GeoJSON).
BASE_ROWS = {"gpkg": 1_000_000, "csv": 1_000_000, "geojson": 200_000, "shp": 1_000_000, "parquet": 1_000_000}
LAYER = {"gpkg": "polygons", "csv": "points", "geojson": "features", "shp": "polygons", "parquet": "polygons"}
KIND_ID = {"gpkg": 1, "csv": 2, "geojson": 3}
# Formats that hold another dataset's rows: their batches are that dataset's (same RNG stream).
SAME_ROWS_AS = {"shp": "gpkg", "parquet": "gpkg"}
# GDAL's Parquet writer's default row group; GeoParquet files in the wild are cut this way or coarser.
PARQUET_ROW_GROUP = 65_536
SHAPEFILE_SIDECARS = (".shx", ".dbf", ".prj", ".cpg")
# The real file (not generated, not scaled): the corpus's heaviest polygons, many of them invalid.
HEAVY = "maritime"
HEAVY_PACKAGE = "@geo-maps/countries-maritime-10m"
CORPUS_DIR = Path(__file__).resolve().parent.parent / ".corpus" / "node_modules"

VERTICES = 8
CATEGORIES = ["residential", "commercial", "industrial", "agricultural", "forest", "water",
              "park", "transport", "education", "health", "retail", "vacant"]
DAY_2000 = 10_957  # days from 1970-01-01 to 2000-01-01
DAY_2026 = 20_454  # days from 1970-01-01 to 2026-01-01
# GDAL stamps GeoPackages with the current time unless told otherwise; a fixed one keeps bytes stable.
FIXED_DATE = "2025-01-01T00:00:00.000Z"


@dataclass(frozen=True)
class Dataset:
    """One generated file and what a loader needs to know about it."""

    kind: str
    path: Path
    rows: int
    layer: str
    seed: int

    @property
    def files(self) -> list[Path]:
        """The file and, for a Shapefile, the sidecars uploaded with it."""
        if self.kind != "shp":
            return [self.path]
        return [self.path, *(self.path.with_suffix(ext) for ext in SHAPEFILE_SIDECARS
                             if self.path.with_suffix(ext).exists())]

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def rows_for(kind: str, scale: float) -> int:
    """Feature count of a dataset at a scale (at least one row)."""
    return max(1, round(BASE_ROWS[kind] * scale))


def _rng(seed: int, kind: str, batch: int) -> np.random.Generator:
    kind = SAME_ROWS_AS.get(kind, kind)
    return np.random.default_rng([seed, KIND_ID[kind], batch])


def _batches(rows: int) -> list[tuple[int, int]]:
    """(batch index, rows in it): fixed-size batches so any prefix of the data is scale-independent."""
    out, start, i = [], 0, 0
    while start < rows:
        n = min(BATCH_ROWS, rows - start)
        out.append((i, n))
        start += n
        i += 1
    return out


def octagon_wkb(cx: np.ndarray, cy: np.ndarray, radius: np.ndarray, rotation: np.ndarray) -> pa.BinaryArray:
    """Little-endian WKB polygons, one closed 8-vertex ring each, built without per-row Python work."""
    n = len(cx)
    angles = rotation[:, None] + np.arange(VERTICES) * (2 * np.pi / VERTICES)
    ring = np.empty((n, VERTICES + 1, 2), dtype="<f8")
    ring[:, :VERTICES, 0] = cx[:, None] + radius[:, None] * np.cos(angles)
    ring[:, :VERTICES, 1] = cy[:, None] + radius[:, None] * np.sin(angles)
    ring[:, VERTICES] = ring[:, 0]
    record = np.dtype([("order", "u1"), ("type", "<u4"), ("rings", "<u4"), ("points", "<u4"),
                       ("xy", "<f8", ((VERTICES + 1) * 2,))])
    buf = np.empty(n, dtype=record)
    buf["order"], buf["type"], buf["rings"], buf["points"] = 1, 3, 1, VERTICES + 1
    buf["xy"] = ring.reshape(n, -1)
    size = record.itemsize
    offsets = pa.py_buffer((np.arange(n + 1, dtype=np.int32) * size).tobytes())
    return pa.Array.from_buffers(pa.binary(), n, [None, offsets, pa.py_buffer(buf.tobytes())])


def _common_attributes(rng: np.random.Generator, start: int, n: int) -> dict[str, pa.Array]:
    ids = np.arange(start + 1, start + n + 1, dtype=np.int64)
    name = pc.binary_join_element_wise("feature-", pc.cast(pa.array(ids), pa.string()), "")
    cat_idx = rng.integers(0, len(CATEGORIES), n, dtype=np.int32)
    category = pc.take(pa.array(CATEGORIES), pa.array(cat_idx))
    days = rng.integers(DAY_2000, DAY_2026, n, dtype=np.int32)
    return {"id": pa.array(ids), "name": name, "category": category,
            "survey_date": pa.array(days, pa.int32()).cast(pa.date32())}


def polygon_batch(seed: int, kind: str, batch: int, start: int, n: int) -> pa.Table:
    """One batch of polygons with 7 attributes (int, float, text, date) and a WKB `geom` column."""
    rng = _rng(seed, kind, batch)
    cx = rng.uniform(-10.0, 30.0, n)
    cy = rng.uniform(35.0, 60.0, n)
    radius = rng.uniform(0.0005, 0.005, n)
    rotation = rng.uniform(0.0, np.pi / 4, n)
    attrs = _common_attributes(rng, start, n)
    # area of a regular octagon, degrees -> m² with a local scale (approximate, it is only an attribute)
    m_per_deg = 111_320.0
    area = 2 * np.sqrt(2) * (radius * m_per_deg) ** 2 * np.cos(np.radians(cy))
    return pa.table({
        "id": attrs["id"],
        "population": pa.array(rng.integers(0, 5_000, n, dtype=np.int32)),
        "area_m2": pa.array(np.round(area, 2)),
        "ratio": pa.array(np.round(rng.random(n), 6)),
        "name": attrs["name"],
        "category": attrs["category"],
        "survey_date": attrs["survey_date"],
        "geom": octagon_wkb(cx, cy, radius, rotation),
    })


def point_batch(seed: int, batch: int, start: int, n: int) -> pa.Table:
    """One batch of CSV points: lat/lon columns plus int, float, text and date attributes."""
    rng = _rng(seed, "csv", batch)
    lon = np.round(rng.uniform(-10.0, 30.0, n), 6)
    lat = np.round(rng.uniform(35.0, 60.0, n), 6)
    attrs = _common_attributes(rng, start, n)
    return pa.table({
        "id": attrs["id"],
        "lat": pa.array(lat),
        "lon": pa.array(lon),
        "count": pa.array(rng.integers(0, 1_000, n, dtype=np.int32)),
        "value": pa.array(np.round(rng.normal(100.0, 15.0, n), 3)),
        "name": attrs["name"],
        "category": attrs["category"],
        "survey_date": attrs["survey_date"],
    })


def iter_batches(kind: str, rows: int, seed: int):
    """Yield the dataset's arrow tables batch by batch (memory stays at one batch)."""
    start = 0
    for batch, n in _batches(rows):
        yield point_batch(seed, batch, start, n) if kind == "csv" else polygon_batch(seed, kind, batch, start, n)
        start += n


def table_digest(kind: str, rows: int, seed: int) -> str:
    """SHA-256 over the generated values (not the file): what determinism means for every format."""
    h = hashlib.sha256()
    for tbl in iter_batches(kind, rows, seed):
        for col in tbl.columns:
            for chunk in col.chunks:
                for buf in chunk.buffers():
                    if buf is not None:
                        h.update(buf)
    return h.hexdigest()


def _write(kind: str, path: Path, rows: int, seed: int) -> None:
    import pyogrio

    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": FIXED_DATE})
    if kind == "csv":
        with pacsv.CSVWriter(str(path), point_batch(seed, 0, 0, 0).schema) as writer:
            for tbl in iter_batches(kind, rows, seed):
                writer.write_table(tbl)
        return
    if kind == "parquet":
        _write_geoparquet(path, rows, seed)
        return
    driver = {"gpkg": "GPKG", "geojson": "GeoJSON", "shp": "ESRI Shapefile"}[kind]
    # a Shapefile gets a .cpg saying UTF-8 (as GDAL writes by default when told the encoding)
    layer_options = {"RFC7946": "YES"} if kind == "geojson" else {"ENCODING": "UTF-8"} if kind == "shp" else None
    for i, tbl in enumerate(iter_batches(kind, rows, seed)):
        if kind == "shp":  # a DBF field name has at most 10 letters: GDAL writes survey_date as survey_dat
            tbl = tbl.rename_columns([c[:10] for c in tbl.column_names])
        pyogrio.write_arrow(
            tbl, path, layer=LAYER[kind], driver=driver, geometry_name="geom", geometry_type="Polygon",
            crs="EPSG:4326", append=i > 0, layer_options=layer_options,
        )


def geoparquet_metadata() -> bytes:
    """GeoParquet 1.0 `geo` metadata: WKB polygons in `geom`, EPSG:4326 as PROJJSON (lon/lat as written)."""
    import json

    from pyproj import CRS

    meta = {"version": "1.0.0", "primary_column": "geom",
            "columns": {"geom": {"encoding": "WKB", "geometry_types": ["Polygon"],
                                 "crs": CRS.from_epsg(4326).to_json_dict()}}}
    return json.dumps(meta, sort_keys=True).encode()


def _write_geoparquet(path: Path, rows: int, seed: int) -> None:
    """The GeoPackage's rows as GeoParquet, written by pyarrow (row groups of PARQUET_ROW_GROUP rows)."""
    import pyarrow.parquet as pq

    schema = polygon_batch(seed, "parquet", 0, 0, 1).schema.with_metadata({b"geo": geoparquet_metadata()})
    with pq.ParquetWriter(str(path), schema, compression="snappy") as writer:
        for tbl in iter_batches("parquet", rows, seed):
            writer.write_table(tbl.replace_schema_metadata(schema.metadata), row_group_size=PARQUET_ROW_GROUP)


def heavy_dataset(corpus_dir: Path = CORPUS_DIR) -> Dataset:
    """The corpus's countries-maritime-10m FeatureCollection (its feature count read by GDAL)."""
    import pyogrio

    path = corpus_dir / HEAVY_PACKAGE / "map.geo.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run scripts/bootstrap.sh --bench (it installs the corpus)")
    info = pyogrio.read_info(path, force_feature_count=True)
    return Dataset(kind=HEAVY, path=path, rows=int(info["features"]), layer=str(info.get("layer_name") or ""), seed=0)


def cached_path(kind: str, rows: int, seed: int, data_dir: Path = DATA_DIR) -> Path:
    return data_dir / f"{LAYER[kind]}_{rows}_seed{seed}_v{GEN_VERSION}.{kind}"


def ensure_dataset(kind: str, scale: float, seed: int = DEFAULT_SEED, data_dir: Path = DATA_DIR) -> Dataset:
    """The dataset's file, generated once and cached (keyed by row count, seed and generator version)."""
    rows = rows_for(kind, scale)
    path = cached_path(kind, rows, seed, data_dir)
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        # a Shapefile is several files: written in a folder of their own, moved in with the .shp last
        tmp_dir = data_dir / f".{path.stem}.{os.getpid()}.tmp"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir()
        try:
            tmp = tmp_dir / path.name
            _write(kind, tmp, rows, seed)
            for side in sorted(tmp_dir.iterdir(), key=lambda f: f.suffix == path.suffix):
                os.replace(side, data_dir / (path.stem + side.suffix))
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return Dataset(kind=kind, path=path, rows=rows, layer=LAYER[kind], seed=seed)
