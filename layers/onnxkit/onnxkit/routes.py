"""The one route table: every HTTP route of both edges, what it calls, and how it negotiates.

The Lambda function's edge matches its events here, and the endpoint container's Starlette app
and the OpenAPI document are generated from :data:`ROUTES`. Which routes an edge serves, 404
versus 405, and what a request may send (``Content-Type``) and accept (``Accept``) are decided
here, once, so the edges cannot drift apart.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import mimeparse

from onnxkit.errors import (
    InvalidInputError,
    MethodNotAllowedError,
    ModelNotFoundError,
    NotAcceptableError,
    RouteNotFoundError,
)
from onnxkit.jobs import Jobs, JobsOff
from onnxkit.media import BINARY_CONTENT_TYPE as BINARY
from onnxkit.media import HEADER_LENGTH, check_content_type
from onnxkit.names import NAME_RULE, is_name
from onnxkit.predictor import BARE_MEDIA_TYPES, Serving

JSON = "application/json"
Edge = Literal["function", "endpoint"]
FUNCTION: Edge = "function"
ENDPOINT: Edge = "endpoint"
BOTH = frozenset({FUNCTION, ENDPOINT})
OPENAPI_PATH = "/v2/openapi.json"
_PARAM = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class Route:
    """One method on one path template, and the operation it performs.

    Attributes:
        method: ``GET`` or ``POST`` (``HEAD`` is answered like ``GET``).
        path: A template such as ``/v2/models/{name}/infer``.
        operation: The key of the operation in :data:`OPERATIONS`.
        summary: One line for the OpenAPI document.
        edges: Which edges serve it: the function, the endpoint, or both.
        takes_body: Whether it reads a request body.
        answers_json: Whether it answers with a JSON body (``/ping`` answers an empty one).
        takes_json: Whether it takes a small optional JSON body of its own (not inference).
        json_only: Its body is JSON only: no binary tensors, no bare sentence or image (a
            job's request is stored and sent on as JSON).
        status: The status of a success (202 for a job accepted).
    """

    method: str
    path: str
    operation: str
    summary: str
    edges: frozenset[str] = BOTH
    takes_body: bool = False
    answers_json: bool = True
    takes_json: bool = False
    json_only: bool = False
    status: int = 200
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = re.split(r"(\{[a-z_]+\})", self.path)
        regex = "".join(
            f"(?P<{part[1:-1]}>[^/]+)" if part.startswith("{") else re.escape(part)
            for part in parts
        )
        object.__setattr__(self, "pattern", re.compile(f"^{regex}/*$"))  # trailing / tolerated

    @property
    def reads_body(self) -> bool:
        """Whether the edges read the request body for it."""
        return self.takes_body or self.takes_json

    @property
    def params(self) -> tuple[str, ...]:
        """The path parameters, in order."""
        return tuple(_PARAM.findall(self.path))


_MODEL = "/v2/models/{name}"
_VERSION = "/v2/models/{name}/versions/{version}"

ROUTES: tuple[Route, ...] = (
    # SageMaker's container contract: one model, so no name in the path. First, because the
    # edges try routes in order and these are the container's busiest.
    Route(
        "GET", "/ping", "ping", "SageMaker health check: 200 (empty) once the model is loaded",
        edges=frozenset({ENDPOINT}), answers_json=False,
    ),
    Route(
        "POST", "/invocations", "infer", "SageMaker invocation (v2 inference)",
        edges=frozenset({ENDPOINT}), takes_body=True,
    ),
    # What boto3's sagemaker-runtime sends when its endpoint URL points here (local runs).
    Route(
        "POST", "/endpoints/{endpoint}/invocations", "infer",
        "InvokeEndpoint's path, for boto3 pointed at a local endpoint server",
        edges=frozenset({ENDPOINT}), takes_body=True,
    ),
    Route("GET", "/v2", "server_metadata", "Server metadata (name, version, extensions)"),
    Route("GET", "/v2/health/live", "live", "Liveness: the server answers"),
    Route("GET", "/v2/health/ready", "ready", "Readiness: 200 once the model is loaded"),
    Route("GET", _MODEL, "model_metadata", "Model metadata: signature, versions, checksum"),
    Route("GET", _VERSION, "model_metadata", "Metadata of one version of the model"),
    Route("GET", f"{_MODEL}/ready", "model_ready", "Whether the model serves"),
    Route("GET", f"{_VERSION}/ready", "model_ready", "Whether this version of the model serves"),
    Route("POST", f"{_MODEL}/infer", "infer", "Run the model (v2 inference)", takes_body=True),
    Route(
        "POST", f"{_VERSION}/infer", "infer", "Run this version of the model", takes_body=True
    ),
    Route(
        "POST", f"{_MODEL}/uploads", "upload",
        "Presign an upload to S3 for an input too large for a request body", takes_json=True,
    ),
    Route(
        "POST", "/v2/repository/index", "repository_index",
        "Model repository index: every model served, loaded or not, with its state",
        takes_json=True,
    ),
    Route(
        "POST", "/v2/repository/models/{name}/load", "repository_load",
        "Load a model now (else it loads on its first request); answers its index rows",
    ),
    Route(
        "POST", "/v2/repository/models/{name}/unload", "repository_unload",
        "Unload a model and delete its cached files (many models only)",
    ),
    # Asynchronous jobs on a SageMaker async endpoint: the function queues, SageMaker runs.
    Route(
        "POST", f"{_MODEL}/jobs", "submit_job", "Queue an inference job (asynchronous endpoint)",
        edges=frozenset({FUNCTION}), takes_body=True, json_only=True, status=202,
    ),
    Route(
        "POST", f"{_VERSION}/jobs", "submit_job", "Queue an inference job on this version",
        edges=frozenset({FUNCTION}), takes_body=True, json_only=True, status=202,
    ),
    Route(
        "GET", "/v2/jobs/{id}", "job_status", "A job's status, and its result once it succeeded",
        edges=frozenset({FUNCTION}),
    ),
    Route("GET", OPENAPI_PATH, "openapi", "This document (OpenAPI 3)"),
)  # fmt: skip


@dataclass(frozen=True)
class Call:
    """One request as an operation sees it.

    Attributes:
        params: The path parameters, decoded.
        body: The request body (already base64-decoded where the edge had to).
        content_type: The request's ``Content-Type``.
    """

    params: dict[str, str]
    body: bytes | str | None = None
    content_type: str | None = None
    header_length: str | None = None
    """``Inference-Header-Content-Length``: the JSON part's length when binary tensors follow."""
    target_model: str | None = None
    """The model a SageMaker invocation names in its custom attributes (``model=NAME``)."""


Operation = Callable[[Serving, Call, "RouteTable"], Any]


def _infer(predictor: Serving, call: Call, _: RouteTable) -> Any:
    # SageMaker's /invocations names no model: a repository takes it from the custom
    # attributes the function forwards (``model=NAME``), a single model is itself.
    name = call.params.get("name") or predictor.model_name or call.target_model or ""
    return predictor.infer(
        name,
        call.params.get("version"),
        call.body,
        content_type=call.content_type,
        header_length=call.header_length,
    )


def _repository_index(server: Serving, call: Call, _: RouteTable) -> Any:
    ready_only = False
    if call.body:
        try:
            request = json.loads(call.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInputError('the body must be JSON: {} or {"ready": true}') from exc
        ready = request.get("ready", False) if isinstance(request, dict) else None
        if not isinstance(ready, bool):
            raise InvalidInputError('the body must be {} or {"ready": true|false}')
        ready_only = ready
    return server.repository_index(ready_only)


def _upload(server: Serving, call: Call, __: RouteTable) -> Any:
    name = call.params["name"]
    predictor, _ = server.predictor_for(name)  # a repository's 404 for a model not served
    predictor.model_ready(name)  # a single model's 404 (and its load, as infer's)
    return predictor.payloads.presign_upload(call.body)


def _ping(predictor: Serving, _: Call, __: RouteTable) -> None:
    predictor.check_ready()


def _submit_job(server: Serving, call: Call, table: RouteTable) -> Any:
    predictor, version = server.predictor_for(call.params["name"], call.params.get("version"))
    return table.jobs.submit(predictor, call.params["name"], version, call.body or b"")


def _job_status(_: Serving, call: Call, table: RouteTable) -> Any:
    return table.jobs.status(call.params["id"])


def _openapi(_: Serving, __: Call, table: RouteTable) -> Any:
    from onnxkit.openapi import build_document

    return build_document(table)


OPERATIONS: dict[str, Operation] = {
    "server_metadata": lambda p, c, t: p.server_metadata(),
    "live": lambda p, c, t: {"live": True},
    "ready": lambda p, c, t: p.server_ready(),
    "model_metadata": lambda p, c, t: p.model_metadata(c.params["name"], c.params.get("version")),
    "model_ready": lambda p, c, t: p.model_ready(c.params["name"], c.params.get("version")),
    "infer": _infer,
    "repository_index": _repository_index,
    "repository_load": lambda p, c, t: p.load_model(c.params["name"]),
    "repository_unload": lambda p, c, t: p.unload_model(c.params["name"]),
    "upload": _upload,
    "ping": _ping,
    "submit_job": _submit_job,
    "job_status": _job_status,
    "openapi": _openapi,
}


class RouteTable:
    """The routes one edge serves: matching (404 versus 405) and performing an operation.

    Args:
        edge: ``function`` or ``endpoint``.
        openapi: Serve ``GET /v2/openapi.json`` (behind API Gateway only when asked for).
        routes: The table (default :data:`ROUTES`).
        jobs: Queues and reports asynchronous jobs (default: off, their routes say how to
            turn them on).
    """

    def __init__(
        self,
        edge: Edge,
        *,
        openapi: bool = False,
        routes: tuple[Route, ...] = ROUTES,
        jobs: Jobs | None = None,
    ) -> None:
        self.edge = edge
        self.jobs: Jobs = jobs or JobsOff("asynchronous jobs are not served here")
        self.routes = tuple(
            route
            for route in routes
            if edge in route.edges and (openapi or route.operation != "openapi")
        )

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for a method and path, and its path parameters.

        Raises:
            MethodNotAllowedError: The path exists, not for this method (``Allow`` names them).
            RouteNotFoundError: No route has this path.
        """
        wanted = "GET" if method == "HEAD" else method
        allowed: list[str] = []
        for route in self.routes:
            found = route.pattern.match(path)
            if found is None:
                continue
            if route.method == wanted:
                return route, found.groupdict()
            allowed.append(route.method)
        if allowed:
            methods = ", ".join(sorted(set(allowed)))
            raise MethodNotAllowedError(
                f"{method} is not allowed on {path}; use {methods}", headers={"Allow": methods}
            )
        served = (
            "GET /ping and POST /invocations (and the v2 routes)"
            if self.edge == ENDPOINT
            else ("/v2, /v2/health/ready and /v2/models/{name}")
        )
        raise RouteNotFoundError(f"no route for {method} {path}; this server serves {served}")

    def perform(
        self,
        predictor: Serving,
        route: Route,
        params: dict[str, str],
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Perform the route's operation on a request already negotiated (:func:`negotiate`).

        Args:
            predictor: The model served.
            route: The matched route.
            params: Its path parameters.
            body: The request body (base64 already decoded).
            headers: The request headers, names in lower case (``content-type`` and
                ``inference-header-content-length`` are read).

        Returns:
            A JSON-able answer, or a :class:`~onnxkit.codecs.Reply` already encoded.

        Raises:
            OnnxkitError: 4xx for what the caller sent wrong, 5xx for our faults.
        """
        headers = headers or {}
        target = custom_attribute(headers.get(CUSTOM_ATTRIBUTES), "model")
        # A name or version that cannot exist never reaches a lookup, a store key or a folder.
        for what, value in (("model", params.get("name")), ("version", params.get("version"))):
            if value is not None and not is_name(value):
                raise ModelNotFoundError(f"no {what} is named {value[:70]!r} ({NAME_RULE})")
        if target is not None and not is_name(target):
            raise ModelNotFoundError(f"no model is named {target[:70]!r} ({NAME_RULE})")
        call = Call(
            params,
            body,
            content_type=headers.get("content-type"),
            header_length=headers.get(HEADER_LENGTH),
            target_model=target,
        )
        return OPERATIONS[route.operation](predictor, call, self)


CUSTOM_ATTRIBUTES = "x-amzn-sagemaker-custom-attributes"
"""What InvokeEndpoint's ``CustomAttributes`` reaches the container as (``key=value;...``)."""


def custom_attribute(value: str | None, key: str) -> str | None:
    """One ``key=value`` of SageMaker's custom attributes (``a=1;b=2``), or None."""
    for part in (value or "").split(";"):
        name, sep, found = part.partition("=")
        if sep and name.strip() == key:
            return found.strip() or None
    return None


def negotiate(route: Route, *, content_type: str | None, accept: str | None) -> None:
    """Check what the request sends and what it accepts against what the route speaks.

    An inference route also takes binary tensors (``application/octet-stream`` after the JSON
    header) and, for models with processing, a bare sentence or image (the predictor refuses
    them, 415, for a model without); it may answer binary tensors.

    Raises:
        UnsupportedMediaTypeError: A body route got a media type it never takes (415).
        NotAcceptableError: The client accepts nothing the route answers (406).
    """
    binary_ok = route.takes_body and not route.json_only and accepts(accept, BINARY)
    if route.answers_json and not binary_ok and not accepts_json(accept):
        raise NotAcceptableError(
            f"Accept {accept!r} admits no JSON; this API answers {JSON}"
            + (f" (and {BINARY} for binary tensors)" if route.takes_body else " only")
        )
    if route.json_only:
        check_content_type(content_type)
    elif route.takes_body:
        check_content_type(content_type, binary=True, bare=BARE_MEDIA_TYPES)
    elif route.takes_json:
        check_content_type(content_type)


def accepts_json(accept: str | None) -> bool:
    """Whether an ``Accept`` header admits JSON (absent or unparsable: anything goes)."""
    return accepts(accept, JSON)


@functools.lru_cache(maxsize=256)  # clients repeat their headers: parse each value once
def accepts(accept: str | None, media: str) -> bool:
    """Whether an ``Accept`` header admits ``media`` (absent or unparsable: anything goes)."""
    if accept is None or not accept.strip():
        return True
    try:  # media types are case-insensitive; mimeparse compares them as given
        return bool(mimeparse.best_match([media], accept.lower()))
    except (mimeparse.MimeTypeParseException, ValueError):
        return True  # RFC 9110 lets a server ignore a malformed Accept
