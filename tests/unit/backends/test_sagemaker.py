"""Forwarding to a SageMaker endpoint: request/response codec, error mapping, routing rules."""

from __future__ import annotations

import io
import json
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from onnxkit.backends.sagemaker import SageMakerBackend, decode_outputs
from onnxkit.errors import OnnxkitError
from onnxkit.manifest import FileEntry, Manifest, TensorSpec

MANIFEST = Manifest(
    name="minilm",
    version="3",
    files=(FileEntry("model.onnx", "0" * 64, 90_000_000),),
    inputs=(TensorSpec("ids", "INT64", (-1, 4)),),
    outputs=(TensorSpec("emb", "FP32", (-1, 2)), TensorSpec("norm", "FP32", (-1,))),
    opset=17,
    backend="sagemaker",
)
IDS = np.array([[1, 2, 3, 4]], dtype=np.int64)


@pytest.fixture
def client() -> Any:
    return boto3.client(
        "sagemaker-runtime",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def body(payload: dict | bytes) -> StreamingBody:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return StreamingBody(io.BytesIO(raw), len(raw))


def reply(emb: list, norm: list) -> dict:
    return {
        "outputs": [
            {"name": "emb", "datatype": "FP32", "shape": [1, 2], "data": emb},
            {"name": "norm", "datatype": "FP32", "shape": [1], "data": norm},
        ]
    }


def test_request_is_v2_json_and_response_becomes_arrays(client) -> None:
    backend = SageMakerBackend(MANIFEST, client, "onnxkit-gpu")
    with Stubber(client) as stub:
        stub.add_response(
            "invoke_endpoint",
            {"Body": body(reply([0.6, 0.8], [1.0])), "ContentType": "application/json"},
            {"EndpointName": "onnxkit-gpu", "Body": ANY, "ContentType": "application/json",
             "Accept": "application/json", "CustomAttributes": f"model={MANIFEST.name}"},
        )  # fmt: skip
        out = backend.run({"ids": IDS}, ["emb"])
        stub.assert_no_pending_responses()
    assert list(out) == ["emb"]
    assert out["emb"].dtype == np.float32
    np.testing.assert_allclose(out["emb"], [[0.6, 0.8]], rtol=1e-6)


class Recording:
    """A client that keeps what it was asked to send."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def invoke_endpoint(self, **kwargs: Any) -> dict:
        self.calls.append(kwargs)
        return {"Body": body(reply([1, 0], [1]))}


def test_forwarded_body_carries_the_validated_tensor() -> None:
    client = Recording()
    SageMakerBackend(MANIFEST, client, "e").run({"ids": IDS})
    assert client.calls[0]["EndpointName"] == "e"
    seen = json.loads(client.calls[0]["Body"])
    assert seen["inputs"] == [
        {"name": "ids", "datatype": "INT64", "shape": [1, 4], "data": [1, 2, 3, 4]}
    ]
    assert seen["outputs"] == [{"name": "emb"}, {"name": "norm"}]


@pytest.mark.parametrize(
    ("code", "message", "extra", "status", "ours"),
    [
        ("ThrottlingException", "Rate exceeded", {}, 429, "backend_throttled"),
        ("ModelError", "boom", {"OriginalStatusCode": 500, "OriginalMessage": "oops"}, 502,
         "backend_model_error"),
        ("ModelNotReadyException", "loading", {}, 503, "backend_unavailable"),
        ("ValidationError", "Endpoint e of account 123456789012 not found.", {}, 503,
         "backend_unavailable"),
        ("ServiceUnavailable", "try later", {}, 503, "backend_unavailable"),
        ("ValidationError", "Something else entirely", {}, 502, "backend_model_error"),
    ],
)  # fmt: skip
def test_endpoint_errors_map_to_actionable_statuses(
    client, code: str, message: str, extra: dict, status: int, ours: str
) -> None:
    with Stubber(client) as stub:
        stub.add_client_error(
            "invoke_endpoint",
            service_error_code=code,
            service_message=message,
            http_status_code=429 if code == "ThrottlingException" else 400,
            response_meta={},
            modeled_fields=extra,
        )
        with pytest.raises(OnnxkitError) as raised:
            SageMakerBackend(MANIFEST, client, "e").run({"ids": IDS})
    assert raised.value.status == status
    assert raised.value.code == ours
    if status == 429:
        assert raised.value.headers["Retry-After"] == "1"
    assert "oops" not in raised.value.message  # the container's text stays in its logs


def test_container_4xx_is_passed_through(client) -> None:
    ours = json.dumps({"error": {"code": "invalid_input", "message": "shape [1, 5] is wrong"}})
    with Stubber(client) as stub:
        stub.add_client_error(
            "invoke_endpoint",
            service_error_code="ModelError",
            service_message="Received client error (400)",
            http_status_code=424,
            modeled_fields={"OriginalStatusCode": 400, "OriginalMessage": ours},
        )
        with pytest.raises(OnnxkitError) as raised:
            SageMakerBackend(MANIFEST, client, "e").run({"ids": IDS})
    assert raised.value.status == 400
    assert raised.value.code == "invalid_input"
    assert raised.value.message == "shape [1, 5] is wrong"


class Raising:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def invoke_endpoint(self, **_: Any) -> dict:
        raise self.error


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ReadTimeoutError(endpoint_url="http://e"), 504),
        (ConnectTimeoutError(endpoint_url="http://e"), 503),
    ],
)
def test_timeouts(error: Exception, status: int) -> None:
    with pytest.raises(OnnxkitError) as raised:
        SageMakerBackend(MANIFEST, Raising(error), "e").run({"ids": IDS})
    assert raised.value.status == status


def test_malformed_endpoint_response_is_502(client) -> None:
    with Stubber(client) as stub:
        stub.add_response("invoke_endpoint", {"Body": body(b"<html>oops</html>")})
        with pytest.raises(OnnxkitError) as raised:
            SageMakerBackend(MANIFEST, client, "e").run({"ids": IDS})
    assert raised.value.status == 502


def test_unknown_output_is_refused_before_any_call(client) -> None:
    with Stubber(client), pytest.raises(OnnxkitError) as raised:  # no response queued
        SageMakerBackend(MANIFEST, client, "e").run({"ids": IDS}, ["logits"])
    assert raised.value.status == 400


def test_bytes_outputs_in_json_become_utf8_bytes() -> None:
    raw = json.dumps(
        {
            "outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [2, 1], "data": ["cat", "é"]},
                {"name": "nested", "datatype": "BYTES", "shape": [1, 2], "data": [["a", "b"]]},
            ]
        }
    ).encode()

    out = decode_outputs(raw, ["label", "nested"])

    assert out["label"].dtype == np.dtype(object)
    assert out["label"].tolist() == [[b"cat"], ["é".encode()]]
    assert out["nested"].tolist() == [[b"a", b"b"]]


@pytest.mark.parametrize("data", [[1, 2], ["a", None], "ab"])
def test_bytes_outputs_that_are_not_strings_are_a_bad_endpoint_response(data: object) -> None:
    raw = json.dumps(
        {"outputs": [{"name": "label", "datatype": "BYTES", "shape": [2], "data": data}]}
    ).encode()

    with pytest.raises(OnnxkitError) as raised:
        decode_outputs(raw, ["label"])

    assert raised.value.status == 502


def test_a_bytes_input_that_is_not_utf8_cannot_be_forwarded_as_json() -> None:
    manifest = Manifest(
        name="m",
        version="1",
        files=(FileEntry("model.onnx", "0" * 64, 1),),
        inputs=(TensorSpec("text", "BYTES", (-1,)),),
        outputs=(TensorSpec("emb", "FP32", (-1, 2)), TensorSpec("norm", "FP32", (-1,))),
        opset=17,
        backend="sagemaker",
    )
    client = Recording()

    with pytest.raises(OnnxkitError) as raised:
        SageMakerBackend(manifest, client, "e").run({"text": np.array([b"\xff"], dtype=object)})

    assert raised.value.status == 400
    assert "not UTF-8 text" in raised.value.message
    assert client.calls == []


def test_a_bytes_input_is_forwarded_as_strings() -> None:
    manifest = Manifest(
        name="m",
        version="1",
        files=(FileEntry("model.onnx", "0" * 64, 1),),
        inputs=(TensorSpec("text", "BYTES", (-1,)),),
        outputs=(TensorSpec("emb", "FP32", (-1, 2)), TensorSpec("norm", "FP32", (-1,))),
        opset=17,
        backend="sagemaker",
    )
    client = Recording()

    SageMakerBackend(manifest, client, "e").run({"text": np.array([b"hi", b""], dtype=object)})

    seen = json.loads(client.calls[0]["Body"])
    assert seen["inputs"] == [
        {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["hi", ""]}
    ]


def test_an_inference_component_is_named_in_the_invocation(client) -> None:
    backend = SageMakerBackend(MANIFEST, client, "gpu", inference_component="minilm-ic")
    with Stubber(client) as stub:
        stub.add_response(
            "invoke_endpoint",
            {"Body": body(reply([0.6, 0.8], [1.0]))},
            {"EndpointName": "gpu", "Body": ANY, "ContentType": "application/json",
             "Accept": "application/json", "InferenceComponentName": "minilm-ic",
             "CustomAttributes": f"model={MANIFEST.name}"},
        )  # fmt: skip
        backend.run({"ids": IDS}, ["emb"])
        stub.assert_no_pending_responses()


def test_a_component_scaled_to_zero_is_503_scaling_up_with_retry_after(client) -> None:
    # What SageMaker answers while an inference component has no copy (scaled to zero):
    # ValidationError, HTTP 400; that failure is also what triggers the scale-out alarm.
    backend = SageMakerBackend(MANIFEST, client, "gpu", inference_component="minilm-ic")
    with Stubber(client) as stub:
        stub.add_client_error(
            "invoke_endpoint",
            service_error_code="ValidationError",
            service_message="Inference Component has no capacity to process this request. "
            "ApplicationAutoScaling may be in-progress (if configured) or try to increase the "
            "capacity by invoking UpdateInferenceComponentRuntimeConfig API.",
            http_status_code=400,
        )
        with pytest.raises(OnnxkitError) as raised:
            backend.run({"ids": IDS})
    assert (raised.value.status, raised.value.code) == (503, "scaling_up")
    assert raised.value.headers["Retry-After"] == "60"
    assert "scaling up from zero" in raised.value.message
    assert "minutes" in raised.value.message
