"""A GeoJSON document that is one bare geometry, read into WKB a block at a time.

GDAL's GeoJSON reader holds a whole document as a JSON tree, about 25 times its text: a 37 MB world
of seas (one GeometryCollection) takes a worker to 1 GB. A bare geometry has no attributes to type,
so it is read here instead: the object's few members are parsed token by token, and a `coordinates`
array, which holds only numbers, commas and brackets, in bulk with numpy. Each array's nesting level
and each number's level are counted per block, which gives how many positions every ring, part and
polygon holds, and the numbers are parsed in C; the WKB is written from those counts around the numbers
(no geometry object is built). Memory: the coordinates as float64 and the WKB, never the text's tree.

Anything that is not one geometry object (a Feature, a FeatureCollection, members other than type,
coordinates, geometries, bbox and crs, positions of mixed or unusual dimension) raises NotAGeometry
before much is read, and the caller goes on as before; text that is not JSON raises ValueError.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from services.vector.geojson_stream import BlockCursor, legacy_crs_name

BLOCK = 1024 * 1024  # the transient arrays of a block are ~20x its size
MAX_SMALL_VALUE = 1024**2  # type, bbox, crs: decoded as JSON
MAX_COLLECTION_DEPTH = 64  # as geojson_scan's MAX_DEPTH
LEVELS = {"Point": 1, "MultiPoint": 2, "LineString": 2, "MultiLineString": 3, "Polygon": 3, "MultiPolygon": 4}
_NUMBER = np.zeros(256, bool)
_NUMBER[list(b"0123456789+-.eE")] = True
_ALLOWED = _NUMBER.copy()
_ALLOWED[list(b"[], \t\r\n")] = True
_TO_SPACE = bytes(0x20 if c in b"[]," else c for c in range(256))
_WS = b" \t\r\n"


class NotAGeometry(Exception):
    """The document is not one bare geometry: read it as before."""


class NestedTooDeep(ValueError):
    """Collections in collections beyond MAX_COLLECTION_DEPTH (the reader recurses once per level)."""


@dataclass
class BareGeometry:
    wkb: bytearray
    crs_name: str | None  # a legacy `crs` member's name
    kinds: set[str]  # the types of its non-empty simple geometries (a collection's members)


class _Reader(BlockCursor[bytes]):
    """The document's bytes, a block at a time, with a cursor."""

    def __init__(self, f: BinaryIO) -> None:
        super().__init__(f, b"", _WS, BLOCK)
        self.kinds: set[str] = set()
        self.out = bytearray()  # the WKB written so far

    def peek(self) -> int:
        """The next byte that is not blank (not consumed); -1 at the end."""
        return self.buf[self.pos] if self.skip_blanks() else -1

    def expect(self, chars: bytes) -> int:
        c = self.peek()
        if c < 0 or c not in chars:
            raise ValueError(f"expected one of {chars.decode()!r}")
        self.pos += 1
        return c

    def small_value(self) -> Any:
        """A value of at most MAX_SMALL_VALUE bytes, decoded."""
        self.peek()
        decoder = json.JSONDecoder()
        while True:
            try:
                text = self.buf[self.pos :].decode("utf-8")
                value, end = decoder.raw_decode(text)
            except (json.JSONDecodeError, UnicodeDecodeError):
                if len(self.buf) - self.pos > MAX_SMALL_VALUE or not self.fill():
                    raise NotAGeometry("a large member other than coordinates") from None
                continue
            if end == len(text) and not self.eof and self.fill():
                continue  # a number may go on in the next block
            self.pos += len(text[:end].encode("utf-8"))
            return value


