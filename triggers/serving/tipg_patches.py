"""Corrections to tipg 1.6's query building, carried here until upstream has them.

Each one is small and keeps tipg's own signatures, so it can be dropped when tipg fixes it
(tests/test_interop_features.py shows the upstream behaviour each one corrects):

- paging under `sortby`: tipg orders only by the requested keys, so rows that tie on a
  non-unique key come back in any order from page to page (rows duplicated and dropped).
  The id column is appended as the last key: a total order, exact paging.
- `numberMatched`: tipg runs COUNT(*) over the matched rows for every page, in a statement of its
  own (a replace committing between it and the page's gives a count of another version). Here a
  counted page is one statement that reads the matches once. On a table larger
  than COUNT_EXACT_MAX_ROWS, a page whose count would scan the table (every unfiltered page, a
  filter no index serves) or that the planner expects to match more rows than that leaves it
  out (OGC API - Features Part 1, 7.15.4: the
  member is optional, but exact when present); `next` comes from fetching one row more.
- vector tiles: tipg cuts a tile at `max_features_per_tile` rows, silently. Here a tile over
  the budget (TILE_FEATURE_BUDGET) degrades instead: points are aggregated into one point per
  grid cell (64 x 64 cells per tile) with a `point_count`, lines and polygons are simplified to the tile's pixel
  size; nothing is dropped. A tile within the budget is exactly tipg's. An unfiltered WebMercatorQuad
  tile of a large point table comes from its overview (services/vector/overviews.py) when one was
  built: the same cells and counts, aggregated once at publish instead of on every request.
- conformance: tipg declares the `oas30` classes while FastAPI serves an OpenAPI 3.1
  document; they are not declared (no OGC class covers 3.1 yet).
"""

from __future__ import annotations

import contextvars
import decimal
import json
from typing import Any

import asyncpg
import numpy as np
import orjson
import pyproj
import shapely
from tipg import collections as tipg_collections
from tipg import factory as tipg_factory
from tipg.collections import Feature, ItemList, PgCollection, features_settings, mvt_settings
from tipg.errors import InvalidGeometryColumnName, InvalidLimit, NotFound
from tipg.resources import response as tipg_response
from tipg.resources.response import orjsonDumps

from services.vector.overviews import (
    CELL_BITS,
    POINT_TYPES,
    TILE_FEATURE_BUDGET,
    cell_index_sql,
    mercator_points_sql,
    point_expression,
)

COUNT_EXACT_MAX_ROWS = 100_000  # unfiltered pages of larger tables omit numberMatched
TILE_HARD_LIMIT = 1_000_000  # what tipg's own per-tile check may let through (ours decides)
OVERVIEW_TMS = "WebMercatorQuad"  # the grid overviews are built on
# request filters: any of them set means the tile is not the table's plain overview tile
TILE_FILTERS = ("ids_filter", "bbox_filter", "datetime_filter", "properties_filter", "cql_filter", "dt",
                "function_parameters")

# set by the count below, read by the response's render (same request task)
_omit_matched: contextvars.ContextVar[bool] = contextvars.ContextVar("geoetl_omit_matched", default=False)

_original_get_tile = PgCollection.get_tile
# tipg's own methods, kept so that tests can show what each correction changes
UPSTREAM = {
    "_sortby": PgCollection._sortby,
    "features": PgCollection.features,
    "get_tile": PgCollection.get_tile,
    "_select_mvt": PgCollection._select_mvt,
}
_installed = False


def _sort_keys(self: PgCollection, sortby: str | None) -> list[tuple[str, str]]:
    """(column, ORDER BY fragment) of tipg's order, with the id column as the final key when the request
    sorts."""
    sorts = self._sort_expressions(sortby)
    if sortby and self.id_column is not None and self.id_column.name not in [name for name, _ in sorts]:
        sorts.append((self.id_column.name, tipg_collections._quote_ident(self.id_column.name)))
    return sorts


def _order_by(keys: list[tuple[str, str]]) -> str:
    return "ORDER BY " + ", ".join(fragment for _, fragment in keys)


def _sortby(self: PgCollection, sortby: str | None) -> str:
    """tipg's ORDER BY, with the id column as the final key when the request sorts."""
    return _order_by(_sort_keys(self, sortby))


async def _estimated_rows(self: PgCollection, conn: asyncpg.Connection) -> float:
    value = await conn.fetchval(
        "SELECT c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relname = $2",
        self.dbschema,
        self.table,
    )
    return float(value or 0.0)


