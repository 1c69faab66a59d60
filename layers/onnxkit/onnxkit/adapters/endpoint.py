"""The SageMaker container edge: the route table as a Starlette app, served by uvicorn.

SageMaker's contract for a real-time inference container: listen on port 8080 (or
``SAGEMAKER_BIND_TO_PORT``), answer ``GET /ping`` with 200 once the model can serve, answer
``POST /invocations`` within 60 s, and stop within 30 s of SIGTERM (then comes SIGKILL).

The HTTP server is uvicorn (httptools parser, uvloop), configured rather than written: worker
processes (one per vCPU on CPU instances, one per GPU on GPU instances), keep-alive, a graceful
drain on SIGTERM bounded by ``ONNXKIT_DRAIN_SECONDS``. :class:`HardenedHttpToolsProtocol` adds
what uvicorn leaves out: a deadline for a request's headers (and between the chunks of its
body), caps on the URL and on header count and size, and JSON bodies on its own refusals.
Each worker loads the model in a background thread once it listens, so ``/ping`` answers 503
until then; requests beyond ``ONNXKIT_MAX_CONCURRENCY`` in flight get 503 ``overloaded``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from onnxkit.errors import (
    ConfigurationError,
    ModelNotReadyError,
    OnnxkitError,
    PayloadTooLargeError,
    error_body,
)
from onnxkit.predictor import Predictor
from onnxkit.routes import ENDPOINT, JSON, Route, RouteTable, negotiate
from onnxkit.session import available_cpus
from onnxkit.settings import EndpointSettings, Settings, unknown_variables

logger = logging.getLogger(__name__)

# Idle keep-alive connections are closed after this; generous, as SageMaker's front end
# pools its connections to the container.
KEEP_ALIVE_SECONDS = 300
LOAD_RETRY_MAX_SECONDS = 30.0
MAX_URL_BYTES = 8 * 1024
MAX_HEADERS = 100
MAX_HEADER_BYTES = 64 * 1024
SAGEMAKER_MODEL_DIR = "/opt/ml/model"
GPU_THREADS = 8  # per worker: CUDA runs release the GIL, so requests overlap on the device


# --- planning the workers -------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerPlan:
    """How many processes serve, and how each runs the model.

    Attributes:
        workers: Server processes.
        threads: Threads per worker that run the model (0: on the event loop).
        intra_op_threads: onnxruntime threads per session.
        gpus: GPUs visible (0 on a CPU instance).
    """

    workers: int
    threads: int
    intra_op_threads: int
    gpus: int


def plan_workers(settings: Settings, *, cpus: int, gpus: int) -> WorkerPlan:
    """Resolve the endpoint's "auto" settings for this machine.

    One worker per GPU when a GPU provider is asked for and a GPU is visible, else one per
    vCPU; each CPU worker's session gets its share of the CPUs, so workers do not fight over
    cores.

    Args:
        settings: The endpoint's settings.
        cpus: CPUs this process may use.
        gpus: GPUs visible.
    """
    gpus = gpus if settings.session.wants_gpu else 0
    configured = settings.endpoint
    workers = configured.workers or (gpus or cpus)
    threads = configured.threads
    if threads is None:
        threads = GPU_THREADS if gpus else 0
    if configured.batching:
        threads = max(threads, configured.batch_rows)  # a batch needs that many waiting requests
    intra = settings.session.intra_op_threads or max(1, cpus // workers)
    return WorkerPlan(workers=workers, threads=threads, intra_op_threads=intra, gpus=gpus)


def count_gpus(environ: Mapping[str, str], proc: Path = Path("/proc/driver/nvidia/gpus")) -> int:
    """GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else the driver's list."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        return sum(1 for _ in proc.iterdir())
    except OSError:
        return 0


def claim_gpu(gpus: int, lock_dir: Path | None = None) -> int:
    """The index of a GPU no other worker of this machine holds (held until the process ends).

    Workers are started alike and do not know their index, so each takes the first free
    device lock. With one GPU every worker uses device 0.
    """
    if gpus <= 1:
        return 0
    lock_dir = lock_dir or Path(tempfile.gettempdir())
    for index in range(gpus):
        handle = (lock_dir / f"onnxkit-gpu-{index}.lock").open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _HELD.append(handle)  # the lock lives as long as the process
        return index
    return os.getpid() % gpus  # more workers than GPUs: share


