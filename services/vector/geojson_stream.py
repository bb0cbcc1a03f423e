"""Rewrite a GeoJSON FeatureCollection as a GeoJSON text sequence, one feature at a time.

GDAL's GeoJSON driver holds a whole FeatureCollection in memory, about 16 times the file's size
(a 100 MB file takes 1.7 GB), while its GeoJSONSeq driver streams. Splitting the collection into
RFC 8142 records (RS + feature + LF) keeps a worker's memory bounded whatever the file size; each
feature's text is copied as it is, so nothing is re-encoded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, AnyStr, Generic, TextIO

RS = "\x1e"
BLOCK = 4 * 1024 * 1024
_decoder = json.JSONDecoder()
_WS = " \t\n\r"


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class IntegerOutOfRange(Exception):  # not a ValueError: the caller must not fall back to GDAL
    """A property holds an integer GDAL would clamp to 64 bits (2**70 -> 9223372036854775807)."""

    def __init__(self, feature: int, name: str, value: int) -> None:
        super().__init__(
            f"feature {feature} has the integer {value} in property '{name}', beyond the 64-bit range "
            "(GDAL would store it clamped); write it as a string or a decimal number in the file"
        )


class NotAFeatureCollection(ValueError):
    """The document is valid JSON of another shape (a Feature, a geometry): leave it to GDAL."""


@dataclass
class SequenceInfo:
    features: int = 0
    members: dict[str, Any] = field(default_factory=dict)  # top-level members other than features

    @property
    def crs_name(self) -> str | None:
        return legacy_crs_name(self.members.get("crs"))


def legacy_crs_name(crs: Any) -> str | None:
    """A legacy (GeoJSON 2008) `crs` member's name, e.g. urn:ogc:def:crs:EPSG::3857, when it has one."""
    if isinstance(crs, dict) and isinstance(crs.get("properties"), dict):
        name = crs["properties"].get("name")
        return name if isinstance(name, str) else None
    return None


class BlockCursor(Generic[AnyStr]):
    """A growing window over a file read in blocks (text or bytes), with a cursor."""

    def __init__(self, f: IO[AnyStr], empty: AnyStr, blanks: AnyStr, block: int | None = None) -> None:
        self.f, self.buf, self.pos, self.eof = f, empty, 0, False
        self.blanks, self.block = blanks, block or BLOCK

    def fill(self) -> bool:
        if self.eof:
            return False
        more = self.f.read(self.block)
        if not more:
            self.eof = True
            return False
        self.buf = self.buf[self.pos :] + more
        self.pos = 0
        return True

    def skip_blanks(self) -> bool:
        """Moves past blanks; False at the end of the file."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos : self.pos + 1] in self.blanks:
                self.pos += 1
            if self.pos < len(self.buf):
                return True
            if not self.fill():
                return False


class _Stream(BlockCursor[str]):
    """A growing window over a text file, read in blocks."""

    def __init__(self, f: TextIO) -> None:
        super().__init__(f, "", _WS)

    def skip_ws(self) -> str:
        """The next non-blank character (not consumed); '' at the end of the file."""
        return self.buf[self.pos] if self.skip_blanks() else ""

    def expect(self, chars: str) -> str:
        c = self.skip_ws()
        if not c or c not in chars:
            raise ValueError(f"expected one of {chars!r} at character {self.pos}, found {c or 'the end of the file'!r}")
        self.pos += 1
        return c

    def value(self) -> tuple[Any, str]:
        """Decode the next JSON value; returns it and its exact text."""
        self.skip_ws()
        while True:
            try:
                obj, end = _decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                if self.fill():
                    continue
                raise
            # a number at the very end of the buffer may continue in the next block
            if end == len(self.buf) and not self.eof and self.fill():
                continue
            text = self.buf[self.pos : end]
            self.pos = end
            return obj, text


def to_sequence(src: Path, dest: Path) -> SequenceInfo:
    """Write src's features to dest as RS-separated records; raises NotAFeatureCollection or ValueError."""
    info = SequenceInfo()
    with open(src, encoding="utf-8-sig", errors="strict") as f, open(dest, "w", encoding="utf-8") as out:
        s = _Stream(f)
        if s.skip_ws() != "{":
            raise NotAFeatureCollection("the document is not a JSON object")
        s.expect("{")
        saw_features = False
        while s.skip_ws() != "}":
            if not s.skip_ws():
                raise ValueError("the document ends inside its top-level object")
            key, _ = s.value()
            s.expect(":")
            if key == "features":
                saw_features = True
                info.features = _copy_features(s, out)
            else:
                info.members[str(key)], _ = s.value()
            if s.expect(",}") == "}":
                break
        else:
            s.expect("}")
        if s.skip_ws():
            raise ValueError("unexpected content after the end of the document")
    if info.members.get("type") != "FeatureCollection" or not saw_features:
        raise NotAFeatureCollection(f"the document's type is {info.members.get('type')!r}, not FeatureCollection")
    return info


def _check_integers(feature: dict[str, Any], index: int) -> None:
    props = feature.get("properties")
    if isinstance(props, dict):
        for name, value in props.items():
            if type(value) is int and not INT64_MIN <= value <= INT64_MAX:
                raise IntegerOutOfRange(index, str(name), value)


def _copy_features(s: _Stream, out: TextIO) -> int:
    s.expect("[")
    count = 0
    if s.skip_ws() == "]":
        s.pos += 1
        return 0
    while True:
        obj, text = s.value()
        if not isinstance(obj, dict):
            raise ValueError(f"feature {count} is a {type(obj).__name__}, not a JSON object")
        _check_integers(obj, count)
        out.write(RS)
        out.write(text)
        out.write("\n")
        count += 1
        if s.expect(",]") == "]":
            return count
