"""STAC API (stac-fastapi-pgstac, read-only) as a sub-application mounted at /api/stac.

The app is assembled by the library's own `instantiate_api` with settings objects passed in
(its defaults would read the environment), and with a no-op lifespan: Starlette never runs
a mounted app's lifespan, so the pool is opened from ours (see runtime.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from stac_fastapi.pgstac.app import instantiate_api
from stac_fastapi.pgstac.config import Settings as StacSettings
from stac_fastapi.pgstac.models.extensions import Extensions
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from triggers.serving.stac_interop import StacInterop


@asynccontextmanager
async def _no_lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield


class JsonBodies:
    """Request bodies here are JSON whatever their Content-Type says: stac-fastapi's validation
    crashes (500) on a body sent without the JSON header, as `curl -d` sends it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            declared = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
            if not (declared == b"application/json" or declared.endswith(b"+json")):
                headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


def build_app(settings: StacSettings) -> FastAPI:
    """The STAC API application; links get /api/stac from the mount (see mount.py)."""
    api = instantiate_api(extensions=Extensions(settings=settings), lifespan=_no_lifespan, settings=settings)
    api.client.landing_page_id = settings.stac_fastapi_landing_id  # its default is read from the env at import
    api.app.add_middleware(JsonBodies)
    api.app.user_middleware.append(Middleware(StacInterop))  # innermost: sees uncompressed bodies
    return api.app
