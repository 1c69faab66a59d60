"""The remote backend: a SageMaker real-time endpoint, invoked with the same v2 JSON.

The function validates the request against the manifest's signature (no bad input crosses
the network), forwards it through sagemaker-runtime ``InvokeEndpoint`` and decodes the v2
response. Retries and timeouts come from the botocore client's config. Failures map to
statuses a client can act on: throttling 429 with Retry-After, model error 502, timeout 504,
endpoint missing or not in service 503, an inference component scaled to zero 503
``scaling_up``; a 4xx the container gave (our own error body) is passed through unchanged.
An asynchronous endpoint takes no InvokeEndpoint: its models answer 409 ``use_jobs``
(``onnxkit.jobs`` sends them InvokeEndpointAsync instead).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxkit.backends import requested_outputs
from onnxkit.codecs import encode_json, encode_tensor
from onnxkit.datatypes import BY_NAME
from onnxkit.errors import (
    BackendError,
    BackendThrottledError,
    BackendTimeoutError,
    BackendUnavailableError,
    InvalidInputError,
    NotAcceptableError,
    OnnxkitError,
    UseJobsError,
)
from onnxkit.manifest import Manifest

if TYPE_CHECKING:
    from onnxkit.processing import Pipeline

logger = logging.getLogger(__name__)

JSON = "application/json"
RETRY_AFTER_SECONDS = "1"
# An inference component scaled to zero gets a copy back in minutes (an instance starts, the
# container loads): ask clients to come back in about a minute, not to hammer it.
SCALING_RETRY_AFTER_SECONDS = "60"


class SageMakerBackend:
    """Runs a manifest's model on a SageMaker endpoint.

    Args:
        manifest: The model's manifest (its signature validated the request already).
        client: A boto3 ``sagemaker-runtime`` client (endpoint, timeouts and retries set).
        endpoint_name: The endpoint to invoke.
        inference_component: The inference component to invoke on it (None: the endpoint's
            model).
        asynchronous: The endpoint is an asynchronous one: :meth:`run` refuses (409
            ``use_jobs``), as SageMaker would refuse InvokeEndpoint.
    """

    def __init__(
        self,
        manifest: Manifest,
        client: Any,
        endpoint_name: str,
        *,
        inference_component: str | None = None,
        asynchronous: bool = False,
    ) -> None:
        self.manifest = manifest
        self._client = client
        self._endpoint = endpoint_name
        self._component = inference_component
        self.asynchronous = asynchronous
        self.processing: Pipeline | None = None

    @property
    def endpoint_name(self) -> str:
        """The endpoint this backend forwards to."""
        return self._endpoint

    def run(
        self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Invoke the endpoint; see :class:`onnxkit.backends.Backend`."""
        if self.asynchronous:
            name = self.manifest.name
            raise UseJobsError(
                f"model {name!r} runs on the asynchronous SageMaker endpoint "
                f"{self._endpoint!r}, which takes jobs only: POST the same body to "
                f"/v2/models/{name}/jobs and poll the job it returns (GET /v2/jobs/{{id}})"
            )
        names = requested_outputs(self.manifest, outputs)
        try:
            tensors = [encode_tensor(name, array) for name, array in inputs.items()]
        except NotAcceptableError as exc:
            raise InvalidInputError(
                "a BYTES input holds bytes that are not UTF-8 text; this model runs on a "
                "SageMaker endpoint, which is sent JSON, and JSON carries text only"
            ) from exc
        request: dict[str, Any] = {
            "inputs": tensors,
            "outputs": [{"name": name} for name in names],
        }
        reply = self._invoke(encode_json(request))
        return decode_outputs(reply, names)

    def _invoke(self, body: bytes) -> bytes:
        extra = {"InferenceComponentName": self._component} if self._component else {}
        with endpoint_errors(f"SageMaker endpoint {self._endpoint!r}"):
            response = self._client.invoke_endpoint(
                EndpointName=self._endpoint,
                Body=body,
                ContentType=JSON,
                Accept=JSON,
                # /invocations names no model: an endpoint serving many reads it from here
                CustomAttributes=f"model={self.manifest.name}",
                **extra,
            )
            return bytes(response["Body"].read())