_HELD: list[Any] = []


class SiblingReadiness:
    """Whether every worker process of the server has loaded the model.

    ``/ping`` answers 200 only then: SageMaker sends traffic once a ping succeeds, and a
    request landing on a worker still loading would get 503. Each worker leaves a marker named
    after its pid in a folder its parent made; markers of dead workers do not count.

    Args:
        folder: The shared folder (:func:`readiness_folder` of the supervisor's pid).
        expected: How many workers the server runs.
    """

    def __init__(self, folder: Path, expected: int) -> None:
        self.folder = folder
        self.expected = expected
        folder.mkdir(parents=True, exist_ok=True)

    def mark_ready(self) -> None:
        """This worker has loaded the model."""
        (self.folder / str(os.getpid())).touch()

    def ready(self) -> int:
        """Workers alive that have loaded the model."""
        return sum(1 for marker in self.folder.iterdir() if _alive(marker.name))

    def check(self) -> None:
        """Raise unless every worker is ready.

        Raises:
            ModelNotReadyError: Some workers are still loading.
        """
        ready = self.ready()
        if ready < self.expected:
            raise ModelNotReadyError(
                f"{ready} of {self.expected} workers have loaded the model; retry shortly",
                headers={"Retry-After": "1"},
            )


def readiness_folder(supervisor_pid: int) -> Path:
    """Where the workers of one server leave their readiness markers."""
    return Path(tempfile.gettempdir()) / f"onnxkit-workers-{supervisor_pid}"


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def resolve_settings(settings: Settings, environ: Mapping[str, str]) -> tuple[Settings, WorkerPlan]:
    """The endpoint's settings with the plan applied (threads per session) and the plan."""
    plan = plan_workers(settings, cpus=available_cpus(dict(environ)), gpus=count_gpus(environ))
    session = replace(settings.session, intra_op_threads=plan.intra_op_threads)
    if plan.gpus:
        session = replace(session, gpu_device=claim_gpu(plan.gpus))
    return replace(settings, session=session), plan


# --- the app --------------------------------------------------------------------------------


def json_body(payload: Any) -> bytes:
    """Compact JSON bytes."""
    return json.dumps(payload, separators=(",", ":")).encode()


def error_response(error: BaseException) -> Response:
    """The JSON error response for any exception."""
    status, payload, headers = error_body(error)
    return Response(json_body(payload), int(status), headers, media_type=JSON)


