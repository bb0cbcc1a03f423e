"""GeoParquet chunks in the intermediate container: written by stage 1, read by stage 2.

Parquet with a WKB `geom` column and the GeoParquet `geo` metadata: safe to read (no code runs),
compact, and readable by other tools. Chunks live under `<job_id>/r<run>/` and are deleted when
the job ends.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import PermanentTaskError
from infrastructure.blob import BlobStore
from services.vector import columns as C
from services.vector.geometry import MULTI_TYPE
from services.vector.identifiers import GEOMETRY_COLUMN, REPAIR_COLUMN

AUTO_MAX_ROWS = 100_000
AUTO_MIN_ROWS = 25_000
AUTO_TARGET_CHUNKS = 8
AUTO_MAX_BYTES = 64 * 1024**2  # geometry bytes per chunk in auto mode: bounds worker memory
MAX_CHUNKS = 10_000
CHUNK_COMPRESSION = "snappy"


def too_many_chunks(label: str, chunk_size: int) -> PermanentTaskError:
    return PermanentTaskError(
        f"{label}: chunk_size {chunk_size} would make more than {MAX_CHUNKS} chunks; "
        "use a larger chunk_size (or leave it out for an automatic one)"
    )


def chunk_prefix(job_id: str, run: int) -> str:
    return f"{job_id}/r{run}/"


def auto_chunk_size(feature_count: int) -> int:
    """One chunk for small files, up to ~8 chunks for mid-size ones, 100k rows per chunk for big ones."""
    if feature_count < 0:
        return AUTO_MAX_ROWS
    return max(AUTO_MIN_ROWS, min(AUTO_MAX_ROWS, math.ceil(feature_count / AUTO_TARGET_CHUNKS)))


@lru_cache(maxsize=1)
def _wgs84_projjson() -> dict[str, Any]:
    from pyproj import CRS

    return CRS.from_epsg(4326).to_json_dict()


def geo_metadata(families: set[str]) -> bytes:
    types = sorted(MULTI_TYPE[f] for f in families)
    column = {"encoding": "WKB", "geometry_types": types, "crs": _wgs84_projjson()}
    doc = {"version": "1.1.0", "primary_column": GEOMETRY_COLUMN, "columns": {GEOMETRY_COLUMN: column}}
    return json.dumps(doc).encode()


class ChunkWriter:
    """Collects prepared batches and writes a chunk every `chunk_size` rows (or byte cap in auto mode).

    A written chunk is uploaded by a background thread while the next one is prepared (the upload waits
    on the blob service, not on this CPU); at most one upload is in flight, and it streams from a file,
    so memory stays bounded. `close()` waits for the last upload; `discard()` after an error.
    """

    def __init__(
        self, store: BlobStore, container: str, prefix: str, chunk_size: int, max_bytes: int | None, label: str
    ) -> None:
        self.store, self.container, self.prefix = store, container, prefix
        self.chunk_size, self.max_bytes, self.label = chunk_size, max_bytes, label
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.pending_bytes = 0
        self.chunks: list[dict[str, Any]] = []
        self.rows = 0
        self.types: dict[str, str] = {}
        self.families: set[str] = set()
        self._folder = Path(tempfile.mkdtemp(prefix="geoetl-chunk-"))
        self._uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-upload")
        self._pending: Future[None] | None = None

    def add(self, table: pa.Table, families: set[str]) -> None:
        if table.num_rows == 0:
            return
        for name, field in zip(table.column_names, table.schema, strict=True):
            if name not in (GEOMETRY_COLUMN, REPAIR_COLUMN):
                self.types[name] = C.merge_types(self.types.get(name, C.NULL), C.pg_type_of(field.type))
        self.families |= families
        self.pending.append(table)
        self.pending_rows += table.num_rows
        self.pending_bytes += table.column(GEOMETRY_COLUMN).nbytes
        while self.pending_rows >= self.chunk_size or (self.max_bytes and self.pending_bytes >= self.max_bytes):
            self._flush(self.chunk_size)

    def close(self) -> None:
        try:
            while self.pending_rows:
                self._flush(self.chunk_size)
            self._wait()
        finally:
            self.discard()

    def discard(self) -> None:
        """Stop the uploader and delete local files (idempotent)."""
        self._uploader.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self._folder, ignore_errors=True)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # an upload error surfaces here, in the task

    def _upload(self, name: str, path: Path) -> None:
        try:
            self.store.upload_file(self.container, name, path)
        finally:
            path.unlink(missing_ok=True)

    def _conformed(self) -> pa.Table:
        """Pending batches as one table, each column cast to the type merged so far."""
        tables = []
        for t in self.pending:
            arrays = [
                t.column(n) if n in (GEOMETRY_COLUMN, REPAIR_COLUMN) else C.cast_to(t.column(n), self.types[n])
                for n in t.column_names
            ]
            tables.append(pa.table(arrays, names=t.column_names))
        return pa.concat_tables(tables, promote_options="permissive")

    def _flush(self, rows: int) -> None:
        table = self._conformed()
        head, rest = table.slice(0, rows), table.slice(rows)
        self.pending = [rest] if rest.num_rows else []
        self.pending_rows = rest.num_rows
        self.pending_bytes = rest.column(GEOMETRY_COLUMN).nbytes if rest.num_rows else 0
        self._write(head)

    def _write(self, table: pa.Table) -> None:
        if len(self.chunks) >= MAX_CHUNKS:
            raise too_many_chunks(self.label, self.chunk_size)
        meta = dict(table.schema.metadata or {}) | {b"geo": geo_metadata(self.families)}
        table = table.replace_schema_metadata(meta)
        name = f"{self.prefix}chunk_{len(self.chunks):05d}.parquet"
        path = self._folder / f"chunk_{len(self.chunks):05d}.parquet"
        # the geometry column is written plain: a dictionary attempt, min/max statistics and a compressed
        # copy of its pages each held another copy of a huge feature (write peak +190 MB on earth-seas-10m's
        # 28 MB WKB, +55 MB plain; WKB coordinates barely compress anyway)
        others = [n for n in table.column_names if n != GEOMETRY_COLUMN]
        pq.write_table(
            table,
            path,
            compression={n: CHUNK_COMPRESSION for n in others} | {GEOMETRY_COLUMN: "none"},
            use_dictionary=others,
            write_statistics=others,
            row_group_size=50_000,
        )
        self._wait()
        self._pending = self._uploader.submit(self._upload, name, path)
        self.chunks.append({"path": name, "rows": table.num_rows})
        self.rows += table.num_rows


def read_chunk(store: BlobStore, container: str, name: str, folder: Path) -> pq.ParquetFile:
    """Download a chunk to folder and open it, read row group by row group (not memory-mapped: the mapped
    pages of the whole file would count in the worker's resident set; not pre-buffered: a huge feature's
    column chunk was held twice, read and decoded)."""
    local = folder / "chunk.parquet"
    if store.blob_size(container, name) is None:
        raise PermanentTaskError(f"chunk '{name}' is missing from container '{container}'")
    store.download_to_file(container, name, local)
    return pq.ParquetFile(local, memory_map=False, pre_buffer=False)
