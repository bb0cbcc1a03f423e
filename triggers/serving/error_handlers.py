"""Error handlers added to the mounted APIs, so that bad input is a 4xx JSON answer everywhere.

tipg: any of its errors that features.py does not map (MissingGeometryColumn for a
`geom-column` the table lacks, ...) is the client's mistake: 400.

STAC: its errors in this API's format: 4xx for bad input, JSON always, never text/plain.

stac-fastapi answers unhandled exceptions with a text/plain 500: a garbage `intersects`
(a JSON decode error), a garbage paging token or an unknown filter operator (pgstac raises
in PL/pgSQL). Bodies carry both this API's {"error", "message"} and the STAC API's
{"code", "description"}, so that clients of either convention read them.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from stac_fastapi.api.errors import DEFAULT_STATUS_CODES
from starlette.exceptions import HTTPException as StarletteHTTPException
from tipg.errors import TiPgError

from triggers.errors import error_body

log = logging.getLogger("geoetl.serving")

# SQLSTATE classes pgstac answers bad input with: data exceptions, syntax or access errors,
# PL/pgSQL RAISE (its own checks: paging token, operators), stack depth (deep filters)
INPUT_SQLSTATES = ("22", "42", "P0001", "54001")
_KINDS = {400: "validation_error", 404: "not_found", 405: "method_not_allowed", 409: "conflict"}


def stac_error(status: int, code: str, message: str) -> JSONResponse:
    body = error_body(_KINDS.get(status, "http_error" if status < 500 else "internal_error"), message)
    return JSONResponse({**body, "code": code, "description": body["message"]}, status_code=status)


def _validation_text(errors: list[Any]) -> str:
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"'{loc or 'body'}': {err.get('msg')}")
    return "; ".join(parts[:10])


def install_tipg(app: FastAPI) -> None:
    """A 400 for every tipg error without a handler of its own (the specific ones win: Starlette looks
    handlers up along the exception's class hierarchy)."""

    async def tipg_error(request: Request, exc: Exception) -> JSONResponse:
        message = str(exc) or f"{type(exc).__name__}: the request does not fit this collection"
        return JSONResponse(error_body("validation_error", message), status_code=400)

    app.add_exception_handler(TiPgError, tipg_error)


def install_stac(app: FastAPI) -> None:
    """Exception handlers on the STAC sub-application."""
    for exc_type, status in DEFAULT_STATUS_CODES.items():
        app.add_exception_handler(exc_type, _fixed(status))

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        errors = exc.errors() if isinstance(exc, (RequestValidationError, ValidationError)) else []
        return stac_error(400, "BadRequest", _validation_text(errors) or "invalid request")

    async def http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return stac_error(400 if exc.status_code == 422 else exc.status_code, type(exc).__name__, detail)

    async def bad_value(request: Request, exc: Exception) -> JSONResponse:
        return stac_error(400, "BadRequest", f"invalid query value: {exc}")

    async def postgres(request: Request, exc: Exception) -> JSONResponse:
        state = getattr(exc, "sqlstate", "") or ""
        if state.startswith(INPUT_SQLSTATES):
            return stac_error(400, "BadRequest", f"the search was refused: {str(exc).splitlines()[0]}")
        log.exception("database error on %s %s", request.method, request.url.path)
        return stac_error(500, "DatabaseError", "the server failed to handle the request; the error is in its log")

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return stac_error(500, "InternalError", "the server failed to handle the request; the error is in its log")

    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(ValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http)
    app.add_exception_handler(ValueError, bad_value)
    app.add_exception_handler(asyncpg.PostgresError, postgres)
    app.add_exception_handler(Exception, unexpected)


def _fixed(status: int) -> Any:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        if status >= 500:
            log.error("STAC error on %s: %s", request.url.path, exc)
            return stac_error(status, type(exc).__name__, "the server failed to handle the request")
        return stac_error(status, type(exc).__name__, str(exc))

    return handle
