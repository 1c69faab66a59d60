"""The local API Gateway stand-in: proxy events, API key, stage prefix, errors, real HTTP."""

from __future__ import annotations

import base64
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from onnxkit.predictor import Predictor
from onnxkit.routes import FUNCTION, RouteTable
from onnxkit.settings import ApiSettings
from onnxkit_tools.local import api_gateway as local_api
from onnxkit_tools.local.api_gateway import LocalApi, build_event
from onnxkit_tools.registry import describe_model
from tests.unit.conftest import BuiltModel

Event = dict[str, Any]


class FakeFunction:
    """Records events and answers each with a fixed proxy response."""

    def __init__(self, response: dict[str, Any] | None = None) -> None:
        self.events: list[Event] = []
        self.response = response if response is not None else ok_response({"ok": True})

    def __call__(self, event: Event) -> dict[str, Any]:
        self.events.append(event)
        return self.response


def ok_response(body: Any, status: int = 200) -> dict[str, Any]:
    """A JSON proxy response."""
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


# --- build_event -------------------------------------------------------------------------------


def test_build_event_for_an_infer_call() -> None:
    headers = {"Content-Type": "application/json", "User-Agent": "pytest"}

    event = build_event(
        "POST", "/v2/models/tiny/infer?verbose=1&tag=a&tag=b", headers, b'{"inputs": []}'
    )

    assert event["resource"] == "/v2/{proxy+}"
    assert event["path"] == "/v2/models/tiny/infer"
    assert event["httpMethod"] == "POST"
    assert event["pathParameters"] == {"proxy": "models/tiny/infer"}
    assert event["queryStringParameters"] == {"verbose": "1", "tag": "b"}
    assert event["multiValueQueryStringParameters"] == {"verbose": ["1"], "tag": ["a", "b"]}
    assert event["headers"] == headers
    assert event["multiValueHeaders"] == {k: [v] for k, v in headers.items()}
    assert event["body"] == '{"inputs": []}'
    assert event["isBase64Encoded"] is False
    context = event["requestContext"]
    assert context["stage"] == "Prod"
    assert context["path"] == "/Prod/v2/models/tiny/infer"
    assert context["resourcePath"] == "/v2/{proxy+}"
    assert context["identity"] == {"sourceIp": "127.0.0.1", "userAgent": "pytest"}
    assert re.fullmatch(r"[0-9a-f-]{36}", context["requestId"])


@pytest.mark.parametrize(
    ("path", "resource", "parameters"),
    [
        ("/v2", "/v2", None),
        ("/v2/", "/v2/{proxy+}", {"proxy": ""}),
        ("/v2/health/ready", "/v2/{proxy+}", {"proxy": "health/ready"}),
        ("/metrics", "/{proxy+}", {"proxy": "metrics"}),
        ("/", "/{proxy+}", {"proxy": ""}),
    ],
)
def test_build_event_resources(path: str, resource: str, parameters: Any) -> None:
    event = build_event("GET", path, {}, b"")

    assert event["resource"] == resource
    assert event["pathParameters"] == parameters
    assert event["body"] is None
    assert event["queryStringParameters"] is None
    assert event["multiValueQueryStringParameters"] is None


def test_build_event_base64_encodes_a_binary_body() -> None:
    body = b"\x89PNG\r\n\x1a\n\xff\x00"

    event = build_event("POST", "/v2/models/tiny/infer", {}, body, stage="dev")

    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == body
    assert event["requestContext"]["path"] == "/dev/v2/models/tiny/infer"


# --- LocalApi.handle with a fake function -----------------------------------------------------


@pytest.fixture
def api_factory() -> Iterator[Callable[..., LocalApi]]:
    """Started LocalApi instances on free loopback ports, shut down after the test."""
    made: list[LocalApi] = []

    def make(invoke: Callable[[Event], dict[str, Any]], **kwargs: Any) -> LocalApi:
        api = LocalApi(invoke, port=0, **kwargs).start()
        made.append(api)
        return api

    yield make
    for api in made:
        api.shutdown()


