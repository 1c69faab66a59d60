"""The real Lambda handler in-process, S3 from moto's in-process mock."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BUCKET = "onnxkit-test"
STORE = f"s3://{BUCKET}/onnxkit"


@dataclass
class LambdaContext:
    """The attributes Powertools reads from a Lambda context."""

    function_name: str = "PredictFunction"
    memory_limit_in_mb: int = 2048
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:PredictFunction"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"
    function_version: str = "$LATEST"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_METRICS_NAMESPACE": "OnnxkitTest",
    "POWERTOOLS_SERVICE_NAME": "onnxkit",
}
"""The environment moto's in-process AWS runs in: fake credentials, no tracing."""


def mock_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set :data:`AWS_TEST_ENV` and drop any endpoint override (moto's mock takes the calls)."""
    for key, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto's in-process AWS, set up before any boto3 client exists."""
    from moto import mock_aws

    mock_aws_env(monkeypatch)
    with mock_aws():
        yield


@pytest.fixture
def s3(aws: None) -> Any:
    """An S3 client on moto with the model bucket created."""
    import boto3

    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def published(s3: Any, digits_dir: Path, tmp_path: Path) -> Any:
    """digits int8 published as version 1 with alias prod; returns the manifest."""
    from onnxkit_tools.examples.digits import digits_processing
    from onnxkit_tools.registry import Registry, publish_model

    store = Registry.from_uri(STORE, cache_dir=tmp_path / "publisher-cache", s3_client=s3)
    return publish_model(
        store,
        digits_dir / "int8" / "model.onnx",
        name="digits",
        version="1",
        alias="prod",
        report_path=digits_dir / "report.json",
        processing=digits_processing(digits_dir),
    )


def function_settings(cache_dir: Path, **environ: str) -> Any:
    """The function's settings as app.py builds them: from its environment variables."""
    from onnxkit.settings import Settings

    return Settings.from_env(
        {
            "ONNXKIT_MODEL_STORE": STORE,
            "ONNXKIT_MODEL_NAME": "digits",
            "ONNXKIT_CACHE_DIR": str(cache_dir),
            **environ,
        }
    )


@pytest.fixture
def make_handler(s3: Any, tmp_path: Path) -> Callable[..., Callable[[dict], dict]]:
    """Build the real handler (as app.py does) against moto; keywords are environment variables."""
    from onnxkit.adapters.lambda_api import build_handler
    from onnxkit.aws import AwsClients

    def make(**environ: str) -> Callable[[dict], dict]:
        settings = function_settings(tmp_path / "lambda-tmp", **environ)
        handler = build_handler(settings, clients=AwsClients(s3=s3))

        def call(event: dict) -> dict:
            return handler(event, LambdaContext())

        call.predictor = handler.predictor  # type: ignore[attr-defined]
        return call

    return make


def body_of(response: dict) -> Any:
    """The JSON body of a proxy response."""
    return json.loads(response["body"])
