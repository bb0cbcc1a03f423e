"""PostgreSQL binary COPY stream built from Arrow arrays, without a Python loop over rows.

Each column becomes an Arrow array whose element i is the wire form of field i (4-byte length,
then the value in network byte order, or length -1 for NULL); a row is the 2-byte field count
followed by its fields, joined element-wise by Arrow. The joined array's data buffer is the stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from psycopg.types.numeric import NumericBinaryDumper

from services.vector import columns as C

_NUMERIC = NumericBinaryDumper(Decimal)

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
LB = pa.large_binary()
_NULL_FIELD = pa.scalar(b"\xff\xff\xff\xff", LB)
_EMPTY = pa.scalar(b"", LB)

PG_EPOCH_DAYS = 10_957  # 2000-01-01 - 1970-01-01
PG_EPOCH_US = PG_EPOCH_DAYS * 86_400 * 1_000_000
# PostgreSQL's accepted ranges, relative to 2000-01-01 (julian day 0 .. the documented maxima).
DATE_MIN, DATE_MAX = -2_451_545, 2_145_031_948
TS_MIN_US, TS_MAX_US = -211_813_488_000_000_000, 9_223_371_331_200_000_000 - 1


@dataclass
class EncodeStats:
    out_of_range: int = 0  # date/time values outside PostgreSQL's range, loaded as NULL


def _from_fixed(values: np.ndarray) -> pa.Array:
    """Length-prefixed fixed-width fields from a numpy array already in network byte order."""
    n, width = len(values), values.dtype.itemsize
    rec = np.empty(n, dtype=[("len", ">i4"), ("v", values.dtype)])
    rec["len"] = width
    rec["v"] = values
    offsets = np.arange(0, (n + 1) * (4 + width), 4 + width, dtype=np.int64)
    return pa.Array.from_buffers(LB, n, [None, pa.py_buffer(offsets), pa.py_buffer(rec.view(np.uint8))])


def _with_nulls(encoded: pa.Array, valid: np.ndarray | None) -> pa.Array:
    if valid is None or valid.all():
        return encoded
    return pc.if_else(pa.array(valid), encoded, _NULL_FIELD)


def _valid_mask(col: pa.Array) -> np.ndarray | None:
    if col.null_count == 0:
        return None
    return col.is_valid().to_numpy(zero_copy_only=False)


def _numbers(col: pa.Array, fill: int | float = 0) -> np.ndarray:
    # zero_copy_only=False: Arrow packs booleans in bits, which numpy cannot view (the others stay views)
    return (pc.fill_null(col, fill) if col.null_count else col).to_numpy(zero_copy_only=False)


def encode_variable(payload: pa.Array) -> pa.Array:
    """Length-prefixed variable-width fields (text, bytea, EWKB); NULL where payload is null."""
    payload = payload.cast(LB) if payload.type != LB else payload
    lengths = _numbers(pc.binary_length(payload)).astype(">i4")
    prefix = pa.Array.from_buffers(
        LB, len(payload), [None, pa.py_buffer(np.arange(0, 4 * len(payload) + 1, 4, dtype=np.int64)),
                           pa.py_buffer(lengths)]
    )
    joined = pc.binary_join_element_wise(prefix, payload, _EMPTY)
    return pc.fill_null(joined, _NULL_FIELD) if payload.null_count else joined


def _encode_timestamp(col: pa.Array, stats: EncodeStats) -> pa.Array:
    unit = col.type.unit
    raw = col.view(pa.int64()) if pa.types.is_timestamp(col.type) else col
    values = _numbers(raw).astype(np.int64)
    valid = _valid_mask(col)
    valid = np.ones(len(values), bool) if valid is None else valid
    factor = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 1}[unit]
    if unit == "ns":
        values = np.floor_divide(values, 1_000)
    lo, hi = (TS_MIN_US + PG_EPOCH_US) // factor, (TS_MAX_US + PG_EPOCH_US) // factor
    in_range = (values >= lo) & (values <= hi)
    stats.out_of_range += int((valid & ~in_range).sum())
    valid &= in_range
    us = np.where(valid, values, 0) * factor - PG_EPOCH_US
    return _with_nulls(_from_fixed(us.astype(">i8")), valid)


def _encode_date(col: pa.Array, stats: EncodeStats) -> pa.Array:
    values = _numbers(col.view(pa.int32())).astype(np.int64) - PG_EPOCH_DAYS
    valid = _valid_mask(col)
    valid = np.ones(len(values), bool) if valid is None else valid
    in_range = (values >= DATE_MIN) & (values <= DATE_MAX)
    stats.out_of_range += int((valid & ~in_range).sum())
    valid &= in_range
    return _with_nulls(_from_fixed(np.where(valid, values, 0).astype(">i4")), valid)


def numeric_field(text: str) -> bytes:
    """A decimal's text ('-123.4500', '1.2E+5') in PostgreSQL's binary numeric format, every digit kept
    (psycopg's own encoder). One value at a time: decimals are rare (GeoParquet)."""
    return bytes(_NUMERIC.dump(Decimal(text)))


def encode_column(col: pa.Array, pg_type: str, stats: EncodeStats) -> pa.Array:
    """One column (already cast to its final type's Arrow type) as wire-format fields."""
    if pg_type == C.TIMESTAMPTZ:
        if pa.types.is_date(col.type):
            col = col.cast(pa.timestamp("us", tz="UTC"))
        return _encode_timestamp(col, stats)
    if pg_type == C.DATE:
        return _encode_date(col, stats)
    if pg_type in (C.TEXT, C.JSONB):
        text = pc.replace_substring(col, "\x00", "") if col.type == pa.string() else col
        payload = text.cast(LB)
        if pg_type == C.JSONB:  # jsonb binary format: version byte 1, then the JSON text
            version = pa.repeat(pa.scalar(b"\x01", LB), len(payload))
            payload = pc.binary_join_element_wise(version, payload, _EMPTY)
        return encode_variable(payload)
    if pg_type == C.BYTEA:
        return encode_variable(col)
    if pg_type == C.NUMERIC:
        return encode_variable(pa.array([None if v is None else numeric_field(v) for v in col.to_pylist()], LB))
    valid = _valid_mask(col)
    if pg_type == C.TIME:
        values = _numbers(col.cast(pa.time64("us")).view(pa.int64())).astype(">i8")
    else:
        dtype = {C.INTEGER: ">i4", C.BIGINT: ">i8", C.DOUBLE: ">f8", C.BOOLEAN: "u1"}[pg_type]
        values = _numbers(col, False if pg_type == C.BOOLEAN else 0).astype(dtype)
    return _with_nulls(_from_fixed(values), valid)


def encode_rows(fields: list[pa.Array], count: int | None = None) -> memoryview:
    """Rows of already-encoded fields -> the bytes of those rows in COPY BINARY format. `count`: the row's
    field count when more fields follow these (a huge field written after them, by the caller)."""
    n = len(fields[0])
    header = pa.repeat(pa.scalar((count or len(fields)).to_bytes(2, "big"), LB), n)
    joined = pc.binary_join_element_wise(header, *fields, _EMPTY)
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int64)
    start, end = int(offsets[joined.offset]), int(offsets[joined.offset + n])
    return memoryview(joined.buffers()[2])[start:end]


def iter_slabs(
    lengths: np.ndarray, max_rows: int = 50_000, max_bytes: int = 32 * 1024**2, alone: int = 8 * 1024**2
) -> Iterator[slice]:
    """Row ranges small enough to encode in memory: bounded by rows and by geometry bytes; a row of `alone`
    bytes or more is a range of its own (its value is streamed, not encoded)."""
    n = len(lengths)
    start = 0
    cum = np.cumsum(lengths, dtype=np.int64)
    big = np.flatnonzero(lengths >= alone)
    while start < n:
        base = cum[start - 1] if start else 0
        by_bytes = int(np.searchsorted(cum, base + max_bytes, side="right"))
        end = min(n, start + max_rows, max(by_bytes, start + 1))
        after = big[np.searchsorted(big, start) :]
        if len(after):  # stop before the next big row; a big row goes alone
            end = start + 1 if after[0] == start else min(end, int(after[0]))
        yield slice(start, end)
        start = end