class EndpointApp:
    """The container's routes around one :class:`Predictor`.

    Args:
        predictor: Serves the model (built with ``background=True``: requests never load it).
        table: The endpoint's routes.
        endpoint: Limits and timing of the server.
        threads: Threads that run the model (0: on the event loop).
    """

    def __init__(
        self,
        predictor: Predictor,
        table: RouteTable,
        endpoint: EndpointSettings,
        *,
        threads: int,
        siblings: SiblingReadiness | None = None,
    ) -> None:
        self.predictor = predictor
        self.table = table
        self.endpoint = endpoint
        self.siblings = siblings
        self.max_request_bytes = predictor.limits.max_request_bytes
        self._limiter = anyio.CapacityLimiter(threads) if threads else None
        self._stopping = threading.Event()
        self._maintainer: threading.Thread | None = None

    # -- requests --------------------------------------------------------------------------

    def handler(self, route: Route) -> Callable[[Request], Awaitable[Response]]:
        """The Starlette endpoint for one route of the table."""

        async def handle(request: Request) -> Response:
            return await self.serve(route, request, request.path_params)

        return handle

    async def serve(self, route: Route, request: Request, params: dict[str, str]) -> Response:
        """Read the body (bounded), dispatch through the table, answer JSON or the error."""
        started = time.perf_counter()
        try:
            headers = request.headers
            negotiate(route, content_type=headers.get("content-type"), accept=headers.get("accept"))
            body = await self._read_body(request) if route.takes_body else None
            if route.operation == "ping" and self.siblings is not None and self.predictor.ready:
                self.siblings.check()
            perform = partial(self.table.perform, self.predictor, route, params, body)
            if self._limiter is None or not route.takes_body:
                answer = perform()  # on the event loop: no hand-off for a small CPU model
            else:  # only inference goes to the threads: /ping never waits behind the model
                answer = await anyio.to_thread.run_sync(perform, limiter=self._limiter)
            response = (
                Response(json_body(answer), media_type=JSON)
                if route.answers_json
                else Response(b"")
            )
        except ClientDisconnect:
            return Response(b"", HTTPStatus.BAD_REQUEST)  # nobody is left to read it
        except Exception as exc:
            response = self.failure(request, exc)
        _log_request(request, response.status_code, started)
        return response

    async def fallback(self, request: Request, _: Exception | None = None) -> Response:
        """No Starlette route matched: the table decides 404 or 405 (or serves HEAD/trailing /)."""
        try:
            route, params = self.table.match(request.method, request.url.path)
        except OnnxkitError as exc:
            return self.failure(request, exc)
        return await self.serve(route, request, params)

    def failure(self, request: Request, error: Exception) -> Response:
        """Log a failure (5xx with its cause) and answer its JSON error body."""
        status, _, _ = error_body(error)
        if status >= 500:
            if isinstance(error, OnnxkitError):
                logger.error(
                    "%s %s failed: %s (%s)",
                    request.method,
                    request.url.path,
                    error.message,
                    error.code,
                )
            else:
                logger.exception("%s %s failed", request.method, request.url.path)
        return error_response(error)

    async def _read_body(self, request: Request) -> bytes:
        """The body, refused (413) by its declared size before it is read, or once it grows past."""
        limit = self.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(int(declared), limit)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit, more=True)
            chunks.append(chunk)
        return b"".join(chunks)

    # -- the model, in the background -------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Starlette) -> AsyncIterator[None]:
        """Load (and follow the alias) in a background thread; stop it on shutdown."""
        self._maintainer = threading.Thread(
            target=self._maintain, name="onnxkit-model", daemon=True
        )
        self._maintainer.start()
        yield
        self._stopping.set()
        close = getattr(self.predictor.current_backend, "close", None)
        if callable(close):  # a batching wrapper's dispatcher thread
            close(timeout_s=1.0)
        logger.info("stopped")

    def _maintain(self) -> None:
        """Load now, retrying with backoff so a transient fault heals; then follow the alias."""
        delay = 1.0
        while not self._stopping.is_set() and not self.predictor.try_load():
            self._stopping.wait(delay)
            delay = min(delay * 2, LOAD_RETRY_MAX_SECONDS)
        if self.siblings is not None and self.predictor.ready:
            self.siblings.mark_ready()
        interval = self.predictor.refresh_interval
        while interval and not self._stopping.wait(interval):
            self.predictor.refresh()


class ConcurrencyLimit:
    """ASGI middleware: at most ``limit`` requests in flight; more get 503 ``overloaded``.

    ``/ping`` is never refused: SageMaker would take a busy instance for a dead one.
    """

    def __init__(self, app: ASGIApp, limit: int, exempt: tuple[str, ...] = ("/ping",)) -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            response = error_response(
                ModelNotReadyError(
                    f"this worker has {self.in_flight} requests in flight (the limit is "
                    f"{self.limit}); retry shortly",
                    code="overloaded",
                    headers={"Retry-After": "1"},
                )
            )
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def create_app(
    predictor: Predictor,
    settings: Settings,
    *,
    threads: int = 0,
    siblings: SiblingReadiness | None = None,
) -> tuple[ConcurrencyLimit, EndpointApp]:
    """The ASGI app of one worker: Starlette routes generated from the route table.

    Args:
        predictor: The model (built for the endpoint role).
        settings: The endpoint's settings (limits, OpenAPI, concurrency).
        threads: Threads that run the model (0: on the event loop).
        siblings: With several workers, their shared readiness (``/ping`` waits for all).

    Returns:
        The ASGI app to serve, and the :class:`EndpointApp` behind it (for tests).
    """
    table = RouteTable(ENDPOINT, openapi=settings.api.serve_openapi)
    endpoint = EndpointApp(predictor, table, settings.endpoint, threads=threads, siblings=siblings)
    routes = [
        StarletteRoute(route.path, endpoint.handler(route), methods=[route.method])
        for route in table.routes
    ]
    app = Starlette(
        routes=routes,
        lifespan=endpoint.lifespan,
        exception_handlers={HTTPException: endpoint.fallback},
    )
    app.router.redirect_slashes = False  # the table tolerates a trailing slash itself
    app.router.default = _asgi(endpoint.fallback)
    return ConcurrencyLimit(app, settings.endpoint.max_concurrency), endpoint


