"""Asynchronous inference jobs: queued on a SageMaker asynchronous endpoint, kept in S3.

``POST /v2/models/{name}/jobs`` validates the request as ``infer`` does, writes it to the
payload store (``{store}/jobs/{id}/request.json``), calls InvokeEndpointAsync with that
object as its input, writes a small record (``{store}/jobs/{id}/job.json``: where SageMaker
will put the result or the failure) and answers 202 at once. ``GET /v2/jobs/{id}`` reads the
record and looks for the output, then the failure: a result small enough comes back inline,
a larger one as a presigned URL.

SageMaker's asynchronous front end does the rest (reads the input, calls the container's
``/invocations``, writes the reply under the endpoint config's ``S3OutputPath`` or the error
under ``S3FailurePath``); ``onnxkit_tools.local.async_inference`` emulates it locally.

Those paths are the store's ``async-output/`` and ``async-failure/`` (the template sets them).
Whoever can write the payload bucket can write a record, so a location in one is followed only
if it is an object directly under them, in the store's own bucket and prefix: anything else is
``job_record_invalid`` (502), logged, and never read or signed.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, Protocol
from urllib.parse import urlparse

from onnxkit.backends.sagemaker import SageMakerBackend, endpoint_errors
from onnxkit.codecs import Reply, encode_json
from onnxkit.errors import (
    JobNotFoundError,
    JobRecordInvalidError,
    JobsNotEnabledError,
    JobStoreUnavailableError,
    UseJobsError,
)
from onnxkit.settings import (
    ENV_PAYLOAD_STORE,
    ENV_SAGEMAKER_ENDPOINT,
    ENV_SAGEMAKER_MODE,
    Settings,
)

if TYPE_CHECKING:
    from onnxkit.predictor import Predictor

logger = logging.getLogger(__name__)

JSON = "application/json"
JOB_ID = re.compile(r"[0-9a-f]{32}")
"""Job ids are uuid4 hex: anything else is refused before S3 is asked (always fullmatch: `$`
would also match before a final newline)."""
OUTPUTS = "async-output"
FAILURES = "async-failure"
"""The folders of the store where the asynchronous endpoint writes (its S3OutputPath and
S3FailurePath): the only places a job record may point to."""
_OBJECT_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")
"""An object SageMaker writes there: ``<id>.out``, ``<id>-error.out`` (one segment, no dots
first, so never ``..``)."""
INVOCATION_TIMEOUT_SECONDS = 3600
"""How long SageMaker lets the container work on one job (its ceiling: an hour)."""
PENDING_RETRY_AFTER = "5"
FAILURE_READ_BYTES = 64 * 1024
"""A failure object is an error message: read no more than this of it."""


class Jobs(Protocol):
    """What the job routes call: queue a job, report on one."""

    def submit(
        self, predictor: Predictor, name: str, version: str | None, body: bytes | str
    ) -> Reply:
        """Validate and queue a job; the 202 answer."""
        ...

    def status(self, job_id: str) -> Reply:
        """A job's status (and result)."""
        ...


