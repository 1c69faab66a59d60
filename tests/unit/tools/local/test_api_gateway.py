"""The local API Gateway stand-in: proxy events, binary media types, API key, stage prefix, errors,
real HTTP."""

from __future__ import annotations

import base64
import json
import re
import select
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxkit.predictor import Predictor
from onnxkit.routes import FUNCTION, RouteTable
from onnxkit.settings import ApiSettings
from onnxkit_tools.local import api_gateway as local_api
from onnxkit_tools.local.api_gateway import (
    LocalApi,
    build_event,
    is_binary_media_type,
    normalize_media_types,
    template_binary_media_types,
)
from onnxkit_tools.registry import describe_model
from onnxkit_tools.template import TemplateError
from tests.unit.conftest import BuiltModel
from tests.unit.template_helpers import REPO, TEMPLATE_PATH, source

Event = dict[str, Any]
# Every byte value, and a PNG signature (with the CR LF and ^Z that text handling would mangle)
ALL_BYTES = bytes(range(256))
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"


@pytest.fixture(autouse=True)
def in_the_project_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run where `onnxkit local start-api` runs, so the template.yaml default is this repo's."""
    monkeypatch.chdir(REPO)


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
        "POST",
        "/v2/models/tiny/infer?verbose=1&tag=a&tag=b",
        headers,
        b'{"inputs": []}',
        binary_media_types=[],  # no binary media types: the JSON body stays text
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


# --- binary media types: request bodies ------------------------------------------------------


