"""OGC API - Features and Tiles (tipg) as a sub-application mounted at /api/features.

tipg's own `tipg.main` app is not used: it reads its settings from the environment at import
and opens its pool in a lifespan Starlette never runs for a mounted app. We assemble the same
parts (tipg's Endpoints factory) with settings passed explicitly, and put a gateway in front
that keeps the catalog fresh and resolves the seed's bare table names.
"""

from __future__ import annotations

import logging
import re
from typing import Any, get_args
from urllib.parse import quote, unquote

import asyncpg
from cql2 import Expr
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from stac_fastapi.api.middleware import ProxyHeaderMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette_cramjam.middleware import CompressionMiddleware
from tipg import __version__ as tipg_version
from tipg import errors as tipg_errors
from tipg.dependencies import (
    ItemOutputType,
    ItemResponseType,
    ItemsOutputType,
    ItemsResponseType,
    bbox_query,
    datetime_query,
    filter_query,
)
from tipg.factory import Endpoints
from tipg.openapi import _update_openapi
from tipg.resources.enums import MediaType

from triggers import errors
from triggers.errors import ApiError, error_body
from triggers.serving import interop, tipg_patches
from triggers.serving.catalog import CatalogKeeper
from triggers.serving.pages import tipg_templates

log = logging.getLogger("geoetl.serving")

TITLE = "geoetl OGC API - Features and Tiles"

# tipg's errors, mapped to our status codes (bad input is 400 everywhere in this API).
_TIPG_STATUS: list[tuple[type[Exception], int, str]] = [
    (tipg_errors.NotFound, 404, "not_found"),
    (tipg_errors.InvalidBBox, 400, "validation_error"),
    (tipg_errors.InvalidDatetime, 400, "validation_error"),
    (tipg_errors.InvalidLimit, 400, "validation_error"),
    (tipg_errors.InvalidPropertyName, 400, "validation_error"),
    (tipg_errors.InvalidGeometryColumnName, 400, "validation_error"),
    (tipg_errors.InvalidDatetimeColumnName, 400, "validation_error"),
    (tipg_errors.MissingFunctionParameter, 400, "validation_error"),
    (tipg_errors.NoPrimaryKey, 400, "validation_error"),
    (tipg_errors.MissingDatetimeColumn, 400, "validation_error"),
]


def build_app() -> FastAPI:
    """The tipg application (routes, OpenAPI at /api, error answers in our format)."""
    app = FastAPI(
        title=TITLE,
        version=tipg_version,
        description="Tables loaded by geoetl, as OGC API - Features collections and vector tiles.",
        openapi_url="/api",
        docs_url="/api.html",
        redoc_url=None,
    )
    tipg_patches.install()
    _update_openapi(app)
    endpoints = Endpoints(title=TITLE, with_tiles_viewer=False, router_prefix="", templates=tipg_templates())
    app.include_router(endpoints.router)
    app.dependency_overrides[filter_query] = _parse_filter
    app.dependency_overrides[bbox_query] = _parse_bbox
    app.dependency_overrides[datetime_query] = _parse_datetime
    app.dependency_overrides[ItemsOutputType] = _items_output
    app.dependency_overrides[ItemOutputType] = _item_output
    _document_limits(app)
    app.add_middleware(interop.FeaturesInterop)
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET"], allow_headers=["*"])
    app.add_middleware(CompressionMiddleware, compression_level=6)
    # links follow Forwarded / X-Forwarded-* like the STAC API's (behind Front Door or APIM)
    app.add_middleware(ProxyHeaderMiddleware)
    _install_errors(app)
    return app


def _parse_filter(request: Request) -> Expr | None:
    """tipg's filter parsing, with an unparsable filter answered 400 instead of 500, CQL2 BBOX
    literals in lon/lat, and an antimeridian-crossing `bbox` parameter as two boxes."""
    text = request.query_params.get("filter")
    lang = request.query_params.get("filter-lang")
    if lang not in (None, "cql2-text", "cql2-json"):
        raise ApiError(400, "validation_error", f"filter-lang must be cql2-text or cql2-json, not {lang!r}")
    try:
        expr = filter_query(query=text, filter_lang=lang)  # type: ignore[arg-type]
    except Exception as exc:  # cql2 raises a bare Exception on syntax errors
        message = f"invalid filter: {str(exc).strip().splitlines()[-1][:300]}"
        raise ApiError(400, "validation_error", message) from exc
    if expr is not None:
        expr = Expr(interop.replace_bbox_literals(expr.to_json()))
    bbox = bbox_query(request.query_params.get("bbox"))
    if interop.crosses_antimeridian(bbox):
        assert bbox is not None
        column = _geometry_column(request)
        if column is not None:
            split = Expr({"op": "s_intersects", "args": [{"property": column}, interop.bbox_polygons(bbox)]})
            expr = split if expr is None else expr + split
    return expr


