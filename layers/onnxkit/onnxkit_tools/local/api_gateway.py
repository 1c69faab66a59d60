"""A local stand-in for API Gateway: HTTP on 127.0.0.1 -> REST proxy event -> the function.

Like ``sam local start-api``, each HTTP request becomes an API Gateway REST proxy event
(resources ``/v2`` and ``/v2/{proxy+}``) and the function's proxy response becomes the HTTP
response. Paths are served both at the root and under the stage (``/Prod/v2/...``), as the
deployed URL has it. An optional API key is enforced the way API Gateway does (403). Bodies are
base64-encoded, and base64 replies decoded, by the API's binary media types as API Gateway does
(template.yaml's unless told otherwise; the rules are written out below). A body too long for
the event is refused (413) by its declared length before it is read, or once a streamed one
passes the limit. The HTTP side is uvicorn and Starlette; one invoke runs at a time, as one
Lambda environment would.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import mimeparse
import uvicorn
import yaml
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from onnxkit.errors import upload_hint
from onnxkit_tools.template import DEFAULT_TEMPLATE, TemplateError, load_template

Invoke = Callable[[dict[str, Any]], dict[str, Any]]

# API Gateway's own limit is 10 MB; Lambda's synchronous payload limit (6 MB) bites first, and
# it counts the event, where a binary body is base64 text (4/3 of its size).
MAX_EVENT_BYTES = 6 * 1024 * 1024
LOOPBACK = "127.0.0.1"
_HOP_BY_HOP = frozenset({"content-length", "connection", "transfer-encoding"})
PREDICT_API = "PredictApi"

# Binary media types, as API Gateway (REST API, Lambda proxy integration) applies them. Sources,
# all in the API Gateway developer guide: "Binary media types for REST APIs in API Gateway"
# (api-gateway-payload-encodings.html), "Content type conversions in API Gateway"
# (api-gateway-payload-encodings-workflow.html), "Return binary media from a Lambda proxy
# integration in API Gateway" (lambda-proxy-binary-media.html), and "Method request behavior for
# payloads without mapping templates" (integration-passthrough-behaviors.html).
# - Request: when the request's Content-Type matches one of the API's binary media types, the
#   function gets the body base64-encoded with ``isBase64Encoded: true``; otherwise as UTF-8 text
#   with ``isBase64Encoded: false``. A request without Content-Type counts as application/json.
# - The binary media types may use the wildcard: ``*/*`` matches every type, ``image/*`` every
#   image type. The wildcard is the API's; a wildcard the request sends is taken as it is, so
#   ``Accept: */*`` (curl's default) matches a ``*/*`` entry but not ``image/png``: the guide's
#   browser example (``Accept: image/webp,image/*,*/*;q=0.8``) has to list image/webp itself.
#   Media types compare without their parameters (``; charset=utf-8``), case-insensitively.
# - Response: a proxy response with ``isBase64Encoded: true`` is decoded to its bytes when the
#   first media type of the request's Accept header matches a binary media type; only the first
#   counts. Otherwise the client gets the base64 text itself. The guide's answer for clients that
#   order Accept themselves is ``*/*`` ("all content types"); it is taken to match every
#   request here, one without Accept too.
# - SAM templates spell ``/`` as ``~1`` in BinaryMediaTypes (SAM writes ``/`` into the API's
#   OpenAPI body); the helpers below take either spelling and work with ``/``.
# Not modelled: non-proxy integrations and contentHandling (this API has none).
ASSUMED_CONTENT_TYPE = "application/json"

logger = logging.getLogger(__name__)


def build_event(
    method: str,
    raw_path: str,
    headers: dict[str, str],
    body: bytes,
    *,
    stage: str = "Prod",
    source_ip: str = LOOPBACK,
    binary_media_types: Sequence[str] | None = None,
) -> dict[str, Any]:
    """An API Gateway REST proxy event for one HTTP request.

    Args:
        method: The HTTP method.
        raw_path: The path, without the stage, with its query string if any.
        headers: The request headers (names in any case).
        body: The request body as received.
        stage: The stage name the event carries.
        source_ip: The caller's address.
        binary_media_types: The API's binary media types (``image/png``, ``*/*``): a body whose
            Content-Type matches one is sent base64-encoded, any other as UTF-8 text. None reads
            them from ./template.yaml (:func:`template_binary_media_types`).

    Raises:
        TemplateError: ``binary_media_types`` is None and template.yaml cannot give them.
        ValueError: A binary media type is not a media type.
    """
    if binary_media_types is None:
        binary_media_types = template_binary_media_types()
    text, encoded = _event_body(body, headers, normalize_media_types(binary_media_types))
    parts = urlsplit(raw_path)
    path = parts.path or "/"
    query = parse_qs(parts.query, keep_blank_values=True)
    resource, path_parameters = ("/v2", None)
    if path.startswith("/v2/"):
        resource, path_parameters = "/v2/{proxy+}", {"proxy": path[len("/v2/") :]}
    elif path != "/v2":
        resource, path_parameters = "/{proxy+}", {"proxy": path.lstrip("/")}
    now = datetime.now(UTC)
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": dict(headers),
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
        "multiValueQueryStringParameters": query or None,
        "pathParameters": path_parameters,
        "stageVariables": None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "resourceId": "local",
            "resourcePath": resource,
            "httpMethod": method,
            "path": f"/{stage}{path}",
            "stage": stage,
            "protocol": "HTTP/1.1",
            "requestId": str(uuid.uuid4()),
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "identity": {"sourceIp": source_ip, "userAgent": headers.get("User-Agent")},
        },
        "body": text,
        "isBase64Encoded": encoded,
    }


def normalize_media_types(media_types: Sequence[str]) -> tuple[str, ...]:
    """Binary media types as API Gateway lists them: ``type/subtype``, SAM's ``~1`` as ``/``.

    Raises:
        ValueError: A value is not a media type (``image/png``, ``image/*``, ``*/*``).
    """
    found = []
    for value in media_types:
        media_type = value.replace("~1", "/").strip()
        if _type_and_subtype(media_type) is None:
            raise ValueError(f"{value!r} is not a media type (type/subtype, * allowed)")
        found.append(media_type)
    return tuple(found)


def is_binary_media_type(media_type: str | None, binary_media_types: Sequence[str]) -> bool:
    """Whether API Gateway treats a Content-Type or first Accept value as binary.

    Args:
        media_type: The request's value; None (or unparsable) is matched by ``*/*`` only.
        binary_media_types: The API's binary media types, wildcards allowed.
    """
    sent = _type_and_subtype(media_type) if media_type else None
    for entry in binary_media_types:
        pattern = _type_and_subtype(entry)
        if pattern == ("*", "*"):
            return True
        if pattern is None or sent is None:
            continue
        if pattern[0] in ("*", sent[0]) and pattern[1] in ("*", sent[1]):
            return True
    return False


def template_binary_media_types(
    template: Path = DEFAULT_TEMPLATE, api: str = PREDICT_API
) -> tuple[str, ...]:
    """The binary media types a SAM template gives an API, ``~1`` turned into ``/``.

    ``Globals.Api.BinaryMediaTypes`` come first, then the API's own: SAM merges lists in
    Globals by concatenation. None declared: an empty tuple (every body is text).

    Args:
        template: The SAM template.
        api: Logical id of its ``AWS::Serverless::Api``.

    Raises:
        TemplateError: The template is missing or unreadable, has no such API, or its
            BinaryMediaTypes are not a plain list of media types (an intrinsic such as ``!If``
            cannot be resolved here).
    """
    try:
        document = load_template(template)
        resource = document["Resources"][api]
        globals_api = (document.get("Globals") or {}).get("Api") or {}
        own = (resource.get("Properties") or {}).get("BinaryMediaTypes") or []
        shared = globals_api.get("BinaryMediaTypes") or []
    except OSError as exc:
        raise TemplateError(f"cannot read {template} ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise TemplateError(f"{template} is not YAML: {exc}") from exc
    except (KeyError, TypeError, AttributeError) as exc:
        raise TemplateError(f"{template} has no {api} resource ({exc!r})") from exc
    values = [*shared, *own] if isinstance(shared, list) and isinstance(own, list) else None
    if values is None or not all(isinstance(value, str) for value in values):
        raise TemplateError(
            f"{template}: BinaryMediaTypes of {api} is not a list of media types "
            f"(Globals: {shared!r}, {api}: {own!r})"
        )
    try:
        return normalize_media_types(values)
    except ValueError as exc:
        raise TemplateError(f"{template}: BinaryMediaTypes of {api}: {exc}") from exc


@functools.lru_cache(maxsize=256)  # clients repeat their headers: parse each value once
def _type_and_subtype(media_type: str) -> tuple[str, str] | None:
    try:
        kind, subtype, _ = mimeparse.parse_mime_type(media_type)
    except (mimeparse.MimeTypeParseException, ValueError):
        return None
    kind, subtype = kind.strip().lower(), subtype.strip().lower()
    return (kind, subtype) if kind and subtype else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value, its name in any case (HTTP names are case-insensitive)."""
    return next((value for key, value in headers.items() if key.lower() == name), None)


