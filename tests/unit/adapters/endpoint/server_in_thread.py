"""The endpoint app under a real uvicorn server in a thread, on a free loopback port, for tests."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import requests
import uvicorn

from onnxkit.adapters.endpoint import (
    EndpointApp,
    EndpointConfig,
    HardenedHttpToolsProtocol,
    create_app,
)
from onnxkit.manifest import FileEntry, Manifest, TensorSpec
from onnxkit.predictor import Predictor
from onnxkit.settings import ApiSettings, EndpointSettings, Settings
from onnxkit_tools.net import wait_http

JSON = {"Content-Type": "application/json"}
FAKE_MANIFEST = Manifest(
    name="fake",
    version="1",
    files=(FileEntry("model.onnx", "0" * 64, 1),),
    inputs=(TensorSpec("x", "FP32", (-1, 3)),),
    outputs=(TensorSpec("y", "FP32", (-1, 3)),),
    opset=17,
)
LIMITS = ApiSettings(max_request_bytes=64 * 1024, max_batch_size=64, serve_openapi=True)


def infer_body(x: np.ndarray, name: str = "x", **extra: Any) -> bytes:
    """A v2 request for one FP32 input."""
    tensor = {"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    return json.dumps({"inputs": [tensor], **extra}).encode()


class FakeBackend:
    """Doubles ``x``; can block on a gate, count concurrency, or raise."""

    processing = None  # tensors only: no declared processing

    def __init__(self) -> None:
        self.manifest = FAKE_MANIFEST
        self.gate: threading.Event | None = None
        self.entered = threading.Semaphore(0)
        self.running = 0
        self.most_running = 0
        self.lock = threading.Lock()
        self.error: Exception | None = None

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict:
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        self.entered.release()
        try:
            if self.gate is not None:
                self.gate.wait(10)
            if self.error is not None:
                raise self.error
            return {"y": inputs["x"] * 2}
        finally:
            with self.lock:
                self.running -= 1


def fake_predictor(backend: Any, loader: Callable[[], Any] | None = None) -> Predictor:
    """A predictor named ``fake`` over a fake backend, loaded in the background."""
    return Predictor("fake", loader or (lambda: backend), LIMITS, background=True)


@dataclass
class Served:
    """A running server: its URL, port, the app behind it and uvicorn's server object."""

    url: str
    port: int
    endpoint: EndpointApp
    server: uvicorn.Server

    @property
    def predictor(self) -> Predictor:
        """The served predictor."""
        return self.endpoint.predictor

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll /ping until 200."""
        wait_http(f"{self.url}/ping", timeout_s=timeout)


@contextmanager
def serving(
    predictor: Predictor,
    *,
    threads: int = 0,
    header_timeout: float = 10.0,
    body_timeout: float = 30.0,
    drain_seconds: float = 5.0,
    max_concurrency: int = 64,
    max_connections: int = 1024,
    ready: bool = True,
) -> Iterator[Served]:
    """The endpoint app for ``predictor`` under uvicorn (the container's protocol and config)."""
    settings = Settings(
        api=predictor.limits,
        endpoint=EndpointSettings(
            max_concurrency=max_concurrency,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            max_connections=max_connections,
        ),
    )
    app, endpoint = create_app(predictor, settings, threads=threads)
    config = EndpointConfig(
        app,
        http=HardenedHttpToolsProtocol,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(drain_seconds) or 1,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        max_connections=max_connections,
    )
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    served = Served(f"http://127.0.0.1:{port}", port, endpoint, server)
    try:
        if ready:
            served.wait_ready()
        yield served
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def error_of(response: requests.Response) -> dict[str, str]:
    """The ``error`` object of a JSON error response (checks the media type too)."""
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    return dict(body["error"])


def read_http(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def refused_within(port: int, seconds: float) -> bool:
    """Whether a connection to the port is refused within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except ConnectionRefusedError:
            return True
        except ConnectionResetError:
            pass  # caught while the listening socket closed: the next try is refused
        time.sleep(0.02)
    return False


def read_all(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset ends it too)."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)