async def _count_is_cheap(self: PgCollection, conn: asyncpg.Connection, where: Any) -> bool:
    """A small table, or a filter the planner counts through an index over few rows (one EXPLAIN)."""
    if self.type == "Function" or await _estimated_rows(self, conn) <= COUNT_EXACT_MAX_ROWS:
        return True
    if where is None:
        return False
    plan = await conn.fetchval(
        f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {self._qualified_name} {self._where_clause(where)}"  # noqa: S608
    )
    root = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
    return float(root["Plan Rows"]) <= COUNT_EXACT_MAX_ROWS and not _scans_the_table(root)


def _scans_the_table(node: dict[str, Any]) -> bool:
    if node.get("Node Type") in ("Seq Scan", "Parallel Seq Scan"):
        return True
    return any(_scans_the_table(child) for child in node.get("Plans", []))


async def _features(self: PgCollection, conn: asyncpg.Connection, **kwargs: Any) -> ItemList:
    """tipg's features(), counting only when the count is cheap or the request is filtered."""
    limit = kwargs.get("limit") or features_settings.default_features_limit
    offset = kwargs.get("offset") or 0
    geom = kwargs.get("geom")
    function_parameters = kwargs.get("function_parameters") or {}
    if geom and geom.lower() != "none" and not self.get_geometry_column(geom):
        raise InvalidGeometryColumnName(f"Invalid Geometry Column: {geom}.")
    if limit > features_settings.max_features_per_query:
        raise InvalidLimit(f"Limit can not be set higher than {features_settings.max_features_per_query}")
    where = _where(self, kwargs)
    matched: int | None = None
    page = {"sortby": kwargs.get("sortby"), "properties": kwargs.get("properties"), "geom": geom,
            "limit": limit + 1, "offset": offset, "bbox_only": kwargs.get("bbox_only"),
            "simplify": kwargs.get("simplify"), "geom_as_wkt": kwargs.get("geom_as_wkt", False)}
    counted = await _count_is_cheap(self, conn, where)
    if counted and self.type != "Function" and self.id_column is not None:
        features, matched = await _counted_page(self, conn, where, **page)
    else:
        if counted:
            matched = await self._features_count_query(conn, where=where, function_parameters=function_parameters)
        features = [f async for f in self._features_query(conn, where=where, function_parameters=function_parameters,
                                                          **page)]
    more = len(features) > limit
    features = features[:limit]
    if matched is None:
        _omit_matched.set(True)
    return ItemList(
        items=features,
        matched=matched,
        next=offset + len(features) if more else None,
        prev=max(offset - limit, 0) if offset else None,
    )


async def _counted_page(
    self: PgCollection, conn: asyncpg.Connection, where: Any, *, sortby: str | None, properties: list[str] | None,
    geom: str | None, limit: int, offset: int, bbox_only: bool | None, simplify: float | None, geom_as_wkt: bool,
) -> tuple[list[Feature], int]:
    """A page and numberMatched in one statement: the matches are read once (their row address and sort
    keys), counted, and the page's rows fetched by address; one statement is one snapshot, so the count
    and the page always describe the same version of the table."""
    keys = _sort_keys(self, sortby)
    order = _order_by(keys)
    key_columns = ", ".join(dict.fromkeys(tipg_collections._quote_ident(name) for name, _ in keys))
    select = self._select(properties=properties, geometry_column=self.get_geometry_column(geom),
                          bbox_only=bbox_only, simplify=simplify, geom_as_wkt=geom_as_wkt)
    table = self._qualified_name
    query = (
        f"WITH tipg_m AS MATERIALIZED (SELECT ctid AS tipg_ctid, {key_columns} FROM {table}"  # noqa: S608
        f" {self._where_clause(where)}),"
        f" tipg_p AS (SELECT tipg_ctid FROM tipg_m {order} LIMIT {int(limit)} OFFSET {int(offset)})"
        " SELECT c.tipg_matched, p.* FROM (SELECT count(*) AS tipg_matched FROM tipg_m) c"
        f" LEFT JOIN LATERAL ({select}, row_number() OVER ({order}) AS tipg_rank FROM {table}"
        " WHERE ctid = ANY(ARRAY(SELECT tipg_ctid FROM tipg_p))) p ON TRUE ORDER BY p.tipg_rank"
    )
    features, matched = [], 0
    for row in await conn.fetch(query):
        props = dict(row)
        matched = int(props.pop("tipg_matched"))
        props.pop("tipg_rank")
        if props.get("tipg_id") is None:  # no page: the count's row alone
            continue
        g, fid = props.pop("tipg_geom"), props.pop("tipg_id")
        features.append(Feature(type="Feature", geometry=g, id=fid, properties=props))
    return features, matched


