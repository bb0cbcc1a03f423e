"""GET /api/vector/viewer?collection=T: a map page of one ingested table.

The page (MapLibre GL JS, served from /api/vector/static) draws the table from our own
OGC API: GeoJSON when it is small, vector tiles when it is large. It zooms to the table's
extent, shows the feature count and a feature's attributes on click, and is styled with the
render_params of the job that loaded the table. Unknown tables get a readable HTML 404.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse

from config import get_settings
from triggers.auth import require_read_key
from triggers.serving.layers import load_layer


def preview(value: str, limit: int = 130) -> str:
    """A bounded prefix of user input (a table name is at most 63 characters, schema.table 127)."""
    return value if len(value) <= limit else value[:limit] + "…"

TRIGGERS = Path(__file__).resolve().parent.parent
STATIC_DIR = TRIGGERS / "static"
TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TRIGGERS / "templates")),
    autoescape=jinja2.select_autoescape(["html"]),
)
GEOJSON_MAX_FEATURES = 2000  # above this the page draws vector tiles

router = APIRouter(tags=["viewer"])

_GEOMETRY_NAMES = {
    name.upper(): name
    for name in ("Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon",
                 "GeometryCollection", "Geometry")
}


def _script_json(value: Any) -> str:
    """JSON safe to place inside a <script> element."""
    text = json.dumps(value, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _html(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template(template).render(**context), status_code=status)


def _error_page(api: str, status: int, heading: str, message: str) -> HTMLResponse:
    return _html(
        "viewer_error.html",
        status,
        heading=heading,
        message=message,
        static=f"{api}/vector/static",
        example=f"{api}/vector/viewer?collection=<table_name>",
        collections_url=f"{api}/features/collections",
    )


_PAGE = {"text/html": {"schema": {"type": "string"}}}


@router.get(
    "/vector/viewer",
    response_class=HTMLResponse,
    summary="Map viewer of an ingested table",
    responses={
        400: {"description": "No table named (an HTML page saying so)", "content": _PAGE},
        401: {"description": "API key required (PROTECT_READS)"},
        404: {"description": "No such table (an HTML page saying so)", "content": _PAGE},
        503: {"description": "Database unavailable (an HTML page saying so)", "content": _PAGE},
    },
)
async def viewer(
    request: Request,
    collection: str | None = Query(None, description="Table name (as in the job) or schema.table"),
    mode: str = Query("auto", description="auto, geojson or tiles"),
    _: None = Depends(require_read_key),
) -> HTMLResponse:
    api = request.scope.get("root_path", "").rstrip("/") + "/api"
    if not collection or not collection.strip():
        return _error_page(api, 400, "Which table?", "Name the table to show with ?collection=<table_name>.")
    serving = request.app.state.serving
    if not await serving.ready():
        return _error_page(api, 503, "Database unavailable", "The map cannot be drawn right now; retry shortly.")
    name = collection.strip()
    settings = get_settings()
    layer = None
    if len(name) <= 130:
        layer = await load_layer(serving.features.state.pool, name, settings.schema_allow_list,
                                 settings.stac_collection)
    if layer is None:
        return _error_page(
            api, 404, "Table not found",
            f"There is no table named '{preview(name)}' with a geometry column to show.",
        )
    if mode not in ("geojson", "tiles"):
        mode = "geojson" if layer.count <= GEOJSON_MAX_FEATURES else "tiles"
    cid = layer.collection_id
    collection_url = f"{api}/features/collections/{cid}"
    items_url = f"{collection_url}/items"
    config = {
        "collection": cid,
        "table": layer.table,
        "mode": mode,
        "count": layer.count,
        "bbox": layer.bbox,
        "geometry_type": layer.geometry_type,
        "style": layer.style,
        "items_url_all": f"{items_url}?limit={min(max(layer.count, 1), 10000)}",
        "tilejson_url": f"{collection_url}/tiles/WebMercatorQuad/tilejson.json",
        "keyed": settings.protect_reads,  # the page reads ?code= from its own URL; it is never echoed
    }
    count_text = f"{'~' if layer.count_is_estimate else ''}{layer.count:,}"
    return _html(
        "viewer.html",
        title=cid,
        table=layer.table,
        static=f"{api}/vector/static",
        count_text=count_text,
        geometry_type=_GEOMETRY_NAMES.get(layer.geometry_type.upper(), layer.geometry_type),
        mode_text="GeoJSON" if mode == "geojson" else "vector tiles",
        items_url=items_url,
        collection_url=collection_url,
        config_json=_script_json(config),
    )