class JobsOff:
    """Jobs where they cannot run: every call answers 404 ``jobs_not_enabled``, saying why.

    Args:
        reason: What is missing, and how to enable jobs.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def submit(
        self, predictor: Predictor, name: str, version: str | None, body: bytes | str
    ) -> Reply:
        """Raises: JobsNotEnabledError."""
        raise JobsNotEnabledError(self.reason)

    def status(self, job_id: str) -> Reply:
        """Raises: JobsNotEnabledError."""
        raise JobsNotEnabledError(self.reason)


def jobs_missing(settings: Settings) -> str:
    """Why jobs cannot run with these settings, and how to enable them ("" when they can)."""
    forward, missing = settings.forward, []
    if not settings.payloads.enabled:
        missing.append(f"a payload store ({ENV_PAYLOAD_STORE}=s3://bucket/prefix)")
    if not forward.endpoint:
        missing.append(f"a SageMaker endpoint ({ENV_SAGEMAKER_ENDPOINT})")
    if forward.mode != "async":
        missing.append(f"the endpoint in asynchronous mode ({ENV_SAGEMAKER_MODE}=async)")
    if not missing:
        return ""
    return (
        "asynchronous jobs are off on this function: they need "
        + ", ".join(missing)
        + "; deploy the template with SageMakerMode: async (it sets them), or POST to "
        "/v2/models/{name}/infer"
    )


class JobQueue:
    """Queues jobs on an asynchronous SageMaker endpoint and reports them from S3.

    Args:
        s3: A boto3 S3 client (the payload store).
        sagemaker_runtime: A boto3 sagemaker-runtime client.
        endpoint_name: The asynchronous endpoint.
        store: The payload store, ``s3://bucket/prefix``.
        inline_result_bytes: Results up to this size are returned in the status itself.
        url_seconds: How long a presigned result URL stays valid.
        invocation_timeout_s: InvokeEndpointAsync's ``InvocationTimeoutSeconds``.
    """

    def __init__(
        self,
        s3: Any,
        sagemaker_runtime: Any,
        endpoint_name: str,
        store: str,
        *,
        inline_result_bytes: int,
        url_seconds: int,
        invocation_timeout_s: int = INVOCATION_TIMEOUT_SECONDS,
    ) -> None:
        self._s3 = s3
        self._runtime = sagemaker_runtime
        self._endpoint = endpoint_name
        self._bucket, self._prefix = _split_s3(store.rstrip("/") + "/")
        self._inline = inline_result_bytes
        self._url_seconds = url_seconds
        self._timeout = invocation_timeout_s

    # -- submit ------------------------------------------------------------------------------

    def submit(
        self, predictor: Predictor, name: str, version: str | None, body: bytes | str
    ) -> Reply:
        """Validate the request, store it, call InvokeEndpointAsync, record the job.

        Args:
            predictor: Validates the request against the model's signature.
            name: The model in the path.
            version: The version in the path, if any.
            body: The v2 request (JSON).

        Returns:
            202: ``{"id", "status": "pending", "model_name", "model_version", "links"}``.

        Raises:
            OnnxkitError: 4xx for a request infer would refuse (or a model that runs in the
                function: 409 ``use_jobs``), 429/5xx for SageMaker or S3 faults, 502
                ``job_record_invalid`` when SageMaker names locations outside the store.
        """
        backend = predictor.validate(name, version, body, content_type=JSON)
        manifest = backend.manifest
        if not isinstance(backend, SageMakerBackend):
            raise UseJobsError(
                f"model {manifest.name!r} runs in this function, not on the SageMaker "
                f"endpoint: POST the same body to /v2/models/{manifest.name}/infer",
                code="use_infer",
            )
        job_id = uuid.uuid4().hex
        raw = body.encode() if isinstance(body, str) else bytes(body)
        request_key = self._key(job_id, "request.json")
        self._put(request_key, raw)
        with endpoint_errors(f"SageMaker endpoint {self._endpoint!r}"):
            response = self._runtime.invoke_endpoint_async(
                EndpointName=self._endpoint,
                InputLocation=f"s3://{self._bucket}/{request_key}",
                ContentType=JSON,
                Accept=JSON,
                InferenceId=job_id,
                InvocationTimeoutSeconds=self._timeout,
                CustomAttributes=f"model={manifest.name};version={manifest.version}",
            )
        record = {
            "id": job_id,
            "model_name": manifest.name,
            "model_version": manifest.version,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "output_location": response.get("OutputLocation"),
            "failure_location": response.get("FailureLocation"),
        }
        if not record["output_location"]:  # SageMaker always names it; a stub may not
            raise JobStoreUnavailableError(
                f"SageMaker endpoint {self._endpoint!r} accepted the job but named no output "
                "location; is it an asynchronous endpoint (AsyncInferenceConfig)?"
            )
        # A record status() would refuse is not written: the endpoint config is wrong (the
        # job runs, but where this function never looks).
        self._locations(job_id, record, where="the SageMaker endpoint's answer")
        try:
            self._put(self._key(job_id, "job.json"), encode_json(record))
        except JobStoreUnavailableError:
            # The job runs anyway; its output lands where the log says.
            logger.error("job %s queued but its record not written: %s", job_id, record)
            raise
        logger.info("job queued", extra={"job": job_id, "model": manifest.name})
        answer = {
            "id": job_id,
            "status": "pending",
            "model_name": manifest.name,
            "model_version": manifest.version,
            "links": {"self": f"/v2/jobs/{job_id}"},
        }
        return Reply(encode_json(answer), JSON, {"Location": f"/v2/jobs/{job_id}"})

    # -- status ------------------------------------------------------------------------------

    def status(self, job_id: str) -> Reply:
        """A job's status: pending, succeeded (the result inline or by URL) or failed.

        Raises:
            JobNotFoundError: The id is not a job id, or no job has it.
            JobRecordInvalidError: The record is not one this function wrote, or names a
                location outside the store's async-output/ or async-failure/ (502).
            JobStoreUnavailableError: S3 failed or refused a read.
        """
        if not JOB_ID.fullmatch(job_id):
            raise JobNotFoundError(f"no job {job_id!r}: job ids are 32 hexadecimal digits")
        raw = self._get(self._bucket, self._key(job_id, "job.json"))
        if raw is None:
            raise JobNotFoundError(f"no job {job_id!r}")
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if not isinstance(record, dict) or record.get("id", job_id) != job_id:
            logger.error("the record of job %s is not one this function wrote", job_id)
            raise JobRecordInvalidError(f"the record of job {job_id} is invalid")
        # Every location is checked before any is read or signed.
        output, failure = self._locations(job_id, record, where="its record")
        answer: dict[str, Any] = {
            "id": job_id,
            "model_name": _text(record.get("model_name")),
            "model_version": _text(record.get("model_version")),
            "created": _text(record.get("created")),
        }
        size = self._size(self._bucket, output)
        if size is not None:
            return _json({**answer, "status": "succeeded", **self._result(output, size)})
        if failure is not None and self._size(self._bucket, failure) is not None:
            error = _failure(self._get(self._bucket, failure, limit=FAILURE_READ_BYTES) or b"")
            return _json({**answer, "status": "failed", "error": error})
        return _json({**answer, "status": "pending"}, {"Retry-After": PENDING_RETRY_AFTER})

    def _locations(
        self, job_id: str, record: dict[str, Any], *, where: str
    ) -> tuple[str, str | None]:
        """The keys of a job's output and failure (None: not named), each checked to be one
        object directly under the store's async-output/ (async-failure/).

        Raises:
            JobRecordInvalidError: A location is missing (the output), not a string, or
                anywhere else: another bucket, prefix or folder, nested, dotted (logged).
        """
        output = self._location(job_id, record.get("output_location"), OUTPUTS, where)
        if output is None:
            self._invalid(job_id, where, "names no output location", None)
        return output, self._location(job_id, record.get("failure_location"), FAILURES, where)

    def _location(self, job_id: str, location: Any, folder: str, where: str) -> str | None:
        if location is None:
            return None
        # Exactly s3://{bucket}/{prefix}{folder}/<name>: no other bucket, user part, prefix or
        # folder, no nesting, dot segments, query or trailing newline.
        allowed = f"s3://{self._bucket}/{self._prefix}{folder}/"
        if not (
            isinstance(location, str)
            and location.startswith(allowed)
            and _OBJECT_NAME.fullmatch(location[len(allowed) :])
        ):
            self._invalid(job_id, where, f"names a location outside {folder}/", location)
        return location[len(f"s3://{self._bucket}/") :]

    def _invalid(self, job_id: str, where: str, what: str, location: Any) -> NoReturn:
        # The location itself goes to the log only: it may name other buckets and keys.
        logger.error(
            "job %s: %s %s (%.300r); not followed", job_id, where, what, location,
            extra={"job": job_id},
        )  # fmt: skip
        raise JobRecordInvalidError(
            f"job {job_id}: {where} {what}; only objects in the payload store's "
            f"{OUTPUTS}/ and {FAILURES}/ are followed (the endpoint config's S3OutputPath and "
            "S3FailurePath must be those)"
        )

    def _result(self, key: str, size: int) -> dict[str, Any]:
        """The result (a checked key of the store's bucket) inline when small and JSON, else a
        presigned URL to it."""
        if size <= self._inline:
            raw = self._get(self._bucket, key)
            try:
                return {"result": json.loads(raw or b"")}
            except ValueError:
                pass  # binary tensors (asked for by the request): only a URL carries them
        try:
            url = self._s3.generate_presigned_url(
                "get_object",
                Params={"Bucket": self._bucket, "Key": key},
                ExpiresIn=self._url_seconds,
            )
        except Exception as exc:  # botocore signs locally: only missing credentials fail
            raise JobStoreUnavailableError("cannot sign a URL for the job's result") from exc
        return {"result_url": url, "bytes": size, "expires_in": self._url_seconds}

    # -- S3 ----------------------------------------------------------------------------------

    def _key(self, job_id: str, name: str) -> str:
        return f"{self._prefix}jobs/{job_id}/{name}"

    def _put(self, key: str, body: bytes) -> None:
        with _StoreErrors(f"writing s3://{self._bucket}/{key}"):
            self._s3.put_object(Bucket=self._bucket, Key=key, Body=body, ContentType=JSON)

    def _get(self, bucket: str, key: str, *, limit: int | None = None) -> bytes | None:
        """An object's bytes (the first ``limit``), or None when there is none."""
        extra = {"Range": f"bytes=0-{limit - 1}"} if limit else {}
        with _StoreErrors(f"reading s3://{bucket}/{key}"):
            return bytes(self._s3.get_object(Bucket=bucket, Key=key, **extra)["Body"].read())
        return None

    def _size(self, bucket: str, key: str) -> int | None:
        """An object's size, or None when it does not exist (yet)."""
        with _StoreErrors(f"reading s3://{bucket}/{key}"):
            return int(self._s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
        return None


class _StoreErrors:
    """S3 faults as ``job_store_unavailable`` (503; throttling with Retry-After); a missing
    object is swallowed, so the block's caller falls through to its "absent" answer."""

    def __init__(self, doing: str) -> None:
        self.doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, _: Any) -> bool:
        if exc is None:
            return False
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                return True
            if code in ("SlowDown", "503", "ThrottlingException") or status == 503:
                raise JobStoreUnavailableError(
                    f"the payload store is throttling ({self.doing}); retry shortly",
                    headers={"Retry-After": "1"},
                ) from exc
            if code in ("AccessDenied", "403", "Forbidden") or status == 403:
                # Also what a HEAD of a missing key answers without s3:ListBucket.
                raise JobStoreUnavailableError(
                    f"access denied {self.doing}: the function needs s3:GetObject, "
                    "s3:PutObject and s3:ListBucket on the payload store's jobs/, "
                    "async-output/ and async-failure/ prefixes"
                ) from exc
            logger.error("S3 error %s %s: %s", code, self.doing, error.get("Message"))
            raise JobStoreUnavailableError(f"the payload store failed ({self.doing})") from exc
        if isinstance(exc, BotoCoreError):
            raise JobStoreUnavailableError(
                f"the payload store cannot be reached ({self.doing}); retry shortly",
                headers={"Retry-After": "1"},
            ) from exc
        return False


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def _text(value: Any) -> str | None:
    """A record's descriptive field as it is when a string, else None (never echoed as is)."""
    return value if isinstance(value, str) else None


def _json(answer: dict[str, Any], headers: dict[str, str] | None = None) -> Reply:
    return Reply(encode_json(answer), JSON, dict(headers or {}))


def _failure(raw: bytes) -> dict[str, str]:
    """A failure object as ``{"code", "message"}``: our container's error body as it is,
    anything else (SageMaker's own words) quoted."""
    try:
        detail = json.loads(raw)["error"]
        return {"code": str(detail["code"]), "message": str(detail["message"])}
    except (ValueError, KeyError, TypeError):
        text = raw.decode("utf-8", "replace").strip()[:2000] or "no details were written"
        return {"code": "job_failed", "message": f"the endpoint failed the job: {text}"}
