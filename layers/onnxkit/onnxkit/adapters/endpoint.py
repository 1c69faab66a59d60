"""The SageMaker container edge: ``/ping`` and ``/invocations`` over HTTP, with a graceful drain.

SageMaker's contract for a real-time inference container: listen on port 8080 (or
``SAGEMAKER_BIND_TO_PORT``), answer ``GET /ping`` with 200 once the model can serve, answer
``POST /invocations`` within 60 s, and stop within 30 s of SIGTERM (then comes SIGKILL).

The server is the standard library's: one thread per connection (capped), a pool of
``server_threads`` slots that bounds concurrent inferences, bodies refused by their
Content-Length before they are read. The model loads in a background thread once the socket
is bound, so ``/ping`` answers 503 while it loads. On SIGTERM the server stops accepting,
closes idle keep-alive connections, lets in-flight requests finish (bounded) and exits.

``/invocations`` takes the same Open Inference Protocol v2 JSON as the Lambda function (the
endpoint serves one model, so the name is implied). The v2 routes (``/v2/models/{name}/infer``
and metadata) are served too, for local tools such as tritonclient.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import unquote, urlsplit

from onnxkit.codecs import check_content_type
from onnxkit.errors import (
    InvalidInputError,
    MethodNotAllowedError,
    ModelNotReadyError,
    NotAcceptableError,
    OnnxkitError,
    PayloadTooLargeError,
    RouteNotFoundError,
    error_body,
)
from onnxkit.predictor import Predictor
from onnxkit.settings import Settings

logger = logging.getLogger(__name__)

JSON = "application/json"
DEFAULT_PORT = 8080
# SageMaker sends SIGKILL 30 s after SIGTERM: finish in-flight work well before that.
DRAIN_SECONDS = 25.0
# Idle keep-alive connections are closed after this; generous, as the front end pools them.
IDLE_TIMEOUT_SECONDS = 300.0
MAX_CONNECTIONS = 256
LOAD_RETRY_MAX_SECONDS = 30.0
_CHUNK_LINE_LIMIT = 1024

_JSON_RANGES = frozenset({"*/*", "application/*", "application/json"})


class _Route:
    def __init__(self, method: str, pattern: str, name: str) -> None:
        self.method = method
        self.pattern = re.compile(pattern)
        self.name = name


_MODEL = r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?"
_ROUTES = (
    _Route("GET", r"^/ping/?$", "ping"),
    _Route("POST", r"^/invocations/?$", "invocations"),
    # What boto3's sagemaker-runtime sends when its endpoint_url points here (local runs).
    _Route("POST", r"^/endpoints/[^/]+/invocations/?$", "invocations"),
    _Route("GET", r"^/v2/?$", "server_metadata"),
    _Route("GET", r"^/v2/health/live/?$", "live"),
    _Route("GET", r"^/v2/health/ready/?$", "ready"),
    _Route("GET", rf"^{_MODEL}/?$", "model_metadata"),
    _Route("GET", rf"^{_MODEL}/ready/?$", "model_ready"),
    _Route("POST", rf"^{_MODEL}/infer/?$", "infer"),
)


def accepts_json(accept: str | None) -> bool:
    """Whether an ``Accept`` header admits ``application/json`` (absent: anything goes).

    Args:
        accept: The header's value, e.g. ``text/csv, application/*;q=0.5``.
    """
    if accept is None or not accept.strip():
        return True
    for media_range in accept.split(","):
        media, *params = (part.strip() for part in media_range.split(";"))
        if media.lower() not in _JSON_RANGES:
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            return True
    return False


class EndpointServer:
    """The container's HTTP server around one :class:`Predictor`.

    The socket is bound when the object is created; :meth:`start` serves in background
    threads and starts loading the model; :meth:`drain` stops it gracefully.

    Args:
        predictor: Serves the model; it is loaded by a background thread after :meth:`start`.
        host: Address to bind (``0.0.0.0`` in the container, ``127.0.0.1`` locally).
        port: TCP port; 0 picks a free one.
        threads: Requests that run the model at once; more wait for a slot.
        max_request_bytes: Larger bodies are refused (413) before they are read.
        idle_timeout_s: Idle keep-alive connections (and stalled reads) are closed after this.
        max_connections: Open connections beyond this are answered 503 and closed.
    """

    def __init__(
        self,
        predictor: Predictor,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        threads: int = 8,
        max_request_bytes: int = 6 * 1024 * 1024,
        idle_timeout_s: float = IDLE_TIMEOUT_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.predictor = predictor
        self.max_request_bytes = max_request_bytes
        self._slots = threading.BoundedSemaphore(threads)
        self._max_connections = max_connections
        self._state = threading.Condition()
        self._connections: dict[_Handler, bool] = {}  # handler -> busy with a request
        self._active = 0
        self._draining = False
        self._stopping = threading.Event()
        self._serve_thread: threading.Thread | None = None
        self._load_thread: threading.Thread | None = None
        handler = type("Handler", (_Handler,), {"endpoint": self, "timeout": idle_timeout_s})
        self._server = _Server((host, port), handler, self)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The bound address."""
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL (loopback when bound to every interface)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"

    @property
    def draining(self) -> bool:
        """True once :meth:`drain` has begun."""
        return self._draining

    @property
    def loading(self) -> bool:
        """True while the background load (or its retries) is still going on."""
        return self._load_thread is not None and self._load_thread.is_alive()

    def start(self) -> EndpointServer:
        """Serve in a background thread and load the model in another."""
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True,
            name="onnxkit-http",
        )  # fmt: skip
        self._serve_thread.start()
        self._load_thread = threading.Thread(target=self._load, daemon=True, name="onnxkit-load")
        self._load_thread.start()
        return self

    def _load(self) -> None:
        """Load now; on failure retry with backoff, so a transient fault heals by itself."""
        delay = 1.0
        while not self._stopping.is_set():
            if self.predictor.try_load():
                return
            self._stopping.wait(delay)
            delay = min(delay * 2, LOAD_RETRY_MAX_SECONDS)

    def drain(self, timeout_s: float = DRAIN_SECONDS) -> bool:
        """Stop accepting, close idle connections, wait for in-flight requests to finish.

        Args:
            timeout_s: The longest to wait for in-flight requests.

        Returns:
            True when every connection finished within the bound.
        """
        deadline = time.monotonic() + timeout_s
        with self._state:
            self._draining = True
        self._stopping.set()
        if self._serve_thread is not None and self._serve_thread.is_alive():
            self._server.shutdown()  # the accept loop ends...
        self._server.socket.close()  # ...and new connections are refused from here on
        with self._state:
            idle = [handler for handler, busy in self._connections.items() if not busy]
            in_flight = len(self._connections) - len(idle)
        for handler in idle:
            handler.stop_reading()
        logger.info("draining", extra={"in_flight": in_flight, "idle_closed": len(idle)})
        with self._state:
            while self._active and (remaining := deadline - time.monotonic()) > 0:
                self._state.wait(remaining)
            left = self._active
        if left:
            logger.warning(
                "drain bound reached with requests still in flight",
                extra={"left": left, "bound_s": timeout_s},
            )
            return False
        logger.info("drained")
        return True

    def close(self, timeout_s: float = 1.0) -> None:
        """Drain (briefly, unless already drained) and release the socket (idempotent)."""
        if not self._draining:
            self.drain(timeout_s)
        self._server.server_close()

    def __enter__(self) -> EndpointServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- connection bookkeeping (called by the server and handlers) ------------------------

    def _admit(self) -> bool:
        with self._state:
            if self._active >= self._max_connections:
                return False
            self._active += 1
            return True

    def _release(self) -> None:
        with self._state:
            self._active -= 1
            self._state.notify_all()

    def _track(self, handler: _Handler, *, busy: bool | None) -> None:
        """Record a connection as busy, idle (waiting for a request) or gone (None)."""
        with self._state:
            if busy is None:
                self._connections.pop(handler, None)
                return
            self._connections[handler] = busy
            if not busy and self._draining:
                # Between requests while draining: read only what has already arrived.
                handler.stop_reading()

    # -- requests --------------------------------------------------------------------------

    def ping(self) -> tuple[int, bytes]:
        """``GET /ping``: 200 with an empty body once the model is loaded, else 503.

        Raises:
            ModelNotReadyError: Loading, failed to load (the reason is in the message), or
                shutting down.
        """
        if self._draining:
            raise ModelNotReadyError("the endpoint is shutting down")
        if not self.predictor.ready:
            raise self._not_ready()
        return HTTPStatus.OK, b""

    def _not_ready(self) -> ModelNotReadyError:
        cause = self.predictor.last_error
        if cause is None:
            return ModelNotReadyError(
                "the model is still loading; GET /ping answers 200 once it is ready",
                headers={"Retry-After": "1"},
            )
        return ModelNotReadyError(
            f"the model is not loaded: {cause.message} ({cause.code}); retrying in the background",
            headers={"Retry-After": "5"},
        )

    def route(
        self, method: str, path: str, headers: Any, read_body: Callable[[], bytes]
    ) -> tuple[int, bytes]:
        """One request -> (status, JSON body). Raises OnnxkitError for the error responses."""
        route, match = _match(method, path)
        if route.name == "ping":
            return self.ping()
        if route.name == "live":
            return _json(HTTPStatus.OK, {"live": True})
        if not accepts_json(headers.get("Accept")):
            raise NotAcceptableError(
                f"Accept {headers.get('Accept')!r} admits no JSON; this endpoint answers "
                f"{JSON} only"
            )
        takes_body = route.name in ("invocations", "infer")
        if takes_body:
            check_content_type(headers.get("Content-Type"))
        if not self.predictor.ready:
            raise self._not_ready()  # never hold a request thread on a load in progress
        predictor = self.predictor
        params = match.groupdict()
        name = unquote(params.get("model") or predictor.model_name)
        version = unquote(params["version"]) if params.get("version") else None
        if takes_body:
            body = read_body()
            with self._slots:
                result = predictor.infer(name, version, body, headers.get("Content-Type"))
            return _json(HTTPStatus.OK, result)
        if route.name == "server_metadata":
            return _json(HTTPStatus.OK, predictor.server_metadata())
        if route.name == "ready":
            return _json(HTTPStatus.OK, predictor.server_ready())
        if route.name == "model_ready":
            return _json(HTTPStatus.OK, predictor.model_ready(name, version))
        return _json(HTTPStatus.OK, predictor.model_metadata(name, version))


