"""Attribute columns: PostgreSQL types from Arrow types, merged over every batch, and casts to them.

Types are decided from all batches (and layers), never from the first feature: a column that is
integer in one batch and text in another is text. Values never pass through Python datetimes, so
dates such as 9999-12-31T23:59:59+05:00 or 10000-01-01 survive untouched.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc

from core.errors import PermanentTaskError

NULL = "null"  # a column with only nulls so far: any later type wins
INTEGER, BIGINT, DOUBLE = "integer", "bigint", "double precision"
BOOLEAN, DATE, TIMESTAMPTZ, TIME = "boolean", "date", "timestamp with time zone", "time"
TEXT, JSONB, BYTEA = "text", "jsonb", "bytea"
NUMERIC = "numeric"  # a decimal keeps every digit (a double holds ~15)
PG_TYPES = (INTEGER, BIGINT, DOUBLE, NUMERIC, BOOLEAN, DATE, TIMESTAMPTZ, TIME, TEXT, JSONB, BYTEA)
TEMPORAL_TYPES = (DATE, TIMESTAMPTZ)

ARROW_OF = {
    INTEGER: pa.int32(),
    BIGINT: pa.int64(),
    DOUBLE: pa.float64(),
    NUMERIC: pa.string(),  # the exact decimal text; pgcopy encodes it
    BOOLEAN: pa.bool_(),
    DATE: pa.date32(),
    TIMESTAMPTZ: pa.timestamp("us", tz="UTC"),
    TIME: pa.time64("us"),
    TEXT: pa.string(),
    JSONB: pa.string(),
    BYTEA: pa.binary(),
}


def pg_type_of(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        return pg_type_of(t.value_type)
    if pa.types.is_null(t):
        return NULL
    if pa.types.is_boolean(t):
        return BOOLEAN
    if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_int32(t):
        return INTEGER
    if pa.types.is_uint8(t) or pa.types.is_uint16(t):
        return INTEGER
    if pa.types.is_int64(t) or pa.types.is_uint32(t):
        return BIGINT
    if pa.types.is_decimal(t):
        return NUMERIC
    if pa.types.is_floating(t):
        return DOUBLE
    if pa.types.is_date(t):
        return DATE
    if pa.types.is_timestamp(t):
        return TIMESTAMPTZ
    if pa.types.is_time(t):
        return TIME
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return BYTEA
    if pa.types.is_nested(t):
        return JSONB
    return TEXT  # strings, uint64 and anything exotic


_NUMERIC_RANK = {INTEGER: 0, BIGINT: 1, DOUBLE: 2}


def merge_types(a: str, b: str) -> str:
    """The narrowest type that holds values of both."""
    if a == b:
        return a
    if a == NULL:
        return b
    if b == NULL:
        return a
    if a in _NUMERIC_RANK and b in _NUMERIC_RANK:
        return a if _NUMERIC_RANK[a] > _NUMERIC_RANK[b] else b
    if {a, b} in ({NUMERIC, INTEGER}, {NUMERIC, BIGINT}):
        return NUMERIC  # (with doubles, text: a double's digits are not the decimal's)
    if {a, b} == {DATE, TIMESTAMPTZ}:
        return TIMESTAMPTZ
    return TEXT


def final_type(t: str) -> str:
    return TEXT if t == NULL else t


def _to_json_strings(col: pa.Array) -> pa.Array:
    """Nested values (lists, structs) as JSON text; rare, so a Python loop is acceptable."""
    return pa.array(
        [None if v is None else json.dumps(v, default=str) for v in col.to_pylist()],
        type=pa.string(),
    )


def normalized_type(t: pa.DataType) -> pa.DataType:
    """The Arrow type normalize() gives a column of type t, without its values."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_nested(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    return t


def normalize(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """What a chunk stores: dictionaries decoded, nested values as JSON text, one contiguous array."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if pa.types.is_nested(col.type):
        col = _to_json_strings(col)
    elif pa.types.is_large_string(col.type) or pa.types.is_string_view(col.type):
        col = col.cast(pa.string())
    return col


def _cast_via_python(col: pa.Array) -> pa.Array:
    return pa.array([None if v is None else str(v) for v in col.to_pylist()], type=pa.string())


def cast_to(col: pa.Array | pa.ChunkedArray, pg_type: str) -> pa.Array:
    """Cast a chunk's column to the Arrow type of its final PostgreSQL type."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    pg_type = final_type(pg_type)
    target = ARROW_OF[pg_type]
    if col.type == target:
        return col
    if pg_type == TIMESTAMPTZ and pa.types.is_timestamp(col.type):
        return col  # kept in its own unit; the COPY encoder converts with range checks
    if pg_type in (TEXT, JSONB) and pa.types.is_binary(col.type):
        return pa.array([None if v is None else v.decode("utf-8", "replace") for v in col.to_pylist()], pa.string())
    try:
        return pc.cast(col, target, safe=False)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        if pg_type in (TEXT, JSONB):
            return _cast_via_python(col)
        raise


MAX_ATTRIBUTE_COLUMNS = 1600 - 2  # PostgreSQL's limit per table, less id and geom


def check_column_count(label: str, count: int) -> None:
    if count > MAX_ATTRIBUTE_COLUMNS:
        raise PermanentTaskError(
            f"{label} has {count} attribute columns; a PostgreSQL table holds at most 1600 "
            f"columns, so at most {MAX_ATTRIBUTE_COLUMNS} besides id and geom"
        )


def stac_column(column: dict[str, str]) -> dict[str, str]:
    """A table:columns entry of the STAC item; the source's own name is kept where cleaning changed it."""
    entry = {"name": column["name"], "type": column["type"]}
    source = column.get("source_name")
    if source is not None and source != column["name"]:
        entry["description"] = f"source column: {source}"
    return entry
