"""The FastAPI application: job API, health, and the serving layer, all under /api."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from config.logging import configure_logging
from infrastructure import database, telemetry
from triggers import docs, errors, health, security, serving

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
    telemetry.configure_from_settings()
    app = FastAPI(
        title="geoetl",
        description="Geospatial ingest orchestrator: submit jobs, follow them, query the results.",
        version="0.1.0",
        docs_url=None,  # served by triggers/docs.py (local assets, no inline script)
        openapi_url="/api/openapi.json",
        redoc_url=None,
        lifespan=lifespan,
        telemetry={"tracer_provider": telemetry.provider_override()},  # None: the global provider
    )
    errors.install(app)
    app.include_router(health.router, prefix="/api")
    from triggers import jobs_api

    app.include_router(jobs_api.router, prefix="/api")
    from triggers import datasets_api

    app.include_router(datasets_api.router, prefix="/api")
    jobs_api.add_parameter_schemas(app)
    from triggers import dashboard, deadletters_api, metrics

    dashboard.register(app)
    app.include_router(metrics.router, prefix="/api")
    app.include_router(deadletters_api.router, prefix="/api")
    app.add_middleware(security.Hardening)
    docs.install(app)
    docs.document_errors(app)
    serving.register(app)
    return app
