"""Schema-driven fuzzing: schemathesis generates requests from /openapi.json and checks every answer.

Valid and invalid data for every operation, sent in-process to the real app with a tenant's key;
no answer may be a 5xx or differ from its documented status codes, content types and schemas.
Generated UUIDs in paths are swapped for the tenant's real job, delivery and dead letter, so the
answers checked are those of real objects, not only 404s.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES_PER_OPERATION = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
SENT: Counter[str] = Counter()
SPENT: Counter[str] = Counter()


pytestmark = pytest.mark.slow  # hundreds of generated requests: about a minute in all


@pytest.fixture
def seeded(delivery, dead_letter) -> dict[str, str]:
    """Real objects of the tenant, by path parameter name."""
    return {**delivery, "letter_id": dead_letter["letter_id"]}


@pytest.fixture
def api_schema(app, tenant, monkeypatch):
    """The app's own OpenAPI document, loaded in-process; the rate limit is lifted for the run."""
    monkeypatch.setitem(app.config, "GPUJOBS_RATE_LIMIT_PER_MINUTE", 10**9)
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_generated_request_gets_a_5xx_or_an_undocumented_answer(case, tenant, seeded):
    for name, value in (case.path_parameters or {}).items():
        if name in seeded and _is_uuid(value):  # keep the invalid ones of negative cases
            case.path_parameters[name] = seeded[name]
    SENT[case.operation.label] += 1
    started = time.monotonic()
    case.call_and_validate(headers=tenant["headers"], checks=CHECKS)
    SPENT[case.operation.label] += time.monotonic() - started


def _is_uuid(value: object) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def teardown_module() -> None:
    for label, count in SENT.most_common():
        print(f"{label}: {count} requests, {SPENT[label]:.2f}s")
    print(f"fuzz: {sum(SENT.values())} requests over {len(SENT)} operations")
