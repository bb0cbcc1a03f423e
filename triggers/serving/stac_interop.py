"""What STAC clients and validators need from stac-fastapi-pgstac 7.2 / pgstac 0.9, as one
ASGI middleware placed innermost in the STAC app (below its compression):

- a 3-D bbox (6 numbers) is searched by its 2-D footprint: pgstac builds a PolyhedralSurface
  from it, which PostGIS cannot intersect (500, and the connection dropped). STAC API - Item
  Search allows 3-D bboxes; our items carry no heights, so the footprint answers the same;
- items whose datetime is a range get `"datetime": null` back: the STAC item spec (1.0.0,
  "datetime") requires the key, null when start/end are given. The ingest writes it
  (services/vector/stac.py), but pgstac strips null properties when it stores an item, so
  every item already written needs it on the way out too;
- the Query extension's startsWith / endsWith / contains / in operators (STAC API - Query
  extension, "Query Language") work: stac-fastapi's request model refuses them (400), so a
  `query` that uses them is sent as the equivalent CQL2 JSON `filter`, which pgstac runs;
- the Fields extension follows its include/exclude rules (STAC API - Fields, "Include/Exclude
  Semantics"): an empty or null `include` beside an `exclude` means the default set minus
  the excluded (pgstac returned the full item), a Feature keeps its `type` (pgstac dropped it),
  `fields: null` is refused, and the answers say application/geo+json;
- conformance does not claim `oas30`: the service-desc is an OpenAPI 3.1 document.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from triggers.errors import error_body
from triggers.serving.asgi_json import JsonRewrite, send_json

MAX_BODY_BYTES = 1 << 20


def footprint_bbox(values: list[Any]) -> list[Any]:
    """[w, s, zmin, e, n, zmax] -> [w, s, e, n], longitudes wrapped into -180..180 (181 is -179)."""
    if isinstance(values, list) and len(values) == 6:
        try:
            [float(v) for v in values]
        except (TypeError, ValueError):
            return values  # not numbers: stac-fastapi refuses it with its own message
        values = [values[0], values[1], values[3], values[4]]
    if isinstance(values, list) and len(values) == 4:
        try:
            numbers = [float(v) for v in values]
        except (TypeError, ValueError):
            return values
        west, south, east, north = numbers
        if 180 < abs(west) <= 540 or 180 < abs(east) <= 540:
            if east - west >= 360:
                west, east = -180.0, 180.0
            else:
                west, east = _wrap(west), _wrap(east)
            return [west, south, east, north]
    return values


def _wrap(lon: float) -> float:
    return ((lon + 180.0) % 360.0) - 180.0 if abs(lon) > 180 else lon


def antimeridian_intersects(bbox: list[Any]) -> dict[str, Any] | None:
    """A 2-D bbox whose west is east of its east (it crosses the antimeridian) as the two boxes
    it means, for `intersects`: pgstac would make one envelope of nearly the whole world."""
    try:
        west, south, east, north = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    if west <= east:
        return None

    def box(w: float, e: float) -> list[list[list[float]]]:
        return [[[w, south], [e, south], [e, north], [w, north], [w, south]]]

    return {"type": "MultiPolygon", "coordinates": [box(west, 180.0), box(-180.0, east)]}


_COMPARISONS = {"eq": "=", "neq": "<>", "ne": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
_TEXT_OPS = {"startsWith", "endsWith", "contains", "in"}


def _like(value: Any, before: str, after: str) -> str:
    text = str(value).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{before}{text}{after}"


def query_as_filter(query: Any) -> dict[str, Any] | None:
    """A Query-extension object as CQL2 JSON, when it uses operators stac-fastapi refuses."""
    if not isinstance(query, dict) or not any(
        isinstance(ops, dict) and _TEXT_OPS & set(ops) for ops in query.values()
    ):
        return None
    args: list[dict[str, Any]] = []
    for name, ops in query.items():
        prop = {"property": name}
        for op, value in (ops.items() if isinstance(ops, dict) else [("eq", ops)]):
            if op in _COMPARISONS:
                args.append({"op": _COMPARISONS[op], "args": [prop, value]})
            elif op == "startsWith":
                args.append({"op": "like", "args": [prop, _like(value, "", "%")]})
            elif op == "endsWith":
                args.append({"op": "like", "args": [prop, _like(value, "%", "")]})
            elif op == "contains":
                args.append({"op": "like", "args": [prop, _like(value, "%", "%")]})
            elif op == "in":
                args.append({"op": "in", "args": [prop, value if isinstance(value, list) else [value]]})
            else:
                return None  # unknown operator: let stac-fastapi refuse it with its own message
    return args[0] if len(args) == 1 else {"op": "and", "args": args}


DEFAULT_FIELDS = ["type", "stac_version", "id", "geometry", "bbox", "links", "assets", "properties.datetime"]


class BadRequest(ValueError):
    """A request the STAC API must refuse (400)."""


def fields_with_defaults(fields: Any) -> Any:
    """A Fields-extension object with the default set made explicit where the rules ask for it."""
    if fields is None:
        raise BadRequest("fields must be an object with include and/or exclude, not null")
    if not isinstance(fields, dict):
        return fields
    include, exclude = fields.get("include"), fields.get("exclude")
    if include is None and "include" not in fields:
        return fields  # only exclude: the full item less the excluded fields
    include = list(include or [])
    exclude = list(exclude or [])
    if include:  # a Feature keeps its `type`, or it is not GeoJSON (RFC 7946, 3.2)
        return {"include": list(dict.fromkeys(["type", *include])), "exclude": exclude}
    defaults = [f for f in DEFAULT_FIELDS if f not in exclude]
    return {"include": defaults, "exclude": exclude}


def get_fields_with_defaults(value: str) -> str:
    """The GET form (`+a,-b,c`) of fields_with_defaults."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    include = [n.lstrip("+") for n in names if not n.startswith("-")]
    exclude = [n[1:] for n in names if n.startswith("-")]
    if not include:
        return value
    fixed = fields_with_defaults({"include": include, "exclude": exclude})
    return ",".join([*fixed["include"], *(f"-{e}" for e in fixed["exclude"] if e not in fixed["include"])])


