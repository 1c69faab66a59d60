"""The Lambda edge: API Gateway REST proxy events -> route table -> Predictor -> proxy responses.

The route table (``onnxkit.routes``) matches the method and path, as it does for the endpoint
container; the edge only translates: it negotiates the media types, decodes the body, performs
the route's operation, encodes the answer and maps every error to
``{"error": {"code", "message"}}``, counting it in ``ClientErrors`` or ``ServerErrors``.
Logger and Metrics (and Tracer, when tracing is on) come from Powertools. Powertools' own
REST resolver is not used: the table already routes, and the resolver's imports (~90 ms) and
per-request work showed in the cold start and the warm invoke.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit

from onnxkit.adapters.snapstart import register_snapstart_hooks
from onnxkit.aws import AwsClients
from onnxkit.codecs import Reply, encode_json
from onnxkit.coldstart import INIT_PHASES, Loading, start_loading
from onnxkit.compose import build_jobs
from onnxkit.errors import InvalidInputError, OnnxkitError, error_body
from onnxkit.manifest import Manifest
from onnxkit.predictor import Serving
from onnxkit.routes import FUNCTION, JSON, RouteTable, negotiate
from onnxkit.settings import Settings

_JSON_HEADERS = {"Content-Type": [JSON]}


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

    def init_done(self, manifest: Manifest, phases: Mapping[str, float], total_ms: float) -> None:
        """Record the init breakdown: Init{Imports,Resolve,...,Warmup}Ms and InitTotalMs."""
        self._dimensions(manifest)
        for phase in INIT_PHASES:
            if phase in phases:
                self._metrics.add_metric(
                    name=f"Init{phase.capitalize()}Ms",
                    unit=MetricUnit.Milliseconds,
                    value=phases[phase],
                )
        self._metrics.add_metric(name="InitTotalMs", unit=MetricUnit.Milliseconds, value=total_ms)

    def inference_failed(self, manifest: Manifest) -> None:
        """Record InferenceErrors (a dashboard and canary alarms read it per version)."""
        self._dimensions(manifest)
        self._metrics.add_metric(name="InferenceErrors", unit=MetricUnit.Count, value=1)

    def model_evicted(self, manifest: Manifest) -> None:
        """Record ModelEvictions (many models: a model unloaded to make room for another)."""
        self._dimensions(manifest)
        self._metrics.add_metric(name="ModelEvictions", unit=MetricUnit.Count, value=1)


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> dict:
    """A REST proxy response with a JSON body (headers as ``multiValueHeaders``)."""
    multi = (
        _JSON_HEADERS if not headers else {**_JSON_HEADERS, **{k: [v] for k, v in headers.items()}}
    )
    return {
        "statusCode": int(status),
        "multiValueHeaders": multi,
        "body": encode_json(body).decode(),
        "isBase64Encoded": False,
    }


def reply_response(reply: Reply, status: int = HTTPStatus.OK) -> dict:
    """A REST proxy response for an encoded inference reply: JSON as text, binary tensors
    base64-encoded (API Gateway turns them back into bytes: the API's binary media types)."""
    headers = {"Content-Type": [reply.content_type], **{k: [v] for k, v in reply.headers.items()}}
    if reply.content_type == JSON:
        return {
            "statusCode": int(status),
            "multiValueHeaders": headers,
            "body": reply.body.decode(),
            "isBase64Encoded": False,
        }
    return {
        "statusCode": int(status),
        "multiValueHeaders": headers,
        "body": base64.b64encode(reply.body).decode(),
        "isBase64Encoded": True,
    }


class LambdaEdge:
    """Answers API Gateway REST proxy events from the route table, bound to one predictor.

    Args:
        predictor: The core that serves the model.
        logger: Where refusals and unexpected errors are logged.
        table: The function's routes.
        route_prefix: A path prefix to strip (``/zip`` for the zip variant).
        metrics: Where ClientErrors/ServerErrors counts go (for alarms).
    """

    def __init__(
        self,
        predictor: Serving,
        logger: Logger,
        table: RouteTable,
        route_prefix: str = "",
        metrics: Metrics | None = None,
    ) -> None:
        self._predictor = predictor
        self._logger = logger
        self._table = table
        self._prefix = route_prefix
        self._metrics = metrics

    def resolve(self, event: Mapping[str, Any], context: Any = None) -> dict:
        """One proxy event -> one proxy response; never raises."""
        try:
            method, path = event["httpMethod"], event["path"]
            if not isinstance(method, str) or not isinstance(path, str):
                raise TypeError("httpMethod and path must be strings")
        except (KeyError, TypeError):  # a direct invoke, a test event of another service...
            return self._fail(InvalidInputError("the event is not an API Gateway REST proxy event"))
        try:
            if self._prefix and path.startswith(self._prefix):
                path = path[len(self._prefix) :] or "/"
            self._logger.append_keys(model=None)  # each log line names the model it is about
            route, params = self._table.match(method, path)
            self._logger.append_keys(model=params.get("name"))
            # Headers first, as the endpoint does: a refused media type never decodes the body.
            headers = _lowered(event)
            negotiate(route, content_type=headers.get("content-type"), accept=headers.get("accept"))
            body = _body(event) if route.reads_body else None
            answer = self._table.perform(self._predictor, route, params, body, headers)
        except Exception as exc:
            return self._fail(exc)
        if isinstance(answer, Reply):
            return reply_response(answer, route.status)
        return json_response(route.status, answer)

    def _fail(self, error: Exception) -> dict:
        status, payload, headers = error_body(error)
        if status >= 500:  # the client got a generic message: the logs get the details
            detail = error.message if isinstance(error, OnnxkitError) else type(error).__name__
            self._logger.exception("request failed", extra={"status": int(status), "error": detail})
        else:
            refusal = payload["error"]
            self._logger.info(
                "request refused",
                extra={
                    "status": int(status),
                    "code": refusal["code"],
                    "reason": refusal["message"],
                },
            )
        if self._metrics is not None:
            name = "ServerErrors" if status >= 500 else "ClientErrors"
            self._metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
        return json_response(status, payload, headers)


def create_app(
    predictor: Serving,
    logger: Logger,
    table: RouteTable,
    route_prefix: str = "",
    metrics: Metrics | None = None,
) -> LambdaEdge:
    """The function's edge over ``predictor`` (``.resolve(event, context)`` answers an event)."""
    return LambdaEdge(predictor, logger, table, route_prefix, metrics)


def _lowered(event: Mapping[str, Any]) -> dict[str, str]:
    """The request headers with lower-case names (HTTP names are case-insensitive)."""
    headers = event.get("headers")
    if headers:
        return {str(k).lower(): str(v) for k, v in headers.items()}
    multi = event.get("multiValueHeaders") or {}
    return {str(k).lower(): str(v[-1]) for k, v in multi.items() if v}


def _body(event: Mapping[str, Any]) -> bytes | str | None:
    body = event.get("body")
    if body is None or not event.get("isBase64Encoded"):
        return body
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidInputError(
            "the body is marked base64-encoded but is not valid base64"
        ) from exc


def build_handler(
    settings: Settings,
    *,
    clients: AwsClients | None = None,
    loading: Loading | None = None,
) -> Callable[[dict, Any], dict]:
    """The Lambda handler: the model is loaded by the time this returns (init phase).

    A failed load does not fail init: the error is logged and each request retries the load
    until it succeeds, so a transient fault heals without a new execution environment. The
    init logs its breakdown (imports, resolve, download, verify, session, warm-up) and emits
    it as metrics with the first invocation's.

    Args:
        settings: The function's settings (``Settings.from_env(os.environ)`` in ``app.py``).
        clients: AWS clients to use (tests: moto); default made from the settings.
        loading: The model load ``app.py`` started before importing this module; None
            starts it here.
    """
    loading = loading or start_loading(settings, clients=clients)
    imports_ms = (time.perf_counter() - loading.caller_from) * 1000
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
    waited = time.perf_counter()
    predictor = loading.wait()
    # After the load: the loading thread is done making its AWS clients, so jobs share them.
    jobs = build_jobs(settings, loading.clients)
    table = RouteTable(FUNCTION, openapi=settings.api.serve_openapi, jobs=jobs)
    app = create_app(predictor, logger, table, settings.function.route_prefix, metrics)
    observer = MetricsObserver(metrics)
    predictor.observe(observer)
    # SnapStart: fresh AWS clients, reseeded randomness and a re-read alias after a restore
    # (no-op outside the Lambda base image, or without SnapStart: the hooks never run).
    register_snapstart_hooks(predictor, loading.clients)
    _report_init(
        loading,
        imports_ms,
        (time.perf_counter() - waited) * 1000,
        observer,
        logger,
        many=settings.models.enabled,
    )

    @logger.inject_lambda_context
    @metrics.log_metrics(capture_cold_start_metric=True)
    def handler(event: dict, context: Any) -> dict:
        # API Gateway's request id correlates the logs (a dict lookup: Powertools'
        # correlation_id_path would run a JMESPath query on every request).
        gateway = event.get("requestContext") if isinstance(event, dict) else None
        logger.set_correlation_id(gateway.get("requestId") if isinstance(gateway, dict) else None)
        return app.resolve(event, context)

    if settings.function.tracing:  # the X-Ray SDK is imported only when it is used
        from aws_lambda_powertools import Tracer

        handler = Tracer().capture_lambda_handler(capture_response=False)(handler)
    handler.predictor = predictor  # for tests
    return handler


def _report_init(
    loading: Loading,
    imports_ms: float,
    waited_ms: float,
    observer: MetricsObserver,
    logger: Logger,
    *,
    many: bool = False,
) -> None:
    """Log the init breakdown and count it in the metrics (the load ran in a thread meanwhile,
    so the phases overlap the imports and add up to more than the total)."""
    manifest = loading.manifest
    total_ms = (time.perf_counter() - loading.started) * 1000
    if manifest is None and many:  # a repository: each model loads on its first request
        logger.info(
            "init done; models load on their first request", extra={"init_ms": round(total_ms, 1)}
        )
        return
    if manifest is None:  # the load failed: the predictor logged why, requests retry it
        logger.warning("init finished without a model", extra={"init_ms": round(total_ms, 1)})
        return
    phases = {"imports": imports_ms, **loading.phases.ms}
    load_ms = sum(ms for phase, ms in loading.phases.ms.items() if phase != "imports")
    observer.model_loaded(manifest, load_ms)
    observer.init_done(manifest, phases, total_ms)
    logger.info(
        "init breakdown",
        extra={
            "model": manifest.name,
            "version": manifest.version,
            "init_ms": round(total_ms, 1),
            "waited_for_model_ms": round(waited_ms, 1),
            **{f"{phase}_ms": round(ms, 1) for phase, ms in phases.items()},
        },
    )
