"""A local stand-in for API Gateway: HTTP on 127.0.0.1 -> REST proxy event -> the function.

Like ``sam local start-api``, each HTTP request becomes an API Gateway REST proxy event
(resources ``/v2`` and ``/v2/{proxy+}``) and the function's proxy response becomes the HTTP
response. Paths are served both at the root and under the stage (``/Prod/v2/...``), as the
deployed URL has it. An optional API key is enforced the way API Gateway does (403). The HTTP
side is uvicorn and Starlette; one invoke runs at a time, as one Lambda environment would.
"""

from __future__ import annotations

import base64
import json
import logging
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

Invoke = Callable[[dict[str, Any]], dict[str, Any]]

# API Gateway's own limit is 10 MB; Lambda's synchronous payload limit (6 MB) bites first.
MAX_EVENT_BYTES = 6 * 1024 * 1024
LOOPBACK = "127.0.0.1"
_HOP_BY_HOP = frozenset({"content-length", "connection", "transfer-encoding"})

logger = logging.getLogger(__name__)


def build_event(
    method: str,
    raw_path: str,
    headers: dict[str, str],
    body: bytes,
    *,
    stage: str = "Prod",
    source_ip: str = LOOPBACK,
) -> dict[str, Any]:
    """An API Gateway REST proxy event for one HTTP request."""
    parts = urlsplit(raw_path)
    path = parts.path or "/"
    query = parse_qs(parts.query, keep_blank_values=True)
    resource, path_parameters = ("/v2", None)
    if path.startswith("/v2/"):
        resource, path_parameters = "/v2/{proxy+}", {"proxy": path[len("/v2/") :]}
    elif path != "/v2":
        resource, path_parameters = "/{proxy+}", {"proxy": path.lstrip("/")}
    try:
        text: str | None = body.decode() if body else None
        encoded = False
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(body).decode(), True
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


class LocalApi:
    """Serves the function over HTTP on loopback. One invoke at a time, as one Lambda would.

    Args:
        invoke: Sends an event to the function and returns its response.
        port: TCP port on 127.0.0.1 (0 picks a free one).
        stage: The stage prefix also accepted in paths.
        api_key: If set, requests without this ``x-api-key`` get 403, as API Gateway does.
    """

    def __init__(
        self, invoke: Invoke, port: int = 3000, *, stage: str = "Prod", api_key: str | None = None
    ) -> None:
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
        lowered = {k.lower(): v for k, v in headers.items()}
        if self._api_key is not None and lowered.get("x-api-key") != self._api_key:
            return _gateway_error(HTTPStatus.FORBIDDEN, "Forbidden")
        if len(body) > MAX_EVENT_BYTES:
            return _gateway_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Request Too Long")
        prefix = f"/{self._stage}"
        if raw_path == prefix or raw_path.startswith(prefix + "/"):
            raw_path = raw_path[len(prefix) :] or "/"
        event = build_event(method, raw_path, headers, body, stage=self._stage)
        result = self._invoke(event)
        if "statusCode" not in result:  # the function crashed or timed out
            return _gateway_error(HTTPStatus.BAD_GATEWAY, "Internal server error")
        out_headers = {k: str(v) for k, v in (result.get("headers") or {}).items()}
        for key, values in (result.get("multiValueHeaders") or {}).items():
            out_headers[key] = ", ".join(map(str, values))
        payload = result.get("body") or ""
        data = base64.b64decode(payload) if result.get("isBase64Encoded") else payload.encode()
        return int(result["statusCode"]), out_headers, data

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Every request goes to the function, whatever its path: no routing here.
        response = await self._serve(Request(scope, receive))
        await response(scope, receive, send)

    async def _serve(self, request: Request) -> Response:
        started = time.perf_counter()
        body = await request.body()
        raw_path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = dict(request.headers.items())
        try:
            status, out_headers, data = await anyio.to_thread.run_sync(
                self.handle, request.method, raw_path, headers, body, limiter=self._one_at_a_time
            )
        except Exception as exc:  # the emulator died: a gateway error, not a hang
            status, out_headers, data = _gateway_error(HTTPStatus.BAD_GATEWAY, str(exc))
        kept = {k: v for k, v in out_headers.items() if k.lower() not in _HOP_BY_HOP}
        logger.info(
            '"%s %s" %d %.1f ms',
            request.method,
            raw_path,
            status,
            (time.perf_counter() - started) * 1000,
        )
        return Response(data, status, kept)


def _gateway_error(status: HTTPStatus, message: str) -> tuple[int, dict[str, str], bytes]:
    return (
        int(status),
        {"Content-Type": "application/json"},
        json.dumps({"message": message}).encode(),
    )
