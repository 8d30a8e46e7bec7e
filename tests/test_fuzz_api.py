"""Fuzz the real HTTP app from its own OpenAPI schema (schemathesis): no input gives a 5xx or a bare traceback."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings


@pytest.fixture
def api_schema(serve, make_store):  # type: ignore[no-untyped-def]
    live = serve(make_store("embedded"))
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_breaks_the_api(case) -> None:  # type: ignore[no-untyped-def]
    response = case.call(timeout=30)
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error", "detail"} and "Traceback" not in response.text
