"""CodeDeploy pre-traffic hook: invoke the new predict version with real requests, report."""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger()
logger.setLevel(logging.INFO)

TARGET_VARIABLE = "TARGET_VERSION_ARN"
MODEL_VARIABLE = "MODEL_NAME"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
# Left for the report call (and its retries) when the invoke's read timeout is set.
REPORT_RESERVE_S = 10.0
STAGE = "Prod"


class CheckFailedError(Exception):
    """The new version answered, but not as a working function should."""


def proxy_event(method: str, path: str, body: Any = None) -> dict[str, Any]:
    """An API Gateway REST proxy (payload v1) event, as the API would send it to the function.

    Args:
        method: The HTTP method.
        path: The path without the stage, starting with ``/v2``.
        body: A JSON-serialisable request body, or None.
    """
    headers = {"Accept": "application/json", "User-Agent": "onnxkit-pretraffic-hook"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    proxy = path.removeprefix("/v2").lstrip("/")
    resource = "/v2/{proxy+}" if proxy else "/v2"
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {key: [value] for key, value in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": proxy} if proxy else None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": resource,
            "httpMethod": method,
            "path": f"/{STAGE}{path}",
            "stage": STAGE,
            "requestId": str(uuid.uuid4()),
            "identity": {"sourceIp": "127.0.0.1", "userAgent": "onnxkit-pretraffic-hook"},
        },
        "body": None if body is None else json.dumps(body),
        "isBase64Encoded": False,
    }


def invoke(lambda_client: Any, target: str, event: Mapping[str, Any]) -> tuple[int, Any]:
    """Invoke ``target`` synchronously with a proxy event; return (HTTP status, JSON body).

    Raises:
        CheckFailedError: The function crashed, or its answer is not a JSON proxy response.
    """
    reply = lambda_client.invoke(
        FunctionName=target, InvocationType="RequestResponse", Payload=json.dumps(event)
    )
    payload = reply["Payload"].read()
    if reply.get("FunctionError"):
        raise CheckFailedError(f"the function failed ({reply['FunctionError']}): {payload[:500]!r}")
    try:
        response = json.loads(payload)
        return int(response["statusCode"]), json.loads(response["body"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckFailedError(f"not a JSON proxy response: {payload[:500]!r}") from exc


def zeros_request(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A v2 inference request of zeros for every declared input; dynamic dims (-1) become 1."""
    inputs = []
    for spec in metadata["inputs"]:
        shape = [1 if dim < 0 else dim for dim in spec["shape"]]
        zero: bool | int = False if spec["datatype"] == "BOOL" else 0
        inputs.append(
            {
                "name": spec["name"],
                "shape": shape,
                "datatype": spec["datatype"],
                "data": [zero] * math.prod(shape),
            }
        )
    return {"id": "pretraffic-hook", "inputs": inputs}


def _shape_fits(declared: list[int], answered: list[int]) -> bool:
    return len(declared) == len(answered) and all(
        want < 0 or want == got for want, got in zip(declared, answered, strict=True)
    )


def check_answer(metadata: Mapping[str, Any], answer: Any) -> None:
    """Every declared output is there, shaped as declared, with finite numbers.

    Raises:
        CheckFailedError: An output is missing, misshapen, short of data or not finite.
    """
    outputs = answer.get("outputs") if isinstance(answer, dict) else None
    if not outputs:
        raise CheckFailedError(f"no outputs in the answer: {str(answer)[:500]}")
    by_name = {output.get("name"): output for output in outputs}
    for spec in metadata["outputs"]:
        output = by_name.get(spec["name"])
        if output is None:
            raise CheckFailedError(f"output {spec['name']!r} missing from the answer")
        shape, data = output.get("shape"), output.get("data")
        if not isinstance(shape, list) or not _shape_fits(spec["shape"], shape):
            raise CheckFailedError(
                f"output {spec['name']!r} has shape {shape}, the model declares {spec['shape']}"
            )
        flat = _flatten(data)
        if len(flat) != math.prod(shape):
            raise CheckFailedError(
                f"output {spec['name']!r} has {len(flat)} values for shape {shape}"
            )
        for value in flat:
            if isinstance(value, bool) or (
                spec.get("datatype") == "BYTES" and isinstance(value, str)
            ):
                continue  # labels, texts: BYTES outputs are strings in JSON
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise CheckFailedError(f"output {spec['name']!r} holds {value!r}")


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat


def check_version(lambda_client: Any, target: str, model: str) -> str:
    """Ask the new version for the model's metadata, then infer zeros shaped by it.

    Returns:
        What was checked, for the log.

    Raises:
        CheckFailedError: Either answer is not what a working function gives.
    """
    status, metadata = invoke(lambda_client, target, proxy_event("GET", f"/v2/models/{model}"))
    if status != 200 or not isinstance(metadata, dict) or "inputs" not in metadata:
        raise CheckFailedError(f"metadata of {model!r} answered {status}: {str(metadata)[:500]}")
    request = zeros_request(metadata)
    status, answer = invoke(
        lambda_client, target, proxy_event("POST", f"/v2/models/{model}/infer", request)
    )
    if status != 200:
        raise CheckFailedError(f"inference answered {status}: {str(answer)[:500]}")
    check_answer(metadata, answer)
    return f"{model} version {answer.get('model_version')}: {len(metadata['outputs'])} outputs"


def run_hook(
    event: Mapping[str, Any],
    *,
    lambda_client: Any,
    codedeploy_client: Any,
    target: str,
    model: str,
) -> dict[str, str]:
    """Check the new version and report the verdict to CodeDeploy (always, exactly once).

    Any error counts as a failed check: a hook that raised instead of reporting would leave
    the deployment waiting for its one-hour timeout.

    Args:
        event: CodeDeploy's hook event (``DeploymentId``, ``LifecycleEventHookExecutionId``).
        lambda_client: A boto3 Lambda client (tests: a fake that calls the handler).
        codedeploy_client: A boto3 CodeDeploy client (tests: stubbed).
        target: The new version's qualified ARN.
        model: The model name the function serves.

    Returns:
        The reported status and the reason.
    """
    try:
        reason = check_version(lambda_client, target, model)
        status = SUCCEEDED
        logger.info("new version passed: %s", reason)
    except CheckFailedError as exc:
        status, reason = FAILED, str(exc)
        logger.error("new version failed the check: %s", reason)
    except Exception as exc:  # reported as Failed below; the traceback goes to the log
        status, reason = FAILED, f"the check itself failed: {type(exc).__name__}"
        logger.exception("pre-traffic check failed unexpectedly")
    codedeploy_client.put_lifecycle_event_hook_execution_status(
        deploymentId=event["DeploymentId"],
        lifecycleEventHookExecutionId=event["LifecycleEventHookExecutionId"],
        status=status,
    )
    return {"status": status, "reason": reason}


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, str]:
    """The hook's entry point (boto3 from the Lambda runtime)."""
    import boto3
    from botocore.config import Config

    # One attempt, and a read timeout that leaves time to report: a retried invoke would run
    # the check twice, and an invoke outliving this function would report nothing.
    remaining_s = context.get_remaining_time_in_millis() / 1000
    invoke_config = Config(
        retries={"mode": "standard", "max_attempts": 1},
        read_timeout=max(1.0, remaining_s - REPORT_RESERVE_S),
    )
    return run_hook(
        event,
        lambda_client=boto3.client("lambda", config=invoke_config),
        codedeploy_client=boto3.client("codedeploy"),
        target=os.environ[TARGET_VARIABLE],
        model=os.environ[MODEL_VARIABLE],
    )
