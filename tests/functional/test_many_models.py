"""The real handler serving many models (ONNXKIT_MODELS) from moto, fed the repository's events."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import EVENTS
from tests.functional.conftest import body_of

Handler = Callable[[dict], dict]


def event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


@pytest.fixture
def function_log() -> Iterator[io.StringIO]:
    """What the function's Powertools logger writes from now on, in its own JSON format (its
    handler was bound to the stream of the first test that built it)."""
    powertools = logging.getLogger("onnxkit")
    (formatter,) = {h.formatter for h in powertools.handlers}
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(formatter)
    powertools.addHandler(handler)
    yield buffer
    powertools.removeHandler(handler)


def test_the_index_event_lists_the_models_and_logs_name_the_model(
    published: object, make_handler: Callable[..., Handler], function_log: io.StringIO
) -> None:
    # GIVEN the function serving digits (published) and a model that is not in the store
    handler = make_handler(ONNXKIT_MODELS="digits,absent")

    # WHEN the index is asked before and after a digits inference
    before = body_of(handler(event("predict_repository_index_200.json")))
    answer = handler(event("predict_infer_200.json"))
    after = body_of(handler(event("predict_repository_index_200.json")))

    # THEN both are listed in the configured order; digits turns READY
    assert [(r["name"], r["state"]) for r in before] == [
        ("digits", "UNAVAILABLE"),
        ("absent", "UNAVAILABLE"),
    ]
    assert answer["statusCode"] == 200
    assert body_of(answer)["model_name"] == "digits"
    assert [(r["name"], r["state"], r["version"]) for r in after] == [
        ("digits", "READY", "1"),
        ("absent", "UNAVAILABLE", ""),
    ]
    # AND a request for the absent model fails on our side (it is configured) and is logged
    # with the model's name
    refused = handler({**event("predict_infer_200.json"), "path": "/v2/models/absent/infer"})
    assert refused["statusCode"] == 503
    assert "absent" in body_of(refused)["error"]["message"]
    lines = [json.loads(line) for line in function_log.getvalue().splitlines()]
    assert [line["model"] for line in lines if line["message"] == "request failed"] == ["absent"]
    assert {line.get("model") for line in lines if line["message"] == "model loaded"} == {"digits"}


def test_an_unknown_model_is_404(published: object, make_handler: Callable[..., Handler]) -> None:
    handler = make_handler(ONNXKIT_MODELS="digits")
    response = handler({**event("predict_infer_200.json"), "path": "/v2/models/other/infer"})
    assert response["statusCode"] == 404
    assert body_of(response)["error"]["code"] == "model_not_found"
