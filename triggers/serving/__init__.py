"""OGC API - Features/Tiles (tipg), STAC API (stac-fastapi-pgstac) and the map viewer.

- /api/features  tipg, mounted (features.py); catalog kept fresh per process (catalog.py)
- /api/stac      stac-fastapi-pgstac, mounted, read-only (stac.py)
- /api/vector/viewer, /api/vector/static  the map page and its assets (viewer.py)

`register(app)` mounts them; `startup(app)` / `shutdown(app)` open and close their pools
from our lifespan (Starlette does not run a mounted sub-app's lifespan).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.routing import Route
from starlette.types import ASGIApp

from config import get_settings
from triggers import docs
from triggers.serving import error_handlers, viewer
from triggers.serving.features import CatalogGateway
from triggers.serving.mount import MountedApp, MountRoot
from triggers.serving.runtime import Serving
from triggers.serving.stale_retry import StaleCatalogRetry

log = logging.getLogger("geoetl.serving")

__all__ = ["check_serving", "register", "shutdown", "startup"]


def _serving(app: FastAPI) -> Serving:
    serving = getattr(app.state, "serving", None)
    if serving is None:
        raise RuntimeError("serving.register(app) was not called")
    return serving


def register(app: FastAPI) -> None:
    """Mount the serving sub-applications and the viewer under /api."""
    serving = Serving.build(get_settings())
    app.state.serving = serving
    error_handlers.install_stac(serving.stac)
    error_handlers.install_tipg(serving.features)
    for sub_app in (serving.features, serving.stac):
        docs.document_errors(sub_app)
    gateway = StaleCatalogRetry(CatalogGateway(serving.features, serving.keeper), serving.keeper)
    _mount(app, "/api/features", MountedApp(gateway, serving.ready))
    _mount(app, "/api/stac", MountedApp(serving.stac, serving.ready))
    app.include_router(viewer.router, prefix="/api")
    app.mount("/api/vector/static", StaticFiles(directory=viewer.STATIC_DIR), name="vector-static")


def _mount(app: FastAPI, path: str, asgi: ASGIApp) -> None:
    """Mount `asgi` at `path`, and answer `path` itself (no trailing slash) with its landing page."""
    app.router.routes.append(Route(path, endpoint=MountRoot(asgi, path), include_in_schema=False))
    app.mount(path, asgi)


async def startup(app: FastAPI) -> None:
    """Open the serving pools and build the catalog (retried on first use if the database is down)."""
    serving = _serving(app)
    try:
        await serving.start()
    except Exception as exc:  # noqa: BLE001 - the API must start even while the database is down
        serving.last_error = f"{type(exc).__name__}: {exc}"[:300]
        log.warning("serving pools not opened at startup (retried on first request): %s", serving.last_error)


async def shutdown(app: FastAPI) -> None:
    """Close the serving pools."""
    await _serving(app).stop()


async def check_serving(app: FastAPI) -> dict[str, Any]:
    """Pools open, catalog age, and one query through each pool; raises when serving is down."""
    return await _serving(app).check()
