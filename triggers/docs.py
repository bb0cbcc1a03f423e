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


ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
}
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}


def add_error_responses(doc: dict[str, Any]) -> dict[str, Any]:
    """Every operation may answer 400 ({"error", "message"}, never 422), 404 when its path names something,
    and 413 when it takes a body."""
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            if method not in HTTP_METHODS or not isinstance(operation, dict):
                continue
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            bad = responses.setdefault("400", _error_response("Invalid request (a parameter, a filter or the body)"))
            bad.setdefault("content", {}).setdefault("application/json", {"schema": ERROR_SCHEMA})  # the guards
            _document_html(operation)
            if "{" in path:
                responses.setdefault("404", _error_response("No such collection, item, job or tile matrix set"))
            if "requestBody" in operation:
                responses.setdefault("413", _error_response("Request body larger than MAX_REQUEST_BYTES"))
    return doc


def _document_html(operation: dict[str, Any]) -> None:
    """tipg answers ?f=html with a page, while its document lists JSON only."""
    formats = [p for p in operation.get("parameters", []) if p.get("name") == "f" and p.get("in") == "query"]
    enum = formats[0].get("schema", {}) if formats else {}
    values = enum.get("enum") or [v for option in enum.get("anyOf", []) for v in option.get("enum", [])]
    ok = operation.get("responses", {}).get("200")
    if "html" in values and ok is not None:
        ok.setdefault("content", {}).setdefault("text/html", {"schema": {"type": "string"}})


def document_errors(app: FastAPI) -> None:
    """Make `app`'s OpenAPI document list the errors the API's limits answer with."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if not getattr(app, "_errors_documented", False):
            app.openapi_schema = add_error_responses(build())
            app._errors_documented = True  # type: ignore[attr-defined]
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
