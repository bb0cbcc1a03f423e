"""Pre-aggregated vector tiles for large point tables, built when a dataset is published.

A Web Mercator tile holding more than TILE_FEATURE_BUDGET points is served aggregated: one point
per cell of a 64 x 64 grid over the tile, at the mean of the cell's points, with their number as
`point_count` (triggers/serving/tipg_patches.py). Computed live, that reads every point under the
tile, so at low zooms the cost grows with the table. For a point table of at least
TILE_OVERVIEW_MIN_ROWS rows, stage 3 computes those tiles once instead:

1. one pass counts the points of every tile at OVERVIEW_MAX_ZOOM; rolled up, the counts give the
   highest zoom that has a tile over the budget (`max_zoom`);
2. one pass sums the points per cell of that zoom's grid (count, sum of x, sum of y, in EPSG:3857);
   the grids of the zooms below are the same sums rolled up (integer shifts, exact);
3. every tile over the budget at zooms 0..max_zoom is encoded once as MVT (app.tile_overviews).

Cells are numbered globally (floor((x + HALF_WORLD) / cell size)), so every point is in exactly one
cell and one tile of each zoom, and the live aggregation numbers cells the same way: a tile served
from the overview equals the live one. The serving side uses a stored tile only for an unfiltered
WebMercatorQuad request whose layer name, extent and buffer match, and only while the table's
owner comment equals the one recorded at publish (record_owner): a replaced or appended version
never gets the previous version's tiles. Tiles of zooms above max_zoom, and any tile whose cells
hold at most the budget, are served live as before.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from services.vector.identifiers import GEOMETRY_COLUMN

TILE_FEATURE_BUDGET = 10_000  # features a tile holds as they are; above, it is aggregated or simplified
CELL_BITS = 6  # an aggregated tile has 2**6 x 2**6 = 64 x 64 cells (4 px on a 256 px tile)
CLUSTER_CELLS = 1 << CELL_BITS
OVERVIEW_MAX_ZOOM = 12  # zooms above are always aggregated live (a tile of z12 is ~10 km wide)
EARTH_RADIUS = 6378137.0  # EPSG:3857's sphere
METRES_PER_DEGREE = EARTH_RADIUS * math.pi / 180
HALF_WORLD = EARTH_RADIUS * math.pi  # EPSG:3857 extent is [-HALF_WORLD, HALF_WORLD] on both axes
MAX_LATITUDE = 85.0511287798066  # what Web Mercator shows
POINT_TYPES = ("point", "multipoint")
SAMPLE_POINTS = 200_000  # points sampled to find the zooms that need an overview


@dataclass(frozen=True)
class TileEncoding:
    """How the serving layer encodes tiles; stored tiles are used only when these still match."""

    layer: str = "default"
    extent: int = 4096
    buffer: int = 256


def cell_size(level: int) -> float:
    """Width of a cell of the level's grid (2**level cells across the world), in metres."""
    return 2 * HALF_WORLD / (1 << level)


def cell_index_sql(coordinate: str, level: int) -> str:
    """The global cell number of an EPSG:3857 coordinate; the same text in the build and the live tile."""
    return f"floor(({coordinate} + {HALF_WORLD!r}) / {cell_size(level)!r})::bigint"


def point_expression(geometry_type: str, column: str) -> str:
    """A point of each feature (column: a quoted name): itself, or the centroid of a multipoint
    (a one-point multipoint, as geoetl promotes points, without computing a centroid)."""
    if geometry_type.lower() == "point":
        return column
    return f"CASE WHEN ST_NumGeometries({column}) = 1 THEN ST_GeometryN({column}, 1) ELSE ST_Centroid({column}) END"


def mercator_points_sql(geometry_type: str, column: str, source: str) -> str:
    """SELECT x, y in EPSG:3857 of the features of `source` ("FROM ... WHERE ...", lon/lat) that Web Mercator
    shows. The spherical Mercator formulas in SQL: ST_Transform costs several times more per point, and
    the overview build and the live tile share this text, so both number the same cells."""
    point = point_expression(geometry_type, column)
    return (  # column: quoted by the caller; source: composed by the caller (psycopg.sql or tipg's quoting)
        f"SELECT lon * {METRES_PER_DEGREE!r} AS x, ln(tan(radians(45 + lat / 2))) * {EARTH_RADIUS!r} AS y"  # noqa: S608
        f" FROM (SELECT ST_X(p) AS lon, ST_Y(p) AS lat FROM (SELECT {point} AS p {source} OFFSET 0) s0) s1"
        f" WHERE abs(lat) <= {MAX_LATITUDE!r} AND abs(lon) <= 180"  # NaN fails both
    )


