"""GDAL DateTime fields, read as ISO 8601 text and turned into UTC instants here.

GDAL's Arrow reader writes a DateTime field whose values carry different or unknown UTC offsets (any
CSV, a GeoJSON mixing offsets) as wall-clock times without their offset, so `10:00+05:00` would be
stored as 10:00 UTC; and it rolls an impossible day (February 30, hour 24) into the next one. Read as
text (`datetime_as_string`), each value keeps its own offset: it is converted to UTC, a value without
an offset is taken as UTC (as before), and a value that names no instant becomes NULL and is counted
with the values the table cannot hold.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

GDAL_TYPE_KEY = b"GDAL:OGR:type"
UTC_TIMESTAMP = pa.timestamp("us", tz="UTC")
# GDAL's own spelling (OGRGetISO8601DateTime): seconds always, fraction and offset optional
_ISO = (
    r"^(?P<y>\d{4,6})-(?P<mo>\d{2})-(?P<d>\d{2})T(?P<h>\d{2}):(?P<mi>\d{2}):(?P<s>\d{2})"
    r"(?:\.(?P<f>\d{1,9}))?(?:(?P<z>Z)|(?P<sign>[+-])(?P<oh>\d{2}):?(?P<om>\d{2})?)?$"
)
_DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
_US = 1_000_000


def is_gdal_datetime(field: pa.Field) -> bool:
    """A DateTime field GDAL handed over as text (`datetime_as_string`)."""
    return pa.types.is_string(field.type) and (field.metadata or {}).get(GDAL_TYPE_KEY) == b"DateTime"


def type_label(field: pa.Field) -> str:
    """A field's type for comparing two reads of one file: a DateTime is one type whatever its offsets."""
    return "datetime" if is_gdal_datetime(field) else label_of(str(field.type))


def label_of(type_name: str) -> str:
    return "datetime" if type_name.startswith("timestamp") else type_name


def _ints(text: pa.Array) -> np.ndarray:
    """Digits -> integers; null (no match) or an optional group that matched nothing ("") is 0."""
    digits = pc.if_else(pc.equal(text, ""), None, text)
    return pc.fill_null(digits.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)


def utc_timestamps(col: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, int]:
    """ISO 8601 text -> (timestamp[us, UTC], how many non-null values named no instant and became NULL).

    Arrow's own parser takes a column whose values all carry an offset, or all carry none, in one pass
    (~40x faster than the field by field parse); it refuses the rest whole (a column mixing the two, an
    impossible day, a leap second), which is then parsed field by field.
    """
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    for parsed in (UTC_TIMESTAMP, pa.timestamp("us")):
        try:
            return col.cast(parsed).cast(UTC_TIMESTAMP), 0
        except pa.ArrowInvalid:
            pass
    return _parsed_field_by_field(col)


def _parsed_field_by_field(col: pa.Array) -> tuple[pa.Array, int]:
    parts = pc.extract_regex(col, _ISO)  # null where the text is null or not GDAL's spelling
    present = parts.is_valid().to_numpy(zero_copy_only=False)
    group = dict(zip((f.name for f in parts.type), parts.flatten(), strict=True))  # null where the value is
    y, mo, d, h, mi, s = (_ints(group[k]) for k in ("y", "mo", "d", "h", "mi", "s"))
    us = _ints(pc.utf8_rpad(pc.utf8_slice_codeunits(group["f"], 0, 6), 6, "0"))  # digits past µs dropped
    sign = np.where(pc.fill_null(pc.equal(group["sign"], "-"), False).to_numpy(zero_copy_only=False), -1, 1)
    offset_minutes = sign * (_ints(group["oh"]) * 60 + _ints(group["om"]))

    leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
    month_ok = (mo >= 1) & (mo <= 12)
    last_day = _DAYS[np.clip(mo, 1, 12) - 1] + ((mo == 2) & leap)
    valid = (
        present
        & month_ok
        & (d >= 1)
        & (d <= last_day)
        & (h <= 23)
        & (mi <= 59)
        & (s <= 60)  # a leap second, which PostgreSQL also takes (as the next minute's first)
        & (np.abs(offset_minutes) < 24 * 60)
        & (y <= 294_276)  # beyond PostgreSQL's timestamps, and beyond numpy's microseconds
    )
    months = np.where(valid, (y - 1970) * 12 + (mo - 1), 0).astype("datetime64[M]")
    days = (months.astype("datetime64[D]") - np.datetime64(0, "D")).astype(np.int64) + np.where(valid, d - 1, 0)
    seconds = days * 86_400 + h * 3_600 + mi * 60 + s - offset_minutes * 60
    values = np.where(valid, seconds * _US + us, 0)
    out = pa.array(values, type=pa.int64(), mask=~valid).cast(UTC_TIMESTAMP)
    bad = int((~valid).sum()) - col.null_count
    return out, bad
