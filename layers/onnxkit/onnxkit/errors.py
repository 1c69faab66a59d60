"""The onnxkit error tree: every failure carries an HTTP status and a short machine code.

Standard library only, so the core never imports a web framework. Adapters turn any error
into ``{"error": {"code": ..., "message": ...}}`` with :func:`error_body`.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


class OnnxkitError(Exception):
    """Root of every error onnxkit raises on purpose.

    A client's mistake (4xx) is explained to the client in full: the message is written for
    it. A fault of ours (5xx) may need the details only an operator should see (a bucket and
    key, a cache path, onnxruntime's own text): the client gets the class's
    :attr:`public_message`, or a ``public`` text the raiser wrote for it, and the logs get
    :attr:`message`.

    Attributes:
        status: The HTTP status a client should see.
        code: A short, stable, machine-readable code (snake_case).
        message: Text for a person: what went wrong and, where possible, what to do (logs,
            the CLI; a client too for a 4xx).
        headers: Extra response headers (for example ``Retry-After``).
        public_message: What a client is told of a 5xx of this class.
    """

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR
    code: str = "internal_error"
    public_message: str = "the server failed; the request id in its logs has the details"
    message_is_public: bool = False
    """True for a 5xx class whose messages are always our words, with no internals."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        public: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})
        self._public = public

    @property
    def is_client_error(self) -> bool:
        """True when the caller can fix it (4xx)."""
        return 400 <= self.status < 500

    @property
    def client_message(self) -> str:
        """What the client is told: the message of a 4xx; for a 5xx, the ``public`` text given
        when it was raised, else the class's :attr:`public_message` (no internals)."""
        if self.status < 500 or self.message_is_public:
            return self.message
        return self._public if self._public is not None else self.public_message


# --- 4xx: the request is wrong -------------------------------------------------------------


class InvalidInputError(OnnxkitError):
    """The request is malformed or does not match the model's signature."""

    status = HTTPStatus.BAD_REQUEST
    code = "invalid_input"


class PayloadTooLargeError(OnnxkitError):
    """The body or the batch is larger than the configured limit."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "payload_too_large"

    @classmethod
    def body(
        cls,
        size: int,
        limit: int,
        *,
        model: str | None = None,
        over: bool = False,
        headers: dict[str, str] | None = None,
    ) -> PayloadTooLargeError:
        """A body over ``limit`` bytes, pointing to the upload path (S3) for large inputs.

        Args:
            size: The body's size (or, with ``over``, how much was read before giving up).
            limit: The largest body accepted.
            model: The model the request was for, when the path names it.
            over: The body is larger than ``size`` (it was not read to its end).
            headers: Response headers to add.
        """
        return cls(
            f"the body is {'over ' if over else ''}{size} bytes; the limit is {limit}: "
            f"{upload_hint(model)}",
            headers=headers,
        )


UPLOADS_PATH = "/v2/models/{name}/uploads"


def upload_hint(model: str | None = None) -> str:
    """What to do with an input too large for a request body: upload it to S3 first."""
    path = UPLOADS_PATH.replace("{name}", model) if model else UPLOADS_PATH
    where = "" if model else " (the model's name in place of {name})"
    return (
        f"split the batch, or use POST {path}{where} to send it through S3 and reference "
        'it in the request (an input\'s "parameters": {"reference": ...})'
    )


class ForbiddenReferenceError(OnnxkitError):
    """An input references an S3 object outside this server's uploads (another bucket, prefix
    or folder, or not ``s3://``)."""

    status = HTTPStatus.FORBIDDEN
    code = "forbidden_reference"


class UploadNotFoundError(OnnxkitError):
    """A referenced upload does not exist (never uploaded, or expired)."""

    status = HTTPStatus.NOT_FOUND
    code = "upload_not_found"


class PayloadsNotConfiguredError(OnnxkitError):
    """Uploads, references or outputs to S3 were asked for, but no payload store is set."""

    status = HTTPStatus.NOT_FOUND
    code = "payloads_not_configured"


class UnsupportedMediaTypeError(OnnxkitError):
    """The body's Content-Type is not one this endpoint decodes."""

    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    code = "unsupported_media_type"


class NotAcceptableError(OnnxkitError):
    """The client accepts no media type this endpoint produces, or asked for an output in a
    form that cannot carry it (a BYTES output that is not UTF-8 text, as JSON)."""

    status = HTTPStatus.NOT_ACCEPTABLE
    code = "not_acceptable"


class RequestTimeoutError(OnnxkitError):
    """The request's headers, or the next part of its body, did not arrive in time (408)."""

    status = HTTPStatus.REQUEST_TIMEOUT
    code = "request_timeout"


class ModelNotFoundError(OnnxkitError):
    """No such model, version or alias (in the store or on this function)."""

    status = HTTPStatus.NOT_FOUND
    code = "model_not_found"


class RouteNotFoundError(OnnxkitError):
    """No route matches the request path."""

    status = HTTPStatus.NOT_FOUND
    code = "route_not_found"


class MethodNotAllowedError(OnnxkitError):
    """The path exists but not for this HTTP method."""

    status = HTTPStatus.METHOD_NOT_ALLOWED
    code = "method_not_allowed"


class VersionConflictError(OnnxkitError):
    """A publish would overwrite an immutable version."""

    status = HTTPStatus.CONFLICT
    code = "version_exists"


class ConflictError(OnnxkitError):
    """The request conflicts with how the server is set up (409)."""

    status = HTTPStatus.CONFLICT
    code = "conflict"


class AliasConflictError(OnnxkitError):
    """An alias moved between our read and our conditional write."""

    status = HTTPStatus.CONFLICT
    code = "alias_conflict"


class UseJobsError(OnnxkitError):
    """A valid request sent to the wrong route for this model: ``infer`` to a model that only
    runs as asynchronous jobs (``use_jobs``), or a job for one that runs in the function."""

    status = HTTPStatus.CONFLICT
    code = "use_jobs"


class JobNotFoundError(OnnxkitError):
    """No job has this id (or the id is not one we hand out)."""

    status = HTTPStatus.NOT_FOUND
    code = "job_not_found"


class JobsNotEnabledError(OnnxkitError):
    """Asynchronous jobs are off: no payload store, or no SageMaker endpoint in async mode."""

    status = HTTPStatus.NOT_FOUND
    code = "jobs_not_enabled"


# --- 5xx: our side or a dependency failed --------------------------------------------------


class ConfigurationError(OnnxkitError):
    """Settings are missing or invalid. Raised at init, listing every bad value at once."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR
    code = "configuration_error"
    public_message = "the server's configuration is invalid; its logs list what to fix"

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration: " + "; ".join(self.problems))


class ModelNotReadyError(OnnxkitError):
    """The model is not loaded (yet, or its last load failed); retrying later may succeed."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "model_not_ready"
    public_message = "the model is not ready; retry in a moment"


class OverloadedError(ModelNotReadyError):
    """A worker at one of its limits (connections, requests in flight): busy, not broken (503).
    Its message names the limit and what to do, nothing internal: the client is told it."""

    code = "overloaded"
    message_is_public = True


class StoreUnavailableError(OnnxkitError):
    """The model store (S3) could not be reached or refused access."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "store_unavailable"
    public_message = "the model store cannot be read now; retry shortly"


class PayloadStoreUnavailableError(OnnxkitError):
    """The payload store (S3: uploads in, results out) could not be reached or refused us."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "payload_store_unavailable"
    public_message = "the payload store cannot be reached now; retry shortly"


class JobStoreUnavailableError(OnnxkitError):
    """The payload store (S3) refused or failed a job's request, record or result."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "job_store_unavailable"
    public_message = "the job store cannot be reached now; retry shortly"


class IntegrityError(OnnxkitError):
    """A downloaded artifact does not match its manifest (sha256 or size), or is unreadable."""

    status = HTTPStatus.BAD_GATEWAY
    code = "artifact_integrity_error"
    public_message = (
        "a model file or document in the store does not match its manifest or is not "
        "valid; the logs name it"
    )


class CacheFullError(OnnxkitError):
    """The local cache (Lambda's /tmp) has no room for the artifact."""

    status = HTTPStatus.INSUFFICIENT_STORAGE
    code = "cache_full"
    public_message = "the model cache is full; raise the function's ephemeral storage"


class JobRecordInvalidError(OnnxkitError):
    """A job's record (or SageMaker's answer naming where a job's result will be) points
    outside the payload store's async-output/ and async-failure/; it is never followed."""

    status = HTTPStatus.BAD_GATEWAY
    code = "job_record_invalid"
    public_message = (
        "the job's record names a location outside the payload store's async-output/ and "
        "async-failure/, so it was not followed; the server's logs have the details"
    )


class CacheError(OnnxkitError):
    """The local cache folder cannot be used safely (a symlink, another user's, writable by
    others) or cannot be written."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR
    code = "cache_unusable"
    public_message = "the model cache cannot be used; the logs say why"


class ModelLoadError(OnnxkitError):
    """onnxruntime refused the model file (unsupported operator, corrupt graph...)."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR
    code = "model_load_error"
    public_message = "the model could not be loaded; the logs have the cause"


class BackendThrottledError(OnnxkitError):
    """The backend refused the request for now (rate limit, capacity)."""

    status = HTTPStatus.TOO_MANY_REQUESTS
    code = "backend_throttled"


class BackendError(OnnxkitError):
    """The remote backend (a SageMaker endpoint) failed to run the model."""

    status = HTTPStatus.BAD_GATEWAY
    code = "backend_model_error"
    public_message = "the model's endpoint failed to run it; the logs have the details"


class BackendUnavailableError(OnnxkitError):
    """The remote backend is missing, not in service, or unreachable."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "backend_unavailable"
    public_message = "the model's endpoint cannot be reached now; retry shortly"


class BackendTimeoutError(OnnxkitError):
    """The remote backend did not answer in time."""

    status = HTTPStatus.GATEWAY_TIMEOUT
    code = "backend_timeout"
    public_message = "the model's endpoint did not answer in time"


class InferenceError(OnnxkitError):
    """The model failed while running on valid input."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR
    code = "inference_error"
    public_message = "the model failed on this input; the request id in the logs has the details"


# --- mapping --------------------------------------------------------------------------------


def error_body(error: BaseException) -> tuple[HTTPStatus, dict[str, Any], dict[str, str]]:
    """Map any exception to a status, a JSON body and headers.

    Unknown exceptions become a generic 500 whose message reveals nothing about the
    internals, and so does any 5xx (:attr:`OnnxkitError.client_message`); the caller logs the
    error's full message and traceback.

    Args:
        error: The exception to map.

    Returns:
        ``(status, {"error": {"code", "message"}}, headers)``.
    """
    if isinstance(error, OnnxkitError):
        status, code, headers = error.status, error.code, error.headers
        message = error.client_message
    else:
        status, code, headers = HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error", {}
        message = "internal error; the request id in the logs has the details"
    return status, {"error": {"code": code, "message": message}}, dict(headers)
