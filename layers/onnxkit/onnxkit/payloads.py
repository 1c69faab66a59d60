"""Payloads through S3: presigned uploads in, inputs read by reference, outputs written out.

Inputs too large for a request body (Lambda's 6 MB) go through the payload store
(``ONNXKIT_PAYLOAD_STORE=s3://bucket/prefix``, the template's PayloadBucket). Its layout is
fixed, the template's policies and the asynchronous jobs rely on it:

- ``{store}/uploads/{id}``: a client asks ``POST /v2/models/{name}/uploads`` with the
  object's size for a presigned PUT signed for that size, uploads the tensor's raw bytes, and
  sends ``"parameters": {"reference": "s3://..."}`` in place of an input's ``data``. The
  function only reads uploads.
- ``{store}/results/{id}/{output}``: an output asked for with ``"parameters": {"to_s3": true}``
  (or every output, with the request's ``"outputs_to_s3": true``) is written here and answered
  with its reference and a presigned GET instead of its data.

An object holds a tensor as the binary tensor extension lays it out (little-endian, row-major;
BYTES elements length-prefixed), except a BYTES input of one element by reference, which is
that element's bytes (an image, a document). Only ``{store}/uploads/`` of the configured
bucket may be referenced: anything else is refused (403).

Size rule: the objects one request references must together fit within
``ONNXKIT_UPLOAD_MAX_BYTES`` and, in a Lambda function, within a quarter of its memory
(``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``): the input is held once (read straight into the array's
buffer), and the model's intermediate tensors and outputs need the rest. Every presigned upload
is signed for its exact size, at most that many bytes: S3 stores nothing larger.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn
from urllib.parse import urlsplit

import numpy as np

from onnxkit.codecs import InferenceRequest, ReferenceReader, parse_json, tensor_bytes
from onnxkit.errors import (
    UPLOADS_PATH,
    ForbiddenReferenceError,
    InvalidInputError,
    PayloadsNotConfiguredError,
    PayloadStoreUnavailableError,
    PayloadTooLargeError,
    UploadNotFoundError,
)
from onnxkit.settings import ENV_PAYLOAD_STORE, ENV_UPLOAD_MAX_BYTES, PayloadSettings

logger = logging.getLogger(__name__)

UPLOADS = "uploads"
RESULTS = "results"
MEMORY_SHARE = 4
"""Referenced inputs of one request may take up to 1/MEMORY_SHARE of the function's memory."""
UPLOAD_REQUEST_MAX_BYTES = 4096
_MIB = 1024 * 1024
_READ_CHUNK = _MIB  # urllib3 reads each readinto() into a temporary first: keep it small
# Always fullmatch: re's `$` also matches before a final "\n", so `^...$` with match() would
# take "<id>\n" (a key of another object) or a media type that ends a signed header line.
_UPLOAD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_MEDIA_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}"
)
_UPLOAD_FIELDS = ("bytes", "content_type")
_MISSING = ("NoSuchKey", "404", "NotFound")
_DENIED = ("AccessDenied", "403", "Forbidden")


def new_id() -> str:
    """An unguessable id for an upload or a result (uuid4, 32 hex digits)."""
    return uuid.uuid4().hex


