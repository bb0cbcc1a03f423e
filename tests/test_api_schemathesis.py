"""Property-based run over every OpenAPI document the API serves: the job API, health and viewer
(/api/openapi.json), OGC API - Features and Tiles (/api/features/api) and the STAC API
(/api/stac/api). No 500, no answer outside the documents, every error in {"error", "message"}.

Half of the generated requests name a real table (and its STAC item), so that items, tiles and
filters are exercised against data and not only against 404s.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import content_type_conformance, positive_data_acceptance, response_schema_conformance

from tests.test_serving_support import add_catalog_entries, connect, create_squares, drop

# Parameter rules beyond JSON Schema (reserved words, allowed schemas, files that must exist, filters
# that must name real columns) make some schema-valid requests a 400/404 by design; every other check
# stays on.
EXCLUDED = [positive_data_acceptance]
DOCUMENTS = {  # document -> examples per operation
    "/api/openapi.json": 100,
    "/api/features/api": 60,
    "/api/stac/api": 60,
}


@pytest.fixture(scope="module")
def app_and_table(database: str) -> Iterator[tuple[Any, str]]:
    from triggers.app import create_app

    table = f"schemathesis_{uuid.uuid4().hex[:8]}"
    with connect(database) as conn:
        create_squares(conn, table)
        add_catalog_entries(conn, table, "http://127.0.0.1")
    try:
        yield create_app(), table
    finally:
        with connect(database) as conn:
            drop(conn, table)


REAL_VALUES = {"collectionId": "{table}", "collection_id": "system-vectors", "item_id": "geo.{table}",
               "itemId": "1", "tileMatrixSetId": "WebMercatorQuad"}


def _aim_at_data(case: Any, table: str) -> None:
    for name, value in REAL_VALUES.items():
        if case.path_parameters and name in case.path_parameters:
            case.path_parameters[name] = value.format(table=table)


@pytest.mark.parametrize("document", list(DOCUMENTS))
def test_api_conforms_to_its_schema(app_and_table: tuple[Any, str], document: str) -> None:
    app, table = app_and_table
    schema = schemathesis.openapi.from_asgi(document, app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= {"/api/openapi.json": 7, "/api/features/api": 14, "/api/stac/api": 10}[document]

    for operation in operations:

        @given(case=operation.as_strategy(), real=st.booleans())
        # derandomized: the same examples every run, so a red run is a regression, not a new draw
        @settings(max_examples=DOCUMENTS[document], deadline=None, suppress_health_check=list(HealthCheck),
                  database=None, derandomize=True)
        def check(case: Any, real: bool) -> None:
            if real:
                _aim_at_data(case, table)
            response = case.call()
            where = f"{case.method} {case.formatted_path}"
            assert response.status_code < 500, f"{where}: {response.text[:300]}"
            if response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
                body = response.json()
                assert isinstance(body, dict) and {"error", "message"} <= set(body), f"{where}: {response.text[:300]}"
            excluded = EXCLUDED
            if "fields" in (case.query or {}) or (isinstance(case.body, dict) and "fields" in case.body):
                # the STAC fields extension answers partial objects (as plain JSON) by design
                excluded = [*EXCLUDED, response_schema_conformance, content_type_conformance]
            case.validate_response(response, excluded_checks=excluded)

        check()
