"""Serving pieces that need no server: viewer styling, library settings isolation, id resolution."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from config import Settings
from triggers.serving import settings as lib
from triggers.serving.features import CatalogGateway
from triggers.serving.render import DEFAULT_STYLE, style_from

pytestmark = pytest.mark.serving


def test_style_defaults_aliases_and_clamping() -> None:
    assert style_from(None) == DEFAULT_STYLE and style_from("red") == DEFAULT_STYLE
    s = style_from({"fill": "#FF0000", "stroke": "rgb(0, 0, 255)", "opacity": 0.3, "weight": 99, "radius": -2})
    assert s["fill_color"] == "#FF0000" and s["point_color"] == "#FF0000"
    assert s["line_color"] == "rgb(0, 0, 255)"
    assert s["fill_opacity"] == 0.3 and s["line_opacity"] == 0.3
    assert s["line_width"] == 50.0 and s["point_radius"] == 0.0
    assert style_from({"fill_color": "teal", "color": "#000"})["fill_color"] == "teal"
    assert style_from({"color": "#abc"})["line_color"] == "#abc"


@pytest.mark.parametrize("bad", [
    "red;}</style><script>alert(1)</script>", "url(http://evil)", "#12", "", 5, None, ["#fff"], "expression(alert)",
])
def test_style_rejects_anything_but_colours(bad: Any) -> None:
    assert style_from({"fill_color": bad})["fill_color"] == DEFAULT_STYLE["fill_color"]


@pytest.mark.parametrize("bad", ["x", float("nan"), True, None, {"a": 1}])
def test_style_rejects_anything_but_numbers(bad: Any) -> None:
    assert style_from({"opacity": bad})["fill_opacity"] == DEFAULT_STYLE["fill_opacity"]


def test_library_settings_ignore_each_others_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "ROOT_PATH": "/elsewhere", "PREFIX_PATH": "/elsewhere", "OPENAPI_URL": "/x", "ENABLED_EXTENSIONS": "query",
        "TIPG_DB_SCHEMAS": '["public"]', "TIPG_DB_DATETIME_EXTENT": "true", "PGHOST": "nowhere", "PGUSER": "nobody",
        "POSTGRES_HOST": "nowhere", "STAC_FASTAPI_LANDING_ID": "other",
    }.items():
        monkeypatch.setenv(name, value)
    dsn = "postgresql://u:p%40ss@db.example:6543/gis?sslmode=require"
    ours = Settings(database_url=dsn, allowed_schemas="geo,geo2", db_pool_max_size=10)
    tdb = lib.tipg_database_settings(ours)
    assert tdb.schemas == ["geo", "geo2"] and tdb.datetime_extent is False and tdb.tipg_schema == "pg_temp"
    tpg = lib.tipg_postgres_settings(ours)
    assert str(tpg.database_url) == dsn
    assert tpg.db_max_conn_size == 5
    st = lib.stac_settings(ours)
    assert (st.prefix_path, st.root_path, st.openapi_url) == ("", "", "/api")
    assert st.enabled_extensions is None and st.enable_transactions_extensions is False
    assert st.stac_fastapi_landing_id == "geoetl"
    spg = lib.stac_postgres_settings(ours)
    assert spg.connection_string == dsn
    assert (spg.pghost, spg.pguser, spg.pgpassword, spg.pgdatabase) == ("db.example", "u", "p@ss", "gis")


def test_asyncpg_url_from_keyword_dsn() -> None:
    url = lib.asyncpg_url("host=h port=5433 dbname='my db' user=me password='a b/c' sslmode=verify-full")
    assert url == "postgresql://me:a%20b%2Fc@h:5433/my%20db?sslmode=verify-full"
    assert lib.asyncpg_url("postgresql://postgres@127.0.0.1/geoetl") == "postgresql://postgres@127.0.0.1:5432/geoetl"


class FakeKeeper:
    schemas = ["geo", "other"]

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids

    def collections(self) -> dict[str, Any]:
        return dict.fromkeys(self.ids)


def test_bare_names_resolve_in_schema_order() -> None:
    gw = CatalogGateway(app=None, keeper=FakeKeeper(["geo.a", "other.a", "other.b", "public.c"]))  # type: ignore[arg-type]
    assert gw.resolve("a") == "geo.a" and gw.resolve("b") == "other.b" and gw.resolve("other.a") == "other.a"
    assert gw.resolve("c") is None and gw.resolve("geo.b") is None
    assert gw.default_id("zz") == "geo.zz" and gw.default_id("x.zz") == "x.zz"


def test_catalog_generation_moves_with_tables_and_columns_not_with_statistics(database: str) -> None:
    """Loading rows and ANALYZE leave the digest alone; a new, altered or dropped table moves it."""
    import asyncio
    import uuid

    import asyncpg
    import psycopg

    from triggers.serving.catalog import GENERATION_SQL

    table = f"gen_{uuid.uuid4().hex[:8]}"

    async def generation() -> str:
        conn = await asyncpg.connect(database)
        try:
            return str(await conn.fetchval(GENERATION_SQL, ["geo"]))
        finally:
            await conn.close()

    def gen() -> str:
        return asyncio.run(generation())

    with psycopg.connect(database, autocommit=True) as conn:
        before = gen()
        conn.execute(f"CREATE TABLE geo.{table} (id int, name text)")
        created = gen()
        assert created != before
        conn.execute(f"INSERT INTO geo.{table} SELECT i, 'n' || i FROM generate_series(1, 5000) AS i")
        conn.execute(f"ANALYZE geo.{table}")
        assert gen() == created  # reltuples moved, the digest did not
        conn.execute(f"ALTER TABLE geo.{table} ADD COLUMN extra int")
        added = gen()
        assert added != created
        conn.execute(f"ALTER TABLE geo.{table} ALTER COLUMN extra TYPE bigint")
        retyped = gen()
        assert retyped != added
        conn.execute(f"ALTER TABLE geo.{table} RENAME COLUMN name TO label")
        assert gen() != retyped
        conn.execute(f"DROP TABLE geo.{table}")
        assert gen() == before


@asynccontextmanager
async def tipg_keeper(database: str, schema: str, *, spatial_extent: bool, app: Any = None) -> AsyncIterator[Any]:
    """A tipg app on `schema` (its functions in pg_temp) with the keeper of its catalog; closed after."""
    from fastapi import FastAPI
    from tipg import database as tipg_db

    from triggers.serving.catalog import CatalogKeeper

    app = app or FastAPI()
    db_settings = lib.GeoetlTipgDatabaseSettings(
        schemas=[schema], application_schema="pg_temp", datetime_extent=False, spatial_extent=spatial_extent,
        only_spatial_tables=True,
    )
    pg = lib.GeoetlTipgPostgresSettings(database_url=lib.asyncpg_url(database), db_min_conn_size=1)
    await tipg_db.connect_to_db(app, schemas=[schema], tipg_schema="pg_temp", settings=pg)
    try:
        yield CatalogKeeper(app, db_settings)
    finally:
        await tipg_db.close_db_connection(app)


def test_a_catalog_built_while_a_replace_commits_shows_the_new_table(database: str) -> None:
    """The build waits on a replace's lock (in tipg's extent query), the replace commits under it: the
    keeper builds again, so the catalog it keeps has the new columns, not the old ones or no table,
    and the torn build is never published (requests read app.state while the keeper builds)."""
    import asyncio
    import uuid

    import psycopg
    from fastapi import FastAPI
    from starlette.datastructures import State

    schema = f"cat_{uuid.uuid4().hex[:8]}"
    geom = "geom geometry(Point,4326)"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.blocker (id int PRIMARY KEY, {geom})")  # empty: tipg scans its extent
        conn.execute(f"CREATE TABLE {schema}.replaced (id int PRIMARY KEY, {geom}, old_col int)")

    published: list[dict[str, list[str]]] = []

    class Recording(State):
        def __setattr__(self, key: Any, value: Any) -> None:
            if key == "collection_catalog":
                published.append({cid: [p.name for p in c.properties] for cid, c in value["collections"].items()})
            super().__setattr__(key, value)

    async def main() -> None:
        app = FastAPI()
        app.state = Recording()
        async with tipg_keeper(database, schema, spatial_extent=True, app=app) as keeper:
            with psycopg.connect(database) as replace:
                replace.execute(f"LOCK TABLE {schema}.blocker IN ACCESS EXCLUSIVE MODE")
                replace.execute(f"DROP TABLE {schema}.replaced")
                replace.execute(f"CREATE TABLE {schema}.replaced (id int PRIMARY KEY, {geom}, new_col text)")
                build = asyncio.create_task(keeper.refresh())
                with psycopg.connect(database, autocommit=True) as watch:
                    for _ in range(200):  # until the build waits on the replace's lock
                        waiting = watch.execute(
                            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                            " WHERE NOT l.granted AND c.relnamespace = %s::regnamespace",
                            [schema],
                        ).fetchone()
                        if waiting and waiting[0]:
                            break
                        await asyncio.sleep(0.05)
                    else:
                        raise AssertionError("the catalog build never waited on the replace's lock")
                replace.commit()
            await build

    try:
        asyncio.run(main())
        assert len(published) == 1
        catalog = published[0]
        assert set(catalog) == {f"{schema}.blocker", f"{schema}.replaced"}
        assert "new_col" in catalog[f"{schema}.replaced"] and "old_col" not in catalog[f"{schema}.replaced"]
    finally:
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_a_reader_that_met_a_vanished_column_gets_a_catalog_built_after_it(database: str) -> None:
    """rebuild_after: a failed read rebuilds the catalog unless a build that started after the failure is in
    use, whatever the generation says (here it is made to match while the catalog is stale)."""
    import asyncio
    import uuid

    import psycopg

    schema = f"cat_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.t (id int PRIMARY KEY, geom geometry(Point,4326), old_col int)")

    async def main() -> list[Any]:
        async with tipg_keeper(database, schema, spatial_extent=False) as keeper:

            def columns() -> list[str]:
                return [p.name for p in keeper.collections()[f"{schema}.t"].properties]

            await keeper.refresh()
            seen = [columns()]
            with psycopg.connect(database, autocommit=True) as conn:
                conn.execute(f"ALTER TABLE {schema}.t RENAME COLUMN old_col TO new_col")
            keeper.generation = await keeper.current_generation()  # a check would see nothing to do
            failed_at = keeper.builds_started
            await keeper.rebuild_after(failed_at)
            seen.append(columns())
            refreshes = keeper.refreshes
            await keeper.rebuild_after(failed_at)  # a build after the failure is in use: none again
            seen.append(keeper.refreshes - refreshes)
            return seen

    try:
        before, after, again = asyncio.run(main())
        assert "old_col" in before and "new_col" in after and "old_col" not in after
        assert again == 0
    finally:
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_only_a_missing_column_the_catalog_lists_counts_as_a_replaced_table() -> None:
    """`filter=nope = 1` fails with 42703 like a read of a replaced table; it cost a catalog rebuild and
    (with two replays) three, per request: a client could keep every API process rebuilding."""
    from types import SimpleNamespace

    from triggers.serving.features import _catalog_column

    keeper = SimpleNamespace(collections=lambda: {"geo.t": SimpleNamespace(properties=[
        SimpleNamespace(name="c2"), SimpleNamespace(name="a b")])})
    request = SimpleNamespace(path_params={"collectionId": "geo.t"})
    assert _catalog_column(request, keeper, 'column "c2" does not exist')  # the catalog has it: stale
    assert _catalog_column(request, keeper, "column t.c2 does not exist")
    assert _catalog_column(request, keeper, 'column "a b" does not exist')
    assert not _catalog_column(request, keeper, 'column "nope" does not exist')  # the client's own name
    assert not _catalog_column(request, keeper, "column nope does not exist")
    # not known to be the client's: treated as a replaced table
    assert _catalog_column(SimpleNamespace(path_params={}), keeper, 'column "nope" does not exist')
    assert _catalog_column(request, keeper, "some other wording")
