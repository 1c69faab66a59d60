"""The endpoint's `serve` against clients that hold it rather than break it: trickled bodies,
connections past the cap, and one expensive request beside SageMaker's /ping.

Each limit comes from its environment variable, as the container reads it.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.integration.test_sagemaker_endpoint import (  # noqa: F401 (a fixture)
    JSON,
    Endpoint,
    infer_body,
    serve,
    slow_folder,
    wait_ping,
)
from tests.unit.adapters.endpoint.server_in_thread import read_all

pytestmark = pytest.mark.integration

HEADER_TIMEOUT_S = 3
BODY_TIMEOUT_S = 5
MAX_CONCURRENCY = 4
MAX_CONNECTIONS = 8
BODY = json.dumps({"inputs": [infer_body("input", np.zeros((1, 64), np.float32))]}).encode()


def post_head(length: int, *, close: bool = False) -> bytes:
    """Headers announcing a JSON body of ``length`` bytes (the body not sent)."""
    headers = f"Host: endpoint\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
    if close:
        headers += "Connection: close\r\n"
    return f"POST /invocations HTTP/1.1\r\n{headers}\r\n".encode()


def holding(port: int, count: int, sent: bytes) -> list[socket.socket]:
    """``count`` connections that sent ``sent`` (part of a request) and wait."""
    held = []
    for _ in range(count):
        conn = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn.sendall(sent)
        held.append(conn)
    return held


@pytest.fixture(scope="module")
def endpoint(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    """`serve` on digits with short deadlines and small caps, one worker, no model threads."""
    with serve(
        digits_dir / "int8",
        tmp_path_factory.mktemp("attacks"),
        ONNXKIT_HEADER_TIMEOUT=str(HEADER_TIMEOUT_S),
        ONNXKIT_BODY_TIMEOUT=str(BODY_TIMEOUT_S),
        ONNXKIT_MAX_CONCURRENCY=str(MAX_CONCURRENCY),
        ONNXKIT_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        ONNXKIT_SERVER_THREADS="0",
    ) as running:
        wait_ping(running)
        yield running


def test_a_body_trickled_under_the_stall_timeout_gets_408_at_the_body_deadline(
    endpoint: Endpoint,
) -> None:
    # GIVEN a client that sends its headers, then one body byte a second (never stalling)
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=30) as conn:
        conn.sendall(post_head(len(BODY)))
        started = time.monotonic()
        reply, sent = b"", 0
        while time.monotonic() - started < BODY_TIMEOUT_S + 10:
            if select.select([conn], [], [], 1.0)[0]:
                reply = read_all(conn)
                break
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                conn.sendall(BODY[sent : sent + 1])
            sent += 1
        elapsed = time.monotonic() - started

    # THEN the body deadline answers 408 in our JSON and closes
    assert reply, f"no answer after {elapsed:.1f} s of trickling"
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"
    assert BODY_TIMEOUT_S - 0.5 < elapsed < BODY_TIMEOUT_S + 3, elapsed
    assert endpoint.process.poll() is None


def test_clients_trickling_bodies_do_not_turn_a_real_client_away(endpoint: Endpoint) -> None:
    # GIVEN as many trickling clients as requests may be in flight
    held = holding(endpoint.port, MAX_CONCURRENCY, post_head(len(BODY)) + BODY[:3])
    try:
        time.sleep(0.3)
        # WHEN a real client sends a whole request
        reply = requests.post(f"{endpoint.url}/invocations", data=BODY, headers=JSON, timeout=5)
    finally:
        for conn in held:
            conn.close()

    # THEN it is answered, not refused with 503 overloaded
    assert reply.status_code == 200, reply.text


def test_connections_past_the_cap_are_refused(endpoint: Endpoint) -> None:
    # GIVEN the cap's worth of connections part-way through their headers (not yet requests,
    # so no request is in flight)
    held = holding(endpoint.port, MAX_CONNECTIONS, post_head(len(BODY))[:30])
    try:
        time.sleep(0.3)
        # WHEN one more connects and sends a whole request
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as extra:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                extra.sendall(post_head(len(BODY), close=True) + BODY)
            reply = read_all(extra)
    finally:
        for conn in held:
            conn.close()

    # THEN it gets our JSON 503 and a close, or a bare close: never an answer
    if reply:
        assert reply.startswith(b"HTTP/1.1 503 "), reply[:200]
        assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"]["code"] == "overloaded"
    # AND the server serves again once they are gone
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        again = requests.post(f"{endpoint.url}/invocations", data=BODY, headers=JSON, timeout=5)
        if again.status_code == 200:
            break
        time.sleep(0.1)
    assert again.status_code == 200


def test_ping_answers_within_a_second_while_a_large_request_computes(
    slow_folder: tuple[Path, int],  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    # GIVEN the CPU default (no model threads) and a model that computes for ~2 s
    folder, spin = slow_folder
    with (
        serve(folder, tmp_path, ONNXKIT_MODEL_NAME="slow", ONNXKIT_SERVER_THREADS="0") as endpoint,
        ThreadPoolExecutor(1) as pool,
    ):
        wait_ping(endpoint)
        tensors = [
            infer_body("x", np.ones((64, 4), np.float32)),
            infer_body("spin", np.array([spin]), "INT64"),
        ]
        body = json.dumps({"inputs": tensors}, indent=2).encode()
        body += b" " * max(0, 64 * 1024 - len(body))  # a large body, as a many-image one is

        # WHEN that request runs
        slow = pool.submit(
            requests.post, f"{endpoint.url}/invocations", data=body, headers=JSON, timeout=60
        )
        time.sleep(0.5)

        # THEN /ping answers within a second meanwhile
        latencies: list[float] = []
        while not slow.done() and len(latencies) < 5:
            started = time.perf_counter()
            assert requests.get(f"{endpoint.url}/ping", timeout=10).status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.1)
        assert latencies, "the request finished before /ping could be timed"
        assert max(latencies) < 1.0, latencies
        assert slow.result(60).status_code == 200
