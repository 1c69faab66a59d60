"""AWS clients, made in one place with the configured retries and timeouts.

Endpoints follow boto3's own variables (``AWS_ENDPOINT_URL_S3`` for a moto server locally,
``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` for the local endpoint server). Tests hand in their own
clients; nothing else in the library creates one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from onnxkit.settings import AwsSettings, ForwardSettings

SAGEMAKER_CONNECT_TIMEOUT = 2.0


class ClientHandle:
    """A boto3 client made here, which :meth:`AwsClients.reset` can drop and make again.

    Attribute access goes to the current client, so whoever holds the handle (the model
    store, the SageMaker backend) uses a fresh client after a reset without being rebuilt.

    Args:
        make: Makes the client (called again after each :meth:`drop`).
    """

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._current: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The current boto3 client, made now if there is none."""
        current = self._current
        if current is None:
            with self._lock:
                if self._current is None:
                    self._current = self._make()
                current = self._current
        return current

    def drop(self) -> None:
        """Close the current client's connections and forget it; the next use makes one."""
        with self._lock:
            current, self._current = self._current, None
        _close(current)

    def __getattr__(self, name: str) -> Any:
        if name in {"_make", "_current", "_lock"}:  # not set yet (copy, unpickling)
            raise AttributeError(name)
        return getattr(self.client, name)


class AwsClients:
    """Creates each client on first use, once; :meth:`reset` makes them afresh.

    The clients it makes are :class:`ClientHandle` objects that behave as the boto3 client.
    Clients handed in are returned as they are.

    Args:
        aws: S3 retries and timeouts.
        forward: The InvokeEndpoint timeout and retry budget.
        s3: A ready S3 client to use instead (tests: moto).
        sagemaker_runtime: A ready sagemaker-runtime client to use instead.
        payloads_s3: A ready S3 client for the payload store to use instead (it must sign
            with SigV4 for presigned URLs to carry their Content-Length).
    """

    def __init__(
        self,
        aws: AwsSettings | None = None,
        forward: ForwardSettings | None = None,
        *,
        s3: Any = None,
        sagemaker_runtime: Any = None,
        payloads_s3: Any = None,
    ) -> None:
        self._aws = aws or AwsSettings()
        self._forward = forward or ForwardSettings()
        self._s3 = s3
        self._sagemaker_runtime = sagemaker_runtime
        self._payloads_s3 = payloads_s3

    def s3(self) -> Any:
        """The S3 client (botocore standard retries, connect and read timeouts).

        Its connection pool holds the parallel ranged GETs of a large model at once.
        """
        if self._s3 is None:
            self._s3 = ClientHandle(
                lambda: _client(
                    "s3",
                    max_attempts=self._aws.s3_max_attempts,
                    connect_timeout=self._aws.s3_connect_timeout,
                    read_timeout=self._aws.s3_read_timeout,
                    max_pool_connections=max(10, self._aws.s3_max_concurrency),
                )
            )
        if isinstance(self._s3, ClientHandle):
            _ = self._s3.client  # made now, as before handles: init pays for it, not a request
        return self._s3

    def payloads_s3(self) -> Any:
        """The payload store's S3 client: the model store's retries and timeouts, signing with
        SigV4 (botocore presigns S3 URLs with SigV2 by default, which cannot sign a size)."""
        if self._payloads_s3 is None:
            self._payloads_s3 = ClientHandle(
                lambda: _client(
                    "s3",
                    max_attempts=self._aws.s3_max_attempts,
                    connect_timeout=self._aws.s3_connect_timeout,
                    read_timeout=self._aws.s3_read_timeout,
                    signature_version="s3v4",
                )
            )
        if isinstance(self._payloads_s3, ClientHandle):
            _ = self._payloads_s3.client
        return self._payloads_s3

    def sagemaker_runtime(self) -> Any:
        """The sagemaker-runtime client (InvokeEndpoint timeout and retry budget)."""
        if self._sagemaker_runtime is None:
            self._sagemaker_runtime = ClientHandle(
                lambda: _client(
                    "sagemaker-runtime",
                    max_attempts=self._forward.max_attempts,
                    connect_timeout=SAGEMAKER_CONNECT_TIMEOUT,
                    read_timeout=self._forward.timeout,
                )
            )
        if isinstance(self._sagemaker_runtime, ClientHandle):
            _ = self._sagemaker_runtime.client
        return self._sagemaker_runtime

    def reset(self, *, handed_in: bool = False) -> None:
        """Forget the clients made here, closing their connections; the next use makes new ones.

        For SnapStart: connections and credentials captured in a snapshot are stale once it
        is restored. Holders of a client from :meth:`s3` or :meth:`sagemaker_runtime` get the
        new one through its handle.

        Args:
            handed_in: Also forget clients handed to the constructor (their holders keep
                them; later calls of :meth:`s3` / :meth:`sagemaker_runtime` make new ones).
        """
        for slot in ("_s3", "_sagemaker_runtime", "_payloads_s3"):
            current = getattr(self, slot)
            if isinstance(current, ClientHandle):
                current.drop()
            elif current is not None and handed_in:
                setattr(self, slot, None)


def _client(
    service: str,
    *,
    max_attempts: int,
    connect_timeout: float,
    read_timeout: float,
    max_pool_connections: int = 10,
    signature_version: str | None = None,
) -> Any:
    import boto3  # imported on first use: a model served from a folder never needs it
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool_connections,
    )
    if signature_version is not None:
        config = config.merge(Config(signature_version=signature_version))
    return boto3.client(service, config=config)


def _close(client: Any) -> None:
    close = getattr(client, "close", None)  # botocore >= 1.28: closes the connection pool
    if callable(close):
        close()