def _mercator_points(table: sql.Composable, geometry_type: str, sample_percent: float = 100.0) -> sql.Composable:
    """x, y of the table's points (of a uniform sample of them, if asked)."""
    sample = sql.SQL("")
    if sample_percent < 100:
        sample = sql.SQL(" TABLESAMPLE BERNOULLI ({}) REPEATABLE (7)").format(sql.Literal(sample_percent))
    return sql.SQL(mercator_points_sql(geometry_type, f'"{GEOMETRY_COLUMN}"', "{source}")).format(
        source=sql.SQL("FROM {t}{sample} WHERE {geom} IS NOT NULL").format(
            t=table, sample=sample, geom=sql.Identifier(GEOMETRY_COLUMN)
        )
    )


def _highest_crowded_zoom(
    conn: psycopg.Connection, table: sql.Composable, geometry_type: str, rows: int, budget: int
) -> int | None:
    """The highest zoom up to OVERVIEW_MAX_ZOOM where a tile may hold more than the budget (None: none does).

    Estimated from a uniform sample of about SAMPLE_POINTS points, with a margin (a tile counts when it
    seems to hold 80 % of the budget, which a tile over the budget does not miss: its sample count is
    several standard deviations above that): one zoom too many costs build time only, since just the
    tiles whose cells really hold more than the budget are stored. The sample's tiles are counted here,
    zoom by zoom from the top, stopping at the first crowded one (rolled up in SQL over every zoom at
    once, the counting took 1.8 s of the 2.3 s build on 1M points).
    """
    percent = min(100.0, 100.0 * SAMPLE_POINTS / max(rows, 1))
    threshold = budget * 0.8 * percent / 100
    z = OVERVIEW_MAX_ZOOM
    row = conn.execute(
        sql.SQL("SELECT array_agg({cx}) AS tx, array_agg({cy}) AS ty FROM ({points}) p").format(
            cx=sql.SQL(cell_index_sql("x", z)), cy=sql.SQL(cell_index_sql("y", z)),
            points=_mercator_points(table, geometry_type, percent),
        )
    ).fetchone()
    if row is None or not row["tx"]:
        return None
    tx, ty = np.array(row["tx"], np.int64), np.array(row["ty"], np.int64)
    for zoom in range(z, -1, -1):
        tiles = (tx >> (z - zoom)) * ((1 << zoom) + 2) + (ty >> (z - zoom))  # ty may reach 2**zoom (lat 85)
        if np.unique(tiles, return_counts=True)[1].max() > threshold:
            return zoom
    return None


def _cells_table(z: int) -> sql.Identifier:
    return sql.Identifier(f"geoetl_overview_cells_{z}")


def _cells(conn: psycopg.Connection, points: sql.Composable, max_zoom: int) -> None:
    """geoetl_overview_cells_<z>: count and coordinate sums per cell of zoom z's grid, for z = 0..max_zoom.

    Counts are float8: exact below 2**53, and summed without numeric arithmetic.
    """
    finest = max_zoom + CELL_BITS
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE {cells} ON COMMIT DROP AS SELECT {cx} AS cx, {cy} AS cy,"
            " count(*)::float8 AS n, sum(x) AS sx, sum(y) AS sy FROM ({points}) p GROUP BY 1, 2"
        ).format(
            cells=_cells_table(max_zoom), cx=sql.SQL(cell_index_sql("x", finest)),
            cy=sql.SQL(cell_index_sql("y", finest)), points=points,
        )
    )
    for z in range(max_zoom - 1, -1, -1):
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE {cells} ON COMMIT DROP AS SELECT cx >> 1 AS cx, cy >> 1 AS cy, sum(n) AS n,"
                " sum(sx) AS sx, sum(sy) AS sy FROM {finer} GROUP BY 1, 2"
            ).format(cells=_cells_table(z), finer=_cells_table(z + 1))
        )


def _encode_tiles(conn: psycopg.Connection, oid: int, max_zoom: int, budget: int, encoding: TileEncoding) -> int:
    """One MVT per tile over the budget, from its cells; returns how many were written.

    A cell's point is placed in tile coordinates directly (what ST_AsMVTGeom computes for a point
    inside the tile: offset from the tile's corner scaled to the extent, y down, rounded half to
    even), several times cheaper per cell than building and clipping a geometry.
    """
    written = 0
    for z in range(max_zoom + 1):
        size = 2 * HALF_WORLD / (1 << z)
        cur = conn.execute(
            sql.SQL(
                # tx, ty count from the west and the south; XYZ rows count from the north
                "INSERT INTO app.tile_overviews (table_oid, z, x, y, point_count, mvt)"
                " SELECT {oid}, {z}, c.tx, {rows} - 1 - c.ty, sum(c.n)::bigint,"
                "  ST_AsMVT(ROW(ST_MakePoint(c.px, c.py), c.n::int)::app.tile_cluster, {layer}, {extent}, 'geom')"
                " FROM (SELECT cx >> {bits} AS tx, cy >> {bits} AS ty, n,"
                "   round((sx / n + {half} - (cx >> {bits}) * {size}) * {extent} / {size}) AS px,"
                "   round({extent} - (sy / n + {half} - (cy >> {bits}) * {size}) * {extent} / {size}) AS py"
                "  FROM {cells}) c"
                " JOIN (SELECT cx >> {bits} AS tx, cy >> {bits} AS ty FROM {cells} GROUP BY 1, 2"
                "  HAVING sum(n) > {budget}) crowded ON crowded.tx = c.tx AND crowded.ty = c.ty"
                " GROUP BY c.tx, c.ty"
            ).format(
                oid=sql.Literal(oid), z=sql.Literal(z), rows=sql.Literal(1 << z), bits=sql.Literal(CELL_BITS),
                half=sql.Literal(HALF_WORLD), size=sql.Literal(size), extent=sql.Literal(encoding.extent),
                layer=sql.Literal(encoding.layer), budget=sql.Literal(budget), cells=_cells_table(z),
            )
        )
        written += cur.rowcount
    return written


