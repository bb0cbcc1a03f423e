"""The binary COPY encoder (services/vector/pgcopy.py) against a real PostgreSQL: every column type, with
and without nulls, read back equal to the Arrow values it was given."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from psycopg import sql

from services.vector import columns as C
from services.vector import pgcopy

CASES = {
    "boolean": (C.BOOLEAN, pa.array([True, False, True])),
    "boolean with nulls": (C.BOOLEAN, pa.array([True, None, False])),
    "integer": (C.INTEGER, pa.array([1, -2, 2**31 - 1], pa.int32())),
    "bigint with nulls": (C.BIGINT, pa.array([2**62, None, -(2**63)], pa.int64())),
    "double": (C.DOUBLE, pa.array([0.5, -1e300, 3.0])),
    "text": (C.TEXT, pa.array(["a", "Zürich 東京", ""])),
    "date with nulls": (C.DATE, pa.array([dt.date(2021, 1, 2), None, dt.date(1900, 3, 4)])),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_values_come_back_as_they_went(db, name: str) -> None:
    pg_type, values = CASES[name]
    db.execute(sql.SQL("CREATE TEMP TABLE copied (v {})").format(sql.SQL(pg_type)))
    try:
        stream = pgcopy.encode_rows([pgcopy.encode_column(values, pg_type, pgcopy.EncodeStats())])
        with db.cursor() as cur, cur.copy("COPY copied (v) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(pgcopy.SIGNATURE)
            copy.write(stream)
            copy.write(pgcopy.TRAILER)
        got = [r["v"] for r in db.execute("SELECT v FROM copied").fetchall()]
        assert got == values.to_pylist()
    finally:
        db.execute("DROP TABLE copied")


def test_slabs_put_each_big_row_alone() -> None:
    lengths = np.array([10, 10, 500, 10, 600, 700, 10, 10])
    slabs = [(s.start, s.stop) for s in pgcopy.iter_slabs(lengths, max_rows=3, max_bytes=10_000, alone=500)]
    assert slabs == [(0, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 8)]


@pytest.mark.parametrize("with_attributes", [True, False], ids=["attributes", "geometry-only"])
def test_a_big_geometry_is_streamed_into_copy_unchanged(db, monkeypatch, with_attributes: bool) -> None:
    """A geometry of STREAMED_BYTES or more goes into the COPY from its own buffer (EWKB header, then a view
    of its body), between ordinary rows: every row and value read back as it went."""
    import shapely

    from services.vector import load
    from services.vector.ewkb import ewkb_pieces
    from services.vector.identifiers import GEOMETRY_COLUMN

    monkeypatch.setattr(load, "STREAMED_BYTES", 2000)
    streamed = []
    monkeypatch.setattr(load, "ewkb_pieces", lambda g: streamed.append(g) or ewkb_pieces(g))
    big = shapely.Polygon([(i / 100, (i % 7) / 10) for i in range(200)] + [(0, 0)])
    geoms = [shapely.box(0, 0, 1, 1), big, shapely.Point(1, 2), big.buffer(1)]
    wkb = pa.array(shapely.to_wkb(geoms), pa.binary())
    assert [len(v) >= 2000 for v in wkb.to_pylist()] == [False, True, False, True]
    columns = [{"name": "name", "type": C.TEXT}, {"name": "n", "type": C.BIGINT}] if with_attributes else []
    table = pa.table({"name": ["a", "b", None, "d"], "n": [1, 2, 3, None], GEOMETRY_COLUMN: wkb})
    if not with_attributes:
        table = table.select([GEOMETRY_COLUMN])
    defs = sql.SQL("").join(sql.SQL("{} {}, ").format(sql.Identifier(c["name"]), sql.SQL(c["type"])) for c in columns)
    db.execute(sql.SQL("CREATE TABLE public.streamed (id serial, {} {} geometry(Geometry, 4326))").format(
        defs, sql.Identifier(GEOMETRY_COLUMN)))
    try:
        with load.copy_into(db, "public", "streamed", columns) as sink:
            sink.add(table)
        assert sink.rows == 4
        assert [len(g) for g in streamed] == [1, 1]  # the two big rows, each alone
        rows = db.execute(sql.SQL("SELECT *, ST_AsBinary({g}) AS wkb, ST_SRID({g}) AS srid FROM public.streamed "
                                  "ORDER BY id").format(g=sql.Identifier(GEOMETRY_COLUMN))).fetchall()
        assert [shapely.from_wkb(bytes(r["wkb"])) for r in rows] == geoms
        assert {r["srid"] for r in rows} == {4326}
        if with_attributes:
            assert [(r["name"], r["n"]) for r in rows] == [("a", 1), ("b", 2), (None, 3), ("d", None)]
    finally:
        db.execute("DROP TABLE public.streamed")
