"""OGC API - Features and Tiles (tipg) as a sub-application mounted at /api/features.

tipg's own `tipg.main` app is not used: it reads its settings from the environment at import
and opens its pool in a lifespan Starlette never runs for a mounted app. We assemble the same
parts (tipg's Endpoints factory) with settings passed explicitly, and put a gateway in front
that keeps the catalog fresh and resolves the seed's bare table names.
"""

from __future__ import annotations

import logging
from typing import Any
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
from tipg.dependencies import filter_query
from tipg.factory import Endpoints
from tipg.openapi import _update_openapi

from triggers import errors
from triggers.errors import ApiError, error_body
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
    _update_openapi(app)
    endpoints = Endpoints(title=TITLE, with_tiles_viewer=False, router_prefix="", templates=tipg_templates())
    app.include_router(endpoints.router)
    app.dependency_overrides[filter_query] = _parse_filter
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET"], allow_headers=["*"])
    app.add_middleware(CompressionMiddleware, compression_level=6)
    # links follow Forwarded / X-Forwarded-* like the STAC API's (behind Front Door or APIM)
    app.add_middleware(ProxyHeaderMiddleware)
    _install_errors(app)
    return app


def _parse_filter(request: Request) -> Expr | None:
    """tipg's filter parsing, with an unparsable filter answered 400 instead of 500."""
    text = request.query_params.get("filter")
    lang = request.query_params.get("filter-lang")
    if lang not in (None, "cql2-text", "cql2-json"):
        raise ApiError(400, "validation_error", f"filter-lang must be cql2-text or cql2-json, not {lang!r}")
    try:
        return filter_query(query=text, filter_lang=lang)  # type: ignore[arg-type]
    except Exception as exc:  # cql2 raises a bare Exception on syntax errors
        message = f"invalid filter: {str(exc).strip().splitlines()[-1][:300]}"
        raise ApiError(400, "validation_error", message) from exc


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
        if state == "42703":  # a column vanished: the table may have been replaced under the catalog
            keeper: CatalogKeeper | None = getattr(request.app.state, "keeper", None)
            if keeper is not None:
                keeper.invalidate()
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
