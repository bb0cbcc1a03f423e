"""OGC API - Features/Tiles (tipg), STAC API (stac-fastapi-pgstac) and the map viewer.

`register(app)` mounts them; `startup(app)` / `shutdown(app)` open and close their pools
from our lifespan (Starlette does not run a mounted sub-app's lifespan).
"""

from __future__ import annotations

from fastapi import FastAPI


def register(app: FastAPI) -> None:
    """Mount the serving sub-applications under /api."""


async def startup(app: FastAPI) -> None:
    """Open serving pools."""


async def shutdown(app: FastAPI) -> None:
    """Close serving pools."""