def table_oid(conn: psycopg.Connection, table: sql.Composable) -> int:
    row = conn.execute("SELECT %s::regclass::oid AS oid", [table.as_string(conn)]).fetchone()
    assert row is not None
    return int(row["oid"])


def build_overview(
    conn: psycopg.Connection,
    table: sql.Composable,
    geometry_type: str,
    rows: int,
    *,
    min_rows: int,
    budget: int = TILE_FEATURE_BUDGET,
    encoding: TileEncoding | None = None,
) -> dict[str, Any] | None:
    """Build (or rebuild) the overview of a point table in the caller's transaction; None when it needs none.

    The set is recorded without an owner comment: it is served only once record_owner has run in the
    transaction that publishes the table.
    """
    oid = table_oid(conn, table)
    forget_overview(conn, oid)  # an appended table's old tiles go, whether or not it still needs some
    if geometry_type.lower() not in POINT_TYPES or rows < min_rows or rows <= budget:
        return None
    started = time.monotonic()
    encoding = encoding or TileEncoding()
    max_zoom = _highest_crowded_zoom(conn, table, geometry_type, rows, budget)
    if max_zoom is None:
        return None
    conn.execute("SELECT set_config('work_mem', '256MB', true)")  # the cells' GROUP BY hashes in memory
    _cells(conn, _mercator_points(table, geometry_type), max_zoom)
    conn.execute(
        "INSERT INTO app.tile_overview_sets (table_oid, layer, extent, buffer, budget, max_zoom, points, tiles,"
        " seconds) SELECT %s, %s, %s, %s, %s, %s, sum(n), 0, 0 FROM geoetl_overview_cells_0",
        [oid, encoding.layer, encoding.extent, encoding.buffer, budget, max_zoom],
    )
    tiles = _encode_tiles(conn, oid, max_zoom, budget, encoding)
    for z in range(max_zoom + 1):
        conn.execute(sql.SQL("DROP TABLE {}").format(_cells_table(z)))
    seconds = round(time.monotonic() - started, 3)
    conn.execute(
        "UPDATE app.tile_overview_sets SET tiles = %s, seconds = %s WHERE table_oid = %s", [tiles, seconds, oid]
    )
    return {"max_zoom": max_zoom, "tiles": tiles, "seconds": seconds}


def record_owner(conn: psycopg.Connection, table: sql.Composable) -> bool:
    """Tie the table's overview (if any) to its current owner comment; True when it has one."""
    cur = conn.execute(
        "UPDATE app.tile_overview_sets SET table_comment = obj_description(table_oid, 'pg_class')"
        " WHERE table_oid = %s::regclass::oid",
        [table.as_string(conn)],
    )
    return cur.rowcount > 0


def forget_overview(conn: psycopg.Connection, oid: int) -> None:
    conn.execute("DELETE FROM app.tile_overview_sets WHERE table_oid = %s", [oid])


def forget_table_overview(conn: psycopg.Connection, table: sql.Composable) -> None:
    """Before a table is dropped (replace, delete): its oid may be reused by another table later."""
    row = conn.execute("SELECT to_regclass(%s)::oid AS oid", [table.as_string(conn)]).fetchone()
    if row is not None and row["oid"] is not None:
        forget_overview(conn, int(row["oid"]))


def drop_stale_overviews(conn: psycopg.Connection) -> int:
    """Sets whose table is gone or has another owner comment now (janitor)."""
    cur = conn.execute(
        "DELETE FROM app.tile_overview_sets s WHERE s.built_at < now() - interval '1 hour'"
        " AND (NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = s.table_oid)"
        "  OR s.table_comment IS DISTINCT FROM obj_description(s.table_oid, 'pg_class'))"
    )
    return cur.rowcount
