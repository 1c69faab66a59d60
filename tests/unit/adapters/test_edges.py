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
from onnxkit.routes import FUNCTION, RouteTable
from tests.unit.adapters.endpoint.server_in_thread import (
    FakeBackend,
    fake_predictor,
    infer_body,
    serving,
)

JSON = "application/json"
BODY = infer_body(np.ones((1, 3))).decode()
# (method, path, headers, body): requests both edges serve (the v2 routes).
REQUESTS = [
    ("GET", "/v2", {}, None),
    ("GET", "/v2/health/live/", {}, None),
    ("GET", "/v2/models/fake", {}, None),
    ("GET", "/v2/models/other", {}, None),
    ("GET", "/v2/models/fake/versions/1/ready", {}, None),
    ("GET", "/v2/models/fake/versions/9", {}, None),
    ("POST", "/v2/models/fake/infer", {"Content-Type": JSON}, BODY),
    ("POST", "/v2/models/fake/infer", {"Content-Type": "text/csv"}, "1,2,3"),
    ("POST", "/v2/models/fake/infer", {"Content-Type": JSON, "Accept": "text/csv"}, BODY),
    ("POST", "/v2/models/fake/infer", {"Content-Type": JSON}, "{nope"),
    ("POST", "/v2/models/nope/infer", {"Content-Type": JSON}, BODY),
    ("GET", "/v2/models/fake/infer", {}, None),
    ("DELETE", "/v2/models/fake", {}, None),
    ("PUT", "/v2/health/ready", {}, None),
    ("GET", "/v2/nothing/here", {}, None),
    ("GET", "/v3", {}, None),
]


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


@pytest.mark.parametrize(("method", "path", "headers", "body"), REQUESTS)
def test_the_function_and_the_endpoint_answer_alike(
    endpoint: Any, method: str, path: str, headers: dict[str, str], body: str | None
) -> None:
    # GIVEN the function's resolver over the same fake model
    predictor = fake_predictor(FakeBackend())
    predictor.try_load()
    app = create_app(predictor, Logger(service="test"), RouteTable(FUNCTION))

    # WHEN the request reaches both edges
    lambda_response = app.resolve(proxy_event(method, path, headers, body), {})
    reply = requests.request(method, endpoint.url + path, headers=headers, data=body, timeout=10)

    # THEN status, error code and Allow header are the same
    function = outcome(
        lambda_response["statusCode"],
        json.loads(lambda_response["body"]),
        (lambda_response.get("multiValueHeaders") or {}).get("Allow", [None])[0],
    )
    container = outcome(reply.status_code, reply.json(), reply.headers.get("Allow"))
    assert function == container
