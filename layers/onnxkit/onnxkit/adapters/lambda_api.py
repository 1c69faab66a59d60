"""The Lambda edge: API Gateway REST proxy events -> route table -> Predictor -> proxy responses.

The Powertools resolver is generated from the route table (``onnxkit.routes``); the handler
only translates: it negotiates the media types, decodes the body, performs the route's
operation, encodes the answer and maps every error to ``{"error": {"code", "message"}}``,
counting it in ``ClientErrors`` or ``ServerErrors``. Logger, Metrics and Tracer come from
Powertools.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit

from onnxkit.aws import AwsClients
from onnxkit.codecs import encode_json
from onnxkit.errors import InvalidInputError, error_body
from onnxkit.manifest import Manifest
from onnxkit.predictor import Predictor
from onnxkit.routes import FUNCTION, JSON, Route, RouteTable, negotiate
from onnxkit.settings import Settings


class MetricsObserver:
    """Turns predictor timings into CloudWatch metrics (EMF) with model/version dimensions.

    With a canary, requests alternate between two versions: what is pending is flushed when
    the version changes, so each EMF document carries the version that produced it.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._dimensions_of: tuple[str, str] | None = None

    def _dimensions(self, manifest: Manifest) -> None:
        key = (manifest.name, manifest.version)
        if key != self._dimensions_of:  # a swap to a new version re-labels what follows
            if self._metrics.metric_set:  # a flush labels what is pending, not the new version
                self._metrics.flush_metrics()
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

    def inference_failed(self, manifest: Manifest) -> None:
        """Record InferenceErrors (a dashboard and canary alarms read it per version)."""
        self._dimensions(manifest)
        self._metrics.add_metric(name="InferenceErrors", unit=MetricUnit.Count, value=1)


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON proxy response."""
    return Response(
        status_code=int(status),
        content_type=JSON,
        body=encode_json(body).decode(),
        headers=headers or {},
    )


def create_app(
    predictor: Predictor,
    logger: Logger,
    table: RouteTable,
    route_prefix: str = "",
    metrics: Metrics | None = None,
) -> APIGatewayRestResolver:
    """The REST resolver, generated from the route table and bound to ``predictor``.

    Args:
        predictor: The core that serves the model.
        logger: Where refusals and unexpected errors are logged.
        table: The function's routes.
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

    def respond(route: Route, params: dict[str, str]) -> Response:
        # Headers first, as the endpoint does: a refused media type never decodes the body.
        headers = app.current_event.headers
        negotiate(route, content_type=headers.get("content-type"), accept=headers.get("accept"))
        answer = table.perform(predictor, route, params, body() if route.takes_body else None)
        return json_response(HTTPStatus.OK, answer)

    def fail(error: Exception) -> Response:
        status, payload, headers = error_body(error)
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
        return json_response(status, payload, headers)

    def view_of(route: Route) -> Callable[..., Response]:
        def view(**params: str) -> Response:
            return respond(route, params)

        view.__name__ = route.operation  # Powertools names routes after their functions
        return view

    for route in table.routes:
        rule = route.path.replace("{", "<").replace("}", ">")
        app.route(rule, method=route.method)(view_of(route))

    @app.not_found
    def not_found(_: NotFoundError) -> Response:
        # Not one of the resolver's routes: the table says 404 or 405 (or serves HEAD as GET).
        path = app.current_event.path
        if route_prefix and path.startswith(route_prefix):
            path = path[len(route_prefix) :]
        try:
            route, params = table.match(app.current_event.http_method, path)
            return respond(route, params)
        except Exception as exc:  # the exception handlers do not cover this hook
            return fail(exc)

    app.exception_handler(Exception)(fail)
    return app


def build_handler(
    settings: Settings, *, clients: AwsClients | None = None
) -> Callable[[dict, Any], dict]:
    """The Lambda handler: loads the model now (init phase), then serves requests.

    A failed load does not fail init: the error is logged and each request retries the load
    until it succeeds, so a transient fault heals without a new execution environment.

    Args:
        settings: The function's settings (``Settings.from_env(os.environ)`` in ``app.py``).
        clients: AWS clients to use (tests: moto); default made from the settings.
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
    for old, new in settings.deprecated_variables:
        logger.warning(f"{old} is deprecated; set {new} instead", extra={"variable": old})
    metrics = Metrics(namespace=settings.function.metrics_namespace)
    tracer = Tracer()
    predictor = build_predictor(
        settings, role=FUNCTION, clients=clients, observer=MetricsObserver(metrics)
    )
    predictor.try_load()
    table = RouteTable(FUNCTION, openapi=settings.api.serve_openapi)
    app = create_app(predictor, logger, table, settings.function.route_prefix, metrics)

    @logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
    @tracer.capture_lambda_handler(capture_response=False)
    @metrics.log_metrics(capture_cold_start_metric=True)
    def handler(event: dict, context: Any) -> dict:
        return app.resolve(event, context)

    handler.predictor = predictor  # for tests
    return handler
