"""A local stand-in for API Gateway: HTTP on 127.0.0.1 -> REST proxy event -> the function.

Like ``sam local start-api``, each HTTP request becomes an API Gateway REST proxy event
(resources ``/v2`` and ``/v2/{proxy+}``) and the function's proxy response becomes the HTTP
response. Paths are served both at the root and under the stage (``/Prod/v2/...``), as the
deployed URL has it. An optional API key is enforced the way API Gateway does (403).
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Invoke = Callable[[dict[str, Any]], dict[str, Any]]

# API Gateway's own limit is 10 MB; Lambda's synchronous payload limit (6 MB) bites first.
MAX_EVENT_BYTES = 6 * 1024 * 1024


def build_event(
    method: str,
    raw_path: str,
    headers: dict[str, str],
    body: bytes,
    *,
    stage: str = "Prod",
    source_ip: str = "127.0.0.1",
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
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    def serve_forever(self) -> None:
        """Block serving requests until :meth:`shutdown`."""
        self._server.serve_forever(poll_interval=0.2)

    def start(self) -> LocalApi:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop serving (if serving) and close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request -> (status, headers, body)."""
        if self._api_key is not None and headers.get("x-api-key") != self._api_key:
            return _gateway_error(HTTPStatus.FORBIDDEN, "Forbidden")
        if len(body) > MAX_EVENT_BYTES:
            return _gateway_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Request Too Long")
        prefix = f"/{self._stage}"
        if raw_path == prefix or raw_path.startswith(prefix + "/"):
            raw_path = raw_path[len(prefix) :] or "/"
        event = build_event(method, raw_path, headers, body, stage=self._stage)
        with self._lock:
            result = self._invoke(event)
        if "statusCode" not in result:  # the function crashed or timed out
            return _gateway_error(HTTPStatus.BAD_GATEWAY, "Internal server error")
        out_headers = {k: str(v) for k, v in (result.get("headers") or {}).items()}
        for key, values in (result.get("multiValueHeaders") or {}).items():
            out_headers[key] = ", ".join(map(str, values))
        payload = result.get("body") or ""
        data = base64.b64decode(payload) if result.get("isBase64Encoded") else payload.encode()
        return int(result["statusCode"]), out_headers, data

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "onnxkit-local-api"

            def setup(self) -> None:
                super().setup()
                # Keep-alive replies are two writes: without this each waits for a delayed ACK.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _serve(self) -> None:
                started = time.perf_counter()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = dict(self.headers.items())
                headers_ci = {k.lower(): v for k, v in headers.items()}
                if "x-api-key" in headers_ci:
                    headers["x-api-key"] = headers_ci["x-api-key"]
                try:
                    status, out_headers, data = api.handle(self.command, self.path, headers, body)
                except Exception as exc:  # the emulator died: a gateway error, not a hang
                    status, out_headers, data = _gateway_error(HTTPStatus.BAD_GATEWAY, str(exc))
                self.send_response(status)
                for key, value in out_headers.items():
                    if key.lower() not in ("content-length", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.log_message(
                    '"%s %s" %d %.1f ms',
                    self.command,
                    self.path,
                    status,
                    (time.perf_counter() - started) * 1000,
                )

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _serve

            def log_message(self, format: str, *args: Any) -> None:
                import sys

                sys.stderr.write("local-api " + (format % args) + "\n")

        return Handler


def _gateway_error(status: HTTPStatus, message: str) -> tuple[int, dict[str, str], bytes]:
    return (
        int(status),
        {"Content-Type": "application/json"},
        json.dumps({"message": message}).encode(),
    )
