"""The real handler serving many models (ONNXKIT_MODELS) from moto, fed the repository's events."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import EVENTS
from tests.functional.conftest import body_of

Handler = Callable[[dict], dict]


def event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def log_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith('{"level"')]


def test_the_index_event_lists_the_models_and_logs_name_the_model(
    published: object, make_handler: Callable[..., Handler], capsys: pytest.CaptureFixture[str]
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
    lines = log_lines(capsys.readouterr().out)
    failed = [line for line in lines if line["message"] == "request failed"]
    assert failed
    assert failed[-1]["model"] == "absent"
    assert all(
        "model" not in line
        for line in lines
        if line["message"] == "init done; models load on their first request"
    )


def test_an_unknown_model_is_404(published: object, make_handler: Callable[..., Handler]) -> None:
    handler = make_handler(ONNXKIT_MODELS="digits")
    response = handler({**event("predict_infer_200.json"), "path": "/v2/models/other/infer"})
    assert response["statusCode"] == 404
    assert body_of(response)["error"]["code"] == "model_not_found"
