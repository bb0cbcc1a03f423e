"""The FastAPI application: job API, health, and the serving layer, all under /api."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from config.logging import configure_logging
from infrastructure import database
from triggers import errors, health, serving

log = logging.getLogger("geoetl.api")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    database.get_pool()
    await serving.startup(app)
    try:
        yield
    finally:
        await serving.shutdown(app)
        database.close_pool()


def create_app() -> FastAPI:
    configure_logging()
    app = FastAPI(
        title="geoetl",
        description="Geospatial ingest orchestrator: submit jobs, follow them, query the results.",
        version="0.1.0",
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(health.router, prefix="/api")
    from triggers import jobs_api

    app.include_router(jobs_api.router, prefix="/api")
    from triggers import datasets_api

    app.include_router(datasets_api.router, prefix="/api")
    jobs_api.add_parameter_schemas(app)
    serving.register(app)
    return app