def _first_accept(headers: Mapping[str, str]) -> str | None:
    """The first media type of Accept: the only one API Gateway looks at."""
    accept = _header(headers, "accept")
    first = accept.split(",")[0].strip() if accept else ""
    return first or None


def _event_body(
    body: bytes, headers: Mapping[str, str], binary_media_types: Sequence[str]
) -> tuple[str | None, bool]:
    """The event's ``body`` and ``isBase64Encoded`` for a request body."""
    if not body:
        return None, False
    content_type = _header(headers, "content-type") or ASSUMED_CONTENT_TYPE
    if is_binary_media_type(content_type, binary_media_types):
        return base64.b64encode(body).decode("ascii"), True
    try:
        return body.decode("utf-8"), False
    except UnicodeDecodeError:
        # API Gateway passes such a body on as text, and its bytes do not survive that. Hand
        # the function a mangled body too (U+FFFD for each bad sequence; the exact bytes AWS
        # produces may differ): a request that only works locally would hide the missing binary
        # media type until it is deployed. The warning says why the function sees garbage.
        logger.warning(
            "a %d-byte body that is not UTF-8 was sent as %s, which is not one of the binary "
            "media types %s: passed on as mangled text, as API Gateway would",
            len(body),
            content_type,
            list(binary_media_types),
        )
        return body.decode("utf-8", errors="replace"), False


