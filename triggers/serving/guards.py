"""Limits on query input, checked before any parsing library sees it.

The cql2 parser (Rust, recursive) overflows its stack and kills the whole process on a filter
nested ~2,000 levels deep (parentheses, NOT, unary minus) or chained ~5,000 binary operators
long. Catching that is impossible once it runs, so every filter is measured first:

- at most MAX_FILTER_LENGTH characters (a binary-operator chain costs 2 characters a level,
  so the cheapest unmeasured recursion stays far below the crash depth);
- at most MAX_FILTER_NESTING levels, counting every bracket and every prefix operator in a
  run (NOT, -, +), whether or not it sits inside a string literal (an over-count at worst).

The same scan bounds every other query value (a GET `intersects` is JSON), and values that
PostgreSQL or the libraries cannot take (a NUL character, a NaN bbox) are refused here too.

A filter's geometry literals reach PostGIS as they are (pgstac and tipg both pass them on), and
PostGIS answers an unclosed ring or a one-number position with an internal error. So every
geometry literal of a filter, text or JSON, is read by GEOS first and refused with GEOS's reason.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import shapely
from cql2 import Expr
from shapely.errors import GEOSException

MAX_FILTER_LENGTH = 4096
MAX_FILTER_NESTING = 64
MAX_QUERY_NESTING = 64
QUOTE_PREFIX = 60  # characters of a refused value an error message may quote

_OPEN, _CLOSE = "([{", ")]}"
_TOKEN = re.compile(r"\s+|[()\[\]{}]|[+-]|[A-Za-z_][A-Za-z0-9_:.]*|'(?:[^']|'')*'?|\"[^\"]*\"?|[0-9.eE]+|.", re.S)


_INTEGER = re.compile(r"^[+-]?\d{19,4300}$")  # 19 digits and more may be past 64 bits (int() stops at 4300)


class QueryRefused(ValueError):
    """A query value over a limit: the message names the parameter and the limit."""


def preview(value: str, limit: int = QUOTE_PREFIX) -> str:
    """A bounded prefix of user input, for error messages."""
    return repr(value[:limit] + ("…" if len(value) > limit else ""))


def bracket_depth(text: str) -> int:
    """Deepest bracket nesting, counting brackets inside strings too (an upper bound of any parse)."""
    depth = deepest = 0
    for ch in text:
        if ch in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif ch in _CLOSE and depth:
            depth -= 1
    return deepest


def filter_nesting(text: str) -> int:
    """Upper bound of the parse depth of a CQL2 text: brackets plus runs of prefix operators."""
    level, deepest, stack = 0, 0, []
    for match in _TOKEN.finditer(text):
        tok = match.group()
        if tok.isspace():
            continue
        if tok in _OPEN:
            stack.append(level)
            level += 1
        elif tok in _CLOSE:
            level = stack.pop() if stack else 0
            continue
        elif tok in "+-" or tok.upper() == "NOT":
            level += 1
        else:  # an operand or a binary operator ends a run of prefix operators
            level = (stack[-1] + 1) if stack else 0
        deepest = max(deepest, level)
    return deepest


def check_filter(value: str, name: str = "filter") -> None:
    """Refuse a filter (CQL2 text or JSON) over the length or nesting limit."""
    if len(value) > MAX_FILTER_LENGTH:
        raise QueryRefused(
            f"'{name}' is {len(value)} characters long; the limit is {MAX_FILTER_LENGTH} (send a shorter filter)"
        )
    depth = max(filter_nesting(value), bracket_depth(value))
    if depth > MAX_FILTER_NESTING:
        raise QueryRefused(f"'{name}' nests more than {MAX_FILTER_NESTING} levels deep (the limit of filter nesting)")


def filter_tree(value: Any, lang: str | None) -> Any:
    """A filter as CQL2 JSON (text is parsed by the same library the APIs use, after check_filter
    measured it); None when it does not parse: the API then says why."""
    if not isinstance(value, str):
        return value
    try:
        if (lang or "").lower() == "cql2-json":
            return json.loads(value)
        return Expr(value).to_json()
    except Exception:  # noqa: BLE001 - ParseError, ValueError, the binding's plain Exception
        return None


def geometry_literals(tree: Any) -> list[dict[str, Any]]:
    """The GeoJSON geometries of a CQL2 JSON tree (a dict with a "type" that is not an operation)."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, list):
            todo.extend(node)
        elif isinstance(node, dict):
            if "type" in node and "op" not in node:
                found.append(node)
            else:
                todo.extend(node.values())
    return found


def check_filter_geometries(tree: Any, name: str = "filter") -> None:
    """Refuse a filter whose geometry literal GEOS cannot read (PostGIS would fail with error 500)."""
    for geometry in geometry_literals(tree):
        try:
            shapely.from_geojson(json.dumps(geometry, allow_nan=False))
        except (GEOSException, ValueError, TypeError) as exc:
            reason = str(exc).split(": ", 1)[-1][:200]
            raise QueryRefused(
                f"'{name}' holds a geometry that is not valid GeoJSON ({reason}): {preview(json.dumps(geometry))}"
            ) from None


