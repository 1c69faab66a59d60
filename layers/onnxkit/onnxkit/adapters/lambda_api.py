"""The Lambda edge: API Gateway REST proxy events -> Predictor -> proxy responses.

Routes follow the Open Inference Protocol v2 REST paths. The handler only translates: it
decodes the body, calls the predictor, encodes the result and maps every error to
``{"error": {"code", "message"}}``. Logger, Metrics and Tracer come from Powertools.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit

from onnxkit.errors import InvalidInputError, MethodNotAllowedError, RouteNotFoundError, error_body
from onnxkit.manifest import Manifest
from onnxkit.predictor import Predictor
from onnxkit.settings import Settings

JSON = "application/json"

# (pattern, allowed methods) for every route: unmatched methods on a known path get 405.
_ROUTES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), methods)
    for pattern, methods in (
        (r"^/v2/?$", "GET"),
        (r"^/v2/health/(live|ready)/?$", "GET"),
        (r"^/v2/models/[^/]+(/versions/[^/]+)?/?$", "GET"),
        (r"^/v2/models/[^/]+(/versions/[^/]+)?/ready/?$", "GET"),
        (r"^/v2/models/[^/]+(/versions/[^/]+)?/infer/?$", "POST"),
    )
)


class MetricsObserver:
    """Turns predictor timings into CloudWatch metrics (EMF) with model/version dimensions."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._dimensions_of: tuple[str, str] | None = None

    def _dimensions(self, manifest: Manifest) -> None:
        key = (manifest.name, manifest.version)
        if key != self._dimensions_of:  # a swap to a new version re-labels what follows
            self._metrics.clear_default_dimensions()
            self._metrics.set_default_dimensions(model=manifest.name, version=manifest.version)
            self._dimensions_of = key

    def model_loaded(self, manifest: Manifest, milliseconds: float) -> None:
        """Record ModelLoadMs."""
        self._dimensions(manifest)
        self._metrics.add_metric(
            name="ModelLoadMs", unit=MetricUnit.Milliseconds, value=milliseconds
        )

    def inference_done(self, manifest: Manifest, milliseconds: float, batch: int) -> None:
        """Record InferenceMs and the batch size."""
        self._dimensions(manifest)
        self._metrics.add_metric(
            name="InferenceMs", unit=MetricUnit.Milliseconds, value=milliseconds
        )
        self._metrics.add_metric(name="BatchSize", unit=MetricUnit.Count, value=batch)


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON proxy response."""
    return Response(
        status_code=int(status),
        content_type=JSON,
        body=json.dumps(body, separators=(",", ":")),
        headers=headers or {},
    )


def create_app(
    predictor: Predictor,
    logger: Logger,
    route_prefix: str = "",
    metrics: Metrics | None = None,
) -> APIGatewayRestResolver:
    """The REST resolver with the v2 routes bound to ``predictor``.

    Args:
        predictor: The core that serves the model.
        logger: Where unexpected errors are logged with their traceback.
        route_prefix: A path prefix to strip before routing (``/zip`` for the zip variant).
        metrics: Where ClientErrors/ServerErrors counts go (for alarms).
    """
    app = APIGatewayRestResolver(strip_prefixes=[route_prefix] if route_prefix else None)

    def body() -> bytes | str | None:
        event = app.current_event
        if event.body is None or not event.is_base64_encoded:
            return event.body
        try:
            return base64.b64decode(event.body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInputError(
                "the body is marked base64-encoded but is not valid base64"
            ) from exc

    def content_type() -> str | None:
        return app.current_event.headers.get("content-type")

    @app.get("/v2")
    def server_metadata() -> Response:
        return json_response(HTTPStatus.OK, predictor.server_metadata())

    @app.get("/v2/health/live")
    def live() -> Response:
        return json_response(HTTPStatus.OK, {"live": True})

    @app.get("/v2/health/ready")
    def ready() -> Response:
        return json_response(HTTPStatus.OK, predictor.server_ready())

    @app.get("/v2/models/<name>")
    def model_metadata(name: str) -> Response:
        return json_response(HTTPStatus.OK, predictor.model_metadata(name))

    @app.get("/v2/models/<name>/versions/<version>")
    def model_version_metadata(name: str, version: str) -> Response:
        return json_response(HTTPStatus.OK, predictor.model_metadata(name, version))

    @app.get("/v2/models/<name>/ready")
    def model_ready(name: str) -> Response:
        return json_response(HTTPStatus.OK, predictor.model_ready(name))

    @app.get("/v2/models/<name>/versions/<version>/ready")
    def model_version_ready(name: str, version: str) -> Response:
        return json_response(HTTPStatus.OK, predictor.model_ready(name, version))

    @app.post("/v2/models/<name>/infer")
    def infer(name: str) -> Response:
        return json_response(HTTPStatus.OK, predictor.infer(name, None, body(), content_type()))

    @app.post("/v2/models/<name>/versions/<version>/infer")
    def infer_version(name: str, version: str) -> Response:
        return json_response(HTTPStatus.OK, predictor.infer(name, version, body(), content_type()))

    @app.not_found
    def not_found(_: NotFoundError) -> Response:
        path = app.current_event.path
        if route_prefix and path.startswith(route_prefix):
            path = path[len(route_prefix) :]
        method = app.current_event.http_method
        allowed = sorted({methods for pattern, methods in _ROUTES if pattern.match(path)})
        if allowed:
            error: Exception = MethodNotAllowedError(
                f"{method} is not allowed on {path}; use {', '.join(allowed)}",
                headers={"Allow": ", ".join(allowed)},
            )
        else:
            error = RouteNotFoundError(
                f"no route for {method} {path}; see /v2, /v2/health/ready, /v2/models/{{name}}"
            )
        return error_response(error)

    @app.exception_handler(Exception)
    def handle(error: Exception) -> Response:
        status, payload, _ = error_body(error)
        if status >= 500:
            logger.exception("request failed", extra={"status": int(status)})
        else:
            refusal = payload["error"]
            logger.info(
                "request refused",
                extra={
                    "status": int(status),
                    "code": refusal["code"],
                    "reason": refusal["message"],
                },
            )
        if metrics is not None:
            name = "ServerErrors" if status >= 500 else "ClientErrors"
            metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
        return error_response(error)

    return app


def error_response(error: BaseException) -> Response:
    """The JSON error response for any exception."""
    status, payload, headers = error_body(error)
    return json_response(status, payload, headers)


def build_handler(
    settings: Settings, *, s3_client: Any = None, sagemaker_client: Any = None
) -> Callable[[dict, Any], dict]:
    """The Lambda handler: loads the model now (init phase), then serves requests.

    A failed load does not fail init: the error is logged and each request retries the load
    until it succeeds, so a transient fault heals without a new execution environment.
    """
    from onnxkit.compose import build_predictor  # the composition root owns boto3/onnxruntime

    logger = Logger()
    # The library logs through stdlib loggers: give them Powertools' JSON format too.
    copy_config_to_registered_loggers(source_logger=logger, include={"onnxkit"})
    if settings.ignored_variables:
        logger.warning(
            "ignoring unknown settings (typos?)",
            extra={"variables": list(settings.ignored_variables)},
        )
    metrics = Metrics(namespace=settings.metrics_namespace)
    tracer = Tracer()
    predictor = build_predictor(
        settings,
        s3_client=s3_client,
        sagemaker_client=sagemaker_client,
        observer=MetricsObserver(metrics),
    )
    predictor.try_load()
    app = create_app(predictor, logger, settings.route_prefix, metrics)

    @logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
    @tracer.capture_lambda_handler(capture_response=False)
    @metrics.log_metrics(capture_cold_start_metric=True)
    def handler(event: dict, context: Any) -> dict:
        return app.resolve(event, context)

    handler.predictor = predictor  # for tests
    return handler