class PayloadStore:
    """Uploads, references and results in the payload store (disabled without one).

    Args:
        settings: Where the store is, the upload limit and how long URLs last.
        client: A boto3 S3 client signing with SigV4 (``AwsClients.payloads_s3``); None when
            no store is configured.
        memory_mb: The function's memory (None outside Lambda): bounds what one request may
            reference.
        make_id: Makes upload and result ids (tests).
    """

    def __init__(
        self,
        settings: PayloadSettings,
        client: Any = None,
        *,
        memory_mb: int | None = None,
        make_id: Callable[[], str] = new_id,
    ) -> None:
        self._settings = settings
        self._client = client
        self._make_id = make_id
        self.bucket = ""
        self.prefix = ""
        if settings.enabled:
            parts = urlsplit(settings.store)
            self.bucket, self.prefix = parts.netloc, parts.path.strip("/")
        self.max_bytes = settings.upload_max_bytes
        """The most bytes one request may reference (and one upload is signed for)."""
        self._rule = f"{ENV_UPLOAD_MAX_BYTES} is {settings.upload_max_bytes}"
        if memory_mb:
            share = memory_mb * _MIB // MEMORY_SHARE
            self.max_bytes = min(self.max_bytes, share)
            self._rule += (
                f"; the inputs one request references must together fit in a quarter of the "
                f"function's {memory_mb} MB of memory ({share} bytes)"
            )

    @classmethod
    def disabled(cls) -> PayloadStore:
        """A store that refuses every use, saying how to configure one."""
        return cls(PayloadSettings())

    @property
    def enabled(self) -> bool:
        """Whether a payload store is configured."""
        return self._settings.enabled and self._client is not None

    def _key(self, folder: str, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, folder, *parts) if p)

    def _require(self) -> None:
        if not self.enabled:
            _not_configured()

    # -- uploads ---------------------------------------------------------------------------

    def presign_upload(self, body: bytes | str | None = None) -> dict[str, Any]:
        """``POST /v2/models/{name}/uploads``: a presigned PUT for a new object under uploads/.

        Args:
            body: JSON ``{"bytes": N, "content_type": "..."}`` (``content_type`` optional).
                The size is signed into the URL (``Content-Length``), so S3 refuses any other.

        Returns:
            ``{"reference", "url", "method", "headers", "expires_in", "max_bytes"}``: PUT the
            object to ``url`` with ``headers``, then send ``reference`` in an input's
            ``parameters``.

        Raises:
            PayloadsNotConfiguredError: No payload store (404).
            InvalidInputError: The body is not such an object, or has no ``bytes`` (400).
            PayloadTooLargeError: ``bytes`` is over :attr:`max_bytes` (413).
            PayloadStoreUnavailableError: The URL cannot be signed (no credentials).
        """
        self._require()
        size, content_type = _upload_request(body)
        if size > self.max_bytes:
            raise PayloadTooLargeError(
                f"an upload of {size} bytes is over the limit of {self.max_bytes} bytes "
                f"({self._rule})"
            )
        key = self._key(UPLOADS, self._make_id())
        # SigV4 signs Content-Length (AwsClients.payloads_s3 signs with it): S3 refuses a PUT
        # of any other size with SignatureDoesNotMatch, and one without it with 411.
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "ContentLength": size}
        headers = {"Content-Length": str(size)}
        if content_type is not None:
            params["ContentType"] = content_type
            headers["Content-Type"] = content_type
        with self._faults(key):
            url = self._client.generate_presigned_url(
                "put_object",
                Params=params,
                ExpiresIn=self._settings.url_seconds,
                HttpMethod="PUT",
            )
        return {
            "reference": f"s3://{self.bucket}/{key}",
            "url": url,
            "method": "PUT",
            "headers": headers,
            "expires_in": self._settings.url_seconds,
            "max_bytes": self.max_bytes,
        }

    def upload_key(self, reference: str) -> str:
        """The key of an upload reference, checked to lie directly under ``{store}/uploads/``.

        Raises:
            ForbiddenReferenceError: Not ``s3://``, another bucket, another prefix or folder
                (``results/``), a nested or dotted name, a query (403).
        """
        # Exactly the store's uploads/ prefix and one id of safe characters: no other bucket,
        # prefix or folder, no dot segments, no nesting, query, fragment or user part.
        allowed = f"s3://{self.bucket}/{self._key(UPLOADS)}/"
        if not (reference.startswith(allowed) and _UPLOAD_ID.fullmatch(reference[len(allowed) :])):
            raise ForbiddenReferenceError(
                f"reference {reference[:200]!r} is not an upload of this server: references must "
                f"be {allowed}<id>, as POST {UPLOADS_PATH} answers them"
            )
        return reference[len(f"s3://{self.bucket}/") :]

    def reader(self) -> ReferenceReader:
        """Reads one request's references, counting them against :attr:`max_bytes` together."""
        if not self.enabled:

            def refuse(reference: str, *, name: str, expected_bytes: int | None) -> bytearray:
                _not_configured()

            return refuse
        left = [self.max_bytes]

        def read(reference: str, *, name: str, expected_bytes: int | None) -> bytearray:
            data = self.read_reference(
                reference, name=name, expected_bytes=expected_bytes, limit=left[0]
            )
            left[0] -= len(data)
            return data

        return read

    def checker(self) -> ReferenceReader:
        """For a request that runs elsewhere (a job): each reference is checked, never read.

        A HEAD checks what :meth:`read_reference` checks (an upload of this store, present,
        the size the input's shape and datatype need, within ``ONNXKIT_UPLOAD_MAX_BYTES``
        together), but not the function's memory: the endpoint reads it. A fixed-size input
        gets zeros of its size in its place, in memory the kernel maps only when written (it
        is only read); a BYTES input (an image, a text) is read, as processing needs it.
        """
        if not self.enabled:
            return self.reader()
        left = [self._settings.upload_max_bytes]

        def check(
            reference: str, *, name: str, expected_bytes: int | None
        ) -> bytes | bytearray | memoryview:
            if expected_bytes is None:
                data = self.read_reference(reference, name=name, limit=left[0])
                left[0] -= len(data)
                return data
            key = self.upload_key(reference)
            with self._faults(key, name=name):
                size = int(self._client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
            _check_size(reference, name, size, expected_bytes, left[0], ENV_UPLOAD_MAX_BYTES)
            left[0] -= size
            return np.zeros(size, np.uint8).data  # calloc: zero pages until written

        return check

    def read_reference(
        self,
        reference: str,
        *,
        name: str,
        expected_bytes: int | None = None,
        limit: int | None = None,
    ) -> bytearray:
        """An uploaded object's bytes, read with one GET straight into a new buffer.

        Args:
            reference: ``s3://bucket/prefix/uploads/<id>``.
            name: The input it is for (messages).
            expected_bytes: The size its shape and datatype need; another size is refused
                before the object is read.
            limit: The most bytes it may have (default :attr:`max_bytes`).

        Raises:
            ForbiddenReferenceError: Not an upload of this store (403).
            UploadNotFoundError: No such object: never uploaded, or expired (404).
            PayloadTooLargeError: Larger than the limit (413).
            InvalidInputError: Not the size the input's shape and datatype need (400).
            PayloadStoreUnavailableError: S3 failed or the read broke off (503).
        """
        self._require()
        key = self.upload_key(reference)
        limit = self.max_bytes if limit is None else limit
        with self._faults(key, name=name):
            reply = self._client.get_object(Bucket=self.bucket, Key=key)
            body = reply["Body"]
            try:
                size = int(reply["ContentLength"])
                _check_size(reference, name, size, expected_bytes, limit, self._rule)
                return _read_into(body, size, reference)
            except BaseException:
                body.close()  # unread: drop the connection rather than drain it
                raise

    # -- results ---------------------------------------------------------------------------

    def check_outputs(self, request: InferenceRequest) -> None:
        """Refuse, before the model runs, a request for outputs to S3 without a store.

        Raises:
            PayloadsNotConfiguredError: Outputs to S3 asked for, no store configured.
        """
        if request.any_s3:
            self._require()

    def store_outputs(
        self, request: InferenceRequest, outputs: dict[str, np.ndarray]
    ) -> dict[str, dict[str, Any]]:
        """Write the outputs the request asks for to ``{store}/results/{id}/``.

        Returns:
            Each written output's response entry (see :meth:`write_result`); {} for none.

        Raises:
            PayloadsNotConfiguredError: No store configured.
            PayloadStoreUnavailableError: S3 failed.
        """
        names = [name for name in outputs if request.wants_s3(name)]
        if not names:
            return {}
        self._require()
        result_id = self._make_id()
        return {name: self.write_result(result_id, name, outputs[name]) for name in names}

    def write_result(self, result_id: str, name: str, array: np.ndarray) -> dict[str, Any]:
        """Write one output as raw bytes (the binary form) and presign a GET for it.

        Returns:
            ``{"name", "datatype", "shape", "parameters": {"reference", "url", "expires_in",
            "bytes"}}``: the output's entry in the response, without ``data``.

        Raises:
            PayloadStoreUnavailableError: S3 failed.
        """
        datatype, data = tensor_bytes(name, array)
        key = self._key(RESULTS, result_id, name)
        with self._faults(key):
            self._client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType="application/octet-stream"
            )
            url = self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=self._settings.url_seconds,
            )
        return {
            "name": name,
            "datatype": datatype.name,
            "shape": list(array.shape),
            "parameters": {
                "reference": f"s3://{self.bucket}/{key}",
                "url": url,
                "expires_in": self._settings.url_seconds,
                "bytes": len(data),
            },
        }

    # -- faults ----------------------------------------------------------------------------

    @contextmanager
    def _faults(self, key: str, *, name: str | None = None) -> Iterator[None]:
        """Translate botocore failures into the error tree (never a bare 500)."""
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"s3://{self.bucket}/{key}"
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if name is not None and code in _MISSING + _DENIED:
                if code in _DENIED:  # without s3:ListBucket, S3 answers 403 for a missing key
                    logger.warning("access denied reading %s (missing, or not readable)", where)
                raise UploadNotFoundError(
                    f"input {name!r}: the upload {where} does not exist; uploads expire, so it "
                    f"may have: upload it again (POST {UPLOADS_PATH})"
                ) from exc
            if code == "NoSuchBucket":
                raise PayloadStoreUnavailableError(
                    f"the payload bucket {self.bucket!r} does not exist; check {ENV_PAYLOAD_STORE}"
                ) from exc
            raise PayloadStoreUnavailableError(
                f"the payload store failed on {where} ({code or 'error'}); retry shortly"
            ) from exc
        except (BotoCoreError, OSError) as exc:
            raise PayloadStoreUnavailableError(
                f"cannot reach the payload store for {where} ({type(exc).__name__}); retry shortly"
            ) from exc


