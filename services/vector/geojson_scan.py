"""Where each feature of a GeoJSON file lies, found with array operations over blocks of bytes.

A file of many small features cannot be scanned token by token in Python at the speed GDAL reads it,
so the scan works on blocks (BLOCK bytes): numpy finds the quotes that are not escaped, the
structural characters outside strings and their nesting depth; only the events at the depth of a
feature's members (a feature's braces, its keys, the geometry's "type") take part in the feature
logic, and that logic is array operations too. Python work is per block and per distinct thing, not
per feature or per vertex.

A block is processed up to a cut LOOKAHEAD bytes before its end (moved back so that a run of
backslashes never straddles it); the bytes after the cut are scanned again with the next block, so
a geometry's type value just after the cut is still seen. State carried from block to block: the
depth, whether the cut is inside a string, the last two events (a key's quotes when its colon opens
the next block), the member a feature is in, the open feature's keys and geometry, the top-level
member, and whether text is being written out.

What comes out: each feature's byte span in the file, the geometry types of features whose
geometry has coordinates (a GeometryCollection's number instead: its members are read apart), each
geometry's span (unless `whole`), whether records are RS-separated (sequences), the FeatureCollection's
other top-level members decoded, and a copy of the features as an RFC 8142 sequence written to
`out` (geometry members replaced by null unless `whole`). Anything the scan cannot vouch for
(foreign or repeated feature members, text between features, deep nesting)
raises NotPlannable; text that is not JSON raises ValueError.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, BinaryIO

import numpy as np

BLOCK = 2 * 1024 * 1024  # the transient arrays of a block are ~30x its size
LOOKAHEAD = 64  # bytes after a cut scanned again with the next block (a geometry type's value)
MAX_DEPTH = 64  # deeper files take the convert-once path (which names the problem)
MAX_TOP_VALUE = 1024**2  # a FeatureCollection member other than features, decoded
RS = b"\x1e"
JOIN_BYTES = 256 * 1024  # the copy is gathered in runs of spans of about this many bytes (8x in indexes)

_DELTA = np.zeros(256, np.int64)
_DELTA[list(b"{[")] = 1
_DELTA[list(b"}]")] = -1
_TEXT = np.ones(256, bool)  # bytes that are text between features (anything but blanks)
_TEXT[list(b" \t\r\n")] = False
_SEQUENCE_TEXT = _TEXT.copy()  # between the records of a sequence, RS is a separator too
_SEQUENCE_TEXT[RS[0]] = False
QUOTE, BACKSLASH = 0x22, 0x5C
OPEN, CLOSE, OPEN_ARRAY, CLOSE_ARRAY, COMMA, COLON = (ord(c) for c in "{}[],:")

MEMBERS = (b'"type"', b'"id"', b'"properties"', b'"geometry"', b'"bbox"')  # a feature's allowed members
TYPE, GEOMETRY, FOREIGN = 0, MEMBERS.index(b'"geometry"'), len(MEMBERS)
FEATURE = np.frombuffer(b'"Feature"', np.uint8)
TYPE_BYTES = 24  # longer geometry type names are none of GeoJSON's
GEOMETRY_TYPES = ("Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon",
                  "GeometryCollection")  # fmt: skip
_TYPE_ROWS = np.zeros((len(GEOMETRY_TYPES), TYPE_BYTES), np.uint8)
for _i, _name in enumerate(GEOMETRY_TYPES):
    _TYPE_ROWS[_i, : len(_name)] = list(_name.encode())
NO_TYPE = -1
COLLECTION = GEOMETRY_TYPES.index("GeometryCollection")  # its members' types are read apart (geojson_parts)


class NotPlannable(Exception):
    """The file is of a shape the scan does not vouch for: it is converted once instead."""


def _bytes_at(a: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """Rows of `width` bytes of `a` from each start (zero past the end of `a`)."""
    idx = starts[:, None] + np.arange(width)
    rows = a[np.minimum(idx, len(a) - 1)]
    rows[idx >= len(a)] = 0
    return rows


class _Members:
    """Which member of its feature an event lies in: the class of the last key at or before it (the
    class carried from the last region where the region has none yet). Looked up for the few events
    that need it, not filled in for all of them."""

    def __init__(self, keys: np.ndarray, classes: np.ndarray, before: int) -> None:
        self.keys, self.classes, self.before = keys, classes, before

    def of(self, events: np.ndarray) -> np.ndarray:
        if not len(self.keys):
            return np.full(len(events), self.before)
        last = np.searchsorted(self.keys, events, side="right") - 1
        return np.where(last >= 0, self.classes[np.maximum(last, 0)], self.before)


class FeatureScan:
    """One pass over a GeoJSON FeatureCollection (`sequence=False`) or text sequence."""

    def __init__(self, f: BinaryIO, out: BinaryIO, sequence: bool, whole: bool = False, block: int = BLOCK) -> None:
        self.f, self.out, self.sequence, self.whole, self.block = f, out, sequence, whole, max(block, 1)
        self.fd = 0 if sequence else 2  # the depth outside a feature's braces
        self.buf, self.base, self.pos, self.eof = b"", 0, 0, False
        self.depth, self.in_string = 0, False
        self._carry = (np.zeros(0, np.int64), np.zeros(0, np.uint8), np.zeros(0, np.int64))
        self._starts: list[np.ndarray] = []
        self._ends: list[np.ndarray] = []
        self._geometry_starts: list[np.ndarray] = []  # file offsets of each geometry member's value
        self._geometry_ends: list[np.ndarray] = []
        self.count = 0  # features started
        self.geometry_types: set[str] = set()  # of the features' geometries, GeometryCollections aside
        self.collections: set[int] = set()  # numbers of the geometries that are GeometryCollections
        self._geometries = 0  # geometry members started in earlier regions
        self.uses_rs = False
        self.top: dict[str, Any] = {}  # a FeatureCollection's members other than features, decoded
        self._member = -1  # the class of the last key at a feature's member depth
        self._typed = 0  # features whose type member says Feature
        self._open_keys = np.zeros(0, np.int64)  # the open feature's member codes (feature * 8 + class)
        self._feature_open = False
        self._geometry_open: tuple[int, bool] | None = None  # (type, has digits) of one not closed yet
        self._writing = False  # inside a feature's text that goes out
        self._gap_open: int | None = 0  # text between values began here (checked: only blanks and commas)
        self._gap_text = 0
        self._commas = 0
        self._level_last = -1  # between features: 0 the array opened, 1 a feature, 2 a comma
        # the FeatureCollection's own members
        self._top = 0  # 0 before the object, 1 inside, 2 closed
        self._top_key: str | None = None
        self._top_value: int | None = None  # where the current member's value started
        self._features = 0  # 0 not seen, 1 its value expected, 2 inside the array, 3 done

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([np.zeros(0, np.int64), *self._starts])

    @property
    def ends(self) -> np.ndarray:
        return np.concatenate([np.zeros(0, np.int64), *self._ends])

    @property
    def geometry_spans(self) -> list[tuple[int, int]]:
        """Where each feature's geometry value is in the file (start, end), in order (not when `whole`)."""
        starts = np.concatenate([np.zeros(0, np.int64), *self._geometry_starts])
        ends = np.concatenate([np.zeros(0, np.int64), *self._geometry_ends])
        return list(zip(starts.tolist(), ends.tolist(), strict=True))

    # -- blocks -----------------------------------------------------------------------------------
    def run(self) -> None:
        first = True
        while not self.eof:
            more = self.f.read(self.block)
            self.eof = not more
            self.buf += more
            if first and self.buf.startswith(b"\xef\xbb\xbf"):
                self.pos = self._gap_open = 3
            first = False
            cut = self._region()
            if not self.eof:
                self._trim(cut)
        if self.depth != 0 or self.in_string:
            raise ValueError("the file ends inside a string, an object or an array")
        if not self.sequence and self._top != 2:
            raise NotPlannable("not a JSON object")
        if self._gap_text != self._commas:
            raise NotPlannable("text between features")
        if not self.whole and self._typed != self.count:
            raise NotPlannable("a record that is not a Feature")

    def _trim(self, cut: int) -> None:
        keep = max(self.base, min(cut - LOOKAHEAD, self._top_value if self._top_value is not None else cut))
        if cut - keep > MAX_TOP_VALUE + LOOKAHEAD:
            raise NotPlannable("a large top-level member")
        self.buf = self.buf[keep - self.base :]
        self.base = keep

    def _region(self) -> int:
        """Scans the buffer from self.pos, processes the events before the cut; returns the cut."""
        a = np.frombuffer(self.buf, np.uint8)
        lo = self.pos - self.base
        n = len(a)
        cut = n if self.eof else max(lo, n - LOOKAHEAD)
        while cut > lo and a[cut - 1] == BACKSLASH:
            cut -= 1
        if cut == lo:
            return self.pos
        seg = a[lo:n]
        is_quote = seg == QUOTE
        quotes = np.flatnonzero(is_quote)
        is_quote[quotes[self._escaped(seg, quotes)]] = False
        structural = (seg == COMMA) | (seg == COLON) | (seg == OPEN) | (seg == CLOSE)
        structural |= (seg == OPEN_ARRAY) | (seg == CLOSE_ARRAY)
        pos = np.flatnonzero(structural | is_quote)
        ch = seg[pos]
        quote_event = ch == QUOTE
        quotes_before = np.cumsum(quote_event) - quote_event
        outside = quote_event | (((quotes_before + self.in_string) & 1) == 0)
        pos, ch = pos[outside] + lo, ch[outside]
        delta = _DELTA[ch]
        after = self.depth + np.cumsum(delta)
        depth = after - delta
        if len(after):
            if after.max() > MAX_DEPTH:
                raise NotPlannable("deep nesting")
            if after.min() < 0:
                raise ValueError("a closing bracket closes nothing")
        done = int(np.searchsorted(pos, cut))
        if done:
            self.depth = int(after[done - 1])
        self.in_string = bool((self.in_string + int(np.count_nonzero(is_quote[: cut - lo]))) & 1)
        low = depth <= self.fd + (1 if self.whole else 2)  # a whole copy needs no member logic
        cpos, cch, cdepth = self._carry
        gpos = np.concatenate([cpos, pos[low] + self.base])
        gch = np.concatenate([cch, ch[low]])
        gdepth = np.concatenate([cdepth, depth[low]])
        first, last = len(cpos), len(cpos) + int(np.count_nonzero(low[:done]))
        if self.sequence and not self.uses_rs:
            self.uses_rs = bool(np.any(a[lo:cut] == RS[0]))
        self._events(a, gpos, gch, gdepth, first, last, self.base + lo, self.base + cut)
        keep = max(0, last - 2)
        self._carry = (gpos[keep:last], gch[keep:last], gdepth[keep:last])
        self.pos = self.base + cut
        return self.pos

    @staticmethod
    def _escaped(seg: np.ndarray, quotes: np.ndarray) -> np.ndarray:
        """Quotes preceded by an odd run of backslashes (a run never straddles a cut)."""
        escaped = np.zeros(len(quotes), bool)
        maybe = quotes > 0
        maybe[maybe] = seg[quotes[maybe] - 1] == BACKSLASH
        if not maybe.any():
            return escaped
        slashes = np.flatnonzero(seg == BACKSLASH)
        run_start = np.maximum.accumulate(np.where(np.diff(slashes, prepend=-2) != 1, slashes, 0))
        q = quotes[maybe]
        runs = q - run_start[np.searchsorted(slashes, q - 1)]
        escaped[maybe] = (runs & 1) == 1
        return escaped

    # -- features ---------------------------------------------------------------------------------
    def _events(self, a: np.ndarray, pos: np.ndarray, ch: np.ndarray, depth: np.ndarray,
                first: int, last: int, r0: int, r1: int) -> None:
        """The feature logic over the events [first, last) of the region [r0, r1) (events before
        `first` are carried context, those from `last` on are lookahead)."""
        fd = self.fd
        gap_opens: list[int] = []
        gap_closes: list[int] = []
        if self.sequence:
            inside = np.zeros(len(pos), bool)
            inside[first:last] = True
            array_closed = False
        else:
            inside, array_closed = self._top_level(pos, ch, depth, first, last, gap_opens, gap_closes)
        starts = np.flatnonzero(inside & (ch == OPEN) & (depth == fd))
        ends = np.flatnonzero(inside & (ch == CLOSE) & (depth == fd + 1))
        level = inside & (depth == fd)
        self._check_level(ch[level], array_closed)
        self._commas += int(np.count_nonzero(level & (ch == COMMA)))
        if self.whole:  # the records of a part stage 1 checked already: spans only
            self._write(pos, starts, ends, starts[:0], ends[:0], r0, r1)
        else:
            self._members(a, pos, ch, depth, inside, starts, ends, r0, r1)
        opens = np.sort(np.concatenate([pos[ends] + 1, np.asarray(gap_opens, np.int64)]))
        closes = np.sort(np.concatenate([pos[starts], np.asarray(gap_closes, np.int64)]))
        self._gaps(a, opens, closes, r0, r1)
        self._starts.append(pos[starts])
        self._ends.append(pos[ends] + 1)
        self.count += len(starts)

    def _members(self, a: np.ndarray, pos: np.ndarray, ch: np.ndarray, depth: np.ndarray, inside: np.ndarray,
                 starts: np.ndarray, ends: np.ndarray, r0: int, r1: int) -> None:
        """A feature's members: allowed and not repeated, the geometry's span and type."""
        fd = self.fd
        keys = np.flatnonzero(inside & (ch == COLON) & (depth == fd + 1))
        classes = self._key_classes(a, pos, ch, keys, FOREIGN)
        if np.any(classes == FOREIGN):
            raise NotPlannable("a feature has a foreign member")
        self._check_feature_type(a, pos, ch, keys[classes == TYPE])
        self._check_repeats(self.count - 1 + np.searchsorted(starts, keys, side="right"), classes, starts, ends)
        member = _Members(keys, classes, self._member)
        if len(keys):
            self._member = int(classes[-1])
        member_ends = np.flatnonzero(inside & ((ch == COMMA) | (ch == CLOSE)) & (depth == fd + 1))
        geometry_starts = keys[classes == GEOMETRY]
        geometry_ends = member_ends[member.of(member_ends) == GEOMETRY]
        self._geometry_types(a, pos, ch, depth, member, inside, geometry_starts, geometry_ends, r0, r1)
        self._write(pos, starts, ends, geometry_starts, geometry_ends, r0, r1)

    def _top_level(self, pos: np.ndarray, ch: np.ndarray, depth: np.ndarray, first: int, last: int,
                   gap_opens: list[int], gap_closes: list[int]) -> tuple[np.ndarray, bool]:
        """A FeatureCollection's own members, event by event (there are few); returns which events lie
        inside the features array, and whether it closed in this region."""
        inside_from = first if self._features == 2 else None
        inside_to = last
        closed = False
        candidates = np.flatnonzero(((depth <= 1) | ((depth == 2) & (ch == CLOSE_ARRAY)))[first:last]) + first
        for j in candidates.tolist():
            c, d, p = int(ch[j]), int(depth[j]), int(pos[j])
            if d == 0:
                if c != OPEN or self._top != 0:
                    raise NotPlannable("not one JSON object")
                self._top = 1
                gap_closes.append(p)
            elif d == 2:  # an array closes at depth 2: the features array, or one in a member's value
                if self._features == 2 and self._top_value is None:
                    self._features, closed, inside_to = 3, True, j
                    gap_closes.append(p)
                    gap_opens.append(p + 1)
            elif c == COLON:
                self._top_key = self._top_key_text(pos, ch, j)
                if self._top_key == "features":
                    if self._features:
                        raise NotPlannable("features twice")
                    self._features = 1
                else:
                    self._top_value = p + 1
            elif self._features == 1:
                if c != OPEN_ARRAY:
                    raise NotPlannable("features is not an array")
                self._features, inside_from = 2, j + 1
                gap_opens.append(p + 1)
            elif c in (COMMA, CLOSE):
                if self._features == 3 and self._top_value is None and self._top_key == "features":
                    gap_closes.append(p)
                self._end_top_member(p)
                if c == CLOSE:
                    self._top = 2
                    gap_opens.append(p + 1)
            elif c == OPEN and self._top_value is None:
                raise NotPlannable("an object where a member is expected")
        inside = np.zeros(len(pos), bool)
        if inside_from is not None:
            inside[inside_from:inside_to] = True
        return inside, closed

    def _top_key_text(self, pos: np.ndarray, ch: np.ndarray, j: int) -> str:
        if j < 2 or ch[j - 1] != QUOTE or ch[j - 2] != QUOTE:
            raise ValueError("a member without a key")
        start, end = int(pos[j - 2]) - self.base, int(pos[j - 1]) - self.base + 1
        if start < 0:
            raise NotPlannable("a long top-level key")
        key = json.loads(self.buf[start:end])
        assert isinstance(key, str)
        return key

    def _end_top_member(self, at: int) -> None:
        if self._top_value is None:
            return
        if at - self._top_value > MAX_TOP_VALUE:
            raise NotPlannable("a large top-level member")
        assert self._top_key is not None
        self.top[self._top_key] = json.loads(self.buf[self._top_value - self.base : at - self.base])
        self._top_value = None

    def _check_level(self, chars: np.ndarray, array_closed: bool) -> None:
        """Between features: only the features themselves, one comma apart."""
        if self.sequence:
            if np.any(chars != OPEN):
                raise NotPlannable("a record that is not a JSON object")
            return
        codes = np.full(len(chars), -1)
        codes[chars == OPEN] = 1
        codes[chars == COMMA] = 2
        if np.any(codes < 0):
            raise NotPlannable("text between features")
        seq = np.concatenate([[self._level_last if self._level_last >= 0 else 0], codes])
        ok = np.where(seq[:-1] == 1, seq[1:] == 2, seq[1:] == 1)
        if not ok.all():
            raise NotPlannable("features not separated by one comma")
        if len(codes):
            self._level_last = int(codes[-1])
        elif self._level_last < 0:
            self._level_last = 0
        if array_closed and self._level_last == 2:
            raise NotPlannable("a comma after the last feature")

    def _key_classes(self, a: np.ndarray, pos: np.ndarray, ch: np.ndarray, keys: np.ndarray,
                     default: int) -> np.ndarray:
        """Which of MEMBERS each key (a colon's index) is; `default` for none."""
        if not len(keys):
            return np.zeros(0, np.int64)
        if keys.min() < 2 or np.any(ch[keys - 1] != QUOTE) or np.any(ch[keys - 2] != QUOTE):
            raise ValueError("a member without a key")
        opens, closes = pos[keys - 2] - self.base, pos[keys - 1] - self.base
        lengths = closes - opens + 1
        classes = np.full(len(keys), default)
        for i, name in enumerate(MEMBERS):
            maybe = np.flatnonzero((lengths == len(name)) & (opens >= 0))
            if len(maybe):
                same = np.all(_bytes_at(a, opens[maybe], len(name)) == np.frombuffer(name, np.uint8), axis=1)
                classes[maybe[same]] = i
        return classes

    def _check_feature_type(self, a: np.ndarray, pos: np.ndarray, ch: np.ndarray, type_keys: np.ndarray) -> None:
        """Every record's type is "Feature" (counted here, compared with the features at the end)."""
        if not len(type_keys):
            return
        if type_keys.max() + 2 >= len(pos) or np.any(ch[type_keys + 1] != QUOTE):
            raise NotPlannable("a feature whose type is not a string just after its key")
        starts = pos[type_keys + 1] - self.base
        same = (pos[type_keys + 2] - self.base - starts == len(FEATURE) - 1) & np.all(
            _bytes_at(a, starts, len(FEATURE)) == FEATURE, axis=1)
        if not same.all():
            raise NotPlannable("a record that is not a Feature")
        self._typed += len(type_keys)

    def _check_repeats(self, features: np.ndarray, classes: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> None:
        """No feature names a member twice (the open feature's keys carry over to the next region)."""
        codes = np.concatenate([self._open_keys, features * 8 + classes])
        if len(np.unique(codes)) != len(codes):
            raise NotPlannable("a feature repeats a member")
        if len(starts) or len(ends):
            self._feature_open = bool(len(starts)) and (not len(ends) or starts[-1] > ends[-1])
        current = self.count + len(starts) - 1
        self._open_keys = codes[codes // 8 == current] if self._feature_open else np.zeros(0, np.int64)

    def _geometry_types(self, a: np.ndarray, pos: np.ndarray, ch: np.ndarray, depth: np.ndarray,
                        member: _Members, inside: np.ndarray, g_starts: np.ndarray, g_ends: np.ndarray,
                        r0: int, r1: int) -> None:
        """The type of every geometry member with a digit in its value (empty geometries have none)."""
        carried = self._geometry_open is not None
        spans, still_open = _spans(pos[g_starts] + 1, pos[g_ends], r0 if carried else None, r1)
        first_number = self._geometries - int(carried)  # the number of the region's first span
        self._geometries += len(g_starts)
        if not len(spans):
            return
        types = np.full(len(spans), NO_TYPE)
        digits = _any_digit(a, spans, self.base)
        if self._geometry_open is not None:
            types[0] = self._geometry_open[0]
            digits[0] |= self._geometry_open[1]
        type_keys = np.flatnonzero(inside & (ch == COLON) & (depth == self.fd + 2))
        type_keys = type_keys[member.of(type_keys) == GEOMETRY]
        if len(type_keys):
            type_keys = type_keys[self._key_classes(a, pos, ch, type_keys, -1) == TYPE]
        if len(type_keys):
            if type_keys.max() + 2 >= len(pos) or np.any(ch[type_keys + 1] != QUOTE) or np.any(
                ch[type_keys + 2] != QUOTE
            ):
                raise NotPlannable("a geometry type that is not a string just after its key")
            span_no = np.searchsorted(g_starts, type_keys, side="right") - 1 + int(carried)
            types[span_no] = self._type_codes(a, pos[type_keys + 1] + 1, pos[type_keys + 2])
        known = digits & (types >= 0)
        collection = known & (types == COLLECTION)
        self.collections.update((first_number + np.flatnonzero(collection)).tolist())
        self.geometry_types.update(GEOMETRY_TYPES[code] for code in np.unique(types[known & ~collection]).tolist())
        self._geometry_open = (int(types[-1]), bool(digits[-1])) if still_open else None

    def _type_codes(self, a: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        lengths = ends - starts
        rows = _bytes_at(a, starts - self.base, TYPE_BYTES)
        rows[np.arange(TYPE_BYTES)[None, :] >= lengths[:, None]] = 0
        match = np.all(rows[:, None, :] == _TYPE_ROWS[None, :, :], axis=2)
        codes = np.where(match.any(axis=1), match.argmax(axis=1), NO_TYPE)
        codes[lengths > TYPE_BYTES] = NO_TYPE
        return codes

    def _write(self, pos: np.ndarray, starts: np.ndarray, ends: np.ndarray, g_starts: np.ndarray,
               g_ends: np.ndarray, r0: int, r1: int) -> None:
        """Each feature as a record (RS, its text, LF), its geometry member's value written as null
        unless `whole`: the kept spans of the region are gathered into one array, with the bytes
        before and after each span set in place (no Python work per feature)."""
        if not self.whole:  # (a whole copy is given no geometry spans)
            self._geometry_starts.append(pos[g_starts] + 1)
            self._geometry_ends.append(pos[g_ends])
        # a span opens at a feature's brace (after an RS) or after its geometry's value; it closes after
        # the feature's brace (before an LF) or just after the geometry's colon (before " null")
        on_pos = np.concatenate([pos[starts], pos[g_ends]]).astype(np.int64)
        on_rs = np.concatenate([np.ones(len(starts), bool), np.zeros(len(g_ends), bool)])
        off_pos = np.concatenate([pos[ends] + 1, pos[g_starts] + 1]).astype(np.int64)
        off_kind = np.concatenate([np.full(len(ends), _LF), np.full(len(g_starts), _NULL)])
        order = np.argsort(on_pos, kind="stable")
        on_pos, on_rs = on_pos[order], on_rs[order]
        order = np.argsort(off_pos, kind="stable")
        off_pos, off_kind = off_pos[order], off_kind[order]
        if self._writing:
            on_pos, on_rs = np.concatenate([[r0], on_pos]), np.concatenate([[False], on_rs])
        self._writing = len(on_pos) > len(off_pos)
        if self._writing:
            off_pos, off_kind = np.concatenate([off_pos, [r1]]), np.concatenate([off_kind, [_NOTHING]])
        if len(on_pos) != len(off_pos) or np.any(off_pos < on_pos):
            raise NotPlannable("features that do not nest as a GeoJSON file's")
        if not len(on_pos):
            return
        a, on, off = np.frombuffer(self.buf, np.uint8), on_pos - self.base, off_pos - self.base
        lengths = off - on
        # runs of spans of about JOIN_BYTES each: the index arrays stay small when a region is mostly copied
        cuts = np.searchsorted(np.cumsum(lengths), np.arange(JOIN_BYTES, int(lengths.sum()), JOIN_BYTES))
        bounds = np.unique(np.concatenate([[0], cuts, [len(on)]])).tolist()
        for i, j in itertools.pairwise(bounds):
            self.out.write(_joined(a, on[i:j], off[i:j], on_rs[i:j], off_kind[i:j]).tobytes())

    def _gaps(self, a: np.ndarray, opens: np.ndarray, closes: np.ndarray, r0: int, r1: int) -> None:
        """Counts the text between values (the region's share of each gap), for the final check."""
        spans, still_open = _spans(opens, closes, self._gap_open, r1)
        self._gap_open = int(spans[-1, 0]) if still_open else None
        text = _SEQUENCE_TEXT if self.sequence else _TEXT
        self._gap_text += _count_in(a, text, np.clip(spans, r0, r1), self.base)


_LF, _NULL, _NOTHING = 0, 1, 2  # what follows a written span: b"\\n", b" null", nothing
_AFTER = (b"\n", b" null", b"")
_AFTER_LENGTHS = np.array([len(text) for text in _AFTER], np.int64)


def _joined(a: np.ndarray, on: np.ndarray, off: np.ndarray, rs_before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """The bytes a[on:off] of every span, each after an RS where `rs_before` and followed by _AFTER[after]."""
    lengths = off - on
    before_len = rs_before.astype(np.int64)
    after_len = _AFTER_LENGTHS[after]
    sizes = before_len + lengths + after_len
    ends = np.cumsum(sizes)
    begins = ends - sizes
    out = np.empty(int(ends[-1]), np.uint8)
    out[begins[rs_before]] = RS[0]
    body = begins + before_len  # where each span's own bytes go
    skip = np.cumsum(lengths) - lengths
    offsets = np.arange(int(lengths.sum())) - np.repeat(skip, lengths)
    out[np.repeat(body, lengths) + offsets] = a[np.repeat(on, lengths) + offsets]
    for kind, text in enumerate(_AFTER):
        tails = ends[after == kind] - len(text)
        for i, byte in enumerate(text):
            out[tails + i] = byte
    return out


def _spans(opens: np.ndarray, closes: np.ndarray, open_at: int | None, region_end: int) -> tuple[np.ndarray, bool]:
    """[start, end) spans from alternating opens and closes (sorted positions): a span open when
    the region starts begins at `open_at`; one still open at its end ends at `region_end` (and
    the second value says so)."""
    o = opens.astype(np.int64) if open_at is None else np.concatenate([[open_at], opens]).astype(np.int64)
    c = closes.astype(np.int64)
    still_open = len(o) == len(c) + 1
    if still_open:
        c = np.concatenate([c, [region_end]])
    if len(o) != len(c) or np.any(c < o) or np.any(o[1:] < c[:-1]):
        raise NotPlannable("features that do not nest as a GeoJSON file's")
    return (np.stack([o, c], axis=1) if len(o) else np.zeros((0, 2), np.int64)), still_open


def _count_in(a: np.ndarray, table: np.ndarray, spans: np.ndarray, base: int) -> int:
    """How many bytes of the spans (global positions, inside the buffer) the table marks; the spans
    are short in all (the text between features), so their bytes are gathered, not scanned."""
    if not len(spans):
        return 0
    lengths = spans[:, 1] - spans[:, 0]
    offsets = np.cumsum(lengths) - lengths
    index = np.repeat(spans[:, 0] - base - offsets, lengths) + np.arange(int(lengths.sum()))
    return int(np.count_nonzero(table[a[index]]))


def _any_digit(a: np.ndarray, spans: np.ndarray, base: int) -> np.ndarray:
    """Whether each span (non-empty, in order, not overlapping) holds a digit."""
    lo, hi = int(spans[0, 0]) - base, int(spans[-1, 1]) - base
    digits = np.concatenate([(a[lo:hi] >= 0x30) & (a[lo:hi] <= 0x39), [False]])
    bounds = (spans - base - lo).reshape(-1)
    found = np.logical_or.reduceat(digits, bounds)[0::2]
    return found & (spans[:, 1] > spans[:, 0])