# What an integer id column can hold: an id past it cannot exist (tipg hands it to the cql2 library,
# which fails on integers past 64 bits, and PostgreSQL on those past the column's type).
INTEGER_ID_RANGE = {"smallint": 2**15, "integer": 2**31, "bigint": 2**63}


def _check_ids(self: PgCollection, ids: list[str] | None) -> None:
    bound = INTEGER_ID_RANGE.get(self.id_column.type) if ids and self.id_column else None
    if bound is None:
        return
    for value in ids or []:
        try:
            number = int(value)
        except ValueError:
            continue  # tipg answers 404 itself
        if not -bound <= number < bound:
            raise NotFound(f"no item {value[:40]!r}: ids of this collection are {self.id_column.type} integers")


def _where(self: PgCollection, kwargs: dict[str, Any], **extra: Any) -> Any:
    """tipg's WHERE clause from the request's filters, as both the items and the tile queries build it."""
    _check_ids(self, kwargs.get("ids_filter"))
    return self.cql_where(
        ids=kwargs.get("ids_filter"),
        datetime=kwargs.get("datetime_filter"),
        bbox=kwargs.get("bbox_filter"),
        properties=kwargs.get("properties_filter"),
        cql=kwargs.get("cql_filter"),
        geom=kwargs.get("geom"),
        dt=kwargs.get("dt"),
        **extra,
    )


