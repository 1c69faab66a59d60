"""The pre-traffic hook (functions/pretraffic/app.py) against the real predict handler.

The hook's Lambda client is a fake whose ``invoke`` hands the event to the real handler
in-process (S3 from moto, digits published), as Lambda would run the new version; its
CodeDeploy client is a real boto3 client under botocore's Stubber, which checks the report
against the API's own model and the values CodeDeploy expects.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location(
    "pretraffic_app", REPO / "functions" / "pretraffic" / "app.py"
)
assert spec is not None
assert spec.loader is not None
hook = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hook)

TARGET = "arn:aws:lambda:us-east-1:123456789012:function:onnxkit-PredictFunction:7"
EVENT = {"DeploymentId": "d-ABCDEF123", "LifecycleEventHookExecutionId": "hook-execution-1"}


class FakeLambda:
    """``invoke`` runs a handler in-process and answers as boto3's Lambda client does."""

    def __init__(self, handler: Callable[[dict], dict], function_error: str | None = None):
        self.handler = handler
        self.function_error = function_error
        self.events: list[dict] = []

    def invoke(self, *, FunctionName: str, InvocationType: str, Payload: str) -> dict:
        assert FunctionName == TARGET
        assert InvocationType == "RequestResponse"
        event = json.loads(Payload)
        self.events.append(event)
        if self.function_error:
            body = {"errorMessage": "Task timed out", "errorType": "Sandbox.Timedout"}
            return {"StatusCode": 200, "FunctionError": self.function_error, "Payload": _io(body)}
        return {"StatusCode": 200, "ExecutedVersion": "7", "Payload": _io(self.handler(event))}


def _io(body: Any) -> io.BytesIO:
    return io.BytesIO(json.dumps(body).encode())


def _codedeploy(expected_status: str) -> tuple[Any, Stubber]:
    client = boto3.client("codedeploy", region_name="us-east-1")
    stubber = Stubber(client)
    stubber.add_response(
        "put_lifecycle_event_hook_execution_status",
        {"lifecycleEventHookExecutionId": EVENT["LifecycleEventHookExecutionId"]},
        {
            "deploymentId": EVENT["DeploymentId"],
            "lifecycleEventHookExecutionId": EVENT["LifecycleEventHookExecutionId"],
            "status": expected_status,
        },
    )
    stubber.activate()
    return client, stubber


def _run(fake: FakeLambda, expected_status: str) -> dict[str, str]:
    codedeploy, stubber = _codedeploy(expected_status)
    result = hook.run_hook(
        EVENT, lambda_client=fake, codedeploy_client=codedeploy, target=TARGET, model="digits"
    )
    stubber.assert_no_pending_responses()  # reported exactly once, with these values
    return result


def test_a_working_version_passes_with_a_request_shaped_by_its_signature(
    published: Any, make_handler: Callable[..., Any]
) -> None:
    # GIVEN the real handler serving digits (input FP32 [-1, 64]; outputs label, probabilities)
    fake = FakeLambda(make_handler())

    # WHEN the hook checks it
    result = _run(fake, "Succeeded")

    # THEN it reported Succeeded after a metadata GET and an inference of one row of zeros
    assert result["status"] == "Succeeded", result
    metadata_event, infer_event = fake.events
    assert (metadata_event["httpMethod"], metadata_event["path"]) == ("GET", "/v2/models/digits")
    assert (infer_event["httpMethod"], infer_event["path"]) == ("POST", "/v2/models/digits/infer")
    assert infer_event["pathParameters"] == {"proxy": "models/digits/infer"}
    assert json.loads(infer_event["body"])["inputs"] == [
        {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}
    ]


def test_a_version_answering_500_at_inference_fails(
    published: Any, make_handler: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a version whose model loads (metadata answers) but whose inference breaks
    from onnxkit.backends.onnxruntime import OnnxruntimeBackend

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the new image")

    monkeypatch.setattr(OnnxruntimeBackend, "run", broken)
    handler = make_handler()
    fake = FakeLambda(handler)

    # WHEN the hook checks it, THEN it reports Failed, naming the 500
    result = _run(fake, "Failed")
    assert result["status"] == "Failed"
    assert "inference answered 500" in result["reason"]
    assert len(fake.events) == 2


def test_a_version_without_its_model_fails_at_metadata(
    s3: Any, make_handler: Callable[..., Any]
) -> None:
    # GIVEN nothing published: the new version answers 503 model_not_ready
    fake = FakeLambda(make_handler())

    result = _run(fake, "Failed")

    assert "answered 503" in result["reason"]
    assert len(fake.events) == 1, "no inference without metadata"


def test_a_crashing_version_fails() -> None:
    fake = FakeLambda(lambda event: {}, function_error="Unhandled")

    result = _run(fake, "Failed")

    assert "the function failed (Unhandled)" in result["reason"]


def test_an_error_in_the_check_itself_is_still_reported_as_failed() -> None:
    class Unreachable:
        def invoke(self, **kwargs: Any) -> dict:
            raise ConnectionError("endpoint unreachable")

    result = _run(Unreachable(), "Failed")  # type: ignore[arg-type]

    assert result["reason"] == "the check itself failed: ConnectionError"


# --------------------------------------------------------------------------- the checks
METADATA = {
    "inputs": [{"name": "x", "datatype": "INT64", "shape": [-1, 3, -1]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
}


def test_symbolic_dims_become_one() -> None:
    request = hook.zeros_request(
        {"inputs": [*METADATA["inputs"], {"name": "m", "datatype": "BOOL", "shape": [2]}]}
    )

    assert request["inputs"] == [
        {"name": "x", "shape": [1, 3, 1], "datatype": "INT64", "data": [0, 0, 0]},
        {"name": "m", "shape": [2], "datatype": "BOOL", "data": [False, False]},
    ]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"outputs": []}, "no outputs"),
        ({"outputs": [{"name": "z", "shape": [1, 2], "data": [0.1, 0.2]}]}, "missing"),
        ({"outputs": [{"name": "y", "shape": [1, 3], "data": [0.1, 0.2, 0.3]}]}, "shape"),
        ({"outputs": [{"name": "y", "shape": [1, 2], "data": [0.1]}]}, "1 values"),
        ({"outputs": [{"name": "y", "shape": [1, 2], "data": [0.1, math.nan]}]}, "nan"),
        ({"outputs": [{"name": "y", "shape": [1, 2], "data": [[0.1, "x"]]}]}, "'x'"),
    ],
)
def test_answers_that_fail_the_check(answer: dict, reason: str) -> None:
    with pytest.raises(hook.CheckFailedError, match=reason):
        hook.check_answer(METADATA, answer)


def test_an_answer_of_the_declared_shape_passes() -> None:
    answer = {"outputs": [{"name": "y", "shape": [4, 2], "data": [[0.0, 1.0]] * 4}]}

    hook.check_answer(METADATA, answer)  # raises on failure
