"""The STAC item of a published table (pgstac), and what it is computed from (extent, time range).

Written by the publishing transaction (publish.py): the item and the table change together. The item
records the dataset's version: a counter, the source blob's ETag and the job that published it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from config import get_settings
from services.vector.columns import stac_column
from services.vector.identifiers import GEOMETRY_COLUMN
from services.vector.table import qualified

TABLE_EXTENSION = "https://stac-extensions.github.io/table/v1.2.0/schema.json"
# STAC datetimes are RFC 3339 (4-digit years): later values are clamped for the catalog only.
_MAX_STAC_TS = "9999-12-31 23:59:59+00"


def item_id(schema: str, table: str) -> str:
    return f"{schema}.{table}"


def tiles_url(schema: str, table: str) -> str:
    base = get_settings().base_url
    return f"{base}/api/features/collections/{schema}.{table}/tiles/WebMercatorQuad/tilejson.json"


def table_extent(conn: psycopg.Connection, schema: str, table: str) -> tuple[int, list[float] | None]:
    row = conn.execute(
        sql.SQL(
            "SELECT n, ST_XMin(e) AS xmin, ST_YMin(e) AS ymin, ST_XMax(e) AS xmax, ST_YMax(e) AS ymax"
            " FROM (SELECT count(*) AS n, ST_Extent({}) AS e FROM {}) s"
        ).format(sql.Identifier(GEOMETRY_COLUMN), qualified(schema, table))
    ).fetchone()
    if row is None or row["xmin"] is None:
        return 0, None
    return int(row["n"]), [float(row["xmin"]), float(row["ymin"]), float(row["xmax"]), float(row["ymax"])]


def temporal_range(conn: psycopg.Connection, schema: str, table: str, cols: list[str]) -> tuple[str, str] | None:
    """Min and max over the temporal columns, as RFC 3339 text (never through Python datetimes)."""
    if not cols:
        return None
    lows = sql.SQL(", ").join(sql.SQL("min({}::timestamptz)").format(sql.Identifier(c)) for c in cols)
    highs = sql.SQL(", ").join(sql.SQL("max({}::timestamptz)").format(sql.Identifier(c)) for c in cols)
    fmt = 'YYYY-MM-DD"T"HH24:MI:SS"Z"'
    row = conn.execute(
        sql.SQL(
            "SELECT to_char(least(least({}), %(cap)s::timestamptz) AT TIME ZONE 'UTC', %(fmt)s) AS lo,"
            " to_char(least(greatest({}), %(cap)s::timestamptz) AT TIME ZONE 'UTC', %(fmt)s) AS hi FROM {}"
        ).format(lows, highs, qualified(schema, table)),
        {"cap": _MAX_STAC_TS, "fmt": fmt},
    ).fetchone()
    if row is None or row["lo"] is None:
        return None
    return row["lo"], row["hi"]


def footprint(bbox: list[float]) -> dict[str, Any]:
    x0, y0, x1, y1 = bbox
    if x0 == x1 and y0 == y1:
        return {"type": "Point", "coordinates": [x0, y0]}
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def build_item(params: dict[str, Any], row_count: int, bbox: list[float], period: tuple[str, str] | None) -> dict:
    settings = get_settings()
    schema, table = params["schema"], params["table_name"]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    props: dict[str, Any] = {
        "title": f"{schema}.{table}",
        "etl:job_id": params["job_id"],
        "vector:source_format": params["source_format"],
        "vector:source_file": params["source_file"],
        "vector:source_container": params.get("source_container"),
        "vector:geometry_type": params["geometry_type"],
        "vector:feature_count": row_count,
        "system:reserved": params["collection_id"] == "system-vectors",
        "created": now,
        "table:row_count": row_count,
        "table:primary_geometry": GEOMETRY_COLUMN,
        "table:columns": [
            {"name": "id", "type": "bigint", "description": "identity primary key"},
            {"name": GEOMETRY_COLUMN, "type": f"geometry({params['geometry_type']},4326)"},
            *(stac_column(c) for c in params["columns"]),
        ],
    }
    if params.get("render_params"):
        props["geoetl:render_params"] = params["render_params"]
    if params.get("version") is not None:
        props |= {
            "version": str(params["version"]),
            "geoetl:version": params["version"],
            "geoetl:source_etag": params.get("source_etag"),
            "geoetl:if_exists": params.get("if_exists"),
        }
    if period is None:
        props["datetime"] = now
    elif period[0] == period[1]:
        props["datetime"] = period[0]
    else:
        props |= {"datetime": None, "start_datetime": period[0], "end_datetime": period[1]}
    features = settings.ogc_features_url(schema, table)
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [TABLE_EXTENSION],
        "id": item_id(schema, table),
        "collection": params["collection_id"],
        "bbox": bbox,
        "geometry": footprint(bbox),
        "properties": props,
        "links": [
            {"rel": "ogc-features", "href": features, "type": "application/geo+json", "title": "OGC API - Features"},
            {"rel": "tiles", "href": tiles_url(schema, table), "type": "application/json", "title": "Vector tiles"},
            {"rel": "viewer", "href": settings.viewer_url(table), "type": "text/html", "title": "Map viewer"},
        ],
        "assets": {
            "data": {
                "href": features,
                "type": "application/geo+json",
                "title": f"Features of {schema}.{table}",
                "roles": ["data"],
            }
        },
    }


def lock_collection(conn: psycopg.Connection, collection: str) -> None:
    """Serialise this transaction's writes to a collection with every other job's, until it ends.

    pgstac widens a collection partition's datetime constraint as items arrive; two stage-3 tasks
    upserting into one collection at the same moment made one of them fail that constraint
    (CheckViolation on _items_N_dt) in a test of 20 concurrent ingests.
    """
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"geoetl:stac:{collection}"])


def delete_item(conn: psycopg.Connection, schema: str, table: str, collection: str | None = None) -> bool:
    """Remove a table's item (in the caller's transaction); True when there was one."""
    collection = collection or get_settings().stac_collection
    row = conn.execute("SELECT pgstac.get_item(%s, %s) AS item", [item_id(schema, table), collection]).fetchone()
    if not row or not row["item"]:
        return False
    lock_collection(conn, collection)
    conn.execute("SET LOCAL search_path TO pgstac, public")  # delete_item, unlike get/upsert, has none of its own
    conn.execute("SELECT pgstac.delete_item(%s, %s)", [item_id(schema, table), collection])
    return True


def get_item(conn: psycopg.Connection, schema: str, table: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT pgstac.get_item(%s, %s) AS item", [item_id(schema, table), get_settings().stac_collection]
    ).fetchone()
    return row["item"] if row else None


def delete_owned_item(conn: psycopg.Connection, schema: str, table: str, job_id: str) -> bool:
    """Remove the table's item when this job wrote it (failure cleanup)."""
    collection = get_settings().stac_collection
    row = conn.execute("SELECT pgstac.get_item(%s, %s) AS item", [item_id(schema, table), collection]).fetchone()
    item = row["item"] if row else None
    if not item or (item.get("properties") or {}).get("etl:job_id") != job_id:
        return False
    lock_collection(conn, collection)
    conn.execute("SET LOCAL search_path TO pgstac, public")  # delete_item, unlike get/upsert, has none of its own
    conn.execute("SELECT pgstac.delete_item(%s, %s)", [item_id(schema, table), collection])
    return True
