"""S3 on this machine: a moto server on 127.0.0.1, and the default model published into it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from onnxkit_tools.net import free_port, wait_http

LOCAL_BUCKET = "onnxkit-local"
LOCAL_STORE = f"s3://{LOCAL_BUCKET}/onnxkit"
DEFAULT_MODEL = "digits"


class LocalS3:
    """A moto S3 server on loopback, in this process (threads). Use as a context manager."""

    def __init__(self, port: int = 0) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: Any = None

    def __enter__(self) -> LocalS3:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 call is noise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self) -> Any:
        """A boto3 S3 client for this server (fake credentials, never real AWS)."""
        return s3_client(self.endpoint)


class MotoProcess:
    """A moto S3 server in a process of its own on 127.0.0.1. Use as a context manager.

    For tests and benchmarks: moto's state is global to a process, so an in-process server
    would be emptied by any ``mock_aws()`` that ends, and would share the measured process's
    CPU and GIL.
    """

    def __init__(self, port: int = 0) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> MotoProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_http(f"{self.endpoint}/moto-api/", process=self.process)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def client(self) -> Any:
        """A boto3 S3 client for this server (fake credentials, never real AWS)."""
        return s3_client(self.endpoint)


def s3_client(endpoint: str) -> Any:
    """A boto3 S3 client for a local endpoint with moto's fake credentials."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - moto's conventional fake
    )


def ensure_bucket(client: Any, bucket: str) -> None:
    """Create the bucket if it does not exist."""
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)


def cache_home() -> Path:
    """Where built example models are cached between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "onnxkit"


def default_model_dir() -> Path:
    """The embedded default model (digits, int8), rebuilt whenever its code or packages change."""
    from onnxkit_tools.examples.digits import cached_digits

    return cached_digits(cache_home() / "examples" / DEFAULT_MODEL)


def seed_default_model(client: Any, store_uri: str = LOCAL_STORE) -> None:
    """Publish the digits int8 model as version 1 with alias ``prod``, unless already there."""
    import tempfile
    from urllib.parse import urlparse

    from onnxkit_tools.examples.digits import digits_processing
    from onnxkit_tools.registry import Registry, publish_model

    ensure_bucket(client, urlparse(store_uri).netloc)
    with tempfile.TemporaryDirectory() as cache:
        store = Registry.from_uri(store_uri, cache_dir=cache, s3_client=client)
        if "1" in store.list_versions(DEFAULT_MODEL):
            return
        folder = default_model_dir()
        publish_model(
            store,
            folder / "int8" / "model.onnx",
            name=DEFAULT_MODEL,
            version="1",
            alias="prod",
            report_path=folder / "report.json",
            processing=digits_processing(folder),
        )
