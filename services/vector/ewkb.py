"""WKB from our own chunks to EWKB with SRID 4326, by rewriting the 5-byte header of every value.

Chunks hold little-endian 2D WKB written by shapely, so the header rewrite is exact; anything else
goes through shapely. A huge value is not rewritten at all: its new header is sent before a view of its
body (ewkb_pieces). Also the views of a binary array's values that the WKB readers share (wkb_layout,
value_view, one_value): a huge feature's bytes are never copied by them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely

LB = pa.large_binary()
_EMPTY = pa.scalar(b"", LB)
_EWKB_SRID_FLAG = 0x20


def _prefixes(srid: int) -> pa.Array:
    srid_le = srid.to_bytes(4, "little")
    return pa.array([b"\x01" + bytes([t, 0, 0, _EWKB_SRID_FLAG]) + srid_le for t in range(256)], LB)


_PREFIX_4326 = _prefixes(4326)


def _slow(wkb: pa.Array, srid: int) -> pa.Array:
    geoms = shapely.set_srid(shapely.from_wkb(wkb.to_numpy(zero_copy_only=False)), srid)
    return pa.array(shapely.to_wkb(geoms, include_srid=True, flavor="extended"), LB)


def wkb_layout(wkb: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(where each value starts and ends: n + 1 int64 offsets; the data bytes) of a binary array, as
    views of its buffers (a binary array is cast to large binary, which copies its offsets only)."""
    wkb = wkb.cast(LB) if wkb.type != LB else wkb
    offsets = np.frombuffer(wkb.buffers()[1], dtype=np.int64)[wkb.offset : wkb.offset + len(wkb) + 1]
    buffer = wkb.buffers()[2]
    return offsets, np.frombuffer(buffer, dtype=np.uint8) if buffer is not None else np.zeros(0, np.uint8)


def _rewritable_types(data: np.ndarray, starts: np.ndarray) -> np.ndarray | None:
    """WKB type codes 1-7 of values with little-endian, flag-free headers at `starts`, whose 5-byte header
    the fast path rewrites; None when any value has another header."""
    little = data[starts] == 1
    plain = (data[starts + 2] == 0) & (data[starts + 3] == 0) & (data[starts + 4] == 0)
    types = data[starts + 1]
    return types if (little & plain & (types >= 1) & (types <= 7)).all() else None


def to_ewkb(wkb: pa.Array, srid: int = 4326) -> pa.Array:
    wkb = single(wkb)
    wkb = wkb.cast(LB) if wkb.type != LB else wkb
    if len(wkb) == 0:
        return wkb
    if wkb.null_count or srid != 4326:
        return _slow(wkb, srid)
    offsets, data = wkb_layout(wkb)
    if (np.diff(offsets) < 5).any():
        return _slow(wkb, srid)
    types = _rewritable_types(data, offsets[:-1])
    if types is None:
        return _slow(wkb, srid)
    prefix = _PREFIX_4326.take(pa.array(types))
    return pc.binary_join_element_wise(prefix, pc.binary_slice(wkb, 5, int(np.diff(offsets).max())), _EMPTY)


def single(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One array (combining a ChunkedArray copies its values, even when it has one chunk)."""
    if isinstance(values, pa.ChunkedArray):
        return values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
    return values


def value_view(values: pa.Array, row: int) -> memoryview:
    """One value of a binary array as a view of the array's buffer (a scalar's as_buffer copies it)."""
    offsets, data = wkb_layout(values)
    return memoryview(data[offsets[row] : offsets[row + 1]])


def one_value(data: Any) -> pa.Array:
    """A one-value binary array over a buffer (bytes, bytearray, a view), not copied."""
    offsets = pa.array([0, len(data)], pa.int32()).buffers()[1]
    return pa.Array.from_buffers(pa.binary(), 1, [None, offsets, pa.py_buffer(data)])


def ewkb_pieces(wkb: pa.Array | pa.ChunkedArray, srid: int = 4326) -> tuple[bytes, memoryview] | None:
    """The one value of `wkb` as EWKB in two pieces, its new header and a view of the rest of its bytes
    (nothing copied); None when its header is not one to_ewkb's fast path rewrites."""
    wkb = single(wkb)
    if len(wkb) != 1 or wkb.null_count or srid != 4326 or wkb.type not in (pa.binary(), LB):
        return None
    offsets, data = wkb_layout(wkb)
    if offsets[1] - offsets[0] < 5:
        return None
    types = _rewritable_types(data, offsets[:1])
    if types is None:
        return None
    return _PREFIX_4326[int(types[0])].as_py(), memoryview(data[offsets[0] + 5 : offsets[1]])