def _match(method: str, path: str) -> tuple[_Route, re.Match[str]]:
    allowed = []
    for route in _ROUTES:
        match = route.pattern.match(path)
        if match is None:
            continue
        if route.method == method or (method == "HEAD" and route.method == "GET"):
            return route, match
        allowed.append(route.method)
    if allowed:
        raise MethodNotAllowedError(
            f"{method} is not allowed on {path}; use {', '.join(sorted(set(allowed)))}",
            headers={"Allow": ", ".join(sorted(set(allowed)))},
        )
    raise RouteNotFoundError(
        f"no route for {method} {path}; this endpoint serves GET /ping and POST /invocations "
        "(and the v2 routes under /v2)"
    )


def _json(status: int, body: Any) -> tuple[int, bytes]:
    return status, json.dumps(body, separators=(",", ":")).encode()


class _Server(ThreadingHTTPServer):
    """Thread per connection, with a cap, and no reverse DNS at bind time."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        endpoint: EndpointServer,
    ) -> None:
        self.endpoint = endpoint
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), which can stall for seconds without DNS
        # (SageMaker's network isolation); the name is never used here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.endpoint._admit():
            logger.warning("connection refused: too many open connections")
            threading.Thread(target=_refuse, args=(request,), daemon=True).start()
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.endpoint._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.endpoint._release()


def _overloaded_response() -> bytes:
    _, payload, _ = error_body(
        ModelNotReadyError("too many open connections; retry shortly", code="overloaded")
    )
    body = json.dumps(payload, separators=(",", ":")).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


_OVERLOADED = _overloaded_response()


def _refuse(request: socket.socket) -> None:
    """Answer 503 on a connection over the cap, then close it gently.

    The request is read first (briefly): closing a socket with unread data resets it, and the
    client would see a reset instead of the 503.
    """
    with contextlib.suppress(OSError):
        request.settimeout(1.0)
        request.recv(65536)
        request.sendall(_OVERLOADED)
        request.shutdown(socket.SHUT_WR)
        request.recv(65536)
    request.close()


class _Handler(BaseHTTPRequestHandler):
    """Translates HTTP to :meth:`EndpointServer.route` and its errors to JSON bodies."""

    endpoint: EndpointServer
    protocol_version = "HTTP/1.1"
    server_version = "onnxkit-endpoint"

    def version_string(self) -> str:
        """The Server header: no Python version for the world to read."""
        return self.server_version

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as separate writes: with Nagle's algorithm on, a reused
        # (keep-alive) connection then waits ~40 ms for the client's delayed ACK per reply.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._unread_body = False

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.endpoint._track(self, busy=None)

    def stop_reading(self) -> None:
        """End the wait for another request: queued bytes are still read, then EOF."""
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RD)

    def handle_one_request(self) -> None:
        self.endpoint._track(self, busy=False)
        super().handle_one_request()

    def parse_request(self) -> bool:
        self.endpoint._track(self, busy=True)  # the request line has arrived
        return super().parse_request()

    def _serve(self) -> None:
        started = time.perf_counter()
        path = urlsplit(self.path).path
        self._unread_body = self.command not in ("GET", "HEAD") and (
            self.headers.get("Content-Length", "0").strip() not in ("", "0")
            or "Transfer-Encoding" in self.headers
        )
        try:
            status, body = self.endpoint.route(self.command, path, self.headers, self._read_body)
            headers: dict[str, str] = {}
        except Exception as exc:
            status, payload, headers = error_body(exc)
            body = json.dumps(payload, separators=(",", ":")).encode()
            if status >= 500:
                if isinstance(exc, OnnxkitError):
                    logger.error("%s %s failed: %s (%s)", self.command, path, exc.message, exc.code)
                else:
                    logger.exception("%s %s failed", self.command, path)
        self._respond(int(status), body, headers)
        level = logging.DEBUG if path.startswith("/ping") and status == 200 else logging.INFO
        logger.log(
            level,
            "request",
            extra={
                "method": self.command,
                "path": path,
                "status": int(status),
                "ms": round((time.perf_counter() - started) * 1000, 2),
                "bytes": len(body),
            },
        )

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

    def _respond(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        if self._unread_body or self.endpoint.draining:
            self.close_connection = True  # a body we did not read would be taken as a request
        try:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            if body:
                self.send_header("Content-Type", JSON)
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError as exc:  # the client went away; nothing left to tell it
            logger.info("client disconnected before the response: %s", exc)
            self.close_connection = True

    def _read_body(self) -> bytes:
        """The request body, refused (413) by its declared size before it is read.

        Raises:
            PayloadTooLargeError: Larger than ``max_request_bytes``.
            InvalidInputError: A malformed length or chunk, or a body cut short.
        """
        limit = self.endpoint.max_request_bytes
        encoding = self.headers.get("Transfer-Encoding", "").strip().lower()
        if encoding:
            if encoding != "chunked":
                raise InvalidInputError(f"Transfer-Encoding {encoding!r} is not supported")
            body = self._read_chunked(limit)
        else:
            raw = self.headers.get("Content-Length", "").strip()
            if not raw:
                return b""
            if not raw.isdigit():
                raise InvalidInputError(f"Content-Length {raw!r} is not a number of bytes")
            length = int(raw)
            if length > limit:
                raise PayloadTooLargeError(
                    f"the body is {length} bytes; the limit is {limit} "
                    "(for larger payloads split the batch)"
                )
            body = self.rfile.read(length)
            if len(body) != length:
                raise InvalidInputError(
                    f"the body ended after {len(body)} of {length} bytes (Content-Length)"
                )
        self._unread_body = False
        return body

    def _read_chunked(self, limit: int) -> bytes:
        chunks: list[bytes] = []
        size_so_far = 0
        while True:
            line = self.rfile.readline(_CHUNK_LINE_LIMIT)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise InvalidInputError("the chunked body is malformed") from None
            if size == 0:
                break
            size_so_far += size
            if size_so_far > limit:
                raise PayloadTooLargeError(
                    f"the body is over the limit of {limit} bytes "
                    "(for larger payloads split the batch)"
                )
            chunk = self.rfile.read(size)
            if len(chunk) != size or self.rfile.readline(_CHUNK_LINE_LIMIT) != b"\r\n":
                raise InvalidInputError("the chunked body ended early or is malformed")
            chunks.append(chunk)
        while self.rfile.readline(_CHUNK_LINE_LIMIT) not in (b"\r\n", b"\n", b""):
            pass  # trailers: ignored
        return b"".join(chunks)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (bad request line, huge headers), as JSON."""
        status = HTTPStatus(code)
        payload = {
            "error": {
                "code": status.phrase.lower().replace(" ", "_").replace("-", "_"),
                "message": message or status.description or status.phrase,
            }
        }
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # an unparsable request line: answer as 1.1
            self.request_version = self.protocol_version
        self._respond(code, json.dumps(payload, separators=(",", ":")).encode(), {})

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # _serve writes one structured line per request

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("http: " + format, *args)


