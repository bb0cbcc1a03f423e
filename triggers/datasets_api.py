"""Dataset routes: list the published datasets, show one, delete one (table and STAC item together)."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from core.errors import ConflictError, ResourceNotFoundError
from infrastructure import database
from services.vector.datasets import delete_dataset, find_dataset, list_datasets, served_schemas
from triggers.auth import require_read_key, require_write_key
from triggers.errors import ApiError
from triggers.jobs_api import ERRORS, ErrorBody

router = APIRouter(tags=["datasets"])
NAME = r"[a-z_][a-z0-9_]{0,62}"
DATASET_RE = re.compile(rf"^(?:({NAME})\.)?({NAME})$")


class DatasetLinks(BaseModel):
    features: str
    tiles: str
    viewer: str
    stac_item: str
    job: str
    delete: str


class Dataset(BaseModel):
    dataset: str = Field(description="schema.table, the id in /api/features and /api/stac")
    schema_: str = Field(alias="schema")
    table: str
    state: str = Field(description="Always 'published' here: loading versions live in staging, unlisted.")
    rows: int | None
    bbox: list[float] | None
    geometry_type: str | None
    version: int = Field(description="1 when first published; +1 with every replace or append.")
    source_etag: str | None = Field(description="ETag of the source blob the current version was loaded from.")
    source_file: str | None
    job_id: str | None = Field(description="The job that published the current version.")
    published_at: str | None
    stac_item: bool = Field(description="False when the STAC item is missing (the janitor re-checks).")
    links: DatasetLinks


class DatasetList(BaseModel):
    total: int
    limit: int
    offset: int
    datasets: list[Dataset]


class DeleteResponse(BaseModel):
    dataset: str
    deleted: bool
    table_dropped: bool = Field(description="False when only a STAC item was left (its table was dropped by hand).")
    stac_item_deleted: bool
    rows: int | None
    version: int | None
    job_id: str | None


def parse_dataset(dataset: str) -> tuple[str, str]:
    found = DATASET_RE.match(dataset)
    if not found:
        raise ApiError(
            400, "invalid_dataset", "a dataset is named schema.table (lowercase letters, digits and underscores)"
        )
    schemas = served_schemas()
    return found.group(1) or (schemas[0] if schemas else "geo"), found.group(2)


def _answer_errors(exc: Exception) -> ApiError:
    if isinstance(exc, ResourceNotFoundError):
        return ApiError(404, "not_found", str(exc))
    return ApiError(409, "conflict", str(exc))


@router.get(
    "/datasets",
    summary="List the published datasets",
    response_model=DatasetList,
    dependencies=[Depends(require_read_key)],
)
def get_datasets(limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=10_000_000)) -> Any:
    with database.connection() as conn:
        return list_datasets(conn, limit, offset)


@router.get(
    "/datasets/{dataset}",
    summary="One published dataset",
    response_model=Dataset,
    responses={400: ERRORS[400], 404: {"model": ErrorBody, "description": "Unknown dataset"},
               409: {"model": ErrorBody, "description": "The table exists but geoetl did not create it"}},
    dependencies=[Depends(require_read_key)],
)
def get_dataset(dataset: str) -> Any:
    schema, table = parse_dataset(dataset)
    try:
        with database.connection() as conn:
            return find_dataset(conn, schema, table)
    except (ResourceNotFoundError, ConflictError) as exc:
        raise _answer_errors(exc) from None


@router.delete(
    "/datasets/{dataset}",
    summary="Delete a dataset: its table and its STAC item, in one transaction",
    description=(
        "Drops a table geoetl published and removes its STAC item together; serving forgets it at once. "
        "A table geoetl did not create answers 409 (and is left alone); an unknown one 404. A STAC item "
        "whose table was dropped by hand is removed too (`table_dropped: false`)."
    ),
    response_model=DeleteResponse,
    responses={
        400: ERRORS[400],
        401: ERRORS[401],
        404: {"model": ErrorBody, "description": "Unknown dataset"},
        409: {"model": ErrorBody, "description": "Not created by geoetl, or other objects depend on it"},
    },
    dependencies=[Depends(require_write_key)],
)
def remove_dataset(dataset: str, request: Request) -> Any:
    schema, table = parse_dataset(dataset)
    try:
        with database.connection() as conn:
            outcome = delete_dataset(conn, schema, table)
    except (ResourceNotFoundError, ConflictError) as exc:
        raise _answer_errors(exc) from None
    serving = getattr(request.app.state, "serving", None)
    if serving is not None:
        serving.keeper.invalidate()  # this process's next request rebuilds its catalog
    return outcome