def test_json_body_under_any_type_arrives_base64_and_decodes_to_the_same_bytes() -> None:
    body = json.dumps({"id": "é-ß-✓", "inputs": []}, ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json"}

    event = build_event("POST", "/v2/models/tiny/infer", headers, body, binary_media_types=["*/*"])

    assert event["isBase64Encoded"] is True
    assert event["body"] != body.decode()
    assert base64.b64decode(event["body"], validate=True) == body


@pytest.mark.parametrize(
    ("content_type", "binary_media_types"),
    [
        ("application/json", ["image/png", "application/octet-stream"]),
        ("application/json; charset=utf-8", ["image/*"]),
        ("text/plain", ["application/*+json", "image/*"]),
        ("image/png", []),
    ],
)
def test_body_whose_type_matches_no_binary_media_type_stays_text(
    content_type: str, binary_media_types: list[str]
) -> None:
    body = '{"id": "é"}'

    event = build_event(
        "POST",
        "/v2/models/tiny/infer",
        {"content-type": content_type},
        body.encode(),
        binary_media_types=binary_media_types,
    )

    assert (event["body"], event["isBase64Encoded"]) == (body, False)


def test_png_body_arrives_byte_exact_over_http(api_factory: Callable[..., LocalApi]) -> None:
    function = FakeFunction()
    api = api_factory(function, binary_media_types=["image/*"])

    status, _, _ = fetch(
        f"{api.url}/v2/models/tiny/infer", PNG + ALL_BYTES, {"Content-Type": "image/png"}
    )

    assert status == 200
    (event,) = function.events
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"], validate=True) == PNG + ALL_BYTES


@pytest.mark.parametrize(
    ("binary_media_types", "encoded"),
    [
        (["*/*"], True),
        (["application/json"], True),  # the type API Gateway assumes
        (["application/*"], True),
        (["application/octet-stream", "image/*"], False),
    ],
)
def test_no_content_type_counts_as_application_json(
    binary_media_types: list[str], encoded: bool
) -> None:
    # GIVEN tritonclient's default request: a binary tensor body, and no Content-Type at all
    header = (
        b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"parameters":'
        b'{"binary_data_size":4}}]}'
    )
    body = header + b"\x00\x00\x00\x40"  # 2.0 as little-endian FP32, valid UTF-8 by chance
    headers = {"Inference-Header-Content-Length": str(len(header))}

    # WHEN it becomes an event
    event = build_event(
        "POST", "/v2/models/tiny/infer", headers, body, binary_media_types=binary_media_types
    )

    # THEN it is binary exactly when application/json is among the binary media types
    assert event["isBase64Encoded"] is encoded
    sent = base64.b64decode(event["body"]) if encoded else event["body"].encode()
    assert sent == body


def test_non_utf8_body_sent_as_text_is_mangled_as_api_gateway_would_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # GIVEN binary tensor bytes sent as application/json, with only octet-stream binary
    body = b'{"inputs": []}\xff\xfe\x00\x80'

    # WHEN the event is built
    with caplog.at_level("WARNING", logger=local_api.__name__):
        event = build_event(
            "POST",
            "/v2/models/tiny/infer",
            {"Content-Type": "application/json"},
            body,
            binary_media_types=["application/octet-stream"],
        )

    # THEN the function gets text that is no longer the body (as behind API Gateway), not a
    # base64 rescue that would only work locally, and the log names the cause
    assert event["isBase64Encoded"] is False
    assert event["body"] == '{"inputs": []}\ufffd\ufffd\x00\ufffd'
    assert event["body"].encode() != body
    (record,) = caplog.records
    assert "application/json" in record.getMessage()
    assert "application/octet-stream" in record.getMessage()


@pytest.mark.parametrize(
    ("media_type", "binary_media_types", "binary"),
    [
        ("image/png", ["image/*"], True),
        ("IMAGE/PNG", ["image/png"], True),  # media types are case-insensitive
        ("application/json; charset=utf-8", ["application/json"], True),
        ("image/png", ["image/jpeg", "application/octet-stream"], False),
        ("text/plain", ["image/*"], False),
        ("anything/at-all", ["*/*"], True),
        ("not a media type", ["*/*"], True),
        ("not a media type", ["image/*"], False),
        (None, ["*/*"], True),
        (None, ["image/*"], False),
        # the wildcard is the API's: the request's own is taken as it is
        ("*/*", ["image/png"], False),
        ("*/*", ["*/*"], True),
        ("image/*", ["image/png"], False),
        ("image/*", ["image/*"], True),
        ("image/png", [], False),
    ],
)
def test_media_types_match_as_api_gateway_matches_them(
    media_type: str | None, binary_media_types: list[str], binary: bool
) -> None:
    assert is_binary_media_type(media_type, binary_media_types) is binary


def test_binary_media_types_take_sams_spelling_and_refuse_non_types() -> None:
    assert normalize_media_types(["image~1png", " */* ", "application/octet-stream"]) == (
        "image/png",
        "*/*",
        "application/octet-stream",
    )
    with pytest.raises(ValueError, match="'png' is not a media type"):
        normalize_media_types(["png"])
    with pytest.raises(ValueError, match="not a media type"):
        LocalApi(FakeFunction(), port=0, binary_media_types=["image/png", ""])


def test_a_base64_body_counts_at_its_encoded_size(
    api_factory: Callable[..., LocalApi], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lambda's payload limit counts the event, where a binary body is 4/3 its size
    monkeypatch.setattr(local_api, "MAX_EVENT_BYTES", 16)
    function = FakeFunction()
    api = api_factory(function, binary_media_types=["*/*"])

    at_limit, _, _ = api.handle("POST", "/v2", {}, b"x" * 12)  # 16 base64 characters
    status, _, body = api.handle("POST", "/v2", {}, b"x" * 13)  # 20

    assert at_limit == 200
    assert status == 413
    assert json.loads(body)["message"].startswith("Request Too Long: ")
    assert len(function.events) == 1


# --- binary media types: the template -----------------------------------------------------


def test_template_reader_returns_what_template_yaml_declares() -> None:
    declared = source()["Resources"]["PredictApi"]["Properties"]["BinaryMediaTypes"]

    found = template_binary_media_types(TEMPLATE_PATH)

    assert found == tuple(media.replace("~1", "/") for media in declared)
    assert found == ("*/*",)  # what the template's comment argues for


def write_template(folder: Path, api_properties: str, globals_api: str = "") -> Path:
    """A SAM template with CloudFormation tags around a PredictApi."""
    path = folder / "template.yaml"
    path.write_text(
        "Transform: AWS::Serverless-2016-10-31\n"
        + (f"Globals:\n  Api:\n{globals_api}" if globals_api else "")
        + "Resources:\n"
        "  PredictApi:\n"
        "    Type: AWS::Serverless::Api\n"
        "    Properties:\n"
        "      StageName: !Ref Stage\n"
        "      Auth: !If [UseKey, {ApiKeyRequired: true}, !Ref AWS::NoValue]\n"
        f"{api_properties}"
    )
    return path


def test_template_reader_reads_globals_first_and_sams_spelling(tmp_path: Path) -> None:
    template = write_template(
        tmp_path,
        "      BinaryMediaTypes: [image~1png, 'application~1octet-stream']\n",
        "    BinaryMediaTypes: ['*~1*']\n",
    )

    assert template_binary_media_types(template) == ("*/*", "image/png", "application/octet-stream")


def test_template_without_binary_media_types_gives_none(tmp_path: Path) -> None:
    assert template_binary_media_types(write_template(tmp_path, "")) == ()


@pytest.mark.parametrize(
    ("properties", "message"),
    [
        ("      BinaryMediaTypes: !If [Binary, ['*~1*'], []]\n", "not a list of media types"),
        ("      BinaryMediaTypes: [!Ref Type]\n", "not a list of media types"),
        ("      BinaryMediaTypes: [png]\n", "'png' is not a media type"),
    ],
)
def test_template_reader_refuses_binary_media_types_it_cannot_read(
    tmp_path: Path, properties: str, message: str
) -> None:
    with pytest.raises(TemplateError, match=message):
        template_binary_media_types(write_template(tmp_path, properties))


def test_template_reader_refuses_a_missing_template_or_api(tmp_path: Path) -> None:
    not_yaml = tmp_path / "broken.yaml"
    not_yaml.write_text("Resources: [unclosed\n")

    with pytest.raises(TemplateError, match="has no OtherApi resource"):
        template_binary_media_types(write_template(tmp_path, ""), api="OtherApi")
    with pytest.raises(TemplateError, match="cannot read"):
        template_binary_media_types(tmp_path / "missing.yaml")
    with pytest.raises(TemplateError, match="is not YAML"):
        template_binary_media_types(not_yaml)


def test_the_default_is_the_working_folders_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a project folder whose template makes PNG the only binary type
    write_template(tmp_path, "      BinaryMediaTypes: [image~1png]\n")
    monkeypatch.chdir(tmp_path)

    # WHEN the API and an event are made without binary media types
    api = LocalApi(FakeFunction(), port=0)
    api.shutdown()
    event = build_event("POST", "/v2", {"Content-Type": "image/png"}, PNG)

    # THEN both follow the template
    assert api.binary_media_types == ("image/png",)
    assert event["isBase64Encoded"] is True

    # AND without a template there, they refuse to guess
    (tmp_path / "template.yaml").unlink()
    with pytest.raises(TemplateError, match=r"cannot read template\.yaml"):
        LocalApi(FakeFunction(), port=0)


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


def base64_reply(payload: bytes) -> FakeFunction:
    """A function that answers with payload, base64-encoded, as binary replies are sent."""
    return FakeFunction(
        {
            "statusCode": 200,
            "headers": {"Content-Type": "application/octet-stream"},
            "body": base64.b64encode(payload).decode(),
            "isBase64Encoded": True,
        }
    )


def test_base64_reply_is_decoded_to_the_exact_bytes_over_http(
    api_factory: Callable[..., LocalApi],
) -> None:
    # GIVEN an API whose binary media types include */*, and a function answering in base64
    api = api_factory(base64_reply(PNG + ALL_BYTES), binary_media_types=["*/*"])

    # WHEN a client asks over HTTP, sending no Accept (urllib sends none)
    status, headers, body = fetch(f"{api.url}/v2/models/tiny/infer", b"{}", {})

    # THEN it gets the bytes themselves
    assert status == 200
    assert headers["content-type"] == "application/octet-stream"
    assert body == PNG + ALL_BYTES
    assert int(headers["content-length"]) == len(PNG + ALL_BYTES)


def test_base64_reply_stays_base64_text_when_accept_matches_no_binary_type(
    api_factory: Callable[..., LocalApi],
) -> None:
    # GIVEN an API with octet-stream as its one binary media type
    encoded = base64.b64encode(ALL_BYTES)
    api = api_factory(base64_reply(ALL_BYTES), binary_media_types=["application/octet-stream"])

    # WHEN a client accepts JSON first
    status, _, body = fetch(
        f"{api.url}/v2/models/tiny/infer",
        b"{}",
        {"Content-Type": "application/json", "Accept": "application/json"},
    )

    # THEN it gets the base64 text, as API Gateway hands it on
    assert status == 200
    assert body == encoded


@pytest.mark.parametrize(
    ("accept", "decoded"),
    [
        ("application/octet-stream", True),
        ("application/octet-stream;q=0.5, application/json", True),
        ("application/json, application/octet-stream", False),  # only the first counts
        ("*/*", False),  # curl's default: not an octet-stream entry
        (None, False),
    ],
)
def test_only_the_first_accept_type_decides_a_binary_reply(
    api_factory: Callable[..., LocalApi], accept: str | None, decoded: bool
) -> None:
    api = api_factory(base64_reply(ALL_BYTES), binary_media_types=["application/octet-stream"])
    headers = {} if accept is None else {"Accept": accept}

    _, _, body = api.handle("POST", "/v2/models/tiny/infer", headers, b"{}")

    assert body == (ALL_BYTES if decoded else base64.b64encode(ALL_BYTES))


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
    api = api_factory(function, binary_media_types=[])  # a text body counts as it is

    at_limit, _, _ = api.handle("POST", "/v2", {}, b"x" * 16)
    status, _, body = api.handle("POST", "/v2", {}, b"x" * 17)

    assert at_limit == 200
    assert status == 413
    assert json.loads(body)["message"].startswith("Request Too Long: ")
    assert len(function.events) == 1


def test_a_body_too_long_for_a_model_points_to_its_upload_path(
    api_factory: Callable[..., LocalApi], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_api, "MAX_EVENT_BYTES", 16)
    api = api_factory(FakeFunction(), binary_media_types=[])

    _, _, named = api.handle("POST", "/Prod/v2/models/digits/infer", {}, b"x" * 17)
    _, _, unnamed = api.handle("POST", "/v2", {}, b"x" * 17)

    hint = "use POST /v2/models/digits/uploads to send it through S3"
    assert hint in json.loads(named)["message"]
    assert "POST /v2/models/{name}/uploads (the model's name" in json.loads(unnamed)["message"]


# --- oversize bodies over HTTP, refused before they are read -----------------------------------


def raw_exchange(port: int, head: bytes, chunks: Sequence[bytes] = (), wait: float = 5.0) -> bytes:
    """Send ``head``, then each chunk while the server has not answered; return its answer.

    Returns:
        What the server sent within ``wait`` seconds of the last thing sent (b"" if nothing).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as conn:
        conn.sendall(head)
        for chunk in chunks:
            if select.select([conn], [], [], 0.05)[0]:
                break  # answered already: the rest is never sent
            try:
                conn.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        received = b""
        try:
            while b"\r\n\r\n" not in received and (chunk := conn.recv(65536)):
                received += chunk
            head_part, _, rest = received.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", head_part)
            while length and len(rest) < int(length[1]) and (chunk := conn.recv(65536)):
                rest += chunk
            return head_part + b"\r\n\r\n" + rest if received else b""
        except TimeoutError:
            return received
        except ConnectionResetError:
            return received


def test_a_huge_declared_body_is_413_before_any_of_it_is_sent(
    api_factory: Callable[..., LocalApi],
) -> None:
    # GIVEN the local API
    function = FakeFunction()
    api = api_factory(function, binary_media_types=[])

    # WHEN a client announces a 1 GB body and sends only its headers
    started = time.monotonic()
    reply = raw_exchange(
        api.port,
        b"POST /Prod/v2/models/digits/infer HTTP/1.1\r\nHost: local\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n",
    )
    elapsed = time.monotonic() - started

    # THEN it gets API Gateway's 413 at once, with the upload hint, and the function is not run
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    message = json.loads(body)["message"]
    assert message.startswith("Request Too Long: ")
    assert "POST /v2/models/digits/uploads" in message
    assert elapsed < 2.0, elapsed
    assert function.events == []


def test_a_chunked_body_is_refused_once_it_passes_the_limit(
    api_factory: Callable[..., LocalApi], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an event limit of 1 KiB
    monkeypatch.setattr(local_api, "MAX_EVENT_BYTES", 1024)
    function = FakeFunction()
    api = api_factory(function, binary_media_types=[])

    # WHEN a chunked upload streams 256-byte chunks and never ends on its own
    chunk = b"100\r\n" + b"x" * 256 + b"\r\n"
    reply = raw_exchange(
        api.port,
        b"POST /v2 HTTP/1.1\r\nHost: local\r\nContent-Type: text/plain\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        [chunk] * 64,  # 16 KiB if it were all read; no last chunk
    )

    # THEN it is refused with 413 once past the limit, without waiting for the end
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
    assert function.events == []


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


def fetch(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """POST over HTTP; returns status, headers (lower-case names) and the raw body."""
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=10) as response:
        headers = {k.lower(): v for k, v in response.headers.items()}
        return response.status, headers, response.read()


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
