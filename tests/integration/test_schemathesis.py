"""Property-based tests from the OpenAPI document (schemathesis) against both local servers.

Each server serves its own document at ``GET /v2/openapi.json``; schemathesis generates
requests from it, valid and invalid (positive and negative data), and checks every response
against it: no server error, a documented status, a documented content type, a body that fits
its schema, documented headers. At least 1,000 cases go to each server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from schemathesis import checks
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode

from tests.integration.test_start_endpoint import start_endpoint

pytestmark = pytest.mark.integration

CASES_PER_SERVER = 1000
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


def fuzz(base: str) -> tuple[int, list[str]]:
    """Run generated cases against ``base`` until at least CASES_PER_SERVER have been sent.

    Returns:
        How many cases ran, and one line per failed check.
    """
    schema = schemathesis.openapi.from_url(f"{base}/v2/openapi.json")
    runs = []
    for result in schema.get_all_operations():
        operation = result.ok()
        runs.append((operation, GenerationMode.POSITIVE))
        if len(operation.body):  # a schema to break (any string is a valid path parameter)
            runs.append((operation, GenerationMode.NEGATIVE))
    per_run = -(-CASES_PER_SERVER // len(runs))
    sent = 0
    failures: list[str] = []
    with requests.Session() as session:
        # Operations without inputs have few distinct cases: rounds with other seeds make up
        # the count. Fixed seeds: the same cases every run, so a failure reproduces.
        for round_ in range(10):
            for operation, mode in runs:
                ran, failed = exercise(operation, mode, base, session, per_run, seed=round_)
                sent += ran
                failures += failed
            if sent >= CASES_PER_SERVER:
                break
    return sent, failures


def exercise(
    operation: Any,
    mode: GenerationMode,
    base: str,
    session: requests.Session,
    examples: int,
    *,
    seed: int,
) -> tuple[int, list[str]]:
    """``examples`` generated cases of one operation: how many ran, and the failed checks."""
    label = f"{operation.label} [{mode.value}]"
    sent = 0
    failures: list[str] = []

    @hypothesis_seed(seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        nonlocal sent
        sent += 1
        response = case.call(base_url=base, session=session, timeout=30)
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as exc:  # schemathesis raises one group per failed case
            failures.append(f"{label} -> {response.status_code}: {str(exc).splitlines()[0]}")

    run()
    return sent, failures


def test_the_function_behind_start_api_keeps_its_document(start_api: str) -> None:
    sent, failures = fuzz(start_api)

    assert sent >= CASES_PER_SERVER
    assert failures == [], "\n".join(failures[:20])


@pytest.fixture(scope="module")
def endpoint(digits_dir: Path) -> Iterator[str]:
    """`onnxkit local start-endpoint --model-dir` on the digits model, one worker."""
    with start_endpoint("--model-dir", str(digits_dir / "int8")) as base:
        yield base


def test_the_endpoint_keeps_its_document(endpoint: str) -> None:
    sent, failures = fuzz(endpoint)

    assert sent >= CASES_PER_SERVER
    assert failures == [], "\n".join(failures[:20])
