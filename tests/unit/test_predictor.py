"""The Predictor: v2 inference on real onnxruntime sessions, routing, readiness, load retries."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from onnxkit import __version__
from onnxkit.backends.onnxruntime import OnnxruntimeBackend
from onnxkit.errors import (
    IntegrityError,
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    OnnxkitError,
    PayloadTooLargeError,
)
from onnxkit.manifest import Manifest
from onnxkit.predictor import Predictor
from onnxkit.session import load_session
from onnxkit.settings import ApiSettings
from onnxkit_tools.registry import describe_model
from tests.unit.conftest import OPSET, BuiltModel, infer_json

LIMITS = ApiSettings(max_request_bytes=10_000, max_batch_size=4)


class Recorder:
    """An Observer that keeps every call."""

    def __init__(self) -> None:
        self.loaded: list[tuple[str, str]] = []
        self.inferred: list[tuple[str, int]] = []

    def model_loaded(self, manifest: Manifest, milliseconds: float) -> None:
        assert milliseconds >= 0
        self.loaded.append((manifest.name, manifest.version))

    def inference_done(self, manifest: Manifest, milliseconds: float, batch: int) -> None:
        assert milliseconds >= 0
        self.inferred.append((manifest.version, batch))


class CountingLoader:
    """Loads a real backend; the first ``failures`` calls raise the given errors instead."""

    def __init__(self, model: BuiltModel, name: str, *failures: Exception) -> None:
        self.manifest = describe_model(model.path, name=name, version="1")
        self._path = model.path
        self._failures = list(failures)
        self.calls = 0

    def __call__(self) -> OnnxruntimeBackend:
        self.calls += 1
        if self._failures:
            raise self._failures.pop(0)
        return OnnxruntimeBackend(self.manifest, load_session(self._path, intra_op_threads=1))


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """The clock the predictors of :func:`make_predictor` back off by."""
    return FakeClock()


@pytest.fixture
def make_predictor(clock: FakeClock) -> Callable[..., tuple[Predictor, CountingLoader, Recorder]]:
    """Build a Predictor over a model, with an optional list of load failures first."""

    def make(
        model: BuiltModel,
        name: str,
        *failures: Exception,
        limits: ApiSettings = LIMITS,
        background: bool = False,
    ) -> tuple[Predictor, CountingLoader, Recorder]:
        loader = CountingLoader(model, name, *failures)
        observer = Recorder()
        predictor = Predictor(
            name, loader, limits, observer, background=background, load_retry_s=1.0, clock=clock
        )
        return predictor, loader, observer

    return make


def x_request(rows: list[list[float]], **extra: Any) -> bytes:
    """A v2 request body for the tiny model."""
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [len(rows), 4], "data": rows}],
        **extra,
    }
    return json.dumps(body).encode()


def test_infer_returns_the_values_numpy_computes(
    make_predictor: Callable[..., Any], tiny_model: BuiltModel
) -> None:
    # GIVEN the tiny model served as "tiny"
    predictor, _, observer = make_predictor(tiny_model, "tiny")
    rows = [[1.0, 2.0, 3.0, 4.0], [-0.5, 0.25, 8.0, -2.0]]

    # WHEN a batch of two rows is sent, as raw JSON bytes
    response = infer_json(predictor, "tiny", None, x_request(rows, id="r-1"))

    # THEN the v2 response carries y = x @ W + b for each row
    expected = tiny_model.compute(np.array(rows, dtype=np.float32))["y"]
    assert response["model_name"] == "tiny"
    assert response["model_version"] == "1"
    assert response["id"] == "r-1"
    assert [o["name"] for o in response["outputs"]] == ["y"]
    (y,) = response["outputs"]
    assert y["datatype"] == "FP32"
    assert y["shape"] == [2, 2]
    np.testing.assert_allclose(y["data"], expected.ravel(), rtol=1e-6)
    assert json.loads(json.dumps(response)) == response
    assert observer.inferred == [("1", 2)]
    assert observer.loaded == [("tiny", "1")]


def test_infer_by_explicit_version(
    make_predictor: Callable[..., Any], tiny_model: BuiltModel
) -> None:
    predictor, _, _ = make_predictor(tiny_model, "tiny")

    response = infer_json(predictor, "tiny", "1", x_request([[0.0, 0.0, 0.0, 0.0]]))

    assert response["outputs"][0]["data"] == [0.5, -1.0]  # the bias alone
    assert "id" not in response


def test_infer_int64_and_bool(make_predictor: Callable[..., Any], typed_model: BuiltModel) -> None:
    predictor, _, _ = make_predictor(typed_model, "typed")
    ids = [[7, -3, 2**40], [0, 5, -(2**62)]]
    mask = [[True, False, True], [False, True, True]]
    body = {
        "inputs": [
            {"name": "mask", "datatype": "BOOL", "shape": [2, 3], "data": mask},
            {"name": "ids", "datatype": "INT64", "shape": [2, 3], "data": ids},
        ]
    }

    response = infer_json(predictor, "typed", None, json.dumps(body))

    expected = typed_model.compute(np.array(ids, dtype=np.int64), np.array(mask))
    outputs = {o["name"]: o for o in response["outputs"]}
    assert [o["name"] for o in response["outputs"]] == ["masked", "inverted"]
    assert outputs["masked"]["datatype"] == "INT64"
    assert outputs["masked"]["data"] == expected["masked"].ravel().tolist()
    assert outputs["masked"]["data"] == [7, 0, 2**40, 0, 5, -(2**62)]
    assert outputs["inverted"]["datatype"] == "BOOL"
    assert outputs["inverted"]["data"] == [False, True, False, True, False, False]


def typed_body(outputs: Any) -> str:
    """A request for the typed model asking for some outputs."""
    return json.dumps(
        {
            "inputs": [
                {"name": "ids", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]},
                {"name": "mask", "datatype": "BOOL", "shape": [1, 3], "data": [True] * 3},
            ],
            "outputs": outputs,
        }
    )


def test_requested_outputs_are_returned_in_the_requested_order(
    make_predictor: Callable[..., Any], typed_model: BuiltModel
) -> None:
    predictor, _, _ = make_predictor(typed_model, "typed")

    only = infer_json(predictor, "typed", None, typed_body([{"name": "inverted"}]))
    both = infer_json(
        predictor, "typed", None, typed_body([{"name": "inverted"}, {"name": "masked"}])
    )

    assert only["outputs"] == [
        {"name": "inverted", "datatype": "BOOL", "shape": [1, 3], "data": [False] * 3}
    ]
    assert [o["name"] for o in both["outputs"]] == ["inverted", "masked"]


def test_unknown_output_is_400(make_predictor: Callable[..., Any], typed_model: BuiltModel) -> None:
    predictor, _, _ = make_predictor(typed_model, "typed")

    with pytest.raises(InvalidInputError) as caught:
        infer_json(predictor, "typed", None, typed_body([{"name": "probabilities"}]))

    assert caught.value.status == 400
    assert "unknown output(s) 'probabilities'" in caught.value.message
    assert "'masked', 'inverted'" in caught.value.message


def test_an_empty_outputs_list_returns_every_output(
    make_predictor: Callable[..., Any], typed_model: BuiltModel
) -> None:
    # v2: "outputs" lists what to return; an empty list asks for nothing in particular,
    # like leaving it out. It must never be a 500.
    predictor, _, _ = make_predictor(typed_model, "typed")

    response = infer_json(predictor, "typed", None, typed_body([]))

    assert [o["name"] for o in response["outputs"]] == ["masked", "inverted"]


def test_model_metadata_lists_inputs_and_outputs_with_dynamic_dims(
    make_predictor: Callable[..., Any], tiny_model: BuiltModel
) -> None:
    predictor, _, _ = make_predictor(tiny_model, "tiny")

    metadata = predictor.model_metadata("tiny")

    assert metadata == {
        "name": "tiny",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
        "parameters": {
            "opset": OPSET,
            "quantization": None,
            "backend": "lambda",
            "sha256": tiny_model.sha256,
        },
    }
    assert predictor.model_metadata("tiny", "1") == metadata


def test_server_and_model_readiness(
    make_predictor: Callable[..., Any], tiny_model: BuiltModel
) -> None:
    predictor, loader, _ = make_predictor(tiny_model, "tiny")

    assert predictor.ready is False
    assert predictor.server_metadata() == {
        "name": "onnxkit",
        "version": __version__,
        "extensions": ["model_repository", "model_repository_metadata"],
    }
    assert predictor.server_ready() == {"ready": True}
    assert predictor.ready is True
    assert predictor.model_ready("tiny") == {"name": "tiny", "version": "1", "ready": True}
    assert loader.calls == 1


# --- routing -----------------------------------------------------------------------------------


def test_unknown_model_name_is_404_without_loading(
    make_predictor: Callable[..., Any], tiny_model: BuiltModel
) -> None:
    predictor, loader, _ = make_predictor(tiny_model, "tiny")

    with pytest.raises(ModelNotFoundError) as caught:
        infer_json(predictor, "digits", None, x_request([[1.0, 2.0, 3.0, 4.0]]))

    assert caught.value.status == 404
    assert caught.value.code == "model_not_found"
    assert "model 'digits' is not served here; this endpoint serves 'tiny'" in caught.value.message
    assert loader.calls == 0
    with pytest.raises(ModelNotFoundError):
        predictor.model_metadata("digits")


@pytest.mark.parametrize("call", ["infer", "model_metadata", "model_ready"])
def test_unknown_version_is_404(
    make_predictor: Callable[..., Any], tiny_model: BuiltModel, call: str
) -> None:
    predictor, _, _ = make_predictor(tiny_model, "tiny")
    args: tuple[Any, ...] = ("tiny", "2")
    if call == "infer":
        args += (x_request([[1.0, 2.0, 3.0, 4.0]]),)

    with pytest.raises(ModelNotFoundError) as caught:
        getattr(predictor, call)(*args)

    assert caught.value.status == 404
    assert caught.value.code == "model_not_found"
    assert "version '2' is not served here; the served version is '1'" in caught.value.message


# --- request refusals before any model work ------------------------------------------------------


def test_body_over_the_limit_is_413(
    make_predictor: Callable[..., Any], tiny_model: BuiltModel
) -> None:
    limits = ApiSettings(max_request_bytes=50, max_batch_size=4)
    predictor, loader, _ = make_predictor(tiny_model, "tiny", limits=limits)

    with pytest.raises(PayloadTooLargeError) as caught:
        infer_json(predictor, "tiny", None, x_request([[1.0, 2.0, 3.0, 4.0]]))

    assert caught.value.status == 413
    assert caught.value.code == "payload_too_large"
    assert loader.calls == 0


def test_batch_over_the_limit_is_413(
    make_predictor: Callable[..., Any], tiny_model: BuiltModel
) -> None:
    predictor, _, observer = make_predictor(tiny_model, "tiny")

    with pytest.raises(PayloadTooLargeError) as caught:
        infer_json(predictor, "tiny", None, x_request([[1.0, 2.0, 3.0, 4.0]] * 5))

    assert "batch of 5 is over the limit of 4" in caught.value.message
    assert observer.inferred == []


def test_input_that_does_not_match_the_signature_is_400(
    make_predictor: Callable[..., Any], tiny_model: BuiltModel
) -> None:
    predictor, _, _ = make_predictor(tiny_model, "tiny")

    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}

    with pytest.raises(InvalidInputError) as caught:
        infer_json(predictor, "tiny", None, json.dumps(body))

    assert caught.value.status == 400
    assert "shape [1, 3] does not match the model's ['N', 4]" in caught.value.message


# --- loading and retrying ----------------------------------------------------------------------


def test_failed_load_is_reported_then_retried_after_its_backoff(
    make_predictor: Callable[..., Any], tiny_model: BuiltModel, clock: FakeClock
) -> None:
    # GIVEN a loader that fails once with an integrity error, then works
    failure = IntegrityError("tiny/1/model.onnx does not match its manifest")
    predictor, loader, observer = make_predictor(tiny_model, "tiny", failure)
    body = x_request([[1.0, 1.0, 1.0, 1.0]])

    # WHEN the first request arrives
    with pytest.raises(OnnxkitError) as caught:
        infer_json(predictor, "tiny", None, body)

    # THEN it gets the loader's own error, and the predictor remembers it
    assert caught.value is failure
    assert caught.value.code == "artifact_integrity_error"
    assert predictor.ready is False
    assert predictor.last_error is failure

    # AND a request within the backoff gets the same error without a second load
    with pytest.raises(OnnxkitError) as again:
        infer_json(predictor, "tiny", None, body)
    assert again.value.code == "artifact_integrity_error"
    assert again.value.headers["Retry-After"] == "1"
    assert loader.calls == 1

    # AND the next request after it loads again (no restart) and succeeds
    clock.advance(1.0)
    response = infer_json(predictor, "tiny", None, body)
    np.testing.assert_allclose(response["outputs"][0]["data"], [3.0, 1.75], rtol=1e-6)
    assert predictor.ready is True
    assert predictor.last_error is None
    assert loader.calls == 2

    # AND later requests reuse the loaded model
    infer_json(predictor, "tiny", None, body)
    assert loader.calls == 2
    assert observer.loaded == [("tiny", "1")]


def test_try_load_keeps_the_failure_without_raising(
    make_predictor: Callable[..., Any], tiny_model: BuiltModel, clock: FakeClock
) -> None:
    failure = IntegrityError("corrupt")
    predictor, loader, _ = make_predictor(tiny_model, "tiny", failure)

    assert predictor.try_load() is False
    assert predictor.last_error is failure
    clock.advance(1.0)
    assert predictor.try_load() is True
    assert predictor.try_load() is True
    assert loader.calls == 2


def test_unexpected_loader_crash_is_503_and_hides_its_text(
    make_predictor: Callable[..., Any], tiny_model: BuiltModel, clock: FakeClock
) -> None:
    predictor, _, _ = make_predictor(tiny_model, "tiny", RuntimeError("secret /opt/path"))

    with pytest.raises(ModelNotReadyError) as caught:
        predictor.server_ready()

    assert caught.value.status == 503
    assert caught.value.code == "model_not_ready"
    assert "secret" not in caught.value.message
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert predictor.last_error is caught.value
    clock.advance(1.0)
    assert predictor.server_ready() == {"ready": True}


def test_failed_loads_back_off_doubling_until_one_succeeds(
    make_predictor: Callable[..., Any], tiny_model: BuiltModel, clock: FakeClock
) -> None:
    # GIVEN a loader that fails three times (a 90 MB labels file, a store outage...)
    failures = [IntegrityError(f"failure {n}") for n in range(3)]
    predictor, loader, _ = make_predictor(tiny_model, "tiny", *failures)
    body = x_request([[1.0, 1.0, 1.0, 1.0]])

    # WHEN requests keep arriving every 0.25 s for 8 s
    codes = []
    for _ in range(32):
        try:
            infer_json(predictor, "tiny", None, body)
            codes.append("ok")
        except OnnxkitError as exc:
            codes.append(exc.code)
        clock.advance(0.25)

    # THEN the loader ran at 0 s, 1 s, 3 s (after 1 s, then 2 s) and 7 s (after 4 s): four
    # attempts for 32 requests, the last one serving
    assert loader.calls == 4
    assert codes.index("ok") == 28  # 7 s / 0.25 s
    assert codes[:28] == ["artifact_integrity_error"] * 28
    assert set(codes[28:]) == {"ok"}


def test_configured_model_missing_from_the_store_is_503_not_404(
    make_predictor: Callable[..., Any], tiny_model: BuiltModel
) -> None:
    # The caller asked for the served model; the store lacking it is our fault.
    missing = ModelNotFoundError("model 'tiny' has no alias 'prod' in file:///store")
    predictor, _, _ = make_predictor(tiny_model, "tiny", missing)

    with pytest.raises(ModelNotReadyError) as caught:
        infer_json(predictor, "tiny", None, x_request([[1.0, 2.0, 3.0, 4.0]]))

    assert caught.value.status == 503
    assert "has no alias 'prod'" in caught.value.message
    assert caught.value.__cause__ is missing


# --- the endpoint's policy: loads happen in the background ----------------------------------


def test_in_the_background_a_request_never_loads_and_says_why_it_cannot_serve(
    make_predictor: Callable[..., Any], tiny_model: BuiltModel, clock: FakeClock
) -> None:
    # GIVEN a predictor whose loads happen in the background, the first one failing
    failure = IntegrityError(
        "model.onnx does not match its manifest", code="artifact_integrity_error"
    )
    predictor, loader, _ = make_predictor(tiny_model, "tiny", failure, background=True)

    # WHEN requests arrive before any load: 503 "still loading", and nothing is loaded for them
    with pytest.raises(ModelNotReadyError) as loading:
        infer_json(predictor, "tiny", None, x_request([[1.0, 2.0, 3.0, 4.0]]))
    assert loader.calls == 0
    assert loading.value.headers == {"Retry-After": "1"}
    assert "still loading" in loading.value.message

    # AND after the background load failed: 503 naming the cause
    assert predictor.try_load() is False
    with pytest.raises(ModelNotReadyError) as failed:
        predictor.check_ready()
    assert (
        "model.onnx does not match its manifest (artifact_integrity_error)" in failed.value.message
    )
    assert failed.value.headers == {"Retry-After": "5"}
    with pytest.raises(ModelNotReadyError):
        predictor.server_ready()
    assert loader.calls == 1

    # THEN once the background load succeeds, requests are served
    clock.advance(1.0)
    assert predictor.try_load() is True
    predictor.check_ready()
    response = infer_json(predictor, "tiny", None, x_request([[1.0, 2.0, 3.0, 4.0]]))
    assert response["outputs"][0]["shape"] == [1, 2]
    assert predictor.server_ready() == {"ready": True}
    assert loader.calls == 2


def test_the_predictor_exposes_its_limits_and_backend(
    make_predictor: Callable[..., Any], tiny_model: BuiltModel
) -> None:
    predictor, _, _ = make_predictor(tiny_model, "tiny")

    assert predictor.limits == LIMITS
    assert predictor.current_backend is None
    assert predictor.refresh_interval == 0.0
    backend = predictor.load()
    assert predictor.current_backend is backend


@pytest.mark.parametrize("inputs", ["5", "true", '"x"', "{}", "null"])
def test_inputs_that_are_not_a_list_are_400_not_a_crash(
    make_predictor: Callable[..., Any], tiny_model: BuiltModel, inputs: str
) -> None:
    # Found by schemathesis: {"inputs": 5} was a 500 (the processing check iterated it).
    predictor, _, _ = make_predictor(tiny_model, "tiny")

    with pytest.raises(InvalidInputError, match="'inputs' must be a non-empty list"):
        predictor.infer("tiny", None, f'{{"inputs": {inputs}}}')
