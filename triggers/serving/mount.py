"""Mount a FastAPI sub-application so that it sees its mount point as its own root.

Starlette keeps the *outer* router and the outer root path in a mounted app's scope, so
`request.url_for("openapi")` inside tipg or stac-fastapi would name our /api/openapi.json
(which lists none of their routes) and `request.base_url` would drop /api/features. Setting
`app_root_path` to the mount path and dropping the outer router fixes both: every link the
libraries build (self, next, prev, alternate, service-desc) carries the prefix and points at
their own OpenAPI document.

It also applies our read-key rule (PROTECT_READS) to the mounted APIs, and opens the
serving pools on first use when the database was down at startup.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from config import get_settings
from triggers.auth import key_is_valid
from triggers.errors import error_body

Ready = Callable[[], Awaitable[bool]]


class MountedApp:
    """ASGI wrapper placed between our Mount and a library's FastAPI app."""

    def __init__(self, app: ASGIApp, ready: Ready | None = None) -> None:
        self.app = app
        self.ready = ready

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        scope = dict(scope)
        scope["app_root_path"] = scope.get("root_path", "")
        scope.pop("router", None)
        if scope["type"] == "http":
            settings = get_settings()
            request = Request(scope)
            if settings.protect_reads and not key_is_valid(
                request.headers.get("x-functions-key") or request.query_params.get("code")
            ):
                body = error_body(
                    "unauthorized", "this endpoint needs an API key: send it as x-functions-key or ?code="
                )
                await JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "ApiKey"})(scope, receive, send)
                return
            if self.ready is not None and not await self.ready():
                body = error_body("unavailable", "the database is not reachable; retry in a few seconds")
                await JSONResponse(body, status_code=503, headers={"Retry-After": "5"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


class MountRoot:
    """Answers the mount path itself (/api/features) as its landing page, without a redirect.

    Starlette's Mount only matches `/api/features/...`; the bare path would get a 307 whose
    absolute Location is built from the Host header, which is wrong behind some proxies.
    """

    def __init__(self, app: ASGIApp, mount_path: str) -> None:
        self.app = app
        self.mount_path = mount_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope = dict(scope)
        root = scope.get("root_path", "")
        scope["root_path"] = root + self.mount_path
        scope["path"] = root + self.mount_path + "/"
        scope["raw_path"] = scope["path"].encode()
        await self.app(scope, receive, send)
