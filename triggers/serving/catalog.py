"""Keeps tipg's collection catalog fresh in every process, without restarts.

tipg builds its catalog once, at startup. Tables are created by workers in other processes,
so each API process compares a cheap database "generation" (a digest of the oids and the
columns of the tables in the served schemas) with the one its catalog was
built from, and rebuilds the catalog when they differ:

- the collections list, a collection and its items check the generation on every request
  (one small query on pg_class): a new table is served at once (refresh on miss), a dropped
  or replaced one disappears at once;
- vector tiles, which come in bursts, check it at most every CHECK_INTERVAL seconds;
- the catalog is rebuilt anyway after TTL seconds (anything the digest does not see);
- a query that hits a dropped table or column invalidates the catalog (see features.py).

The generation is read before and after the catalog is built: a build it moved across is done
again, and only the last build is published (a torn one, published even for a moment, answers
404 for a table that exists). The generation kept is the one read before, so a later check
rebuilds when the attempts run out: nothing is ever missed.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from typing import Any

from fastapi import FastAPI
from tipg.collections import Catalog, pg_get_collection_index
from tipg.settings import DatabaseSettings

log = logging.getLogger("geoetl.serving")

CHECK_INTERVAL = 1.0
TTL = 300.0
BUILD_ATTEMPTS = 3

# Cheap: pg_class and pg_attribute of the served schemas. A table's oid and its columns (name, type,
# type modifier, in order): it changes when a table appears, disappears or changes its columns, and not
# when autoanalyze moves reltuples (which, digested, rebuilt the whole catalog in every API process
# again and again while tables were loading).
GENERATION_SQL = """
SELECT md5(coalesce(string_agg(c.oid::text || ':' || coalesce(cols.sig, ''), ',' ORDER BY c.oid), ''))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN LATERAL (
    SELECT string_agg(a.attname || ' ' || a.atttypid::text || ' ' || a.atttypmod::text, ';' ORDER BY a.attnum) AS sig
      FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
) AS cols ON true
WHERE n.nspname = ANY($1::text[]) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
"""


class CatalogKeeper:
    """Owns the catalog of one tipg application (one per process)."""

    def __init__(self, app: FastAPI, db_settings: DatabaseSettings) -> None:
        self.app = app
        self.db_settings = db_settings
        self.generation: str | None = None
        self.refreshed_at = 0.0
        self.checked_at = 0.0
        self.refreshes = 0
        self.invalidations = 0  # counts invalidate() calls: a request can tell one happened while it ran
        self.builds_started = 0  # builds are numbered as they start (under the lock) ...
        self.published_build = 0  # ... and the catalog in use is the one of this build
        self._lock = asyncio.Lock()

    @property
    def schemas(self) -> list[str]:
        return list(self.db_settings.schemas)

    def collections(self) -> dict[str, Any]:
        catalog = getattr(self.app.state, "collection_catalog", None)
        return catalog["collections"] if catalog else {}

    async def current_generation(self) -> str:
        async with self.app.state.pool.acquire() as conn:
            return str(await conn.fetchval(GENERATION_SQL, self.schemas))

    async def refresh(self) -> None:
        """Rebuild the catalog now (serialised: concurrent callers wait for one rebuild)."""
        async with self._lock:
            await self._rebuild()

    async def _rebuild(self) -> None:
        """Build until the generation is the same before and after the build (at most BUILD_ATTEMPTS).

        tipg's catalog query calls volatile functions, which take a new snapshot per statement: a
        replace committed while it runs (it may even wait for the replace's lock, in its extent
        query) leaves the table out, or with its old columns. A build the generation did not move
        across saw one state of the database. Builds are kept private until the last one: requests
        already past their check read app.state meanwhile. After the last attempt the catalog is
        kept with the generation read before it, so the next check builds again."""
        t0 = time.perf_counter()
        self.builds_started += 1
        build = self.builds_started
        async with self.app.state.pool.acquire() as conn:
            for _ in range(BUILD_ATTEMPTS):
                generation = str(await conn.fetchval(GENERATION_SQL, self.schemas))
                collections = await pg_get_collection_index(conn, settings=self.db_settings)
                if str(await conn.fetchval(GENERATION_SQL, self.schemas)) == generation:
                    break
        self.app.state.collection_catalog = Catalog(
            collections={c.id: c for c in collections}, last_updated=datetime.datetime.now()
        )
        self.generation = generation
        self.published_build = build
        self.refreshed_at = self.checked_at = time.monotonic()
        self.refreshes += 1
        log.info(
            "serving catalog rebuilt: %d collections in %.0f ms",
            len(self.collections()),
            (time.perf_counter() - t0) * 1000,
        )

    async def rebuild_after(self, seen_builds: int) -> None:
        """Rebuild unless a build started after `seen_builds` builds is the one in use.

        For a reader that met a vanished table or column: it needs a catalog read after it did, and a
        build that started later read the database after it, whatever the generations say."""
        async with self._lock:
            if self.published_build <= seen_builds:
                await self._rebuild()

    def invalidate(self) -> None:
        """Make the next request check the generation (a table vanished under us)."""
        self.checked_at = 0.0
        self.invalidations += 1

    async def ensure_fresh(self, *, force_check: bool = False) -> None:
        """Rebuild when the generation moved or the TTL passed; checks are throttled unless forced."""
        now = time.monotonic()
        if self.generation is not None and now - self.refreshed_at > TTL:
            await self._rebuild_if(lambda: time.monotonic() - self.refreshed_at > TTL)
            return
        if not force_check and self.generation is not None and now - self.checked_at < CHECK_INTERVAL:
            return
        generation = await self.current_generation()
        self.checked_at = time.monotonic()
        if generation != self.generation:
            await self._rebuild_if(lambda: self.generation != generation)

    async def _rebuild_if(self, still_needed: Any) -> None:
        async with self._lock:
            if still_needed():
                await self._rebuild()

    def status(self) -> dict[str, Any]:
        age = time.monotonic() - self.refreshed_at if self.refreshed_at else None
        return {
            "collections": len(self.collections()),
            "refreshes": self.refreshes,
            "catalog_age_s": round(age, 1) if age is not None else None,
        }
