"""The serving sub-applications of one API process and their connection pools.

Starlette does not run a mounted app's lifespan, so our lifespan opens tipg's and
stac-fastapi's asyncpg pools through this object. When the database is down at startup the
API still starts; the pools are opened on the first request after it comes back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from stac_fastapi.pgstac import db as stac_db
from tipg import database as tipg_db

from config import Settings
from triggers.serving import features, stac
from triggers.serving import settings as lib_settings
from triggers.serving.catalog import CatalogKeeper

log = logging.getLogger("geoetl.serving")

RETRY_SECONDS = 2.0


@dataclass
class Serving:
    """tipg and stac-fastapi apps, their pools and the catalog keeper."""

    settings: Settings
    features: FastAPI
    stac: FastAPI
    keeper: CatalogKeeper
    tipg_open: bool = False
    stac_open: bool = False
    last_error: str | None = None
    _last_attempt: float = 0.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def build(cls, settings: Settings) -> Serving:
        features_app = features.build_app()
        keeper = CatalogKeeper(features_app, lib_settings.tipg_database_settings(settings))
        features_app.state.keeper = keeper
        stac_app = stac.build_app(lib_settings.stac_settings(settings))
        return cls(settings=settings, features=features_app, stac=stac_app, keeper=keeper)

    @property
    def started(self) -> bool:
        return self.tipg_open and self.stac_open

    async def start(self) -> None:
        """Open both pools and build the catalog; raises when the database is unreachable."""
        async with self._lock:
            await self._open()

    async def _open(self) -> None:
        self._last_attempt = time.monotonic()
        if not self.tipg_open:
            db_settings = self.keeper.db_settings
            await tipg_db.connect_to_db(
                self.features,
                schemas=db_settings.schemas,
                tipg_schema=db_settings.tipg_schema,
                settings=lib_settings.tipg_postgres_settings(self.settings),
                server_settings=lib_settings.SERVING_SERVER_SETTINGS,
            )
            self.tipg_open = True
            await self.keeper.refresh()
        if not self.stac_open:
            await stac_db.connect_to_db(
                self.stac, postgres_settings=lib_settings.stac_postgres_settings(self.settings)
            )
            self.stac_open = True
        self.last_error = None

    async def ready(self) -> bool:
        """True when the pools are open; otherwise tries to open them (at most every RETRY_SECONDS)."""
        if self.started:
            return True
        if time.monotonic() - self._last_attempt < RETRY_SECONDS:
            return False
        async with self._lock:
            if self.started:
                return True
            try:
                await self._open()
            except Exception as exc:  # noqa: BLE001 - whatever the failure, retry later
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("serving pools unavailable: %s", self.last_error)
                return False
        return True

    async def stop(self) -> None:
        async with self._lock:
            if self.tipg_open:
                await tipg_db.close_db_connection(self.features)
                self.tipg_open = False
            if self.stac_open:
                await stac_db.close_db_connection(self.stac)
                self.stac_open = False

    def health(self) -> dict[str, Any]:
        """Pool and catalog state, without touching the database (safe from any thread)."""
        if not self.started:
            raise RuntimeError(f"serving pools are not open: {self.last_error or 'not started'}")
        pools: dict[str, Any] = {}
        for name, pool in (("features", self.features.state.pool), ("stac", self.stac.state.readpool)):
            if pool.is_closing():
                raise RuntimeError(f"the {name} pool is closed")
            pools[name] = {"size": pool.get_size(), "idle": pool.get_idle_size(), "max": pool.get_max_size()}
        return {"pools": pools, "catalog": self.keeper.status()}

    async def check(self) -> dict[str, Any]:
        """Like health(), plus one query through each pool (call from the event loop)."""
        info = self.health()
        async with self.features.state.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
        async with self.stac.state.readpool.acquire() as conn:
            info["pgstac"] = await conn.fetchval("SELECT pgstac.get_version()")
        return info
