"""Both edges decide alike: the same request gets the same status, error code and Allow header
from the function (Powertools, in-process) and from the endpoint (uvicorn + Starlette)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import requests
from aws_lambda_powertools import Logger

from onnxkit.adapters.lambda_api import create_app
from onnxkit.predictor import Predictor
from onnxkit.routes import FUNCTION, RouteTable
from tests.unit.adapters.endpoint.server_in_thread import (
    LIMITS,
    FakeBackend,
    fake_predictor,
    infer_body,
    serving,
)

JSON = "application/json"
BODY = infer_body(np.ones((1, 3))).decode()
# (method, path, headers, body, expected (status, error code, Allow)), the expectations worked
# out by hand from the v2 protocol and RFC 9110: both edges must give exactly these.
REQUESTS = [
    ("GET", "/v2", {}, None, (200, None, None)),
    ("GET", "/v2/health/live/", {}, None, (200, None, None)),
    ("GET", "/v2/models/fake", {}, None, (200, None, None)),
    ("GET", "/v2/models/other", {}, None, (404, "model_not_found", None)),
    ("GET", "/v2/models/fake/versions/1/ready", {}, None, (200, None, None)),
    ("GET", "/v2/models/fake/versions/9", {}, None, (404, "model_not_found", None)),
    ("POST", "/v2/models/fake/infer", {"Content-Type": JSON}, BODY, (200, None, None)),
    (
        "POST", "/v2/models/fake/infer", {"Content-Type": "text/csv"}, "1,2,3",
        (415, "unsupported_media_type", None),
    ),
    (
        "POST", "/v2/models/fake/infer", {"Content-Type": JSON, "Accept": "text/csv"}, BODY,
        (406, "not_acceptable", None),
    ),
    (
        "POST", "/v2/models/fake/infer", {"Content-Type": JSON}, "{nope",
        (400, "invalid_input", None),
    ),
    ("POST", "/v2/models/nope/infer", {"Content-Type": JSON}, BODY, (404, "model_not_found", None)),
    ("GET", "/v2/models/fake/infer", {}, None, (405, "method_not_allowed", "POST")),
    ("DELETE", "/v2/models/fake", {}, None, (405, "method_not_allowed", "GET")),
    ("PUT", "/v2/health/ready", {}, None, (405, "method_not_allowed", "GET")),
    ("GET", "/v2/nothing/here", {}, None, (404, "route_not_found", None)),
    ("GET", "/v3", {}, None, (404, "route_not_found", None)),
]  # fmt: skip


def proxy_event(method: str, path: str, headers: dict[str, str], body: str | None) -> dict:
    """A REST proxy event, as API Gateway sends it for a request."""
    return {
        "resource": "/v2/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": path.removeprefix("/v2/")},
        "requestContext": {"stage": "Prod", "requestId": "r", "httpMethod": method, "path": path},
        "body": body,
        "isBase64Encoded": False,
    }


def outcome(status: int, body: Any, allow: str | None) -> tuple[int, str | None, str | None]:
    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
    return status, code, allow


@pytest.fixture(scope="module")
def endpoint() -> Any:
    with serving(fake_predictor(FakeBackend())) as served:
        yield served


@pytest.mark.parametrize(("method", "path", "headers", "body", "expected"), REQUESTS)
def test_the_function_and_the_endpoint_answer_alike(
    endpoint: Any,
    method: str,
    path: str,
    headers: dict[str, str],
    body: str | None,
    expected: tuple[int, str | None, str | None],
) -> None:
    # GIVEN the function's resolver over the same fake model
    predictor = fake_predictor(FakeBackend())
    predictor.try_load()
    app = create_app(predictor, Logger(service="test"), RouteTable(FUNCTION))

    # WHEN the request reaches both edges
    lambda_response = app.resolve(proxy_event(method, path, headers, body), {})
    reply = requests.request(method, endpoint.url + path, headers=headers, data=body, timeout=10)

    # THEN status, error code and Allow header are the expected ones, on both
    function = outcome(
        lambda_response["statusCode"],
        json.loads(lambda_response["body"]),
        (lambda_response.get("multiValueHeaders") or {}).get("Allow", [None])[0],
    )
    container = outcome(reply.status_code, reply.json(), reply.headers.get("Allow"))
    assert function == expected
    assert container == expected


def test_the_function_refuses_a_media_type_before_decoding_the_body_or_loading_the_model() -> None:
    # GIVEN the function's resolver over a model that has not been loaded yet
    loads: list[int] = []

    def loader() -> FakeBackend:
        loads.append(1)
        return FakeBackend()

    predictor = Predictor("fake", loader, LIMITS)  # as the function: requests load the model
    app = create_app(predictor, Logger(service="test"), RouteTable(FUNCTION))
    event = proxy_event("POST", "/v2/models/fake/infer", {"Content-Type": "text/csv"}, "%%%")
    event["isBase64Encoded"] = True  # and the body is not even valid base64

    # WHEN it is sent
    response = app.resolve(event, {})

    # THEN the media type is refused (as the endpoint does: headers before the body), unloaded
    assert response["statusCode"] == 415
    assert json.loads(response["body"])["error"]["code"] == "unsupported_media_type"
    assert loads == []
