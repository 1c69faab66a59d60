"""The error tree's statuses and codes, and error_body's mapping of any exception."""

from __future__ import annotations

from http import HTTPStatus

import pytest

from onnxkit import errors
from onnxkit.errors import OnnxkitError, error_body

TREE = [
    (errors.InvalidInputError, 400, "invalid_input"),
    (errors.PayloadTooLargeError, 413, "payload_too_large"),
    (errors.UnsupportedMediaTypeError, 415, "unsupported_media_type"),
    (errors.ModelNotFoundError, 404, "model_not_found"),
    (errors.RouteNotFoundError, 404, "route_not_found"),
    (errors.MethodNotAllowedError, 405, "method_not_allowed"),
    (errors.VersionConflictError, 409, "version_exists"),
    (errors.ModelNotReadyError, 503, "model_not_ready"),
    (errors.StoreUnavailableError, 503, "store_unavailable"),
    (errors.IntegrityError, 502, "artifact_integrity_error"),
    (errors.CacheFullError, 507, "cache_full"),
    (errors.ModelLoadError, 500, "model_load_error"),
    (errors.BackendThrottledError, 429, "backend_throttled"),
    (errors.InferenceError, 500, "inference_error"),
]


@pytest.mark.parametrize(("cls", "status", "code"), TREE, ids=[c.__name__ for c, _, _ in TREE])
def test_error_body_maps_each_subclass_to_its_status_and_code(
    cls: type[OnnxkitError], status: int, code: str
) -> None:
    error = cls("what went wrong, in our words")

    got_status, body, headers = error_body(error)

    assert got_status == status
    assert body == {"error": {"code": code, "message": "what went wrong, in our words"}}
    assert headers == {}
    assert error.is_client_error is (400 <= status < 500)


def test_configuration_error_lists_its_problems() -> None:
    error = errors.ConfigurationError(["A is required", "B='x' is out of range"])

    status, body, _ = error_body(error)

    assert status == HTTPStatus.INTERNAL_SERVER_ERROR
    assert body["error"] == {
        "code": "configuration_error",
        "message": "invalid configuration: A is required; B='x' is out of range",
    }
    assert error.problems == ["A is required", "B='x' is out of range"]


def test_error_body_keeps_a_code_override_and_copies_headers() -> None:
    error = errors.StoreUnavailableError(
        "slow down", code="store_throttled", headers={"Retry-After": "2"}
    )

    status, body, headers = error_body(error)
    headers["X-Mutated"] = "yes"

    assert status == 503
    assert body["error"]["code"] == "store_throttled"
    assert error_body(error)[2] == {"Retry-After": "2"}
    assert errors.StoreUnavailableError.code == "store_unavailable"  # class default untouched


def test_unknown_exception_becomes_a_generic_500_that_reveals_nothing() -> None:
    secret = "cannot open /opt/secret/weights.bin: token=abc123"

    status, body, headers = error_body(ValueError(secret))

    assert status == HTTPStatus.INTERNAL_SERVER_ERROR
    assert body["error"]["code"] == "internal_error"
    assert secret not in body["error"]["message"]
    assert "abc123" not in body["error"]["message"]
    assert "/opt/secret" not in body["error"]["message"]
    assert body["error"]["message"] == "internal error; the request id in the logs has the details"
    assert headers == {}


def test_every_onnxkit_error_is_an_exception_with_its_message() -> None:
    error = errors.InvalidInputError("bad shape")

    assert isinstance(error, OnnxkitError)
    assert str(error) == "bad shape"
    assert error.message == "bad shape"
