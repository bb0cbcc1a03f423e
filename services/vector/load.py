"""Stage 2 handler: COPY one part into the table, in the transaction that completes the task.

A part is what stage 1 planned (parts.py: a GeoPackage fid range, a Shapefile record range), which
this task reads and prepares itself, or a GeoParquet chunk stage 1 converted. Either way the rows
commit together with the task's completion or not at all: a worker killed mid-COPY leaves nothing behind, and a second
delivery of a completed task is rolled back by the framework. No DDL here: the table was created
once, before the fan-out.
"""

from __future__ import annotations

import struct
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import Copy, sql

from config import get_settings
from core.errors import PermanentTaskError
from infrastructure.blob import get_blob_store
from services.context import TaskContext, checkpoint
from services.vector import columns as C
from services.vector import pgcopy
from services.vector.chunks import read_chunk
from services.vector.ewkb import ewkb_pieces, to_ewkb
from services.vector.geometry import GeometryStats, repair_marked
from services.vector.identifiers import GEOMETRY_COLUMN, REPAIR_COLUMN
from services.vector.parts import PartKind, part_kind
from services.vector.prepare import SourceReader, geometry_options
from services.vector.progress import TaskProgress
from services.vector.slices import check_families
from services.vector.source import TEMP_PREFIX
from services.vector.table import qualified

# a geometry this large is written to the COPY from its Arrow buffer: encoding it (EWKB header rewrite,
# length prefix, row join) made three copies of it (+83 MB for earth-seas-10m's 28 MB feature)
STREAMED_BYTES = 8 * 1024**2
LOAD_BATCH_ROWS = 20_000  # rows encoded at once; 50k raised a worker's peak RSS by ~50 MB at the same speed
COPY_ERRORS = (psycopg.errors.DataError, psycopg.errors.IntegrityError, psycopg.errors.ProgramLimitExceeded)


class CopySink:
    """Prepared Arrow tables (geom as WKB + attributes) into an open binary COPY; see copy_into.

    Each column is cast to the table's type; a column a table never saw (another KML layer's) is NULL.
    With `families`, a geometry of any other family is refused (a part must hold what its file declares,
    since the column type was chosen from that declaration; `rule` says why in the message).
    """

    def __init__(
        self,
        copy: Copy,
        columns: list[dict[str, str]],
        families: list[str] | None,
        label: str,
        declared: str | None,
        rule: str | None = None,
    ) -> None:
        self._copy, self.columns = copy, columns
        self.families, self.label, self.declared, self.rule = families, label, declared, rule
        self.known = {c["name"] for c in columns}
        self.stats = pgcopy.EncodeStats()
        self.rows = 0

    def add(self, table: pa.Table | pa.RecordBatch, families: set[str] | None = None) -> None:
        checkpoint()  # a cancelled job's task stops between batches
        if self.families is not None and families:
            check_families(families, self.families, self.label, self.declared, self.rule)
        unknown = [n for n in table.schema.names if n != GEOMETRY_COLUMN and n not in self.known]
        if unknown:
            raise PermanentTaskError(f"{self.label}: column(s) {', '.join(unknown)} are not in the table's columns")
        if table.num_rows == 0:
            return
        wkb = table.column(GEOMETRY_COLUMN)
        lengths = pc.binary_length(wkb).to_numpy(zero_copy_only=False)
        for part in pgcopy.iter_slabs(lengths, alone=STREAMED_BYTES):
            n = part.stop - part.start
            fields = []
            for col in self.columns:
                if col["name"] in table.schema.names:
                    values = C.cast_to(table.column(col["name"]).slice(part.start, n), col["type"])
                else:
                    values = pa.nulls(n, C.ARROW_OF[C.final_type(col["type"])])
                fields.append(pgcopy.encode_column(values, C.final_type(col["type"]), self.stats))
            geom = wkb.slice(part.start, n)
            pieces = ewkb_pieces(geom) if n == 1 and lengths[part.start] >= STREAMED_BYTES else None
            if pieces is None:
                self._copy.write(pgcopy.encode_rows([*fields, pgcopy.encode_variable(to_ewkb(geom))]))
            else:  # the geometry field after the others, its body written from where it is
                header, body = pieces
                self._copy.write(pgcopy.encode_rows(fields, len(fields) + 1) if fields else b"\0\1")
                self._copy.write(struct.pack(">i", len(header) + len(body)) + header)
                self._copy.write(body)
            self.rows += n


@contextmanager
def copy_into(
    conn: psycopg.Connection,
    schema: str,
    table: str,
    columns: list[dict[str, str]],
    families: list[str] | None = None,
    label: str = "",
    declared: str | None = None,
    rule: str | None = None,
) -> Iterator[CopySink]:
    """One COPY (FORMAT BINARY) into schema.table; it ends when the block ends (aborted if it raised)."""
    names = [c["name"] for c in columns] + [GEOMETRY_COLUMN]  # geometry last: a huge one is streamed
    target = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        qualified(schema, table), sql.SQL(", ").join(sql.Identifier(n) for n in names)
    )
    with conn.cursor() as cur, cur.copy(target) as copy:
        copy.write(pgcopy.SIGNATURE)
        yield CopySink(copy, columns, families, label, declared, rule)
        copy.write(pgcopy.TRAILER)