def with_null_datetime(doc: Any) -> Any:
    """An item (or each item of a collection of items) with `datetime: null` when it has a range."""
    if isinstance(doc, dict):
        if doc.get("type") == "FeatureCollection" and isinstance(doc.get("features"), list):
            for feature in doc["features"]:
                with_null_datetime(feature)
        elif doc.get("type") == "Feature" and isinstance(doc.get("properties"), dict):
            props = doc["properties"]
            if "datetime" not in props and "start_datetime" in props and "end_datetime" in props:
                props["datetime"] = None
    return doc


def without_oas30(doc: Any) -> Any:
    if isinstance(doc, dict) and isinstance(doc.get("conformsTo"), list):
        doc["conformsTo"] = [c for c in doc["conformsTo"] if not str(c).endswith("/conf/oas30")]
    return doc


def _relative(scope: Scope) -> str:
    root = scope.get("root_path", "")
    path: str = scope["path"]
    return path[len(root) :] if root and path.startswith(root) else path


class StacInterop:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _relative(scope).rstrip("/")
        try:
            scope = _footprint_query(scope, search=path.endswith("/search"))
        except BadRequest as exc:
            await _bad_request(send, str(exc))
            return
        if scope["method"] == "POST" and path.endswith("/search"):
            try:
                receive = await _footprint_body(receive)
            except BadRequest as exc:
                await _bad_request(send, str(exc))
                return
        rewrite = None
        if path == "/conformance" or path == "":
            rewrite = without_oas30
        elif path.endswith("/search") or "/items" in path:
            rewrite = with_null_datetime
        if rewrite is None:
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, JsonRewrite(send, rewrite, geojson_media=True))


def _footprint_query(scope: Scope, search: bool) -> Scope:
    """The query string with the fixes above (`intersects` exists on /search only)."""
    raw = scope.get("query_string", b"")
    if b"bbox" not in raw and b"query" not in raw and b"fields" not in raw:
        return scope
    query = parse_qsl(raw.decode(), keep_blank_values=True)
    changed = False
    for i, (key, value) in enumerate(query):
        if key == "bbox" and value.count(",") in (3, 5):
            fixed = footprint_bbox(value.split(","))
            query[i] = (key, ",".join(str(v) for v in fixed))
            changed = changed or fixed != value.split(",")
    for i, (key, value) in enumerate(query):
        if key == "fields" and (fixed_fields := get_fields_with_defaults(value)) != value:
            query[i] = (key, fixed_fields)
            changed = True
    names = [k for k, _ in query]
    bbox = dict(query).get("bbox")
    shape = antimeridian_intersects(bbox.split(",")) if search and bbox and "intersects" not in names else None
    if shape is not None:
        query = [(k, v) for k, v in query if k != "bbox"] + [("intersects", json.dumps(shape))]
        changed = True
    if "query" in names and "filter" not in names:
        try:
            cql = query_as_filter(json.loads(dict(query)["query"]))
        except ValueError as exc:  # stac-fastapi answered 500
            raise BadRequest(f"query must be a JSON object: {exc}") from exc
        if cql is not None:
            query = [(k, v) for k, v in query if k not in ("query", "filter-lang")]
            query += [("filter", json.dumps(cql)), ("filter-lang", "cql2-json")]
            changed = True
    return {**scope, "query_string": urlencode(query).encode()} if changed else scope


async def _footprint_body(receive: Receive) -> Receive:
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > MAX_BODY_BYTES:
            break
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        body = json.dumps(normalise_search_body(doc)).encode()
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _bad_request(send: Send, message: str) -> None:
    """The project's error body in both conventions, as the STAC app's own handlers answer."""
    err = error_body("validation_error", message)
    await send_json(send, 400, err | {"code": "BadRequest", "description": err["message"]})


def normalise_search_body(doc: dict[str, Any]) -> dict[str, Any]:
    """A POST /search body with the fixes above; `collections` or `ids` given as one string (the
    Item Search spec asks for arrays; stac-api-validator sends a string) become one-item arrays."""
    doc = dict(doc)
    for key in ("collections", "ids"):
        if isinstance(doc.get(key), str):
            doc[key] = [doc[key]]
    if isinstance(doc.get("bbox"), list):
        doc["bbox"] = footprint_bbox(doc["bbox"])
        if "intersects" not in doc and (shape := antimeridian_intersects(doc["bbox"])) is not None:
            doc.pop("bbox")
            doc["intersects"] = shape
    if "filter" not in doc and (cql := query_as_filter(doc.get("query"))) is not None:
        doc = {k: v for k, v in doc.items() if k not in ("query", "filter-lang", "filter_lang")}
        doc |= {"filter": cql, "filter-lang": "cql2-json"}
    if "fields" in doc:
        doc["fields"] = fields_with_defaults(doc["fields"])
    return doc
