"""WKB from our own chunks to EWKB with SRID 4326, by rewriting the 5-byte header of every value.

Chunks hold little-endian 2D WKB written by shapely, so the header rewrite is exact; anything else
goes through shapely.
"""

from __future__ import annotations

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


def to_ewkb(wkb: pa.Array, srid: int = 4326) -> pa.Array:
    if isinstance(wkb, pa.ChunkedArray):
        wkb = wkb.combine_chunks()
    wkb = wkb.cast(LB) if wkb.type != LB else wkb
    n = len(wkb)
    if n == 0:
        return wkb
    if wkb.null_count or srid != 4326:
        return _slow(wkb, srid)
    offsets = np.frombuffer(wkb.buffers()[1], dtype=np.int64)[wkb.offset : wkb.offset + n + 1]
    data = np.frombuffer(wkb.buffers()[2], dtype=np.uint8)
    starts = offsets[:-1]
    if (np.diff(offsets) < 5).any():
        return _slow(wkb, srid)
    little = data[starts] == 1
    plain = (data[starts + 2] == 0) & (data[starts + 3] == 0) & (data[starts + 4] == 0)
    types = data[starts + 1]
    if not (little.all() and plain.all() and ((types >= 1) & (types <= 7)).all()):
        return _slow(wkb, srid)
    prefix = _PREFIX_4326.take(pa.array(types))
    return pc.binary_join_element_wise(prefix, pc.binary_slice(wkb, 5, int(np.diff(offsets).max())), _EMPTY)