def load_vector_chunk(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    started = time.monotonic()
    schema, table = params["schema"], params["table_name"]
    kind = part_kind(params)
    try:
        result = _load_prepared(params, ctx) if kind is None else _load_part(params, kind, ctx)
    except COPY_ERRORS as exc:
        # bad values, or rows wider than a PostgreSQL page (e.g. >1000 numeric columns): no retry helps
        # the user's file and the part of it, not the job's staging table or intermediate chunk
        source = params.get("blob_name") or params.get("source_file") or params.get("chunk_path")
        what = f"chunk {params['chunk_index']}" if kind is None else kind.describe(params)
        raise PermanentTaskError(f"loading '{source}' ({what}) failed: {_copy_problem(exc)}") from None
    result |= {
        "chunk_index": params["chunk_index"],
        "table": f"{schema}.{table}",
        "seconds": round(time.monotonic() - started, 3),
    }
    if "catalog" in params:  # what stage 3 needs from stage 1, carried by the first chunk
        result["catalog"] = params["catalog"]
    return result


def _copy_problem(exc: psycopg.Error) -> str:
    """PostgreSQL's message without its CONTEXT (which names the job's staging table, not the user's),
    and what to do about a row wider than a page."""
    message = exc.diag.message_primary or str(exc).splitlines()[0]
    if exc.diag.message_detail:
        message += f" ({exc.diag.message_detail})"
    if isinstance(exc, psycopg.errors.ProgramLimitExceeded) and "row is too big" in message:
        message += "; a row must fit in one PostgreSQL page: load fewer columns (or fewer large values) per table"
    return message


def _load_prepared(params: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """A GeoParquet chunk stage 1 wrote: downloaded, read row group by row group, the rows stage 1 marked
    invalid repaired here (in parallel with the other chunks), and COPYed."""
    path = params["chunk_path"]
    container = params.get("intermediate_container") or get_settings().intermediate_container
    progress = TaskProgress(ctx.task_id)
    options = geometry_options(params, progress=progress)
    stats = GeometryStats()
    read = 0
    with tempfile.TemporaryDirectory(prefix="geoetl-load-") as tmp:
        chunk = read_chunk(get_blob_store(), container, path, Path(tmp))
        try:
            with copy_into(ctx.conn, params["schema"], params["table_name"], params["columns"], label=path) as sink:
                for batch in chunk.iter_batches(batch_size=LOAD_BATCH_ROWS):
                    read += batch.num_rows
                    sink.add(_repaired(pa.Table.from_batches([batch]), params, options, stats))
                    progress.read(batch.num_rows)
        finally:
            chunk.close()
    expected = params.get("rows")
    if expected is not None and read != expected:
        raise PermanentTaskError(f"chunk '{path}' holds {read} rows, stage 1 wrote {expected}")
    return {
        "rows_uploaded": sink.rows,
        "chunk_path": path,
        "values_out_of_range": sink.stats.out_of_range,
        "features_dropped": {"collapsed": stats.collapsed},
        "features_repaired": stats.repaired,
        "geometry_stats": {"repaired": stats.repaired, "collapsed": stats.collapsed},
        "repair_child_peak_mb": round(options.repair.child_peak_kb / 1024, 1),
    }


def _repaired(table: pa.Table, params: dict[str, Any], options: Any, stats: GeometryStats) -> pa.Table:
    """The batch without the repair marks, its marked rows repaired (or dropped when they collapse)."""
    if REPAIR_COLUMN not in table.column_names:
        return table
    marks = table.column(REPAIR_COLUMN)
    table = table.drop_columns([REPAIR_COLUMN])
    if marks.null_count == len(marks):
        return table
    label = f"'{params.get('source_file') or params['chunk_path']}'"
    keep, wkb = repair_marked(table.column(GEOMETRY_COLUMN), marks, label, options, stats)
    if not keep.all():
        table = table.filter(pa.array(keep))
    index = table.column_names.index(GEOMETRY_COLUMN)
    return table.set_column(index, GEOMETRY_COLUMN, wkb)


def _load_part(params: dict[str, Any], kind: PartKind, ctx: TaskContext) -> dict[str, Any]:
    """A part stage 1 planned, read by this task (in place, or its byte ranges into a folder), prepared and
    COPYed batch by batch (memory stays bounded)."""
    store = get_blob_store()
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as tmp:
        src = kind.open(params, store, Path(tmp))
        label = src.layers[0].label
        with copy_into(
            ctx.conn,
            params["schema"],
            params["table_name"],
            params["columns"],
            families=params["geometry_families"],
            label=label,
            declared=params.get("declared_geometry_type"),
            rule=params.get("geometry_rule"),
        ) as sink:
            progress = TaskProgress(ctx.task_id)
            options = geometry_options(params, progress=progress)
            reader = SourceReader(src, options, sink)
            reader.progress = progress
            reader.read_all()
            if kind.check is not None:
                kind.check(params, src, reader.stats)
    kind.confirm(params, store)  # the file did not change while this part was read
    stats = reader.stats
    dropped = {"null_geometry": stats.null_geometry, "collapsed": stats.collapsed}
    if reader.features_read - sum(dropped.values()) != sink.rows:
        raise RuntimeError(f"{label}: read {reader.features_read}, dropped {dropped}, but copied {sink.rows} rows")
    return {
        "rows_uploaded": sink.rows,
        "part": kind.describe(params),
        "source_features": reader.features_read,
        "features_dropped": dropped,
        "features_repaired": stats.repaired,
        "geometry_stats": stats.as_dict(),
        "values_out_of_range": sink.stats.out_of_range + reader.values_out_of_range,
        "repair_child_peak_mb": round(options.repair.child_peak_kb / 1024, 1),
    }