def _not_configured() -> NoReturn:
    raise PayloadsNotConfiguredError(
        "no payload store is configured, so uploads, references and outputs to S3 are off; "
        f"set {ENV_PAYLOAD_STORE}=s3://bucket/prefix (the template's PayloadBucket does) to "
        "send large inputs through S3"
    )


def _read_into(body: Any, size: int, reference: str) -> bytearray:
    """The whole streamed body in one buffer of ``size`` bytes, read in place.

    Raises:
        PayloadStoreUnavailableError: The stream ended early.
    """
    buffer = bytearray(size)
    view = memoryview(buffer)
    done = 0
    while done < size:
        count = body.readinto(view[done : done + _READ_CHUNK])
        if not count:
            raise PayloadStoreUnavailableError(
                f"reading {reference} broke off after {done} of {size} bytes; retry shortly"
            )
        done += count
    return buffer


def _upload_request(body: bytes | str | None) -> tuple[int, str | None]:
    """``bytes`` (required) and ``content_type`` (optional) of an upload request.

    The size is required rather than answering a presigned POST bounded by a
    ``content-length-range`` policy: a PUT signed for one size is bounded just as firmly (S3
    refuses any other Content-Length), keeps the one raw-body PUT every client already sends
    (no multipart form, no CORS change for browsers), and lets an oversize upload be refused
    here, before anything is signed. A client knows the size of what it is about to send.

    Raises:
        InvalidInputError: No body, not a JSON object of those fields, no ``bytes``, or a
            bad value.
    """
    data = (
        parse_json(body, max_bytes=UPLOAD_REQUEST_MAX_BYTES)
        if body is not None and body.strip()
        else {}
    )
    unknown = sorted(set(data) - set(_UPLOAD_FIELDS))
    if unknown:
        raise InvalidInputError(
            f"unknown field(s) {', '.join(map(repr, unknown))}; an upload request may hold "
            '"bytes" (the size, signed into the URL) and "content_type"'
        )
    size = data.get("bytes")
    if size is None:
        # Unsized, the URL would let S3 store anything (refused only when read).
        raise InvalidInputError(
            'an upload needs its size: send {"bytes": N} (and optionally "content_type"); '
            "the URL is signed for exactly N bytes"
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInputError('"bytes" must be a non-negative integer (the object\'s size)')
    content_type = data.get("content_type")
    if content_type is not None and (
        not isinstance(content_type, str) or not _MEDIA_TYPE.fullmatch(content_type)
    ):
        raise InvalidInputError(
            '"content_type" must be a media type such as application/octet-stream or image/png'
        )
    return size, content_type


def _check_size(
    reference: str, name: str, size: int, expected: int | None, limit: int, rule: str
) -> None:
    """Refuse an object (from its declared size, before any byte is read) that is over what
    the request has left (413) or not the size its input's shape and datatype need (400)."""
    if size > limit:
        raise PayloadTooLargeError(
            f"input {name!r}: the upload {reference} is {size} bytes, over the "
            f"{limit} bytes left to this request ({rule})"
        )
    if expected is not None and size != expected:
        raise InvalidInputError(
            f"input {name!r}: the referenced object's size is {size} but its shape "
            f"and datatype need {expected} bytes (raw little-endian values, "
            "as the binary tensor extension lays them out)"
        )
