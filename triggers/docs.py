"""Swagger UI for each OpenAPI document of the API, served from this app (no CDN, no inline script).

FastAPI's own docs page loads Swagger UI from a CDN and starts it with an inline script,
which the Content-Security-Policy forbids. The assets come from the swagger-ui-bundle-v2
package (installed with the requirements, so Azure deployments have them too); a small
static script starts Swagger UI with the document named in the page's data attribute.
The routes shadow the docs pages of the mounted APIs (tipg's and stac-fastapi's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import swagger_ui_bundle
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(swagger_ui_bundle.swagger_ui_path)
ASSETS_PATH = "/api/docs/assets"

# docs page -> (title, OpenAPI document), all relative to the app's root path
PAGES = {
    "/api/docs": ("geoetl API", "/api/openapi.json"),
    "/api/features/api.html": ("geoetl OGC API - Features and Tiles", "/api/features/api"),
    "/api/stac/api.html": ("geoetl STAC API", "/api/stac/api"),
}

_PAGE = jinja2.Environment(autoescape=True).from_string(
    """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{{ title }} - Swagger UI</title>
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="{{ root }}{{ assets }}/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui" data-openapi-url="{{ root }}{{ openapi }}"></div>
  <script src="{{ root }}{{ assets }}/swagger-ui-bundle.js"></script>
  <script src="{{ root }}/api/vector/static/docs/swagger-init.js"></script>
</body>
</html>
"""
)


def _page(title: str, openapi: str) -> Any:
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return HTMLResponse(_PAGE.render(title=title, openapi=openapi, assets=ASSETS_PATH, root=root))

    return docs


def install(app: FastAPI) -> None:
    """Add the docs pages and their assets; call before the serving APIs are mounted."""
    for path, (title, openapi) in PAGES.items():
        app.add_api_route(path, _page(title, openapi), methods=["GET"], include_in_schema=False,
                          response_class=HTMLResponse)
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS), name="swagger-ui-assets")