def check_bbox(value: str, name: str = "bbox", lon_lat: bool = True) -> None:
    """A bbox of NaN or infinite numbers selects nothing sensible: refused (non-numbers are left to the API).
    In longitude/latitude (`lon_lat`: no other bbox-crs), a southern edge north of the northern one is
    refused too: the STAC API did, the features API swapped the edges and answered another box. (A west
    edge east of the east one is a box across the antimeridian.)"""
    parts = value.split(",")
    numbers = []
    for part in parts:
        try:
            number = float(part)
        except ValueError:
            continue
        if not math.isfinite(number):
            raise QueryRefused(f"'{name}' holds {part.strip()!r}; bbox coordinates must be finite numbers")
        numbers.append(number)
    if lon_lat and len(numbers) == len(parts) in (4, 6):  # west, south[, low], east, north[, high]
        south, north = numbers[1], numbers[len(parts) // 2 + 1]
        if south > north:
            raise QueryRefused(
                f"'{name}' has its southern edge ({south:g}) north of its northern edge ({north:g});"
                " a bbox is west, south, east, north"
            )


NON_NEGATIVE = ("simplify",)  # tipg passes it to ST_SimplifyPreserveTopology, where GEOS fails on < 0


def check_non_negative(key: str, value: str) -> None:
    try:
        number = float(value)
    except ValueError:
        return  # not a number: the API's own validation answers
    if not (math.isfinite(number) and number >= 0):
        raise QueryRefused(f"'{key}' is {preview(value, 24)}; it must be a finite number from 0 up")


def check_query(items: list[tuple[str, str]]) -> None:
    """Every query parameter of a request, before routing: raises QueryRefused."""
    lang = dict(items).get("filter-lang")
    for key, value in items:
        if "\x00" in key or "\x00" in value:
            raise QueryRefused(f"query parameter {preview(key)} holds a NUL character, which no field can hold")
        if key == "filter":
            check_filter(value)
            check_filter_geometries(filter_tree(value, lang))
        elif bracket_depth(value) > MAX_QUERY_NESTING:
            raise QueryRefused(f"query parameter {preview(key)} nests more than {MAX_QUERY_NESTING} levels deep")
        if key == "bbox":
            check_bbox(value, lon_lat=dict(items).get("bbox-crs", "CRS84").rstrip("h").endswith("CRS84"))
        if key in NON_NEGATIVE:
            check_non_negative(key, value)
        if _INTEGER.match(value) and not -(2**63) <= int(value) < 2**63:
            raise QueryRefused(f"query parameter {preview(key)} is {preview(value, 24)}: beyond 64-bit integers")


_TILE = re.compile(r"/tiles/(?:[^/]+/)?([+-]?\d+)/([+-]?\d+)/([+-]?\d+)(?:\.[A-Za-z0-9]+)?$")


_FORWARDED_PROTO = re.compile(r"proto=\"?([^;,\"]*)", re.I)


def check_forwarded(headers: list[tuple[bytes, bytes]]) -> None:
    """The scheme a proxy forwards (X-Forwarded-Proto, Forwarded: proto=) is http or https: the STAC
    and features apps build their links from it, and failed (500) on any other."""
    for key, value in headers:
        if key == b"x-forwarded-proto":
            protos = [value.decode("latin-1").strip()]
        elif key == b"forwarded":
            protos = _FORWARDED_PROTO.findall(value.decode("latin-1"))
        else:
            continue
        for proto in protos:
            if proto not in ("http", "https"):
                name = key.decode("latin-1")
                raise QueryRefused(f"header {name} names the scheme {preview(proto, 24)}: http or https only")


def check_path(path: str) -> None:
    """NUL characters anywhere; tile coordinates that are negative (morecantile fails on them)."""
    if "\x00" in path:
        raise QueryRefused("the path holds a NUL character")
    tile = _TILE.search(path) if "/tiles/" in path else None
    if tile and any(int(v) < 0 for v in tile.groups()):
        z, x, y = tile.groups()
        raise QueryRefused(f"tile {z}/{x}/{y}: zoom, column and row are numbers from 0 up")


def check_search_body(body: Any) -> None:
    """STAC POST /search: a text filter is measured like a GET one, a bbox must be finite numbers."""
    if not isinstance(body, dict):
        return
    flt = body.get("filter")
    if isinstance(flt, str):
        check_filter(flt)
    check_filter_geometries(filter_tree(flt, body.get("filter-lang") or body.get("filter_lang")))
    bbox = body.get("bbox")
    if isinstance(bbox, list):
        for v in bbox:
            if isinstance(v, float) and not math.isfinite(v):
                raise QueryRefused(f"'bbox' holds {v!r}; bbox coordinates must be finite numbers")