@pytest.mark.parametrize(
    ("raw_path", "event_path"),
    [
        ("/Prod/v2/models/tiny", "/v2/models/tiny"),
        ("/v2/models/tiny", "/v2/models/tiny"),
        ("/Prod", "/"),
        ("/Prod/", "/"),
        ("/Production/v2", "/Production/v2"),
        ("/Prod/v2/models/tiny/infer?x=1", "/v2/models/tiny/infer"),
    ],
)
def test_stage_prefix_is_stripped(
    api_factory: Callable[..., LocalApi], raw_path: str, event_path: str
) -> None:
    function = FakeFunction()
    api = api_factory(function)

    status, _, _ = api.handle("GET", raw_path, {}, b"")

    assert status == 200
    assert [e["path"] for e in function.events] == [event_path]


def test_function_response_is_passed_through(api_factory: Callable[..., LocalApi]) -> None:
    function = FakeFunction(
        {
            "statusCode": "404",
            "headers": {"Content-Type": "application/json", "X-Request-Id": 7},
            "multiValueHeaders": {"Vary": ["Origin", "Accept"]},
            "body": json.dumps({"error": {"code": "model_not_found", "message": "no"}}),
        }
    )
    api = api_factory(function)

    status, headers, body = api.handle("GET", "/v2/models/nope", {}, b"")

    assert status == 404
    assert headers == {
        "Content-Type": "application/json",
        "X-Request-Id": "7",
        "Vary": "Origin, Accept",
    }
    assert json.loads(body)["error"]["code"] == "model_not_found"


def test_base64_response_body_is_decoded(api_factory: Callable[..., LocalApi]) -> None:
    payload = b"\x00\x01binary\xff"
    function = FakeFunction(
        {"statusCode": 200, "body": base64.b64encode(payload).decode(), "isBase64Encoded": True}
    )
    api = api_factory(function)

    status, headers, body = api.handle("GET", "/v2", {}, b"")

    assert (status, headers, body) == (200, {}, payload)


def test_function_crash_is_a_502_gateway_error(api_factory: Callable[..., LocalApi]) -> None:
    crashed = FakeFunction({"errorMessage": "Task timed out", "errorType": "TimeoutError"})
    api = api_factory(crashed)

    status, headers, body = api.handle("GET", "/v2", {}, b"")

    assert status == 502
    assert headers == {"Content-Type": "application/json"}
    assert json.loads(body) == {"message": "Internal server error"}


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}, {"X-Api-Key": "wrong"}])
def test_missing_or_wrong_api_key_is_403_without_invoking(
    api_factory: Callable[..., LocalApi], headers: dict[str, str]
) -> None:
    function = FakeFunction()
    api = api_factory(function, api_key="s3cret")

    status, _, body = api.handle("GET", "/v2", headers, b"")

    assert status == 403
    assert json.loads(body) == {"message": "Forbidden"}
    assert function.events == []


def test_right_api_key_is_let_through(api_factory: Callable[..., LocalApi]) -> None:
    function = FakeFunction()
    api = api_factory(function, api_key="s3cret")

    status, _, _ = api.handle("GET", "/v2", {"x-api-key": "s3cret"}, b"")

    assert status == 200
    assert function.events[0]["headers"] == {"x-api-key": "s3cret"}


def test_body_over_the_event_limit_is_413_without_invoking(
    api_factory: Callable[..., LocalApi], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_api, "MAX_EVENT_BYTES", 16)
    function = FakeFunction()
    api = api_factory(function)

    at_limit, _, _ = api.handle("POST", "/v2", {}, b"x" * 16)
    status, _, body = api.handle("POST", "/v2", {}, b"x" * 17)

    assert at_limit == 200
    assert status == 413
    assert json.loads(body) == {"message": "Request Too Long"}
    assert len(function.events) == 1


# --- a real HTTP round trip on loopback ------------------------------------------------------


