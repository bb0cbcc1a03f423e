"""What real OGC API clients send, made to work against tipg (see README, "Clients").

Pure helpers (parameters as clients send them -> what tipg understands) and one ASGI
middleware in front of the tipg app. Where the client is at fault, the docstring says which
part of which standard it breaks; the common case still works when the standard allows it.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

import morecantile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from triggers.errors import error_body
from triggers.serving.asgi_json import JsonRewrite, send_json

DEFAULT_LIMIT = 1000  # items per page when the client names none (tipg: 10)
MAX_LIMIT = 10000  # tipg's max_features_per_query
MAX_POST_FILTER_BYTES = 1 << 20
TILEJSON_VERSION = "3.0.0"

_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T?$")


def normalise_datetime(value: str) -> list[str]:
    """A `datetime` parameter as tipg's [instant] or [start, end-exclusive] list.

    An interval is closed (OGC API - Features Part 1, 7.15.4: features whose time intersects
    it), while tipg compares its end with `<`: the end is moved one microsecond later, the
    resolution of timestamptz, so that a feature at the end instant is selected.

    Accepted besides RFC 3339 date-times: a date (OWSLib sends `2021-01-01`), which stands for
    its whole day (UTC), and a date with an empty time (GDAL 3.6 turns `-where "t <=
    '2021-01-31'"` into `2021-01-31T`), which stands for its midnight, as in the SQL it came
    from. Neither is an RFC 3339 date-time as Requirement 25 of 7.15.4 asks: the clients are
    at fault, the common case works all the same.
    """
    parts = value.split("/")
    if len(parts) == 1:
        day = _day(parts[0])
        if day is None or parts[0].strip().endswith("T"):
            return [_midnight(day)] if day is not None else parts
        return [_midnight(day), _midnight(day + timedelta(days=1))]
    if len(parts) != 2:
        return parts
    start, end = parts
    open_start = start in ("", "..")  # tipg compares an open interval's end with <=, a closed one's with <
    if (start_day := _day(start)) is not None:
        start = _midnight(start_day)
    if (end_day := _day(end)) is not None:
        if not end.strip().endswith("T"):  # the whole day
            next_midnight = _midnight(end_day + timedelta(days=1))
            end = _just_before(next_midnight) if open_start else next_midnight
        else:
            end = _midnight(end_day) if open_start else _just_after(_midnight(end_day))
    elif end not in ("", "..") and not open_start:
        end = _just_after(end)
    return [start, end]


def _just_before(instant: str) -> str:
    return _shift(instant, -1)


def _just_after(instant: str) -> str:
    return _shift(instant, 1)


def _shift(instant: str, microseconds: int) -> str:
    """The instant moved by some microseconds (unchanged when it does not parse: tipg says why)."""
    try:
        moment = datetime.fromisoformat(instant.replace("z", "Z"))
    except ValueError:
        return instant
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment + timedelta(microseconds=microseconds)).isoformat().replace("+00:00", "Z")


def _day(text: str) -> date | None:
    match = _DATE.match(text.strip())
    if not match:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def _midnight(day: date) -> str:
    return f"{day.isoformat()}T00:00:00Z"


def bbox_polygons(bbox: list[float]) -> dict[str, Any]:
    """A 2-D or 3-D bbox as a GeoJSON geometry in lon/lat, split in two at the antimeridian.

    OGC API - Features Part 1, 7.15.3: a bbox whose west edge is east of its east edge crosses
    the antimeridian (170,-20,-170,0 is the strip around Fiji, not the rest of the world).
    """
    if len(bbox) == 6:
        west, south, _, east, north, _ = bbox
    else:
        west, south, east, north = bbox

    def box(w: float, e: float) -> list[list[list[float]]]:
        return [[[w, south], [e, south], [e, north], [w, north], [w, south]]]

    if west > east:
        return {"type": "MultiPolygon", "coordinates": [box(west, 180.0), box(-180.0, east)]}
    return {"type": "Polygon", "coordinates": box(west, east)}


def crosses_antimeridian(bbox: list[float] | None) -> bool:
    if not bbox:
        return False
    west, east = (bbox[0], bbox[3]) if len(bbox) == 6 else (bbox[0], bbox[2])
    return west > east


def replace_bbox_literals(node: Any) -> Any:
    """CQL2 BBOX(...) literals as GeoJSON geometries.

    cql2 renders BBOX as ST_MakeEnvelope without an SRID (0), which PostGIS refuses to compare
    with a 4326 column ("mixed SRID"); a GeoJSON literal gets 4326, the CRS CQL2 literals are in
    (OGC API - Features Part 3, Requirement 7), and tipg reprojects it for other columns.
    """
    if isinstance(node, dict):
        if set(node) == {"bbox"} and isinstance(node["bbox"], list) and len(node["bbox"]) in (4, 6):
            return bbox_polygons([float(v) for v in node["bbox"]])
        return {k: replace_bbox_literals(v) for k, v in node.items()}
    if isinstance(node, list):
        return [replace_bbox_literals(v) for v in node]
    return node


def _relative(scope: Scope) -> list[str]:
    root = scope.get("root_path", "")
    path: str = scope["path"]
    return (path[len(root) :] if root and path.startswith(root) else path).split("/")


def _is_items(parts: list[str]) -> bool:
    return len(parts) == 4 and parts[1] == "collections" and parts[3] == "items"


def tile_outside_matrix(parts: list[str]) -> str | None:
    """Why /collections/{id}/tiles/{tms}/{z}/{x}/{y} names no tile of its matrix set, or None."""
    if not (len(parts) == 8 and parts[1] == "collections" and parts[3] == "tiles"):
        return None
    tms_id, z, x, y = parts[4:8]
    if not (z.isdigit() and x.isdigit() and y.isdigit()) or tms_id not in morecantile.tms.list():
        return None
    tms = morecantile.tms.get(tms_id)
    zoom = int(z)
    if zoom < tms.minzoom or zoom > tms.maxzoom:
        return f"zoom {zoom} is not in tile matrix set {tms_id} ({tms.minzoom}..{tms.maxzoom})"
    matrix = tms.matrix(zoom)
    if int(x) >= matrix.matrixWidth or int(y) >= matrix.matrixHeight:
        return f"tile {zoom}/{x}/{y} is outside the tile matrix ({matrix.matrixWidth} x {matrix.matrixHeight} tiles)"
    return None


class FeaturesInterop:
    """Request fixes before tipg routes them:

    - items without `limit` get DEFAULT_LIMIT (GDAL's OAPIF driver and QGIS page with the
      server's default: 10 made 20,000 requests for 200k rows);
    - POST /items with a CQL2 JSON body (OWSLib's `cql=`) is the same query as GET with
      filter-lang=cql2-json. OGC API - Features defines no POST on /items for queries (Part 4
      uses it to create features, which this read-only API does not offer), so the client is
      at fault; a body that is not a CQL2 expression is still refused (405);
    - tiles outside their tile matrix answer 404 (tipg: 200 and an empty tile);
    - TileJSON gets its mandatory `tilejson` member and an unescaped URL template;
    - collections link their vector tilesets with the relation OGC API - Tiles defines for it
      (`.../tilesets-vector`, tipg says only `data`) and tilesets their tile template as
      `item` (tipg: `tile`), which is what @camptocamp/ogc-client looks for.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        parts = _relative(scope)
        if (why := tile_outside_matrix(parts)) is not None:
            await send_json(send, 404, error_body("not_found", why))
            return
        if _is_items(parts) and scope["method"] == "POST":
            scope, receive = await self._post_as_get(scope, receive, send)
            if scope is None:
                return
        if _is_items(parts) and scope["method"] in ("GET", "HEAD"):
            scope = _with_default_limit(scope)
        rewrite = _rewrite_for(parts) if scope["method"] == "GET" else None
        if rewrite is not None:
            await self.app(scope, receive, JsonRewrite(send, rewrite))
            return
        await self.app(scope, receive, send)

    async def _post_as_get(self, scope: Scope, receive: Receive, send: Send) -> tuple[Any, Receive]:
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_POST_FILTER_BYTES:
                await send_json(send, 413, error_body("validation_error", "the filter body is too large"))
                return None, receive
        try:
            expr = json.loads(body or b"null")
        except ValueError:
            expr = None
        if not (isinstance(expr, dict) and "op" in expr and "args" in expr):
            await send_json(send, 405, error_body("method_not_allowed", "POST here takes a CQL2 JSON filter only"),
                        {"Allow": "GET, POST"})
            return None, receive
        query = [(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode()) if k not in ("filter",
                                                                                                  "filter-lang")]
        query += [("filter", json.dumps(expr)), ("filter-lang", "cql2-json")]
        scope = {**scope, "method": "GET", "query_string": urlencode(query).encode()}

        async def empty() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        return scope, empty


TILESETS_VECTOR = "http://www.opengis.net/def/rel/ogc/1.0/tilesets-vector"


def complete_tilejson(doc: dict[str, Any]) -> dict[str, Any]:
    doc = {"tilejson": TILEJSON_VERSION, "scheme": "xyz", **doc}
    doc["tiles"] = [t.replace("%7B", "{").replace("%7D", "}") for t in doc.get("tiles", [])]
    return doc


def _link_tilesets(collection: dict[str, Any]) -> None:
    links = collection.get("links")
    if not isinstance(links, list) or any(lk.get("rel") == TILESETS_VECTOR for lk in links):
        return
    for link in list(links):
        href = str(link.get("href", ""))
        if link.get("rel") == "data" and href.endswith("/tiles"):
            links.append({**link, "rel": TILESETS_VECTOR, "title": "Vector tilesets"})


def tms_uri(tms_id: str) -> str | None:
    """The registered URI of a tile matrix set (OGC API - Tiles asks for it in tilesets)."""
    if tms_id not in morecantile.tms.list():
        return None
    uri = morecantile.tms.get(tms_id).uri
    return str(uri) if uri else None


def _link_tile_items(tileset: dict[str, Any]) -> None:
    links = tileset.get("links")
    if not isinstance(links, list):
        return
    for link in links:
        if str(link.get("rel", "")).endswith("/tiling-scheme") and "tileMatrixSetURI" not in tileset:
            if (uri := tms_uri(str(link.get("href", "")).rstrip("/").rsplit("/", 1)[-1])) is not None:
                tileset["tileMatrixSetURI"] = uri
    if any(lk.get("rel") == "item" for lk in links):
        return
    for link in list(links):
        if link.get("rel") == "tile":
            links.append({**link, "rel": "item", "templated": True})


def complete_collection(doc: dict[str, Any]) -> dict[str, Any]:
    if isinstance(doc.get("collections"), list):
        for collection in doc["collections"]:
            if isinstance(collection, dict):
                _link_tilesets(collection)
    else:
        _link_tilesets(doc)
    return doc


def complete_tilesets(doc: dict[str, Any]) -> dict[str, Any]:
    for tileset in doc.get("tilesets", []) if isinstance(doc.get("tilesets"), list) else [doc]:
        if isinstance(tileset, dict):
            _link_tile_items(tileset)
    return doc


def complete_tile_matrix_sets(doc: dict[str, Any]) -> dict[str, Any]:
    for entry in doc.get("tileMatrixSets", []) if isinstance(doc.get("tileMatrixSets"), list) else []:
        if isinstance(entry, dict) and "uri" not in entry and (uri := tms_uri(str(entry.get("id")))) is not None:
            entry["uri"] = uri
    return doc


def _rewrite_for(parts: list[str]) -> Any:
    if len(parts) == 2 and parts[1] == "tileMatrixSets":
        return complete_tile_matrix_sets
    if len(parts) < 2 or parts[1] != "collections":
        return None
    if parts[-1] == "tilejson.json":
        return complete_tilejson
    if len(parts) in (2, 3):
        return complete_collection
    if len(parts) in (4, 5) and parts[3] == "tiles":
        return complete_tilesets
    return None


def _with_default_limit(scope: Scope) -> Scope:
    query = parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True)
    if any(k == "limit" for k, _ in query):
        return scope
    return {**scope, "query_string": urlencode([*query, ("limit", str(DEFAULT_LIMIT))]).encode()}
