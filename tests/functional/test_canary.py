"""A model canary in the real handler: both versions answer, metrics per version, rollback."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from onnxkit import sources
from onnxkit.errors import InferenceError
from onnxkit_tools.registry import Registry, publish_model
from tests.functional.conftest import STORE, body_of
from tests.functional.test_metrics import emitted

INFER = json.loads(Path("events/predict_infer_200.json").read_text())
Handler = Callable[[dict], dict]


@pytest.fixture
def canary_handler(
    s3: Any,
    published: object,
    digits_dir: Path,
    tmp_path: Path,
    make_handler: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> Handler:
    """digits@prod = 1 (int8) with canary 2 (fp32) at 50 %, and the function serving it,
    loading through the /tmp cache as it does for models over the in-memory limit."""
    monkeypatch.setattr(sources, "IN_MEMORY_MAX_BYTES", 0)
    store = Registry.from_uri(STORE, cache_dir=tmp_path / "publisher", s3_client=s3)
    publish_model(store, digits_dir / "fp32" / "model.onnx", name="digits", version="2")
    store.set_canary("digits", "prod", "2", 50)
    return make_handler()


def test_both_versions_answer_and_metrics_carry_the_version(
    canary_handler: Handler, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    capsys.readouterr()

    # WHEN 60 requests arrive
    versions = Counter()
    for _ in range(60):
        response = canary_handler(INFER)
        assert response["statusCode"] == 200
        versions[body_of(response)["model_version"]] += 1
    documents = emitted(capsys.readouterr().out)

    # THEN both versions served (at 50 %, 60 draws all on one side has odds 2 x 2^-60)
    assert set(versions) == {"1", "2"}
    # AND each InferenceMs data point carries the version that served it
    per_version: Counter[str] = Counter()
    for document in documents:
        if "InferenceMs" in document["metrics"]:
            value = document["metrics"]["InferenceMs"]
            per_version[document["dimensions"]["version"]] += (
                len(value) if isinstance(value, list) else 1
            )
    assert per_version == versions
    # AND /tmp holds both versions' files
    cached = {p.parent.parent.name for p in (tmp_path / "lambda-tmp").rglob("model.onnx")}
    assert cached == {"1", "2"}


def test_an_explicit_version_reaches_the_canary(canary_handler: Handler) -> None:
    event = {**INFER, "path": "/v2/models/digits/versions/2/infer"}
    event["resource"] = event["path"]
    for _ in range(5):
        response = canary_handler(event)
        assert response["statusCode"] == 200, response["body"]
        assert body_of(response)["model_version"] == "2"


def test_a_failing_canary_counts_inference_errors_and_is_aborted_in_the_store(
    canary_handler: Handler, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN the canary's backend failing every inference
    predictor = canary_handler.predictor  # type: ignore[attr-defined]
    canary = predictor._canary.backend

    def fail(*_: object, **__: object) -> None:
        raise InferenceError("the model failed on this input")

    canary.run = fail
    capsys.readouterr()

    # WHEN requests arrive until the canary is gone (10 canary requests at the default minimum)
    statuses: Counter[tuple[int, str]] = Counter()
    for _ in range(200):
        response = canary_handler(INFER)
        headers = {k: v[0] for k, v in (response.get("multiValueHeaders") or {}).items()}
        headers.update(response.get("headers") or {})
        version = headers.get("x-onnxkit-model-version") or body_of(response)["model_version"]
        statuses[(response["statusCode"], version)] += 1
        if predictor.canary_version is None:
            break
    documents = emitted(capsys.readouterr().out)

    # THEN exactly the 10 canary requests failed (every one of them: 10 of 10 > 10 %)
    assert statuses[(500, "2")] == 10
    assert {version for status, version in statuses if status == 500} == {"2"}
    errors = [d for d in documents if "InferenceErrors" in d["metrics"]]
    assert sum(len(d["metrics"]["InferenceErrors"]) if isinstance(
        d["metrics"]["InferenceErrors"], list) else 1 for d in errors) == 10  # fmt: skip
    assert {d["dimensions"]["version"] for d in errors} == {"2"}
    # AND the alias in S3 says the canary was aborted, stable unchanged
    alias = json.loads(
        s3.get_object(Bucket="onnxkit-test", Key="onnxkit/models/digits/_aliases/prod.json")[
            "Body"
        ].read()
    )
    assert (alias["version"], alias["canary"], alias["aborted"]["version"]) == ("1", None, "2")
    # AND the version 1 serves everything afterwards
    assert {body_of(canary_handler(INFER))["model_version"] for _ in range(20)} == {"1"}