def _asgi(view: Callable[[Request], Awaitable[Response]]) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = await view(Request(scope, receive))
        await response(scope, receive, send)

    return app


def app_from_env() -> ASGIApp:
    """The app factory each uvicorn worker calls: settings from the environment, model loaded
    in the background."""
    from onnxkit.compose import build_predictor

    configure_logging()
    settings, plan = resolve_settings(_endpoint_settings(os.environ), os.environ)
    predictor = build_predictor(settings, role=ENDPOINT)
    siblings = None
    if plan.workers > 1:  # spawned by uvicorn's supervisor, whose pid names the shared folder
        siblings = SiblingReadiness(readiness_folder(os.getppid()), plan.workers)
    app, _ = create_app(predictor, settings, threads=plan.threads, siblings=siblings)
    return app


# --- the server -----------------------------------------------------------------------------


class HardenedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits it lacks, and JSON on its own refusals.

    - A client must send a request's headers within ``header_timeout`` seconds of connecting
      (or of its first byte, on a kept-alive connection), and may not pause longer than that
      between the chunks of a body; then it gets 408 and the connection is closed.
    - The URL is capped at :data:`MAX_URL_BYTES`, headers at :data:`MAX_HEADERS` and
      :data:`MAX_HEADER_BYTES` in all; beyond, 400 and close.

    The parsing itself (framing, Content-Length and chunk checks) is httptools'.
    """

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._header_timeout = float(getattr(config, "header_timeout", 10.0))
        self._url_bytes = self._header_count = self._header_bytes = 0

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self._header_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self._refuse(
                HTTPStatus.REQUEST_TIMEOUT, "request_timeout", "the request did not arrive in time"
            )

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._url_bytes = self._header_count = self._header_bytes = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > MAX_URL_BYTES:
            raise ValueError("URL too long")  # httptools turns it into a parser error: 400
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_bytes += len(name) + len(value)
        if self._header_count > MAX_HEADERS or self._header_bytes > MAX_HEADER_BYTES:
            raise ValueError("too many or too large headers")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if not self.parser.should_upgrade() and self.cycle is not None and self.cycle.more_body:
            self._arm()  # a body follows: it may not stall either

    def on_body(self, body: bytes) -> None:
        self._arm()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        self._refuse(HTTPStatus.BAD_REQUEST, "bad_request", f"malformed HTTP request: {msg}")

    def _refuse(self, status: HTTPStatus, code: str, message: str) -> None:
        body = json_body({"error": {"code": code, "message": message}})
        head = (
            f"HTTP/1.1 {status.value} {status.phrase}\r\ncontent-type: {JSON}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode("ascii") + body)
        self.transport.close()


def _endpoint_settings(environ: Mapping[str, str]) -> Settings:
    """Settings for the container: without a store or folder, SageMaker's /opt/ml/model."""
    environ = dict(environ)
    if (
        not environ.get("ONNXKIT_MODEL_DIR", "").strip()
        and not environ.get("ONNXKIT_MODEL_STORE", "").strip()
    ):
        environ["ONNXKIT_MODEL_DIR"] = SAGEMAKER_MODEL_DIR
    return Settings.from_env(environ)


