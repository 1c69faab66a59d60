"""The function's CloudWatch metrics (EMF), as the README names them: emitted, counted right."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import EVENTS, REPO

Handler = Callable[[dict], dict]


def emitted(output: str) -> list[dict[str, Any]]:
    """Every EMF document Powertools printed: its metric values and dimensions."""
    documents = []
    for line in output.splitlines():
        if not line.startswith("{") or '"_aws"' not in line:
            continue
        blob = json.loads(line)
        (directive,) = blob["_aws"]["CloudWatchMetrics"]
        names = [m["Name"] for m in directive["Metrics"]]
        dimensions = {d: blob[d] for group in directive["Dimensions"] for d in group}
        documents.append({"metrics": {n: blob[n] for n in names}, "dimensions": dimensions})
    return documents


def totals(documents: list[dict[str, Any]]) -> Counter[str]:
    """How many data points of each metric were sent."""
    counts: Counter[str] = Counter()
    for document in documents:
        for name, value in document["metrics"].items():
            counts[name] += len(value) if isinstance(value, list) else 1
    return counts


def event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


@pytest.fixture(autouse=True)
def cold_process() -> None:
    """Each test's handler is a new execution environment: Powertools keeps the flag per process."""
    from aws_lambda_powertools.metrics.provider.cold_start import reset_cold_start_flag

    reset_cold_start_flag()


@pytest.fixture
def handler(published: object, make_handler: Callable[..., Handler]) -> Handler:
    return make_handler()


def test_the_first_request_sends_cold_start_model_load_and_inference(
    handler: Handler, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()  # drop whatever init printed

    response = handler(event("predict_infer_batch_200.json"))
    documents = emitted(capsys.readouterr().out)

    assert response["statusCode"] == 200
    counts = totals(documents)
    assert counts["ColdStart"] == 1
    assert counts["ModelLoadMs"] == 1  # loaded at init, flushed with the first invocation
    assert counts["InferenceMs"] == 1
    assert counts["BatchSize"] == 1
    assert "ClientErrors" not in counts
    assert "ServerErrors" not in counts
    batch = next(d for d in documents if "BatchSize" in d["metrics"])
    assert batch["metrics"]["BatchSize"] == [8.0]  # the event's 8 rows
    assert batch["dimensions"]["model"] == "digits"
    assert batch["dimensions"]["version"] == "1"

    handler(event("predict_infer_200.json"))
    again = totals(emitted(capsys.readouterr().out))
    assert "ColdStart" not in again
    assert "ModelLoadMs" not in again
    assert again["InferenceMs"] == 1


@pytest.mark.parametrize(
    "name",
    [
        "predict_unknown_route_404.json",
        "predict_wrong_method_405.json",
        "predict_unknown_model_404.json",
        "predict_unsupported_media_type_415.json",
        "predict_nan_400.json",
        "predict_batch_too_large_413.json",
    ],
)
def test_every_refusal_counts_one_client_error(
    handler: Handler, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    handler(event("predict_health_live_200.json"))  # the cold start, out of the way
    capsys.readouterr()

    response = handler(event(name))
    counts = totals(emitted(capsys.readouterr().out))

    assert 400 <= response["statusCode"] < 500
    assert counts["ClientErrors"] == 1
    assert "ServerErrors" not in counts
    assert "InferenceMs" not in counts


def test_a_fault_counts_one_server_error(
    s3: Any, make_handler: Callable[..., Handler], capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a function whose model is not published (its load fails: a 503, our fault)
    handler = make_handler()
    handler(event("predict_health_live_200.json"))
    capsys.readouterr()

    response = handler(event("predict_infer_200.json"))
    counts = totals(emitted(capsys.readouterr().out))

    assert response["statusCode"] == 503
    assert counts["ServerErrors"] == 1
    assert "ClientErrors" not in counts


def test_the_readme_names_exactly_the_metrics_the_function_sends(
    handler: Handler, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (REPO / "README.md").read_text()
    paragraph = readme[readme.index("Metrics (CloudWatch EMF):") :].split("\n\n", 1)[0]
    documented = set(re.findall(r"`(\w+)`", paragraph.split(":", 1)[1].split(" with ", 1)[0]))

    for name in ("predict_infer_200.json", "predict_wrong_method_405.json"):
        handler(event(name))
    seen = set(totals(emitted(capsys.readouterr().out)))

    # ServerErrors and InferenceErrors need a fault: test_a_fault_counts_one_server_error and
    # tests/functional/test_canary.py provide them
    assert documented == seen | {"ServerErrors", "InferenceErrors"}