# --- composition and the entry point --------------------------------------------------------


def build_endpoint_predictor(settings: Settings) -> Predictor:
    """The predictor the container serves: a model folder, or the registry when none is set.

    With ``model_dir`` the folder is verified against its ``manifest.json`` (when present),
    loaded on ``settings.providers`` and, with ``batch_max_size`` > 0, wrapped in dynamic
    batching. Without it the registry (S3 store and alias) is used, as the Lambda function
    does, and the model always runs in this process.
    """
    from dataclasses import replace

    from onnxkit.backends import Backend
    from onnxkit.predictor import Limits

    limits = Limits(
        max_request_bytes=settings.max_request_bytes, max_batch_size=settings.max_batch_size
    )
    from onnxkit.backends.batching import BatchingBackend

    def batched(backend: Backend) -> Backend:
        if settings.batch_max_size > 1:
            return BatchingBackend(
                backend,
                max_size=settings.batch_max_size,
                max_wait_ms=settings.batch_max_wait_ms,
            )
        return backend

    if settings.model_dir is None:
        from onnxkit.compose import build_predictor

        # The endpoint is where "sagemaker" models run: never forward to an endpoint from here.
        return build_predictor(replace(settings, backend="lambda"), wrap_backend=batched)

    from onnxkit.sources import load_model_dir

    folder = Path(settings.model_dir)
    return Predictor(settings.model_name, lambda: batched(load_model_dir(folder, settings)), limits)