def predictor_function(predictor: Predictor) -> Callable[[Event], dict[str, Any]]:
    """The function's real edge (the Powertools resolver from the route table), in-process."""
    from aws_lambda_powertools import Logger

    from onnxkit.adapters.lambda_api import create_app

    app = create_app(predictor, Logger(service="test"), RouteTable(FUNCTION))
    return lambda event: app.resolve(event, {})


@pytest.fixture
def served(tiny_model: BuiltModel) -> Iterator[LocalApi]:
    """The tiny model behind a LocalApi on a free loopback port, with an API key."""
    from onnxkit.backends.onnxruntime import OnnxruntimeBackend
    from onnxkit.session import load_session

    manifest = describe_model(tiny_model.path, name="tiny", version="1")
    predictor = Predictor(
        "tiny",
        lambda: OnnxruntimeBackend(manifest, load_session(tiny_model.path, intra_op_threads=1)),
        ApiSettings(max_request_bytes=10_000, max_batch_size=8),
    )
    api = LocalApi(predictor_function(predictor), port=0, api_key="k-123").start()
    try:
        yield api
    finally:
        api.shutdown()


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    """POST over HTTP; returns status, headers (lower-case names) and the JSON body."""
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            headers = {k.lower(): v for k, v in response.headers.items()}
            return response.status, headers, json.loads(response.read())
    except urllib.error.HTTPError as error:
        headers = {k.lower(): v for k, v in error.headers.items()}
        return error.code, headers, json.loads(error.read())


def test_http_round_trip_runs_the_model(served: LocalApi, tiny_model: BuiltModel) -> None:
    # GIVEN the tiny model served on loopback behind an API key
    rows = [[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 1.0]]
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": rows}]}
    ).encode()
    assert served.url == f"http://127.0.0.1:{served.port}"
    assert served.port > 0

    # WHEN a client posts a request under the stage prefix
    status, headers, result = post(
        f"{served.url}/Prod/v2/models/tiny/infer",
        body,
        {"Content-Type": "application/json; charset=utf-8", "X-API-Key": "k-123"},
    )

    # THEN the HTTP response carries the model's output
    assert status == 200
    assert headers["content-type"] == "application/json"  # HTTP header names: any case
    assert int(headers["content-length"]) > 0
    expected = tiny_model.compute(np.array(rows, dtype=np.float32))["y"]
    assert result["model_name"] == "tiny"
    assert result["outputs"][0]["shape"] == [2, 2]
    np.testing.assert_allclose(result["outputs"][0]["data"], expected.ravel(), rtol=1e-6)


def test_http_errors_keep_their_status_and_code(served: LocalApi) -> None:
    key = {"x-api-key": "k-123"}

    unsupported = post(
        f"{served.url}/v2/models/tiny/infer", b"{}", {**key, "Content-Type": "text/plain"}
    )
    unknown = post(f"{served.url}/v2/models/nope/infer", b'{"inputs": []}', key)
    forbidden = post(f"{served.url}/v2/models/tiny/infer", b"{}", {})

    assert unsupported[0] == 415
    assert unsupported[2]["error"]["code"] == "unsupported_media_type"
    assert unknown[0] == 404
    assert unknown[2]["error"]["code"] == "model_not_found"
    assert forbidden[0] == 403
    assert forbidden[2] == {"message": "Forbidden"}


def test_http_function_exception_becomes_502(api_factory: Callable[..., LocalApi]) -> None:
    def broken(event: Event) -> dict[str, Any]:
        raise ConnectionError("emulator went away")

    api = api_factory(broken)

    status, _, body = post(f"{api.url}/v2/models/tiny/infer", b"{}", {})

    assert status == 502
    assert body == {"message": "emulator went away"}


def test_shutdown_of_a_server_that_never_started_returns() -> None:
    # A caller that builds a LocalApi and gives up before start() must be able to close it.
    api = LocalApi(FakeFunction(), port=0)
    closer = threading.Thread(target=api.shutdown, daemon=True)

    closer.start()
    closer.join(timeout=2)

    assert not closer.is_alive(), "LocalApi.shutdown() blocked on a server that never served"
