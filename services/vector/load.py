"""Stage 2 handler: COPY one GeoParquet chunk into the table, in the transaction that completes the task.

The rows commit together with the task's completion or not at all: a worker killed mid-COPY
leaves nothing behind, and a second delivery of a completed task is rolled back by the framework.
No DDL here: the table was created once, before the fan-out.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from config import get_settings
from core.errors import PermanentTaskError
from infrastructure.blob import get_blob_store
from services.context import TaskContext
from services.vector import columns as C
from services.vector import pgcopy
from services.vector.chunks import read_chunk
from services.vector.ewkb import to_ewkb
from services.vector.identifiers import GEOMETRY_COLUMN
from services.vector.table import qualified

LOAD_BATCH_ROWS = 20_000  # rows encoded at once; 50k raised a worker's peak RSS by ~50 MB at the same speed


def copy_table(
    conn: psycopg.Connection,
    schema: str,
    table: str,
    batches: Any,
    columns: list[dict[str, str]],
) -> tuple[int, pgcopy.EncodeStats]:
    """COPY (FORMAT BINARY) Arrow batches (geom as WKB + attribute columns) into schema.table."""
    stats = pgcopy.EncodeStats()
    names = [GEOMETRY_COLUMN] + [c["name"] for c in columns]
    target = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        qualified(schema, table), sql.SQL(", ").join(sql.Identifier(n) for n in names)
    )
    rows = 0
    with conn.cursor() as cur, cur.copy(target) as copy:
        copy.write(pgcopy.SIGNATURE)
        for batch in batches:
            if batch.num_rows == 0:
                continue
            geom = to_ewkb(batch.column(GEOMETRY_COLUMN))
            lengths = pc.binary_length(geom).to_numpy()
            for part in pgcopy.iter_slabs(lengths):
                n = part.stop - part.start
                fields = [pgcopy.encode_variable(geom.slice(part.start, n))]
                for col in columns:
                    if col["name"] in batch.schema.names:
                        values = C.cast_to(batch.column(col["name"]).slice(part.start, n), col["type"])
                    else:  # a column this chunk never saw (e.g. another KML layer's)
                        values = pa.nulls(n, C.ARROW_OF[C.final_type(col["type"])])
                    fields.append(pgcopy.encode_column(values, C.final_type(col["type"]), stats))
                copy.write(pgcopy.encode_rows(fields))
                rows += n
        copy.write(pgcopy.TRAILER)
    return rows, stats


def load_vector_chunk(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    started = time.monotonic()
    schema, table, path = params["schema"], params["table_name"], params["chunk_path"]
    container = params.get("intermediate_container") or get_settings().intermediate_container
    with tempfile.TemporaryDirectory(prefix="geoetl-load-") as tmp:
        chunk = read_chunk(get_blob_store(), container, path, Path(tmp))
        try:
            batches = chunk.iter_batches(batch_size=LOAD_BATCH_ROWS)
            rows, stats = copy_table(ctx.conn, schema, table, batches, params["columns"])
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError, psycopg.errors.ProgramLimitExceeded) as exc:
            # bad values, or rows wider than a PostgreSQL page (e.g. >1000 numeric columns): no retry helps
            raise PermanentTaskError(f"loading chunk '{path}' into {schema}.{table} failed: {exc}") from None
        finally:
            chunk.close()
    expected = params.get("rows")
    if expected is not None and rows != expected:
        raise PermanentTaskError(f"chunk '{path}' holds {rows} rows, stage 1 wrote {expected}")
    result: dict[str, Any] = {
        "rows_uploaded": rows,
        "chunk_index": params["chunk_index"],
        "chunk_path": path,
        "table": f"{schema}.{table}",
        "values_out_of_range": stats.out_of_range,
        "seconds": round(time.monotonic() - started, 3),
    }
    if "catalog" in params:  # what stage 3 needs from stage 1, carried by the first chunk
        result["catalog"] = params["catalog"]
    return result
