"""What QGIS (Debian's python3-qgis, run headless) sees of our OGC API: prints one JSON line.

    /usr/bin/python3 tests/qgis_check.py <request JSON>

The request names the landing page, the collections to open as OGC API - Features layers and, per
vector tile source, the XYZ template, the style URL and the tiles to draw. Layers are opened with
the URIs QGIS's own dialogs write (Layer > Add WFS / OGC API - Features Layer; Vector Tiles > New
Generic Connection). Runs under the system Python, not the project's venv: only the standard
library and qgis are imported.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsDataSourceUri,
    QgsFeatureRequest,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsProject,
    QgsRectangle,
    QgsVectorLayer,
    QgsVectorTileLayer,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor


def plain(value: Any) -> Any:
    """A QVariant-ish attribute as JSON: NULL is None, dates as ISO text."""
    if value is None or (hasattr(value, "isNull") and value.isNull()):
        return None
    if hasattr(value, "toString") and not isinstance(value, str):
        return value.toString("yyyy-MM-ddTHH:mm:ss") if hasattr(value, "date") else value.toString()
    return value


def oapif_layer(landing: str, collection: str, fields: list[str]) -> dict[str, Any]:
    uri = QgsDataSourceUri()
    uri.setParam("url", landing)
    uri.setParam("typename", collection)
    uri.setParam("pagingEnabled", "true")
    uri.setParam("restrictToRequestBBOX", "1")
    layer = QgsVectorLayer(uri.uri(False), collection, "OAPIF")
    out: dict[str, Any] = {"uri": uri.uri(False), "valid": layer.isValid()}
    if not layer.isValid():
        out["error"] = layer.error().summary() or layer.dataProvider().error().summary()
        return out
    out["fields"] = layer.fields().names()
    out["feature_count"] = layer.featureCount()
    out["crs"] = layer.crs().authid()
    ext = layer.extent()
    out["extent"] = [ext.xMinimum(), ext.yMinimum(), ext.xMaximum(), ext.yMaximum()]
    rows = []
    for feature in layer.getFeatures(QgsFeatureRequest()):
        geom = feature.geometry()
        rows.append(
            {
                "attrs": {f: plain(feature[f]) for f in fields if f in out["fields"]},
                "geom": None if geom.isNull() else geom.centroid().asPoint().toString(6),
            }
        )
    out["features"] = rows
    return out


def render(layer: QgsVectorTileLayer, bbox4326: list[float], size: int = 256) -> dict[str, Any]:
    """Draws the layer over bbox (lon/lat) like the map canvas does; counts the pixels drawn."""
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    to_mercator = QgsCoordinateTransform(
        QgsCoordinateReferenceSystem("EPSG:4326"), QgsCoordinateReferenceSystem("EPSG:3857"), QgsProject.instance()
    )
    settings.setExtent(to_mercator.transformBoundingBox(QgsRectangle(*bbox4326)))
    settings.setOutputSize(QSize(size, size))
    settings.setBackgroundColor(QColor(255, 255, 255, 0))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    drawn = sum(
        1
        for y in range(0, image.height(), 2)
        for x in range(0, image.width(), 2)
        if QColor.fromRgba(image.pixel(x, y)).alpha() > 0
    )
    return {"drawn_pixels": drawn, "errors": [e.message for e in job.errors()]}


def tile_layer(source: dict[str, Any]) -> dict[str, Any]:
    uri = QgsDataSourceUri()
    uri.setParam("type", "xyz")
    uri.setParam("url", source["url"])
    uri.setParam("zmin", "0")
    uri.setParam("zmax", "14")
    if source.get("styleUrl"):
        uri.setParam("styleUrl", source["styleUrl"])
    encoded = bytes(uri.encodedUri()).decode()
    layer = QgsVectorTileLayer(encoded, "tiles")
    out: dict[str, Any] = {"uri": encoded, "valid": layer.isValid()}
    if not layer.isValid():  # (3.22's error() crashes on an invalid tile layer: nothing more to ask)
        return out
    if source.get("styleUrl"):
        error, loaded = layer.loadDefaultStyle()
        out["style"] = {"loaded": loaded, "error": error, "styles": [s.styleName() for s in layer.renderer().styles()]}
    out["render"] = {name: render(layer, bbox) for name, bbox in source["bboxes"].items()}
    return out


def main() -> None:
    request = json.loads(sys.argv[1])
    app = QgsApplication([], False)
    app.initQgis()
    try:
        result = {
            "qgis_version": Qgis.version(),
            "features": {c: oapif_layer(request["landing"], c, request["fields"][c]) for c in request["collections"]},
            "tiles": [tile_layer(source) for source in request["tiles"]],
        }
    finally:
        app.exitQgis()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
