"""S3 going away and coming back, over the real wire: 503 store_unavailable, then recovery."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.functional.conftest import LambdaContext

pytestmark = pytest.mark.integration

INFER = json.loads((REPO / "events" / "predict_infer_200.json").read_text())


def test_s3_down_at_cold_start_then_back(digits_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from onnxkit.adapters.lambda_api import build_handler
    from onnxkit.aws import AwsClients
    from onnxkit.settings import Settings
    from onnxkit_tools.local.s3 import LocalS3, ensure_bucket
    from onnxkit_tools.net import free_port
    from onnxkit_tools.registry import Registry, publish_model

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    port = free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    settings = Settings.from_env(
        {
            "ONNXKIT_MODEL_STORE": "s3://outage/onnxkit",
            "ONNXKIT_MODEL_NAME": "digits",
            "ONNXKIT_CACHE_DIR": str(tmp_path / "lambda-tmp"),
            "ONNXKIT_S3_MAX_ATTEMPTS": "2",
            "ONNXKIT_S3_CONNECT_TIMEOUT": "0.5",
            "ONNXKIT_S3_READ_TIMEOUT": "2",
        }
    )
    # the function's own client: retries and timeouts from the settings, through botocore
    clients = AwsClients(settings.aws, settings.forward)
    client = clients.s3()

    # GIVEN S3 is down when the function starts
    handler = build_handler(settings, clients=clients)
    response = handler(INFER, LambdaContext())
    failed_at = time.monotonic()

    # THEN requests get a 503 with a clear code and when to retry, and the function does not
    # crash
    assert response["statusCode"] == 503
    assert json.loads(response["body"])["error"]["code"] == "store_unavailable"
    retry_after = int(response["multiValueHeaders"]["Retry-After"][0])
    assert 1 <= retry_after <= 30

    # WHEN S3 comes back on the same endpoint with the model published
    with LocalS3(port) as s3:
        ensure_bucket(s3.client(), "outage")
        store = Registry.from_uri(settings.model.store, cache_dir=tmp_path / "p", s3_client=client)
        publish_model(store, digits_dir / "int8" / "model.onnx", name="digits", alias="prod")

        # THEN the next request after Retry-After loads the model and predicts, no restart
        time.sleep(max(0.0, failed_at + retry_after - time.monotonic()))
        response = handler(INFER, LambdaContext())
        assert response["statusCode"] == 200, response["body"]
        assert json.loads(response["body"])["outputs"][0]["data"] == [0]
