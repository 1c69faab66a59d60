"""AWS clients, made in one place with the configured retries and timeouts.

Endpoints follow boto3's own variables (``AWS_ENDPOINT_URL_S3`` for a moto server locally,
``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` for the local endpoint server). Tests hand in their own
clients; nothing else in the library creates one.
"""

from __future__ import annotations

from typing import Any

from onnxkit.settings import AwsSettings, ForwardSettings

SAGEMAKER_CONNECT_TIMEOUT = 2.0


class AwsClients:
    """Creates each client on first use, once.

    Args:
        aws: S3 retries and timeouts.
        forward: The InvokeEndpoint timeout and retry budget.
        s3: A ready S3 client to use instead (tests: moto).
        sagemaker_runtime: A ready sagemaker-runtime client to use instead.
    """

    def __init__(
        self,
        aws: AwsSettings | None = None,
        forward: ForwardSettings | None = None,
        *,
        s3: Any = None,
        sagemaker_runtime: Any = None,
    ) -> None:
        self._aws = aws or AwsSettings()
        self._forward = forward or ForwardSettings()
        self._s3 = s3
        self._sagemaker_runtime = sagemaker_runtime

    def s3(self) -> Any:
        """The S3 client (botocore standard retries, connect and read timeouts).

        Its connection pool holds the parallel ranged GETs of a large model at once.
        """
        if self._s3 is None:
            self._s3 = _client(
                "s3",
                max_attempts=self._aws.s3_max_attempts,
                connect_timeout=self._aws.s3_connect_timeout,
                read_timeout=self._aws.s3_read_timeout,
                max_pool_connections=max(10, self._aws.s3_max_concurrency),
            )
        return self._s3

    def sagemaker_runtime(self) -> Any:
        """The sagemaker-runtime client (InvokeEndpoint timeout and retry budget)."""
        if self._sagemaker_runtime is None:
            self._sagemaker_runtime = _client(
                "sagemaker-runtime",
                max_attempts=self._forward.max_attempts,
                connect_timeout=SAGEMAKER_CONNECT_TIMEOUT,
                read_timeout=self._forward.timeout,
            )
        return self._sagemaker_runtime


def _client(
    service: str,
    *,
    max_attempts: int,
    connect_timeout: float,
    read_timeout: float,
    max_pool_connections: int = 10,
) -> Any:
    import boto3  # imported on first use: a model served from a folder never needs it
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool_connections,
    )
    return boto3.client(service, config=config)