def _tile_query_parts(self: PgCollection, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    geometry_column = self.get_geometry_column(kwargs.get("geom"))
    if not geometry_column:
        raise InvalidGeometryColumnName(f"Invalid Geometry Column Name {kwargs.get('geom')}")
    return geometry_column, _where(self, kwargs, tms=kwargs["tms"], tile=kwargs["tile"])


def _tile_layer(self: PgCollection) -> str:
    return self.table if mvt_settings.set_mvt_layername is True else "default"


async def _get_tile(self: PgCollection, conn: asyncpg.Connection, **kwargs: Any) -> bytes:
    """tipg's tile when it holds at most the budget (or the client set `limit`); degraded otherwise."""
    if kwargs.get("limit") or self.type == "Function":
        return await _original_get_tile(self, conn, **kwargs)
    geometry_column, where = _tile_query_parts(self, kwargs)
    stored = await _overview_tile(self, conn, geometry_column, kwargs)
    if stored is not None:
        return stored
    # as in tipg: the name comes from the catalog, quoted; the WHERE clause is rendered by cql2
    count_sql = (
        f"SELECT count(*) FROM (SELECT 1 FROM {self._qualified_name} {self._where_clause(where)}"  # noqa: S608
        f" LIMIT {TILE_FEATURE_BUDGET + 1}) s"
    )
    if await conn.fetchval(count_sql) <= TILE_FEATURE_BUDGET:
        return await _original_get_tile(self, conn, **{**kwargs, "limit": TILE_FEATURE_BUDGET})
    tms, tile = kwargs["tms"], kwargs["tile"]
    tms_srid = tms.crs.to_epsg()
    if geometry_column.geometry_type.lower() in POINT_TYPES and tms_srid:
        return await _clustered_tile(self, conn, geometry_column, where, tms, tile)
    # a pixel of this tile, in the column's units (degrees for the 4326 tables geoetl writes)
    west, _, east, _ = tms.bounds(tile)
    pixel = (east - west) / mvt_settings.tile_resolution
    return await _original_get_tile(
        self, conn, **{**kwargs, "limit": TILE_HARD_LIMIT, "simplify": kwargs.get("simplify") or pixel}
    )


PROJECTABLE_STEP = 2.0  # degrees between the lon/lat points tried when finding where a CRS projects


def projectable_area(crs_wkt: str) -> shapely.Geometry:
    """Where PROJ projects lon/lat into this CRS: the world less the cells of a 2-degree grid with a
    corner that does not project, widened by one cell (PostGIS transforms vertices only, so a clipped
    geometry whose vertices are all inside projects)."""
    step = PROJECTABLE_STEP
    to_crs = pyproj.Transformer.from_crs("EPSG:4326", pyproj.CRS.from_wkt(crs_wkt), always_xy=True)
    lon, lat = np.arange(-180, 180 + step, step), np.arange(-90, 90 + step, step)
    x, y = to_crs.transform(*np.meshgrid(lon, lat), errcheck=False)
    ok = np.isfinite(x) & np.isfinite(y)
    rows, cols = np.nonzero(~(ok[:-1, :-1] & ok[1:, :-1] & ok[:-1, 1:] & ok[1:, 1:]))
    failing = shapely.unary_union(shapely.box(lon[cols], lat[rows], lon[cols + 1], lat[rows + 1]))
    return shapely.difference(shapely.box(-180, -90, 180, 90), failing.buffer(step, join_style="mitre"))


_regions: dict[str, str | None] = {}  # by tile matrix set id: every tile of a set asks


def tms_region(tms: Any) -> str | None:
    """SQL of the area of a regional tile matrix set whose data PROJ can project into it, in
    EPSG:4326; None for a set that covers the world. Bounds that cross the antimeridian are two boxes."""
    if tms.id not in _regions:
        _regions[tms.id] = _region(tms)
    return _regions[tms.id]


def _region(tms: Any) -> str | None:
    west, south, east, north = tms.bbox
    if west < east and east - west >= 359.0 and north - south >= 170.0:
        return None
    if west < east:
        bounds = shapely.box(west, south, east, north)
    else:
        bounds = shapely.union(shapely.box(west, south, 180, north), shapely.box(-180, south, east, north))
    area = shapely.intersection(bounds, projectable_area(tms.crs.to_wkt()))
    return f"ST_GeomFromText('{shapely.to_wkt(area, rounding_precision=6)}', 4326)"


def _select_mvt(
    self: PgCollection, properties: Any, geometry_column: Any, tms: Any, tile: Any, simplify: float | None = None
) -> str:
    """The SELECT of a tile's rows: tipg's, except that data is clipped to a regional set's area first.

    tipg clips only tiles outside the set's tile matrix, to one box; on a regional set
    (CanadianNAD83_LCC, NZTM2000Quad, the UPS and UTM grids, ...) an ordinary tile's area reaches
    data PROJ cannot project ("Point outside of projection domain": an internal error, 500), and
    NZTM2000Quad's area crosses the antimeridian."""
    columns = self._select_property_columns(properties)
    geom = f"CAST({tipg_collections._quote_ident(geometry_column.name)} AS geometry)"
    if simplify:
        geom = f"ST_SnapToGrid(ST_SimplifyPreserveTopology({geom}, {float(simplify)}), {float(simplify)})"
    area = tms_region(tms)
    if area is None and not tms.is_valid(tile, strict=False):
        area = "ST_MakeEnvelope({}, {}, {}, {}, 4326)".format(*tms.bbox)
    if area is not None:
        geom = f"ST_Intersection({area}, ST_Transform({geom}, 4326))"
    if tms_srid := tms.crs.to_epsg():
        projected = f"ST_Transform({geom}, {int(tms_srid)})"
    else:
        projected = f"ST_Transform({geom}, '{tms.crs.to_proj4().replace(chr(39), chr(39) * 2)}')"
    b = tms.xy_bounds(tile)
    envelope = f"ST_Segmentize(ST_MakeEnvelope({b.left}, {b.bottom}, {b.right}, {b.top}), {b.right - b.left})"
    clip = "TRUE" if mvt_settings.tile_clip else "FALSE"
    columns.append(
        f"ST_AsMVTGeom({projected}, {envelope}, {int(mvt_settings.tile_resolution)},"
        f" {int(mvt_settings.tile_buffer)}, {clip}) AS geom"
    )
    return "SELECT " + ", ".join(columns)


async def _overview_tile(
    self: PgCollection, conn: asyncpg.Connection, geometry_column: Any, kwargs: dict[str, Any]
) -> bytes | None:
    """The tile aggregated at publish, for a plain request of a table that has one (None: compute it)."""
    if (
        kwargs["tms"].id != OVERVIEW_TMS
        or any(kwargs.get(name) for name in TILE_FILTERS)
        or geometry_column.geometry_type.lower() not in POINT_TYPES
    ):
        return None
    tile = kwargs["tile"]
    try:
        mvt = await conn.fetchval(
            "SELECT o.mvt FROM app.tile_overview_sets s JOIN app.tile_overviews o USING (table_oid)"
            " WHERE s.table_oid = to_regclass($1)::oid AND s.table_comment = obj_description(s.table_oid, 'pg_class')"
            " AND s.layer = $2 AND s.extent = $3 AND s.buffer = $4 AND s.budget = $5"
            " AND o.z = $6 AND o.x = $7 AND o.y = $8",
            self._qualified_name, _tile_layer(self), int(mvt_settings.tile_resolution),
            int(mvt_settings.tile_buffer), TILE_FEATURE_BUDGET, tile.z, tile.x, tile.y,
        )
    except asyncpg.UndefinedTableError:  # a database without geoetl's app schema: tiles are computed
        return None
    return None if mvt is None else bytes(mvt)


async def _clustered_tile(
    self: PgCollection, conn: asyncpg.Connection, column_info: Any, where: Any, tms: Any, tile: Any
) -> bytes:
    """One point per grid cell, at the mean of its points, with their number as point_count.

    On WebMercatorQuad (lon/lat columns) the cells are numbered on the world's grid of this zoom
    exactly as the overviews number them (same SQL text), and only the tile's own 64 x 64 cells
    count: a point on the edge between two tiles is in one of them. Other grids and columns
    number cells from the tile's corner.
    """
    bounds = tms.xy_bounds(tile)
    srid = tms.crs.to_epsg()
    column = tipg_collections._quote_ident(column_info.name)
    # names from the catalog (quoted), WHERE from cql2, numbers from the TMS
    source = f"FROM {self._qualified_name} {self._where_clause(where)}"
    if tms.id == OVERVIEW_TMS and column_info.srid == 4326:
        level = tile.z + CELL_BITS
        south_row = (1 << tile.z) - 1 - tile.y  # tiles count rows from the north, cells from the south
        points = mercator_points_sql(column_info.geometry_type, column, source)
        cx, cy = cell_index_sql("x", level), cell_index_sql("y", level)
        mine = f" WHERE {cx} >> {CELL_BITS} = {int(tile.x)} AND {cy} >> {CELL_BITS} = {int(south_row)}"
    else:
        cell = (bounds.right - bounds.left) / (1 << CELL_BITS)
        point = point_expression(column_info.geometry_type, column)
        if (area := tms_region(tms)) is not None:  # only points PROJ can project into a regional grid
            source += f" AND ST_Intersects(ST_Transform({point}, 4326), {area})"  # after "WHERE ..."
        points = f"SELECT ST_X(g) AS x, ST_Y(g) AS y FROM (SELECT ST_Transform({point}, {srid}) AS g {source}) s0"  # noqa: S608
        cx, cy = f"floor((x - {bounds.left}) / {cell})::int", f"floor((y - {bounds.bottom}) / {cell})::int"
        mine = ""
    envelope = f"ST_MakeEnvelope({bounds.left}, {bounds.bottom}, {bounds.right}, {bounds.top}, {srid})"
    sql = (
        "WITH t AS (SELECT ST_AsMVTGeom(ST_SetSRID(ST_MakePoint(avg(x), avg(y)), "  # noqa: S608
        f"{srid}), {envelope}, {int(mvt_settings.tile_resolution)}, {int(mvt_settings.tile_buffer)}, TRUE) AS geom,"
        f" count(*)::int AS point_count FROM ({points}) s{mine} GROUP BY {cx}, {cy})"
        " SELECT ST_AsMVT(t.*, $1) FROM t WHERE geom IS NOT NULL"
    )
    return bytes(await conn.fetchval(sql, _tile_layer(self)))


class _GeoJSONResponse(tipg_factory.GeoJSONResponse):
    """tipg's GeoJSON response, leaving out numberMatched when it was not counted."""

    def render(self, content: Any) -> bytes:
        if _omit_matched.get() and isinstance(content, dict) and content.get("numberMatched", 0) is None:
            content = {k: v for k, v in content.items() if k != "numberMatched"}
        return orjsonDumps(content)


_tipg_default = tipg_response.default


def _json_default(obj: Any) -> Any:
    """A numeric column's value as a JSON number with every digit (its queryable says "number"); tipg wrote
    the digits as a string. NaN, which JSON has no number for, stays a string."""
    if isinstance(obj, decimal.Decimal) and obj.is_finite():
        return orjson.Fragment(str(obj))
    return _tipg_default(obj)


def _drop_oas30() -> None:
    for conforms in (tipg_factory.COMMON_CONFORMS, tipg_factory.FEATURES_CONFORMS, tipg_factory.TILES_CONFORMS):
        conforms[:] = [c for c in conforms if not c.endswith("/conf/oas30")]


def install() -> None:
    """Apply the corrections (idempotent; before the tipg app is built)."""
    global _installed
    if _installed:
        return
    PgCollection._sortby = _sortby  # type: ignore[method-assign]
    PgCollection.features = _features  # type: ignore[method-assign]
    PgCollection.get_tile = _get_tile  # type: ignore[method-assign]
    PgCollection._select_mvt = _select_mvt  # type: ignore[method-assign]
    mvt_settings.max_features_per_tile = TILE_HARD_LIMIT
    tipg_factory.GeoJSONResponse = _GeoJSONResponse  # type: ignore[misc]
    tipg_response.default = _json_default  # orjsonDumps looks it up at each call
    _drop_oas30()
    _installed = True
