"""A model routed to SageMaker: same API, validated locally, forwarded, errors mapped."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError
from botocore.response import StreamingBody

from onnxkit_tools.registry import Registry, publish_model
from tests.functional.conftest import STORE, body_of

INFER = json.loads(Path("events/predict_infer_batch_200.json").read_text())


class OnnxruntimeEndpoint:
    """Stands in for the endpoint: runs the model on what the function forwards."""

    def __init__(self, model: Path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(model))
        self.calls: list[dict[str, Any]] = []
        self.fail_with: dict[str, Any] | None = None

    def invoke_endpoint(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        if self.fail_with is not None:
            raise ClientError(self.fail_with, "InvokeEndpoint")
        request = json.loads(kwargs["Body"])
        feed = {
            t["name"]: np.asarray(t["data"], np.float32).reshape(t["shape"])
            for t in request["inputs"]
        }
        names = [o["name"] for o in request["outputs"]]
        outputs = [
            {"name": n, "datatype": "INT64" if a.dtype == np.int64 else "FP32",
             "shape": list(a.shape), "data": a.ravel().tolist()}
            for n, a in zip(names, self.session.run(names, feed), strict=True)
        ]  # fmt: skip
        raw = json.dumps({"outputs": outputs}).encode()
        return {"Body": StreamingBody(io.BytesIO(raw), len(raw))}


@pytest.fixture
def endpoint(s3, digits_dir: Path, tmp_path: Path) -> OnnxruntimeEndpoint:
    store = Registry.from_uri(STORE, cache_dir=tmp_path / "pub", s3_client=s3)
    model = digits_dir / "int8" / "model.onnx"
    publish_model(store, model, name="digits", version="1", alias="prod", backend="sagemaker")
    return OnnxruntimeEndpoint(model)


@pytest.fixture
def handler(endpoint, s3, tmp_path: Path):
    from onnxkit.adapters.lambda_api import build_handler
    from onnxkit.aws import AwsClients
    from tests.functional.conftest import LambdaContext, function_settings

    settings = function_settings(tmp_path / "lambda-tmp", ONNXKIT_SAGEMAKER_ENDPOINT="onnxkit-gpu")
    inner = build_handler(settings, clients=AwsClients(s3=s3, sagemaker_runtime=endpoint))
    return lambda event: inner(event, LambdaContext())


def test_routed_model_is_served_by_the_endpoint_with_the_same_api(
    handler, endpoint, tmp_path: Path
) -> None:
    response = handler(INFER)
    assert response["statusCode"] == 200, response["body"]
    labels = body_of(response)["outputs"][0]["data"]
    assert labels == [0, 1, 2, 3, 4, 5, 6, 7]
    assert endpoint.calls[0]["EndpointName"] == "onnxkit-gpu"
    # the function read the manifest only: no model file was downloaded to /tmp
    assert not list((tmp_path / "lambda-tmp").rglob("model.onnx"))


def test_bad_input_never_reaches_the_endpoint(handler, endpoint) -> None:
    event = json.loads(Path("events/predict_wrong_shape_400.json").read_text())
    assert handler(event)["statusCode"] == 400
    assert endpoint.calls == []


def test_throttled_endpoint_is_429_with_retry_after(handler, endpoint) -> None:
    endpoint.fail_with = {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}
    response = handler(INFER)
    assert response["statusCode"] == 429
    assert response["multiValueHeaders"]["Retry-After"] == ["1"]
    assert body_of(response)["error"]["code"] == "backend_throttled"

    # and the next request, once the endpoint recovers, is served
    endpoint.fail_with = None
    assert handler(INFER)["statusCode"] == 200


def test_missing_endpoint_is_503(handler, endpoint) -> None:
    endpoint.fail_with = {
        "Error": {
            "Code": "ValidationError",
            "Message": "Endpoint onnxkit-gpu of account 1 not found.",
        }
    }
    response = handler(INFER)
    assert response["statusCode"] == 503
    assert body_of(response)["error"]["code"] == "backend_unavailable"


def test_routed_without_an_endpoint_configured_is_a_clear_503(endpoint, s3, tmp_path) -> None:
    from onnxkit.adapters.lambda_api import build_handler
    from onnxkit.aws import AwsClients
    from tests.functional.conftest import LambdaContext, function_settings

    settings = function_settings(tmp_path / "t")
    response = build_handler(settings, clients=AwsClients(s3=s3))(INFER, LambdaContext())
    assert response["statusCode"] == 503
    # the client learns why; the setting to fix is named in the logs (a 5xx shows no config)
    assert "has none configured" in body_of(response)["error"]["message"]