def run_endpoint(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    drain_s: float = DRAIN_SECONDS,
    predictor: Predictor | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[EndpointServer], None] | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT (or ``stop``), then drain and return the exit code.

    Args:
        settings: Threads, limits and (unless ``predictor`` is given) the model to serve.
        host: Address to bind.
        port: TCP port (0: a free one; ``on_ready`` is told which).
        drain_s: Bound on waiting for in-flight requests after the signal.
        predictor: Serve this instead of building one from ``settings``.
        stop: Set it to stop as a signal would (signals are only handled on the main thread).
        on_ready: Called with the server once it listens.

    Returns:
        0 after a complete drain; 1 if requests were still running at the bound, or the
        address could not be bound.
    """
    stop = stop or threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, on_signal)
    try:
        if predictor is None:
            predictor = build_endpoint_predictor(settings)
        try:
            server = EndpointServer(
                predictor,
                host,
                port,
                threads=settings.server_threads,
                max_request_bytes=settings.max_request_bytes,
            )
        except OSError as exc:
            logger.error("cannot listen on %s:%d: %s", host, port, exc.strerror or exc)
            return 1
        server.start()
        logger.info(
            "listening",
            extra={
                "host": server.host,
                "port": server.port,
                "model": predictor.model_name,
                "threads": settings.server_threads,
                "batch_max_size": settings.batch_max_size,
            },
        )
        if on_ready is not None:
            on_ready(server)
        while not stop.wait(0.5):
            pass
        logger.info("stopping", extra={"signal": received[0] if received else "stop event"})
        drained = server.drain(drain_s)
        server.close()
        _close_backend(predictor)
        return 0 if drained else 1
    finally:
        for restored, handler in previous.items():
            signal.signal(restored, handler)


def _close_backend(predictor: Predictor) -> None:
    """Stop a batching thread, if the served backend has one (nothing is in flight now)."""
    if not predictor.ready:
        return
    close = getattr(predictor.load(), "close", None)
    if callable(close):
        close(timeout_s=1.0)


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    _STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        """Format a record as a JSON line."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stderr as JSON lines (CloudWatch reads the container's output)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLinesFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
