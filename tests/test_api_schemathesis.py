"""Property-based run of the job API against its own OpenAPI document: no 500, no off-schema answer."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

# Parameter rules beyond JSON Schema (reserved words, allowed schemas, files that must exist)
# make some schema-valid bodies a 400/404 by design; every other check stays on.
EXCLUDED = [positive_data_acceptance]


def test_api_conforms_to_its_schema(database):
    from triggers.app import create_app

    schema = schemathesis.openapi.from_asgi("/api/openapi.json", create_app()).include(
        path_regex=r"^/api/(jobs|health|datasets)"
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call()
            assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text[:300]}"
            case.validate_response(response, excluded_checks=EXCLUDED)

        check()