def _geometry_column(request: Request) -> str | None:
    catalog = getattr(request.app.state, "collection_catalog", None) or {}
    collection = (catalog.get("collections") or {}).get(request.path_params.get("collectionId", ""))
    if collection is None:
        return None
    column = collection.get_geometry_column(request.query_params.get("geom-column"))
    return column.name if column is not None else None


def _parse_bbox(request: Request) -> list[float] | None:
    """tipg's bbox, except one crossing the antimeridian: _parse_filter turns it into two boxes."""
    bbox = bbox_query(request.query_params.get("bbox"))
    return None if interop.crosses_antimeridian(bbox) else bbox


def _parse_datetime(request: Request) -> list[str] | None:
    """tipg's datetime, with dates and dates with an empty time accepted (see interop)."""
    value = request.query_params.get("datetime")
    if not value:
        return None
    parts = interop.normalise_datetime(value)
    if len(parts) > 2:
        raise ApiError(400, "validation_error", f"invalid datetime: {value[:100]!r} (instant or start/end)")
    return parts


def _items_output(request: Request) -> MediaType | None:
    """tipg's output type, except that JSON on items is GeoJSON: f=json (and Accept:
    application/json) get a FeatureCollection, not tipg's flat array of rows, which clients
    such as @camptocamp/ogc-client read as no features (OGC API - Features Part 1, 7.16.2
    asks for GeoJSON under the JSON conformance class)."""
    f = request.query_params.get("f")
    if f is not None and f not in get_args(ItemsResponseType):
        raise ApiError(400, "validation_error", f"unknown output format f={f[:40]!r}")
    chosen = ItemsOutputType(request, f)  # type: ignore[arg-type]
    return MediaType.geojson if chosen == MediaType.json else chosen


def _item_output(request: Request) -> MediaType | None:
    """The same for one item: f=json is a GeoJSON Feature, not tipg's flat row."""
    f = request.query_params.get("f")
    if f is not None and f not in get_args(ItemResponseType):
        raise ApiError(400, "validation_error", f"unknown output format f={f[:40]!r}")
    chosen = ItemOutputType(request, f)  # type: ignore[arg-type]
    return MediaType.geojson if chosen == MediaType.json else chosen