class _Levels:
    """Per nesting level of a coordinates array (1 = the array itself), each array numbered in the order
    it opens: how many arrays each array of the level above holds, how many numbers each array holds;
    and the numbers, in order."""

    MAX_LEVEL = 4  # a MultiPolygon's positions

    def __init__(self) -> None:
        self.parents: dict[int, np.ndarray] = {}  # level -> arrays of that level per array of the level above
        self.owners: dict[int, np.ndarray] = {}  # level -> numbers per array of that level
        self.opened = [0] * (self.MAX_LEVEL + 1)  # arrays opened so far at each level
        self.values: list[np.ndarray] = []

    def block(self, seg: np.ndarray, text: bytes, depth: int) -> int:
        """Counts one block of the array's text (it ends between numbers); returns the depth after it."""
        opens = seg == ord("[")
        step = opens.astype(np.int8) - (seg == ord("]")).astype(np.int8)
        after = depth + np.cumsum(step, dtype=np.int32)
        if len(after) and after.max() > self.MAX_LEVEL:
            raise NotAGeometry("coordinates nested deeper than a MultiPolygon's")
        at_level = {lvl: np.flatnonzero(opens & (after == lvl)) for lvl in range(1, self.MAX_LEVEL + 1)}
        for level in range(2, self.MAX_LEVEL + 1):
            if len(at_level[level]):
                self._count(self.parents, level, self._index(at_level, level - 1, at_level[level]))
        is_number = _NUMBER[seg]
        starts = np.flatnonzero(is_number & ~np.concatenate([[False], is_number[:-1]]))
        if len(starts):
            levels = after[starts]
            for level in np.unique(levels).tolist():
                if level < 1:
                    raise ValueError("a number outside the coordinates array")
                self._count(self.owners, level, self._index(at_level, level, starts[levels == level]), small=True)
            values = np.fromstring(text.translate(_TO_SPACE).decode("ascii"), sep=" ")  # parsed in C, no objects
            if len(values) != len(starts):
                raise ValueError("a number GeoJSON does not allow in coordinates")
            self.values.append(values)
        for level in range(1, self.MAX_LEVEL + 1):
            self.opened[level] += len(at_level[level])
        return int(after[-1]) if len(after) else depth

    def _index(self, at_level: dict[int, np.ndarray], level: int, positions: np.ndarray) -> np.ndarray:
        """The file-wide number of the array of `level` open at each position."""
        return self.opened[level] + np.searchsorted(at_level[level], positions, side="right") - 1

    @staticmethod
    def _count(table: dict[int, np.ndarray], level: int, owners: np.ndarray, small: bool = False) -> None:
        """Adds one to each owner's count (owners are file-wide numbers, in order; a block's owners are
        counted from its first one, so a block costs its own size, not the file's so far). `small` counts
        are kept in one byte, saturating at 255 (numbers per position: 2 or 3 are the only valid ones)."""
        first = int(owners[0])
        if first < 0:
            raise ValueError("coordinates that do not nest")
        dtype = np.uint8 if small else np.int64
        counts = table.get(level, np.zeros(0, dtype))
        add = np.bincount(owners - first)
        end = first + len(add)
        if end > len(counts):  # grown by doubling: each count is copied a bounded number of times
            counts = np.concatenate([counts, np.zeros(max(end, 2 * len(counts)) - len(counts), dtype)])
        counts[first:end] = np.minimum(counts[first:end] + add, np.iinfo(dtype).max)
        table[level] = counts

    def per(self, table: dict[int, np.ndarray], level: int, owners_level: int) -> np.ndarray:
        """How many items of `level` (arrays or numbers) each array of owners_level holds."""
        counts = table.get(level, np.zeros(0, np.int64))
        total = self.opened[owners_level]
        return np.concatenate([counts, np.zeros(max(0, total - len(counts)), counts.dtype)])[:total]


def _coordinates(r: _Reader) -> _Levels:
    """Reads a coordinates array (the cursor on its '['), in blocks that end between numbers."""
    levels, depth = _Levels(), 0
    if r.peek() != ord("["):
        raise NotAGeometry("coordinates that are not an array")
    while True:
        a = np.frombuffer(r.buf, np.uint8, offset=r.pos)
        other = np.flatnonzero(~_ALLOWED[a])  # the array must end before the first other byte
        known = a[: int(other[0])] if len(other) else a
        step = np.cumsum((known == ord("[")).astype(np.int32) - (known == ord("]")).astype(np.int32))
        closed = np.flatnonzero(depth + step == 0)
        if len(closed):
            a = a[: int(closed[0]) + 1]
        elif len(other):
            raise ValueError("coordinates hold something other than numbers")
        ends_array = len(closed) > 0
        if not ends_array:  # cut after the last separator: numbers stay whole
            separators = np.flatnonzero(~_NUMBER[a])
            if not len(separators):
                if not r.fill():
                    raise ValueError("the file ends inside coordinates")
                continue
            a = a[: int(separators[-1]) + 1]
        n = len(a)
        depth = levels.block(a, r.buf[r.pos : r.pos + n], depth)
        r.pos += n
        if ends_array:
            return levels
        if not r.fill():
            raise ValueError("the file ends inside coordinates")


