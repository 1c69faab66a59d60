"""SageMaker's asynchronous inference front end, emulated in front of the local endpoint.

On AWS this is platform, not container: InvokeEndpointAsync queues a request whose input is
in S3; SageMaker reads it, POSTs it to the container's ``/invocations``, and writes the reply
to the endpoint config's ``S3OutputPath`` (``{id}.out``) or the error to ``S3FailurePath``
(``{id}-error.out``). Here the endpoint app is wrapped so that boto3's
``invoke_endpoint_async``, pointed at the local server (``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME``),
gets the 202 the service model describes, and a background thread does SageMaker's part
with the same predictor, in process. Output and failure paths are the payload store's
``async-output/`` and ``async-failure/`` (``ONNXKIT_PAYLOAD_STORE``), as the template sets
them.

``onnxkit local start-endpoint --async`` serves it; the runtime never imports this module.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from onnxkit.adapters.endpoint.app import EndpointApp, endpoint_from_env
from onnxkit.aws import AwsClients
from onnxkit.codecs import Reply, encode_json
from onnxkit.errors import ConfigurationError, error_body
from onnxkit.routes import CUSTOM_ATTRIBUTES, negotiate
from onnxkit.settings import ENV_PAYLOAD_STORE

logger = logging.getLogger(__name__)

APP_FACTORY = "onnxkit_tools.local.async_inference:app_from_env"
PATH = re.compile(r"^/endpoints/(?P<endpoint>[^/]+)/async-invocations/?$")
JSON = "application/json"
# The headers InvokeEndpointAsync sends and answers (botocore's sagemaker-runtime model).
INPUT_LOCATION = "x-amzn-sagemaker-inputlocation"
INFERENCE_ID = "x-amzn-sagemaker-inference-id"
CONTENT_TYPE = "x-amzn-sagemaker-content-type"
ACCEPT = "x-amzn-sagemaker-accept"
OUTPUT_LOCATION = "X-Amzn-SageMaker-OutputLocation"
FAILURE_LOCATION = "X-Amzn-SageMaker-FailureLocation"
READY_WAIT_SECONDS = 60.0
"""SageMaker holds queued requests until the container answers /ping: so does this."""


class AsyncInvocations:
    """ASGI middleware: ``POST /endpoints/{name}/async-invocations`` queued and run here,
    everything else passed to the endpoint app.

    Args:
        app: The endpoint's ASGI app.
        endpoint: The app behind it (its predictor and route table run the jobs).
        s3: A boto3 S3 client (the local moto server).
        store: The payload store, ``s3://bucket/prefix``.
        workers: Jobs run at once (SageMaker's MaxConcurrentInvocationsPerInstance).
    """

    def __init__(
        self, app: ASGIApp, endpoint: EndpointApp, s3: Any, store: str, *, workers: int = 2
    ) -> None:
        self.app = app
        self.endpoint = endpoint
        self.s3 = s3
        self.output_path = f"{store.rstrip('/')}/async-output"
        self.failure_path = f"{store.rstrip('/')}/async-failure"
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="async-invocation")
        (self._route,) = [r for r in endpoint.table.routes if r.path == "/invocations"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not PATH.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        response = self.accept(headers)
        await response(scope, receive, send)

    def accept(self, headers: dict[str, str]) -> Response:
        """Queue one invocation; the 202 (or the 400 SageMaker would give)."""
        location = headers.get(INPUT_LOCATION, "")
        if not location.startswith("s3://"):
            # rest-json errors: botocore reads the code from this header.
            return Response(
                encode_json({"message": "InputLocation (an s3:// URI) is required"}),
                400,
                {"x-amzn-ErrorType": "ValidationError"},
                media_type=JSON,
            )
        job = headers.get(INFERENCE_ID) or uuid.uuid4().hex
        output = f"{self.output_path}/{job}.out"
        failure = f"{self.failure_path}/{job}-error.out"
        self._pool.submit(
            self.run,
            location,
            output,
            failure,
            headers.get(CONTENT_TYPE, JSON),
            headers.get(ACCEPT, JSON),
            headers.get(CUSTOM_ATTRIBUTES),  # passed on to the container as is, as SageMaker's
        )
        return Response(
            encode_json({"InferenceId": job}),
            202,
            {OUTPUT_LOCATION: output, FAILURE_LOCATION: failure},
            media_type=JSON,
        )

    def run(
        self,
        location: str,
        output: str,
        failure: str,
        content_type: str,
        accept: str,
        attributes: str | None = None,
    ) -> None:
        """SageMaker's part: read the input, invoke the container, write reply or error."""
        try:
            body = self._read(location)
            deadline = time.monotonic() + READY_WAIT_SECONDS
            while not self.endpoint.predictor.ready and time.monotonic() < deadline:
                time.sleep(0.05)
            negotiate(self._route, content_type=content_type, accept=accept)
            answer = self.endpoint.table.perform(
                self.endpoint.predictor,
                self._route,
                {},
                body,
                {
                    "content-type": content_type,
                    "accept": accept,
                    **({CUSTOM_ATTRIBUTES: attributes} if attributes else {}),
                },
            )
            reply = answer if isinstance(answer, Reply) else Reply(encode_json(answer), JSON)
            self._write(output, reply.body, reply.content_type)
        except Exception as exc:  # every failure lands in the failure path, as SageMaker's
            status, payload, _ = error_body(exc)
            if status >= 500:
                logger.exception("async invocation failed: %s", location)
            self._write(failure, encode_json(payload), JSON)

    def _read(self, uri: str) -> bytes:
        parsed = urlparse(uri)
        response = self.s3.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
        return bytes(response["Body"].read())

    def _write(self, uri: str, body: bytes, content_type: str) -> None:
        parsed = urlparse(uri)
        self.s3.put_object(
            Bucket=parsed.netloc, Key=parsed.path.lstrip("/"), Body=body, ContentType=content_type
        )


def app_from_env() -> ASGIApp:
    """The endpoint app (as ``serve`` builds it) behind the asynchronous front end.

    Raises:
        ConfigurationError: No payload store to read inputs from and write results to.
    """
    app, endpoint, settings = endpoint_from_env()
    store = settings.payloads.store
    if not store:
        raise ConfigurationError(
            [f"the asynchronous endpoint needs {ENV_PAYLOAD_STORE}=s3://bucket/prefix"]
        )
    s3 = AwsClients(settings.aws).s3()
    return AsyncInvocations(app, endpoint, s3, store)


def prepare_store(env: Mapping[str, str]) -> None:
    """Create the payload store's bucket when S3 is a local server (moto), as the template's
    PayloadBucket exists on AWS."""
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or ""
    if urlparse(endpoint).hostname not in ("127.0.0.1", "localhost"):
        return
    from onnxkit_tools.local.s3 import ensure_bucket, s3_client

    ensure_bucket(s3_client(endpoint), urlparse(env[ENV_PAYLOAD_STORE]).netloc)


def main() -> None:
    """``python -m onnxkit_tools.local.async_inference``: the endpoint server, asynchronous."""
    from onnxkit.adapters.endpoint.server import exit_after

    exit_after(APP_FACTORY)


if __name__ == "__main__":
    main()
