"""The endpoint server as an attacker meets it: malformed HTTP over a raw socket to `serve`.

Each case must get a 4xx or a clean close, never a 200 and never a hang, and a valid request
sent right after it must be answered. RFC 9112 section 6.3 asks for 400 on conflicting
``Content-Length`` values: a front end and a back end that read a body's length differently
are how requests are smuggled.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.integration.test_sagemaker_endpoint import Endpoint, infer_body, serve, wait_ping

pytestmark = pytest.mark.integration

HEADER_TIMEOUT_S = 2
BODY = json.dumps({"inputs": [infer_body("input", np.zeros((1, 64), np.float32))]}).encode()


def request(headers: list[tuple[str, str]], body: bytes = BODY, line: str | None = None) -> bytes:
    """A raw HTTP/1.1 request: the request line, these headers, then the body as given."""
    head = (line or "POST /invocations HTTP/1.1") + "\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers)
    return head.encode() + b"\r\n" + body


BASE = [("Host", "endpoint"), ("Content-Type", "application/json")]
LENGTH = ("Content-Length", str(len(BODY)))
CHUNKED = ("Transfer-Encoding", "chunked")


def chunked(body: bytes, size_line: bytes | None = None) -> bytes:
    """``body`` as one chunk (with a size line of our choosing) and the last chunk."""
    return (size_line or b"%x" % len(body)) + b"\r\n" + body + b"\r\n0\r\n\r\n"


CASES = {
    "two different Content-Length": request(
        [*BASE, LENGTH, ("Content-Length", str(len(BODY) + 7))]
    ),
    "a Content-Length list": request([*BASE, ("Content-Length", f"{len(BODY)}, {len(BODY) + 7}")]),
    "negative Content-Length": request([*BASE, ("Content-Length", "-7")]),
    "Content-Length that is no number": request([*BASE, ("Content-Length", "ten")]),
    "Content-Length and Transfer-Encoding": request([*BASE, LENGTH, CHUNKED], chunked(BODY)),
    "a chunk size that is no hex": request([*BASE, CHUNKED], chunked(BODY, b"zz")),
    "an overflowing chunk size": request([*BASE, CHUNKED], chunked(BODY, b"f" * 40)),
    "an unknown transfer coding": request([*BASE, ("Transfer-Encoding", "gzip")]),
    "an oversize header line": request([*BASE, LENGTH, ("X-Big", "a" * 200_000)]),
    "too many headers": request([*BASE, LENGTH, *[(f"X-H{i}", "v") for i in range(5000)]]),
    "an oversize URL": request([*BASE, LENGTH], line=f"POST /invocations?{'a' * 20_000} HTTP/1.1"),
    "a garbage request line": b"\x00\x01GARBAGE\r\n\r\n",
    "an unknown HTTP version": b"GET /ping HTTP/9.9\r\nHost: endpoint\r\n\r\n",
    "no space in the request line": b"GET/ping HTTP/1.1\r\nHost: endpoint\r\n\r\n",
    "a header without a colon": b"GET /ping HTTP/1.1\r\nHost endpoint\r\n\r\n",
    "a body shorter than its length": request([*BASE, ("Content-Length", str(len(BODY) + 100))]),
}


@pytest.fixture(scope="module")
def endpoint(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    """`serve` on the digits model with a short header deadline, one worker."""
    tmp = tmp_path_factory.mktemp("raw")
    folder = digits_dir / "int8"
    with serve(
        folder, tmp, ONNXKIT_HEADER_TIMEOUT=str(HEADER_TIMEOUT_S), ONNXKIT_MODEL_NAME="digits"
    ) as running:
        wait_ping(running)
        yield running


def exchange(port: int, raw: bytes, timeout: float = HEADER_TIMEOUT_S + 8) -> bytes:
    """Send ``raw``, then read until the server closes or has sent one whole response head."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        # Refused mid-send: what it answered before closing is still readable.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.sendall(raw)
        received = b""
        try:
            while b"\r\n\r\n" not in received and (chunk := conn.recv(65536)):
                received += chunk
        except ConnectionResetError:
            pass
        except TimeoutError as exc:
            raise AssertionError(f"the server hung: {received[:80]!r}") from exc
    return received


def assert_valid_request_answered(port: int) -> None:
    reply = exchange(port, request([*BASE, LENGTH]))
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_http_gets_a_4xx_or_a_clean_close_never_a_200(
    endpoint: Endpoint, case: str
) -> None:
    # WHEN the malformed request is sent
    reply = exchange(endpoint.port, CASES[case])

    # THEN the answer is a 4xx (with our JSON error) or nothing at all: the connection closed
    if reply:
        status = int(reply.split(b" ", 2)[1])
        assert 400 <= status < 500, reply[:200]
        head = reply.split(b"\r\n\r\n", 1)[0].lower()
        assert b"content-type: application/json" in head
    # AND the server still answers a valid request
    assert_valid_request_answered(endpoint.port)


def test_twenty_clients_that_never_finish_their_headers_are_closed(endpoint: Endpoint) -> None:
    # GIVEN twenty connections that stop in the middle of their headers
    stalled = []
    for _ in range(20):
        conn = socket.create_connection(("127.0.0.1", endpoint.port), timeout=HEADER_TIMEOUT_S + 8)
        conn.sendall(b"POST /invocations HTTP/1.1\r\nHost: endpoint\r\nContent-")
        stalled.append(conn)
    started = time.monotonic()

    # WHEN a valid request arrives meanwhile, THEN it is answered at once
    assert_valid_request_answered(endpoint.port)
    assert time.monotonic() - started < HEADER_TIMEOUT_S

    # AND each stalled client gets 408 and a closed connection after the header deadline
    for conn in stalled:
        with conn:
            received = b""
            while chunk := conn.recv(65536):
                received += chunk
        assert received.startswith(b"HTTP/1.1 408 "), received[:80]
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 5
    assert_valid_request_answered(endpoint.port)
    assert endpoint.process.poll() is None