_WKB_TYPE = {"Point": 1, "LineString": 2, "Polygon": 3, "MultiPoint": 4, "MultiLineString": 5, "MultiPolygon": 6,
             "GeometryCollection": 7}


class _WkbWriter:
    """ISO WKB (little-endian, as GDAL writes it) of one geometry, appended to the document's buffer from
    the parsed numbers: no geometry object is built (GEOS's many small allocations stayed resident in the
    worker after a huge feature), and each block of numbers is freed once written, so the numbers and the
    WKB are not both held whole."""

    def __init__(self, out: bytearray, blocks: list[np.ndarray | None], width: int) -> None:
        self.out, self.z = out, width == 3
        self.blocks, self.width = blocks, width
        self.block, self.at = 0, 0  # the next number: its block, its place in the block

    def header(self, kind: str, count: int | None = None) -> None:
        code = _WKB_TYPE[kind] + (1000 if self.z else 0)
        self.out += struct.pack("<BI", 1, code) if count is None else struct.pack("<BII", 1, code, count)

    def positions(self, n: int, counted: bool = True) -> None:
        if counted:
            self.out += struct.pack("<I", n)
        left = n * self.width
        while left:  # the positions' numbers may run over blocks
            numbers = self.blocks[self.block]
            assert numbers is not None
            take = min(left, len(numbers) - self.at)
            if take:
                self.out += memoryview(numbers[self.at : self.at + take])
            self.at += take
            left -= take
            if self.at == len(numbers):
                self.blocks[self.block] = None  # written: freed
                self.block, self.at = self.block + 1, 0

    def polygon(self, rings: list[int]) -> None:
        self.header("Polygon", len(rings))
        for n in rings:
            self.positions(n)


def _wkb(out: bytearray, kind: str, blocks: list[np.ndarray | None], width: int, counts: dict[int, list[int]]) -> None:
    """Appends the WKB; `counts[level]`: how many arrays (or positions, at the leaf level) each array of the
    level above holds."""
    w = _WkbWriter(out, blocks, width)
    if kind == "Point":
        w.header(kind)
        if sum(len(b) for b in blocks if b is not None):
            w.positions(1, counted=False)
        else:  # POINT EMPTY, as GDAL writes it
            out += np.full(w.width, np.nan).tobytes()
    elif kind == "LineString":
        w.header(kind, counts[2][0])
        w.positions(counts[2][0], counted=False)
    elif kind == "MultiPoint":
        w.header(kind, counts[2][0])
        for _ in range(counts[2][0]):
            w.header("Point")
            w.positions(1, counted=False)
    elif kind == "Polygon":
        w.polygon(counts[3])
    elif kind == "MultiLineString":
        w.header(kind, len(counts[3]))
        for n in counts[3]:
            w.header("LineString", n)
            w.positions(n, counted=False)
    else:  # MultiPolygon
        w.header(kind, len(counts[3]))
        rings = iter(counts[4])
        for k in counts[3]:
            w.polygon([next(rings) for _ in range(k)])