def _document_limits(app: FastAPI) -> None:
    """The OpenAPI document says what the items route really does with `limit`.

    GDAL reads it on the items path. QGIS (3.22, and its OAPIF provider still today) reads only
    `components/parameters/limit`, where OGC API - Features Part 1's OpenAPI fragments define it;
    without it QGIS pages with 100 features a request (2,000 requests for 200k rows). So it is
    stated in both places (an unreferenced component is valid OpenAPI).
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = build()
        for path, methods in doc.get("paths", {}).items():
            if not path.endswith("/items"):
                continue
            for param in methods.get("get", {}).get("parameters", []):
                if param.get("name") == "limit":
                    param.setdefault("schema", {}).update(
                        {"default": interop.DEFAULT_LIMIT, "maximum": interop.MAX_LIMIT, "minimum": 0}
                    )
                    doc.setdefault("components", {}).setdefault("parameters", {})["limit"] = dict(param)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _install_errors(app: FastAPI) -> None:
    errors.install(app)
    for exc_type, status, kind in _TIPG_STATUS:
        app.add_exception_handler(exc_type, _handler(status, kind))

    async def _undefined_table(request: Request, exc: Exception) -> JSONResponse:
        keeper: CatalogKeeper | None = getattr(request.app.state, "keeper", None)
        if keeper is not None:
            keeper.invalidate()
        return JSONResponse(error_body("not_found", "this collection no longer exists"), status_code=404)

    async def _postgres(request: Request, exc: Exception) -> JSONResponse:
        state = getattr(exc, "sqlstate", "") or ""
        keeper: CatalogKeeper | None = getattr(request.app.state, "keeper", None)
        if state == "42703" and keeper is not None and _catalog_column(request, keeper, str(exc)):
            # a column the catalog lists vanished: the table was replaced under the catalog
            keeper.invalidate()
            log.info("%s: %s (catalog build %s in use)", request.url.path, str(exc).splitlines()[0][:200],
                     keeper.published_build)
        if state.startswith(("22", "42")):  # data exception, bad column or operator in a filter
            message = str(exc).splitlines()[0][:300]
            return JSONResponse(error_body("validation_error", f"the query was refused: {message}"), status_code=400)
        log.exception("database error on %s %s", request.method, request.url.path)
        body = error_body("internal_error", "the server failed to handle the request; the error is in its log")
        return JSONResponse(body, status_code=500)

    async def _bad_value(request: Request, exc: Exception) -> JSONResponse:
        # tipg parses bbox, datetime and ids with float()/ciso8601, which raise ValueError on bad input
        log.info("bad query value on %s: %s", request.url.path, exc)
        return JSONResponse(error_body("validation_error", f"invalid query value: {str(exc)[:300]}"), status_code=400)

    app.add_exception_handler(ValueError, _bad_value)
    app.add_exception_handler(asyncpg.UndefinedTableError, _undefined_table)
    app.add_exception_handler(asyncpg.PostgresError, _postgres)


_MISSING_COLUMN = re.compile(r'column (?:\w+\.)?"?([^"]+?)"? does not exist')


def _catalog_column(request: Request, keeper: CatalogKeeper, message: str) -> bool:
    """Whether the column a query missed is one the catalog lists for the collection: the table changed
    under the catalog. A column only the client named (`filter=nope = 1`) is the client's error, which
    must not cost a catalog rebuild."""
    found = _MISSING_COLUMN.search(message)
    collection = keeper.collections().get(request.path_params.get("collectionId", ""))
    if found is None or collection is None:
        return True  # not known to be the client's: assume the table changed
    return any(column.name == found.group(1) for column in collection.properties)


def _handler(status: int, kind: str) -> Any:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(kind, str(exc) or kind), status_code=status)

    return handle


MAX_TILE_ZOOM = 30  # PostGIS cannot segmentize tiles much deeper (z=60 fails inside ST_Segmentize)


def _tile_zoom(scope: Scope) -> int | None:
    """z of a /collections/{id}/tiles/{tms}/{z}/{x}/{y} request, when it is one."""
    root = scope.get("root_path", "")
    path: str = scope["path"]
    parts = (path[len(root) :] if root and path.startswith(root) else path).split("/")
    if len(parts) >= 8 and parts[1] == "collections" and parts[3] == "tiles" and parts[5].isdigit():
        return int(parts[5])
    return None


class CatalogGateway:
    """Runs before tipg: keeps the catalog fresh and maps bare table names to schema.table."""

    def __init__(self, app: ASGIApp, keeper: CatalogKeeper) -> None:
        self.app = app
        self.keeper = keeper

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            zoom = _tile_zoom(scope)
            if zoom is not None and zoom > MAX_TILE_ZOOM:
                message = f"zoom level {zoom} is beyond the deepest one served ({MAX_TILE_ZOOM})"
                await JSONResponse(error_body("validation_error", message), status_code=400)(scope, receive, send)
                return
            await self._prepare(scope)
        await self.app(scope, receive, send)

    async def _prepare(self, scope: Scope) -> None:
        root = scope.get("root_path", "")
        path: str = scope["path"]
        rel = path[len(root) :] if root and path.startswith(root) else path
        parts = rel.split("/")
        if len(parts) < 2 or parts[1] != "collections":
            return
        if len(parts) == 2 or (len(parts) == 3 and parts[2] == ""):
            await self._fresh(force_check=True)
            return
        cid = unquote(parts[2])
        known = self.resolve(cid)
        # tiles come in bursts of dozens: a throttled check is enough there
        is_tile = len(parts) > 3 and parts[3] == "tiles"
        await self._fresh(force_check=known is None or not is_tile)
        target = self.resolve(cid) or self.default_id(cid)
        if target != cid:
            parts[2] = quote(target, safe=".")
            scope["path"] = root + "/".join(parts)
            scope["raw_path"] = quote(scope["path"]).encode()

    async def _fresh(self, *, force_check: bool) -> None:
        try:
            await self.keeper.ensure_fresh(force_check=force_check)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("catalog freshness check failed (serving the catalog as it is): %s", exc)

    def resolve(self, cid: str) -> str | None:
        """The catalog id a request names: itself, or schema.<cid> in the first served schema that has it."""
        collections = self.keeper.collections()
        if cid in collections:
            return cid
        if "." not in cid:
            for schema in self.keeper.schemas:
                if f"{schema}.{cid}" in collections:
                    return f"{schema}.{cid}"
        return None

    def default_id(self, cid: str) -> str:
        """Unknown bare names become schema.name so that tipg answers 404, not 422."""
        if "." in cid or not self.keeper.schemas:
            return cid
        return f"{self.keeper.schemas[0]}.{cid}"