def main(environ: Mapping[str, str] | None = None) -> int:
    """The container's entry point (``serve``): validate, then serve until SIGTERM and drain.

    Configuration errors, and a model folder that does not exist, fail here at once (exit 2)
    rather than in every worker.

    Returns:
        The exit code: 0 after a graceful stop, 2 for bad configuration, 1 when the server
        could not start.
    """
    from onnxkit.aws import AwsClients
    from onnxkit.compose import open_source

    environ = os.environ if environ is None else environ
    configure_logging()
    for name in unknown_variables(environ):
        logger.warning("ignoring unknown variable %s (a typo?)", name)
    try:
        settings = _endpoint_settings(environ)
        for old, new in settings.deprecated_variables:
            logger.warning("%s is deprecated; set %s instead", old, new)
        if settings.model.model_dir is not None:
            open_source(settings, AwsClients())  # a missing folder fails now, not per worker
        plan = plan_workers(settings, cpus=available_cpus(dict(environ)), gpus=count_gpus(environ))
    except ConfigurationError as exc:
        logger.error("%s", exc.message)
        return 2
    logger.info(
        "starting",
        extra={
            "host": settings.endpoint.host,
            "port": settings.endpoint.port,
            "workers": plan.workers,
            "threads": plan.threads,
            "intra_op_threads": plan.intra_op_threads,
            "gpus": plan.gpus,
            "batch_rows": settings.endpoint.batch_rows,
        },
    )
    config = EndpointConfig(
        "onnxkit.adapters.endpoint:app_from_env",
        factory=True,
        host=settings.endpoint.host,
        port=settings.endpoint.port,
        workers=plan.workers,
        http=HardenedHttpToolsProtocol,
        loop="uvloop" if _has("uvloop") else "asyncio",
        lifespan="on",
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=int(settings.endpoint.drain_seconds),
        access_log=False,
        log_config=None,
        server_header=False,
        header_timeout=settings.endpoint.header_timeout,
    )
    server = uvicorn.Server(config)
    # uvicorn drains on SIGTERM/SIGINT, then raises the signal again for whoever handled it
    # before: handle it here, so a drained server exits 0 rather than dying by the signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(
            sig, lambda signum, _: logger.info("stopped by %s", signal.Signals(signum).name)
        )
    folder = readiness_folder(os.getpid())
    try:
        if plan.workers > 1:  # uvicorn's supervisor: spawns, watches and restarts the workers
            from uvicorn.supervisors import Multiprocess

            folder.mkdir(exist_ok=True)
            Multiprocess(config, sockets=[config.bind_socket()]).run()
        else:
            server.run()
    except OSError as exc:
        logger.error(
            "cannot listen on %s:%d: %s",
            settings.endpoint.host,
            settings.endpoint.port,
            exc.strerror or exc,
        )
        return 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if plan.workers == 1 and not server.started:
        return 1
    return 0


class EndpointConfig(uvicorn.Config):
    """uvicorn's config plus what :class:`HardenedHttpToolsProtocol` reads (pickled to workers)."""

    def __init__(self, app: Any, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout = header_timeout


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _too_large(size: int, limit: int, *, more: bool = False) -> PayloadTooLargeError:
    # The rest of the body is not read: close the connection rather than wait for it.
    return PayloadTooLargeError(
        f"the body is {'over ' if more else ''}{size} bytes; the limit is {limit} "
        "(for larger payloads split the batch)",
        headers={"Connection": "close"},
    )


def _log_request(request: Request, status: int, started: float) -> None:
    # Successful requests at DEBUG: one line each would cost CPU and log volume at scale.
    level = logging.DEBUG if status < 400 else logging.INFO
    if logger.isEnabledFor(level):
        logger.log(
            level,
            "request",
            extra={
                "method": request.method,
                "path": request.url.path,
                "status": status,
                "ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )


# --- logging --------------------------------------------------------------------------------


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    _STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {
        "message",
        "asctime",
        "color_message",
    }

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
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []  # propagate to the root's JSON handler


def exit_after() -> None:
    """Run :func:`main` and exit with its code, skipping interpreter teardown.

    A model load still going in a daemon thread (SIGTERM during loading) must not turn a
    clean stop into a crash at teardown.
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_after()