def _simple(out: bytearray, kind: str, levels: _Levels) -> None:
    """Appends the WKB of a parsed geometry that is not a collection."""
    if kind not in LEVELS:
        raise NotAGeometry(f"a geometry of type {kind!r}")
    leaf = LEVELS[kind]
    for level in range(1, _Levels.MAX_LEVEL + 1):
        if level != leaf and level in levels.owners:
            raise NotAGeometry("numbers where a geometry of its type has arrays")
    if levels.opened[1] != 1:
        raise ValueError("coordinates that are not one array")
    dims = levels.per(levels.owners, leaf, leaf) if leaf > 1 else np.array([sum(len(v) for v in levels.values)])
    if len(dims) and (dims.min() != dims.max() or dims[0] not in (2, 3)):
        raise NotAGeometry("positions of mixed or unusual dimension")
    width = int(dims[0]) if len(dims) else 2
    counts = {lvl: levels.per(levels.parents, lvl, lvl - 1).tolist() for lvl in range(2, leaf + 1)}
    blocks: list[np.ndarray | None] = list(levels.values)
    levels.values.clear()  # the writer frees each block once written
    _wkb(out, kind, blocks, width, counts)


def _has_z(out: bytearray, at: int) -> bool:
    return struct.unpack_from("<I", out, at + 1)[0] > 1000


def _object(r: _Reader, top: bool, depth: int = 0) -> str | None:
    """One geometry object (the cursor on its '{'), its WKB appended to r.out; the document's crs name when
    `top`. A collection's header is written when its `geometries` member starts (its members follow it)
    and its count and Z flag are filled in at the end."""
    if depth > MAX_COLLECTION_DEPTH:
        raise NestedTooDeep(f"geometry collections nested more than {MAX_COLLECTION_DEPTH} levels deep")
    r.expect(b"{")
    kind: str | None = None
    levels: _Levels | None = None
    header: int | None = None  # where a collection's header is in r.out
    parts: list[int] = []  # where its members start
    crs_name = None
    seen: set[str] = set()
    while r.peek() != ord("}"):
        key = r.small_value()
        if not isinstance(key, str) or key in seen:
            raise NotAGeometry("a repeated or odd member")
        seen.add(key)
        r.expect(b":")
        if key == "type":
            kind = r.small_value()
            if not isinstance(kind, str) or (kind not in LEVELS and kind != "GeometryCollection"):
                raise NotAGeometry(f"an object of type {kind!r}")
        elif key == "coordinates":
            levels = _coordinates(r)
        elif key == "geometries":
            header = len(r.out)
            r.out += bytes(9)
            parts = _geometries(r, depth + 1)
        elif key in ("bbox", "crs"):
            value = r.small_value()
            if key == "crs" and top:
                crs_name = legacy_crs_name(value)
        else:
            raise NotAGeometry(f"a member {key!r}")
        if r.expect(b",}") == ord("}"):
            break
    else:
        r.expect(b"}")
    if kind is None:
        raise NotAGeometry("an object without a type")
    if (kind == "GeometryCollection") != (header is not None) or (kind != "GeometryCollection") != (levels is not None):
        raise ValueError(f"a {kind} without its {'geometries' if kind == 'GeometryCollection' else 'coordinates'}")
    if header is not None:
        z = any(_has_z(r.out, at) for at in parts)
        struct.pack_into("<BII", r.out, header, 1, _WKB_TYPE[kind] + (1000 if z else 0), len(parts))
    else:
        assert levels is not None
        if any(len(v) for v in levels.values):
            r.kinds.add(kind)
        _simple(r.out, kind, levels)
    return crs_name


def _geometries(r: _Reader, depth: int) -> list[int]:
    """A collection's members, appended to r.out; where each one starts."""
    r.expect(b"[")
    parts: list[int] = []
    if r.peek() == ord("]"):
        r.pos += 1
        return parts
    while True:
        parts.append(len(r.out))
        _object(r, top=False, depth=depth)
        if r.expect(b",]") == ord("]"):
            return parts


def read_bare_geometry(f: BinaryIO) -> BareGeometry:
    """The document's geometry as WKB (raises NotAGeometry when it is not one bare geometry)."""
    r = _Reader(f)
    r.fill()
    if r.buf.startswith(b"\xef\xbb\xbf"):
        r.pos = 3
    if r.peek() != ord("{"):
        raise NotAGeometry("not a JSON object")
    crs_name = _object(r, top=True)
    if r.peek() != -1:
        raise ValueError("text after the geometry")
    return BareGeometry(r.out, crs_name, r.kinds)
