"""The endpoint app of one worker: the route table as Starlette routes, a limit on requests in
flight, and the model loaded (and its alias followed) in a background thread."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import partial
from http import HTTPStatus
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from onnxkit.adapters.endpoint.logs import configure_logging
from onnxkit.adapters.endpoint.workers import (
    SiblingReadiness,
    endpoint_settings,
    readiness_folder,
    resolve_settings,
)
from onnxkit.codecs import Reply, encode_json
from onnxkit.errors import OnnxkitError, OverloadedError, PayloadTooLargeError, error_body
from onnxkit.predictor import Serving
from onnxkit.routes import ENDPOINT, JSON, Route, RouteTable, negotiate
from onnxkit.settings import Settings

logger = logging.getLogger(__name__)

LOAD_RETRY_MAX_SECONDS = 30.0
# Without model threads (the CPU default), a request runs on the event loop only when it is
# bounded to be cheap: a body of at most this size, not a bare image or sentence, for a model
# whose declared processing does not expand its inputs (images resized, sentences padded).
# That spares the small tensor requests that make up most traffic a thread hop (~10% of a
# small model's throughput). 4 KiB holds at most ~1,000 numbers to parse; were it a PNG,
# deflate's ~1032:1 ceiling would bound it to ~4 million bytes of pixels, tens of milliseconds.
# Anything else runs in one thread beside the loop, so /ping never waits behind it. A model
# that is slow even on small inputs wants ONNXKIT_SERVER_THREADS.
LOOP_BODY_BYTES = 4 * 1024
_DECODED_MEDIA = ("image/", "text/")


def error_response(error: BaseException) -> Response:
    """The JSON error response for any exception."""
    status, payload, headers = error_body(error)
    return Response(encode_json(payload), int(status), headers, media_type=JSON)


class EndpointApp:
    """The container's routes around one model's predictor, or a repository of many.

    A request counts against ``max_concurrency`` once its body is in, not while it arrives:
    clients trickling bodies are bounded by the protocol's connection cap and body deadline,
    and cannot fill the slots of requests ready to run. ``/ping`` never counts: SageMaker would
    take a busy instance for a dead one.

    Args:
        predictor: Serves the model (built with ``background=True``: requests never load it).
        table: The endpoint's routes.
        threads: Threads that run the model (0: on the event loop, or, for a request that may
            be expensive, one thread beside it; see :data:`LOOP_BODY_BYTES`).
        siblings: With several workers, their shared readiness.
        max_concurrency: Requests in flight before more get 503 ``overloaded``.
    """

    def __init__(
        self,
        predictor: Serving,
        table: RouteTable,
        *,
        threads: int,
        siblings: SiblingReadiness | None = None,
        max_concurrency: int = 64,
    ) -> None:
        self.predictor = predictor
        self.table = table
        self.siblings = siblings
        self.max_request_bytes = predictor.limits.max_request_bytes
        self.max_concurrency = max_concurrency
        self.in_flight = 0
        self._limiter = anyio.CapacityLimiter(threads) if threads else None
        # One worker per vCPU: more than one expensive request at a time would only share it.
        self._beside_loop = anyio.CapacityLimiter(1)
        self._light = False  # the served versions declare no expanding processing
        self._light_for: tuple[object, object] | None = None
        self._many = not predictor.model_name  # a repository: no single model
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
            content_type = headers.get("content-type")
            negotiate(route, content_type=content_type, accept=headers.get("accept"))
            body = await self._read_body(request, params) if route.reads_body else None
            perform = partial(self.table.perform, self.predictor, route, params, body, headers)
            if route.operation == "ping":
                if self.siblings is not None and self.predictor.ready:
                    self.siblings.check()
                answer = perform()
            else:
                answer = await self._run(route, perform, body, content_type)
            if isinstance(answer, Reply):  # JSON or binary tensors, encoded already
                response = Response(
                    answer.body, route.status, answer.headers, media_type=answer.content_type
                )
            elif route.answers_json:
                response = Response(encode_json(answer), route.status, media_type=JSON)
            else:
                response = Response(b"")
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
        if status >= 500 and not isinstance(error, OverloadedError):  # load, not a fault
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

    async def _run(
        self,
        route: Route,
        perform: Callable[[], Any],
        body: bytes | None,
        content_type: str | None,
    ) -> Any:
        """Perform a request whose body is in, as one of at most ``max_concurrency``.

        Raises:
            OnnxkitError: 503 ``overloaded`` past the limit; else what the operation raises.
        """
        if self.in_flight >= self.max_concurrency:
            raise OverloadedError(
                f"this worker has {self.in_flight} requests in flight (the limit is "
                f"{self.max_concurrency}); retry shortly",
                headers={"Retry-After": "1"},
            )
        self.in_flight += 1
        try:
            if self._many and (route.params or route.takes_body):
                # Many models: any request naming one may load it (seconds), which must not
                # hold the event loop, and /ping with it.
                return await anyio.to_thread.run_sync(perform, limiter=self._limiter)
            if not route.takes_body:
                return perform()  # metadata and readiness: cheap, on the loop
            if self._limiter is not None:  # model threads: inference always goes to them
                return await anyio.to_thread.run_sync(perform, limiter=self._limiter)
            if self._cheap(body, content_type):
                return perform()  # on the event loop: no hand-off for a small CPU request
            return await anyio.to_thread.run_sync(perform, limiter=self._beside_loop)
        finally:
            self.in_flight -= 1

    def _cheap(self, body: bytes | None, content_type: str | None) -> bool:
        """Whether the request is bounded to be cheap (see :data:`LOOP_BODY_BYTES`)."""
        if body is not None and len(body) > LOOP_BODY_BYTES:
            return False
        if content_type is not None and content_type.lstrip().lower().startswith(_DECODED_MEDIA):
            return False
        # Decided once per loaded stable version and canary (a swap or a new canary decides
        # again): the manifests do not change while they serve.
        served = (self.predictor.current_backend, getattr(self.predictor, "canary_version", None))
        if served != self._light_for:
            manifests = getattr(self.predictor, "served_manifests", None)
            self._light = manifests is not None and not any(
                _expands(manifest.processing) for manifest in manifests
            )
            self._light_for = served
        return self._light

    async def _read_body(self, request: Request, params: dict[str, str]) -> bytes:
        """The body, refused (413) by its declared size before it is read, or once it grows past."""
        limit = self.max_request_bytes
        model = params.get("name")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(int(declared), limit, model)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit, model, more=True)
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


def create_app(
    predictor: Serving,
    settings: Settings,
    *,
    threads: int = 0,
    siblings: SiblingReadiness | None = None,
) -> tuple[ASGIApp, EndpointApp]:
    """The ASGI app of one worker: Starlette routes generated from the route table.

    Args:
        predictor: The model (built for the endpoint role).
        settings: The endpoint's settings (limits, OpenAPI, concurrency).
        threads: Threads that run the model (0: small requests on the event loop, others in
            one thread beside it).
        siblings: With several workers, their shared readiness (``/ping`` waits for all).

    Returns:
        The ASGI app to serve, and the :class:`EndpointApp` behind it (for tests).
    """
    table = RouteTable(ENDPOINT, openapi=settings.api.serve_openapi)
    endpoint = EndpointApp(
        predictor,
        table,
        threads=threads,
        siblings=siblings,
        max_concurrency=settings.endpoint.max_concurrency,
    )
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
    return app, endpoint


def _asgi(view: Callable[[Request], Awaitable[Response]]) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = await view(Request(scope, receive))
        await response(scope, receive, send)

    return app


def app_from_env() -> ASGIApp:
    """The app factory each uvicorn worker calls: settings from the environment, model loaded
    in the background."""
    app, _, _ = endpoint_from_env()
    return app


def endpoint_from_env() -> tuple[ASGIApp, EndpointApp, Settings]:
    """What :func:`app_from_env` serves, with the app behind it and the settings it read (a
    local tool wraps them: ``onnxkit_tools.local.async_inference``)."""
    from onnxkit.compose import build_server

    configure_logging()
    settings, plan = resolve_settings(endpoint_settings(os.environ), os.environ)
    predictor = build_server(settings, role=ENDPOINT)
    siblings = None
    if plan.workers > 1:  # spawned by uvicorn's supervisor, whose pid names the shared folder
        siblings = SiblingReadiness(readiness_folder(os.getppid()), plan.workers)
    app, endpoint = create_app(predictor, settings, threads=plan.threads, siblings=siblings)
    return app, endpoint, settings


def _too_large(
    size: int, limit: int, model: str | None, *, more: bool = False
) -> PayloadTooLargeError:
    # The rest of the body is not read: close the connection rather than wait for it.
    return PayloadTooLargeError.body(
        size, limit, model=model, over=more, headers={"Connection": "close"}
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


def _expands(processing: Mapping[str, Any] | None) -> bool:
    """Whether declared processing turns a few bytes into large tensors (images, sentences)."""
    return processing is not None and ("image" in processing or "text" in processing)
