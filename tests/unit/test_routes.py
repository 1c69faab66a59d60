"""The route table: what each edge serves, 404 versus 405, and content negotiation."""

from __future__ import annotations

import re

import pytest

from onnxkit.errors import (
    MethodNotAllowedError,
    NotAcceptableError,
    RouteNotFoundError,
    UnsupportedMediaTypeError,
)
from onnxkit.routes import ENDPOINT, FUNCTION, ROUTES, RouteTable, accepts_json, negotiate


def concrete(path: str) -> str:
    """A request path for a template: every {param} replaced by a value."""
    return re.sub(r"\{[a-z_]+\}", "some-value", path)


@pytest.mark.parametrize("edge", [FUNCTION, ENDPOINT])
def test_every_route_of_an_edge_matches_its_own_path_with_its_parameters(edge: str) -> None:
    table = RouteTable(edge, openapi=True)  # type: ignore[arg-type]

    for route in table.routes:
        matched, params = table.match(route.method, concrete(route.path))
        assert matched.path == route.path
        assert matched.method == route.method
        assert params == dict.fromkeys(route.params, "some-value")


def test_the_container_routes_are_the_endpoints_alone_and_jobs_the_functions() -> None:
    function = {(r.method, r.path) for r in RouteTable(FUNCTION).routes}
    endpoint = {(r.method, r.path) for r in RouteTable(ENDPOINT).routes}

    assert endpoint - function == {
        ("GET", "/ping"),
        ("POST", "/invocations"),
        ("POST", "/endpoints/{endpoint}/invocations"),
    }
    # Jobs queue on SageMaker's asynchronous front end: the container behind it sees
    # /invocations only.
    assert function - endpoint == {
        ("POST", "/v2/models/{name}/jobs"),
        ("POST", "/v2/models/{name}/versions/{version}/jobs"),
        ("GET", "/v2/jobs/{id}"),
    }
    assert len(ROUTES) == len(endpoint | function) + 1  # and the OpenAPI document


def test_the_openapi_route_is_served_only_when_asked_for() -> None:
    with pytest.raises(RouteNotFoundError):
        RouteTable(FUNCTION).match("GET", "/v2/openapi.json")

    route, _ = RouteTable(FUNCTION, openapi=True).match("GET", "/v2/openapi.json")
    assert route.operation == "openapi"


@pytest.mark.parametrize(
    ("edge", "method", "path", "allow"),
    [
        (FUNCTION, "GET", "/v2/models/digits/infer", "POST"),
        (FUNCTION, "POST", "/v2/health/ready", "GET"),
        (FUNCTION, "DELETE", "/v2/models/digits", "GET"),
        (ENDPOINT, "GET", "/invocations", "POST"),
        (ENDPOINT, "POST", "/ping", "GET"),
    ],
)
def test_a_known_path_with_another_method_is_405_naming_the_allowed_ones(
    edge: str, method: str, path: str, allow: str
) -> None:
    with pytest.raises(MethodNotAllowedError) as caught:
        RouteTable(edge).match(method, path)  # type: ignore[arg-type]

    assert caught.value.status == 405
    assert caught.value.headers == {"Allow": allow}
    assert f"{method} is not allowed on {path}; use {allow}" == caught.value.message


@pytest.mark.parametrize(
    ("edge", "path"),
    [
        (FUNCTION, "/"),
        (FUNCTION, "/v3"),
        (FUNCTION, "/ping"),  # the container's route, not the function's
        (FUNCTION, "/v2/models"),
        (FUNCTION, "/v2/models/a/b/c/d/e"),
        (ENDPOINT, "/nope"),
    ],
)
def test_an_unknown_path_is_404(edge: str, path: str) -> None:
    with pytest.raises(RouteNotFoundError) as caught:
        RouteTable(edge).match("GET", path)  # type: ignore[arg-type]

    assert caught.value.status == 404
    assert caught.value.code == "route_not_found"
    assert path in caught.value.message


def test_head_is_answered_as_get_and_a_trailing_slash_is_tolerated() -> None:
    table = RouteTable(ENDPOINT)

    assert table.match("HEAD", "/ping")[0].operation == "ping"
    assert table.match("GET", "/v2/health/live/")[0].operation == "live"
    assert table.match("POST", "/v2/models/digits/infer/")[1] == {"name": "digits"}


def test_path_parameters_never_span_a_slash() -> None:
    route, params = RouteTable(FUNCTION).match("GET", "/v2/models/a/versions/2")

    assert route.operation == "model_metadata"
    assert params == {"name": "a", "version": "2"}


# --- negotiation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "ok"),
    [
        (None, True),
        ("", True),
        ("*/*", True),
        ("application/json", True),
        ("application/*", True),
        ("text/html, application/json;q=0.5", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/json;q=abc", True),  # a malformed weight: not a refusal
        ("garbage", True),  # unparsable: RFC 9110 lets us ignore it
        ("text/csv", False),
        ("application/json;q=0", False),
        ("application/x-npy, text/plain", False),
    ],
)
def test_accepts_json(accept: str | None, ok: bool) -> None:
    assert accepts_json(accept) is ok


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "text/json",
        "application/x-www-form-urlencoded",  # curl -d without -H
    ],
)
def test_json_bodies_are_accepted(content_type: str | None) -> None:
    route, _ = RouteTable(FUNCTION).match("POST", "/v2/models/m/infer")

    negotiate(route, content_type=content_type, accept=None)  # no exception


@pytest.mark.parametrize("content_type", ["text/csv", "image/gif", "json"])
def test_other_bodies_are_415(content_type: str) -> None:
    route, _ = RouteTable(FUNCTION).match("POST", "/v2/models/m/infer")

    with pytest.raises(UnsupportedMediaTypeError) as caught:
        negotiate(route, content_type=content_type, accept=None)

    assert caught.value.status == 415
    assert "send application/json" in caught.value.message


def test_only_body_routes_check_the_content_type_and_ping_accepts_anything() -> None:
    table = RouteTable(ENDPOINT)
    metadata, _ = table.match("GET", "/v2")
    ping, _ = table.match("GET", "/ping")

    negotiate(metadata, content_type="text/csv", accept=None)
    negotiate(ping, content_type=None, accept="text/plain")
    with pytest.raises(NotAcceptableError) as caught:
        negotiate(metadata, content_type=None, accept="text/plain")
    assert caught.value.status == 406