@contextlib.contextmanager
def endpoint_errors(where: str) -> Iterator[None]:
    """Turn sagemaker-runtime faults raised inside the block into onnxkit errors.

    Args:
        where: Names the endpoint in the messages (``SageMaker endpoint 'x'``).

    Raises:
        OnnxkitError: See :func:`map_client_error`; a read timeout is 504, a connection
            failure 503.
    """
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        ConnectTimeoutError,
        ReadTimeoutError,
    )

    try:
        yield
    except ReadTimeoutError as exc:
        raise BackendTimeoutError(f"{where} did not answer in time") from exc
    except (ConnectTimeoutError, ConnectionError) as exc:
        raise BackendUnavailableError(f"{where} cannot be reached") from exc
    except ClientError as exc:
        raise map_client_error(exc, where) from exc


def map_client_error(exc: Any, where: str) -> OnnxkitError:
    """An InvokeEndpoint (or InvokeEndpointAsync) ClientError as an onnxkit error."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    message = str(error.get("Message", ""))
    if "no capacity" in message.lower():
        # An inference component scaled to zero: SageMaker answers ValidationError (400)
        # "Inference Component has no capacity to process this request", and that failure
        # (the NoCapacityInvocationFailures metric) is what makes auto scaling add a copy.
        scaling = (
            "is scaling up from zero (its inference component has no copy running yet); "
            "starting one takes a few minutes: retry later"
        )
        return BackendUnavailableError(
            f"{where} {scaling}",
            public=f"the model's endpoint {scaling}",
            code="scaling_up",
            headers={"Retry-After": SCALING_RETRY_AFTER_SECONDS},
        )
    if code in ("ThrottlingException", "TooManyRequestsException") or "throttl" in message.lower():
        return BackendThrottledError(
            f"{where} is throttling requests; retry after a short wait",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    if code == "ModelError":
        passed = _container_client_error(exc.response)
        if passed is not None:
            return passed
        logger.error("model error from %s: %s", where, message)
        return BackendError(f"{where} failed to run the model; its logs have the details")
    if code in ("ModelNotReadyException", "ServiceUnavailable", "InternalFailure",
                "InternalDependencyException"):  # fmt: skip
        return BackendUnavailableError(f"{where} is not ready ({code}); retry shortly")
    if code == "ValidationError" and ("not found" in message or "status" in message.lower()):
        return BackendUnavailableError(
            f"{where} does not exist or is not InService; deploy it or check "
            "ONNXKIT_SAGEMAKER_ENDPOINT"
        )
    logger.error("unexpected error from %s: %s %s", where, code, message)
    return BackendError(f"{where} refused the request ({code or 'unknown error'})")


def _container_client_error(response: dict[str, Any]) -> OnnxkitError | None:
    """Our container's own 4xx body, passed through with its status and code."""
    status = response.get("OriginalStatusCode")
    original = response.get("OriginalMessage", "")
    if not isinstance(status, int) or not 400 <= status < 500:
        return None
    try:
        detail = json.loads(original)["error"]
        error = OnnxkitError(str(detail["message"]), code=str(detail["code"]))
    except (ValueError, KeyError, TypeError):
        return None
    error.status = HTTPStatus(status)
    return error


def decode_outputs(raw: bytes, names: list[str]) -> dict[str, np.ndarray]:
    """Arrays from a v2 JSON response, in the order asked for (BYTES: strings as UTF-8 bytes).

    Raises:
        BackendError: The response is not a v2 response with those outputs.
    """
    try:
        body = json.loads(raw)
        tensors = {tensor["name"]: tensor for tensor in body["outputs"]}
        result = {}
        for name in names:
            tensor = tensors[name]
            datatype = BY_NAME[tensor["datatype"]]
            if datatype.is_bytes:
                result[name] = _bytes_array(tensor["data"]).reshape(tensor["shape"])
            else:
                values = np.asarray(tensor["data"], dtype=datatype.numpy)
                result[name] = values.reshape(tensor["shape"])
        return result
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackendError("the endpoint's response is not a valid v2 response") from exc


def _bytes_array(data: Any) -> np.ndarray:
    """A BYTES tensor from JSON strings (flat or nested) as an object array of UTF-8 bytes.

    Raises:
        TypeError: ``data`` is not a list of strings.
    """
    texts = np.asarray(data, dtype=object).ravel().tolist()
    if not all(isinstance(text, str) for text in texts):
        raise TypeError("BYTES data must be strings")
    items = np.empty(len(texts), dtype=object)
    items[:] = [text.encode() for text in texts]
    return items
