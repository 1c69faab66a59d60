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
    assert body["error"]["code"] == code
    assert headers == {}
    assert error.is_client_error is (400 <= status < 500)
    # A client's mistake is explained in full; a fault of ours in the class's own words.
    expected = "what went wrong, in our words" if status < 500 else cls.public_message
    assert body["error"]["message"] == expected


# What the attacker saw in 5xx bodies: cache paths, the store's bucket and prefix, and
# onnxruntime's source paths. Each fault class is raised the way the code raises it.
LEAKY_FAULTS = [
    errors.IntegrityError(
        "s3://models-prod/team-a/models/digits/1/model.onnx does not match its manifest"
    ),
    errors.CacheFullError("digits/1 needs 9 bytes but only 1 are free in /tmp/onnxkit"),
    errors.ModelLoadError(
        "warm-up run failed: Fail: /onnxruntime_src/onnxruntime/core/providers/cpu/"
        "tensor/reshape_helper.h:91 input_shape_size == requested_shape_size was false"
    ),
    errors.StoreUnavailableError("access denied to s3://models-prod/team-a/models/x/1/m.onnx"),
    errors.CacheError("the cache folder /tmp/onnxkit may be written by other users"),
]


@pytest.mark.parametrize("error", LEAKY_FAULTS, ids=lambda e: type(e).__name__)
def test_a_fault_tells_the_client_its_kind_and_the_logs_the_details(error: OnnxkitError) -> None:
    _, body, _ = error_body(error)

    for internal in ("s3://", "models-prod", "/tmp/onnxkit", "onnxruntime_src", "reshape_helper"):
        assert internal not in body["error"]["message"]
    assert body["error"]["code"] == error.code
    assert error.message not in body["error"]["message"]  # the logs still get all of it


def test_a_fault_may_say_what_its_raiser_wrote_for_clients() -> None:
    error = errors.ModelNotReadyError(
        "alias read failed for s3://b/p/models/x/_aliases/prod.json", public="still loading"
    )

    assert error_body(error)[1]["error"]["message"] == "still loading"
    assert "s3://b/p" in error.message


def test_configuration_error_lists_its_problems_to_the_logs_only() -> None:
    error = errors.ConfigurationError(["A is required", "B='x' is out of range"])

    status, body, _ = error_body(error)

    assert status == HTTPStatus.INTERNAL_SERVER_ERROR
    assert body["error"] == {
        "code": "configuration_error",
        "message": errors.ConfigurationError.public_message,
    }
    assert error.message == "invalid configuration: A is required; B='x' is out of range"
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