class LocalApi:
    """Serves the function over HTTP on loopback. One invoke at a time, as one Lambda would.

    Args:
        invoke: Sends an event to the function and returns its response.
        port: TCP port on 127.0.0.1 (0 picks a free one).
        stage: The stage prefix also accepted in paths.
        api_key: If set, requests without this ``x-api-key`` get 403, as API Gateway does.
        binary_media_types: The API's binary media types (see :func:`build_event`); None reads
            them from ./template.yaml.

    Raises:
        TemplateError: ``binary_media_types`` is None and template.yaml cannot give them.
        ValueError: A binary media type is not a media type.
    """

    def __init__(
        self,
        invoke: Invoke,
        port: int = 3000,
        *,
        stage: str = "Prod",
        api_key: str | None = None,
        binary_media_types: Sequence[str] | None = None,
    ) -> None:
        if binary_media_types is None:
            binary_media_types = template_binary_media_types()
        self._binary_media_types = normalize_media_types(binary_media_types)
        self._invoke = invoke
        self._stage = stage
        self._api_key = api_key
        self._one_at_a_time = anyio.CapacityLimiter(1)
        self._socket = socket.socket()
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((LOOPBACK, port))
        config = uvicorn.Config(
            self._asgi,
            interface="asgi3",
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_keep_alive=30,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._socket.getsockname()[1])

    @property
    def binary_media_types(self) -> tuple[str, ...]:
        """The binary media types this API applies."""
        return self._binary_media_types

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://{LOOPBACK}:{self.port}"

    def serve_forever(self) -> None:
        """Serve until SIGINT or SIGTERM (in the main thread) or :meth:`shutdown`."""
        if threading.current_thread() is threading.main_thread():
            # uvicorn stops on the signal, then raises it again for the handler it found:
            # with this one, a stopped server returns instead of the process dying by it.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda signum, _: None)
        self._server.run(sockets=[self._socket])

    def start(self) -> LocalApi:
        """Serve in a background thread; return once it listens."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="local-api")
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the local API did not start")
            time.sleep(0.01)
        return self

    def shutdown(self) -> None:
        """Stop serving (if serving) and close the socket."""
        if self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
            self._thread = None
        self._socket.close()

    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request -> (status, headers, body)."""
        if not self._authorized(headers):
            return _gateway_error(HTTPStatus.FORBIDDEN, "Forbidden")
        raw_path = self._unstaged(raw_path)
        event = build_event(
            method,
            raw_path,
            headers,
            body,
            stage=self._stage,
            binary_media_types=self._binary_media_types,
        )
        if len((event["body"] or "").encode()) > MAX_EVENT_BYTES:  # base64 included, as Lambda
            return _too_long(method, event["path"])
        result = self._invoke(event)
        if "statusCode" not in result:  # the function crashed or timed out
            return _gateway_error(HTTPStatus.BAD_GATEWAY, "Internal server error")
        out_headers = {k: str(v) for k, v in (result.get("headers") or {}).items()}
        for key, values in (result.get("multiValueHeaders") or {}).items():
            out_headers[key] = ", ".join(map(str, values))
        status = int(result["statusCode"])
        payload = result.get("body") or ""
        accept = _first_accept(headers)
        if result.get("isBase64Encoded") and is_binary_media_type(accept, self._binary_media_types):
            return status, out_headers, base64.b64decode(payload)
        # Text, or a base64 reply the request's Accept does not take as binary: API Gateway then
        # hands the client the base64 text itself.
        return status, out_headers, payload.encode()

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Every request goes to the function, whatever its path: no routing here.
        response = await self._serve(Request(scope, receive))
        await response(scope, receive, send)

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        """Whether the request carries the API key (or none is asked for)."""
        return self._api_key is None or _header(headers, "x-api-key") == self._api_key

    def _refusal(
        self, method: str, raw_path: str, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        """API Gateway's answer to a request refused before its body was read."""
        if not self._authorized(headers):
            return _gateway_error(HTTPStatus.FORBIDDEN, "Forbidden")
        return _too_long(method, urlsplit(self._unstaged(raw_path)).path or "/")

    def _unstaged(self, raw_path: str) -> str:
        """The path without the stage prefix (``/Prod/v2`` -> ``/v2``)."""
        prefix = f"/{self._stage}"
        if raw_path == prefix or raw_path.startswith(prefix + "/"):
            return raw_path[len(prefix) :] or "/"
        return raw_path

    async def _serve(self, request: Request) -> Response:
        started = time.perf_counter()
        raw_path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = dict(request.headers.items())
        # Refused without reading it (no API key, or too long): the body is never buffered.
        body = await _read_body(request) if self._authorized(headers) else None
        if body is None:
            status, out_headers, data = self._refusal(request.method, raw_path, headers)
        else:
            try:
                status, out_headers, data = await anyio.to_thread.run_sync(
                    self.handle,
                    request.method,
                    raw_path,
                    headers,
                    body,
                    limiter=self._one_at_a_time,
                )
            except Exception as exc:  # the emulator died: a gateway error, not a hang
                status, out_headers, data = _gateway_error(HTTPStatus.BAD_GATEWAY, str(exc))
        kept = {k: v for k, v in out_headers.items() if k.lower() not in _HOP_BY_HOP}
        if body is None:  # what is left of the body is not read as a next request: close
            kept["Connection"] = "close"
        logger.info(
            '"%s %s" %d %.1f ms',
            request.method,
            raw_path,
            status,
            (time.perf_counter() - started) * 1000,
        )
        return Response(data, status, kept)


async def _read_body(request: Request) -> bytes | None:
    """The body, or None once it is known to be over :data:`MAX_EVENT_BYTES`.

    A declared Content-Length over the limit is refused before any of the body is read, and a
    streamed (chunked) body once it grows past it: a client cannot make this process hold more
    than the limit. The event counts the body after base64 or UTF-8 decoding, neither smaller
    than the bytes themselves, so a body over the limit here is over it there too.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_EVENT_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_EVENT_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _too_long(method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """API Gateway's 413 "Request Too Long", with our hint (a local run shows the way)."""
    hint = upload_hint(_model_of(method, path))
    return _gateway_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"Request Too Long: {hint}")


def _model_of(method: str, path: str) -> str | None:
    """The model a request's path names (``/v2/models/{name}/...``), by the function's routes."""
    from onnxkit.errors import OnnxkitError
    from onnxkit.routes import FUNCTION, RouteTable

    try:
        _, params = RouteTable(FUNCTION).match(method, path)
    except OnnxkitError:
        return None
    return params.get("name")


def _gateway_error(status: HTTPStatus, message: str) -> tuple[int, dict[str, str], bytes]:
    return (
        int(status),
        {"Content-Type": "application/json"},
        json.dumps({"message": message}).encode(),
    )
