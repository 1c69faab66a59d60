"""The endpoint's edge as an attacker leans on it: trickled bodies, idle and surplus connections,
and one expensive request beside /ping, against a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import requests

from tests.unit.adapters.endpoint.server_in_thread import (
    JSON,
    FakeBackend,
    error_of,
    fake_predictor,
    infer_body,
    read_all,
    serving,
)

BODY = infer_body(np.ones((1, 3)))


def post_head(length: int, *, close: bool = False) -> bytes:
    """A request's headers announcing a JSON body of ``length`` bytes (the body not sent)."""
    headers = f"Host: endpoint\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
    if close:
        headers += "Connection: close\r\n"
    return f"POST /invocations HTTP/1.1\r\n{headers}\r\n".encode()


def connect(port: int) -> socket.socket:
    """A raw loopback connection."""
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def trickle(conn: socket.socket, body: bytes, *, every: float, for_at_most: float) -> bytes:
    """Send ``body`` one byte every ``every`` seconds until the server answers or closes.

    Returns:
        What the server sent before closing (empty if it sent nothing), or b"" after
        ``for_at_most`` seconds of no answer.
    """
    deadline = time.monotonic() + for_at_most
    sent = 0
    while time.monotonic() < deadline:
        readable, _, _ = select.select([conn], [], [], every)
        if readable:
            return read_all(conn)
        if sent < len(body):
            try:
                conn.sendall(body[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                return read_all(conn)
            sent += 1
    return b""


def status_of(reply: bytes) -> int:
    """The status code of a raw HTTP response."""
    return int(reply.split(b" ", 2)[1])


@pytest.fixture
def fake() -> FakeBackend:
    """A fresh fake backend."""
    return FakeBackend()


# --- a body trickled in ------------------------------------------------------------------------


def test_a_body_trickled_a_byte_at_a_time_gets_408_within_the_body_deadline(
    fake: FakeBackend,
) -> None:
    # GIVEN a 1 s stall timeout and a 2 s deadline for the whole body
    with serving(fake_predictor(fake), header_timeout=1.0, body_timeout=2.0) as served:
        conn = connect(served.port)
        conn.sendall(post_head(len(BODY)))
        started = time.monotonic()

        # WHEN the body comes one byte every 0.4 s (never a stall, but ~30 s for the whole)
        reply = trickle(conn, BODY, every=0.4, for_at_most=10)
        elapsed = time.monotonic() - started
        conn.close()

        # THEN it gets our JSON 408 and a closed connection once the body deadline passes
        assert reply, "the trickled body was never timed out"
        assert status_of(reply) == 408, reply[:200]
        assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"
        assert 1.5 < elapsed < 2.0 + 2.0, elapsed
        # AND the model never ran
        assert fake.most_running == 0
        # AND a body sent at once is still served
        ok = requests.post(f"{served.url}/invocations", data=BODY, headers=JSON, timeout=5)
        assert ok.status_code == 200


def test_a_body_that_stalls_is_still_timed_out_by_the_stall_timeout(fake: FakeBackend) -> None:
    # GIVEN a 1 s stall timeout and a long body deadline
    with serving(fake_predictor(fake), header_timeout=1.0, body_timeout=30.0) as served:
        conn = connect(served.port)
        conn.sendall(post_head(len(BODY)) + BODY[:5])
        started = time.monotonic()

        # WHEN the body stops
        conn.settimeout(10)
        reply = read_all(conn)
        conn.close()

    # THEN the stall timeout answers 408, long before the body deadline
    assert status_of(reply) == 408, reply[:200]
    assert time.monotonic() - started < 5


def part_way(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that sent their headers and 3 bytes of their body, then wait
    (once this returns, each has an ASGI task waiting for the rest of its body)."""
    held = []
    for _ in range(count):
        conn = connect(port)
        conn.sendall(post_head(len(BODY)) + BODY[:3])
        held.append(conn)
    time.sleep(0.3)
    return held


def test_trickling_bodies_do_not_take_the_in_flight_slots_of_real_clients(
    fake: FakeBackend,
) -> None:
    # GIVEN a limit of four requests in flight, and four clients trickling their bodies
    limit = 4
    with serving(fake_predictor(fake), max_concurrency=limit, header_timeout=5.0) as served:
        trickling = part_way(served.port, limit)

        # WHEN a real client sends a whole request, and SageMaker pings
        answered = requests.post(f"{served.url}/invocations", data=BODY, headers=JSON, timeout=5)
        ping = requests.get(f"{served.url}/ping", timeout=5)
        for conn in trickling:
            conn.close()

    # THEN the real client is served, not turned away with 503 overloaded
    assert answered.status_code == 200, answered.text
    assert answered.json()["outputs"][0]["data"] == [2.0, 2.0, 2.0]
    assert ping.status_code == 200


def test_requests_whose_bodies_are_in_still_count_against_the_limit(fake: FakeBackend) -> None:
    # GIVEN a limit of two in flight, both taken by a model that blocks (in threads)
    fake.gate = threading.Event()
    with (
        serving(fake_predictor(fake), threads=4, max_concurrency=2) as served,
        ThreadPoolExecutor(2) as pool,
    ):
        held = [
            pool.submit(
                requests.post, f"{served.url}/invocations", data=BODY, headers=JSON, timeout=10
            )
            for _ in range(2)
        ]
        assert fake.entered.acquire(timeout=5)
        assert fake.entered.acquire(timeout=5)

        # WHEN a third whole request arrives
        refused = requests.post(f"{served.url}/invocations", data=BODY, headers=JSON, timeout=5)
        ping = requests.get(f"{served.url}/ping", timeout=5)
        fake.gate.set()
        assert [f.result(10).status_code for f in held] == [200, 200]

    # THEN it gets our JSON 503 overloaded, and /ping is not refused
    assert refused.status_code == 503
    assert error_of(refused) == {
        "code": "overloaded",
        "message": "this worker has 2 requests in flight (the limit is 2); retry shortly",
    }
    assert refused.headers["Retry-After"] == "1"
    assert ping.status_code == 200


# --- connections ---------------------------------------------------------------------------------


def test_connections_beyond_the_cap_are_refused_and_closed(fake: FakeBackend) -> None:
    # GIVEN a cap of four connections, all held by clients part-way through their bodies
    cap = 4
    with serving(fake_predictor(fake), max_connections=cap, header_timeout=5.0) as served:
        held = part_way(served.port, cap)

        # WHEN one more client connects and sends a whole request
        extra = connect(served.port)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            extra.sendall(post_head(len(BODY), close=True) + BODY)
        reply = read_all(extra)
        extra.close()
        for conn in held:
            conn.close()

        # THEN it is refused: our JSON 503 and a closed connection (or a bare close)
        if reply:
            assert status_of(reply) == 503, reply[:200]
            head, _, body = reply.partition(b"\r\n\r\n")
            assert b"connection: close" in head.lower()
            assert b"retry-after: 1" in head.lower()
            assert json.loads(body)["error"] == {
                "code": "overloaded",
                "message": "this worker holds its limit of 4 connections; retry shortly",
            }
        assert fake.most_running == 0
        # AND once the held connections are gone, new ones are served again
        deadline = time.monotonic() + 5
        while len(served.server.server_state.connections) > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        ok = requests.post(f"{served.url}/invocations", data=BODY, headers=JSON, timeout=5)
        assert ok.status_code == 200


def test_idle_keep_alive_connections_make_way_for_a_new_client(fake: FakeBackend) -> None:
    # GIVEN a cap of four connections, all kept alive and idle after a request each
    cap = 4
    with serving(fake_predictor(fake), max_connections=cap) as served:
        idle = []
        for _ in range(cap):
            conn = connect(served.port)
            conn.sendall(b"GET /ping HTTP/1.1\r\nHost: endpoint\r\n\r\n")
            assert conn.recv(65536).startswith(b"HTTP/1.1 200")
            idle.append(conn)

        # WHEN a new client comes
        answered = requests.post(f"{served.url}/invocations", data=BODY, headers=JSON, timeout=5)

        # THEN it is served, and an idle connection was closed to make way for it
        assert answered.status_code == 200
        closed = 0
        for conn in idle:
            conn.settimeout(2)
            with contextlib.suppress(TimeoutError):
                closed += read_all(conn) == b""
            conn.close()
        assert closed >= 1


# --- expensive requests and /ping ----------------------------------------------------------------


class BurningBackend(FakeBackend):
    """Burns the CPU in Python (holding the GIL, as decoding in Python does) for ``seconds``,
    and records whether it ran on the event loop's thread."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.on_loop: list[bool] = []

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict:
        try:
            asyncio.get_running_loop()
            self.on_loop.append(True)
        except RuntimeError:
            self.on_loop.append(False)
        self.entered.release()
        end = time.perf_counter() + self.seconds
        spins = 0
        while time.perf_counter() < end:
            spins += 1
        return {"y": inputs["x"] * 2}


def padded(body: bytes, size: int) -> bytes:
    """``body`` with JSON whitespace after it, up to ``size`` bytes (still the same request)."""
    return body + b" " * max(0, size - len(body))


@pytest.fixture
def burning() -> BurningBackend:
    """A model whose every run burns the CPU for 3 s."""
    return BurningBackend(3.0)


def test_ping_answers_within_a_second_while_an_expensive_request_runs(
    burning: BurningBackend,
) -> None:
    # GIVEN the CPU default: no model threads (small requests run on the event loop)
    with serving(fake_predictor(burning), threads=0) as served, ThreadPoolExecutor(1) as pool:
        # WHEN a request whose body is large enough to be expensive is running
        body = padded(infer_body(np.ones((64, 3))), 64 * 1024)
        slow = pool.submit(
            requests.post, f"{served.url}/invocations", data=body, headers=JSON, timeout=30
        )
        assert burning.entered.acquire(timeout=10)
        time.sleep(0.2)

        # THEN /ping answers within a second, several times over
        latencies: list[float] = []
        for _ in range(3):
            started = time.perf_counter()
            ping = requests.get(f"{served.url}/ping", timeout=10)
            latencies.append(time.perf_counter() - started)
            assert ping.status_code == 200
        assert max(latencies) < 1.0, latencies
        assert not slow.done()
        # AND the expensive request still completes
        assert slow.result(30).status_code == 200
    assert burning.on_loop == [False]


def test_a_small_tensor_request_runs_on_the_event_loop(burning: BurningBackend) -> None:
    # GIVEN a model that runs quickly (the CPU default: no threads)
    burning.seconds = 0.0
    with serving(fake_predictor(burning), threads=0) as served:
        # WHEN a small v2 request, then the same request padded past the small-body size
        small = requests.post(f"{served.url}/invocations", data=BODY, headers=JSON, timeout=5)
        large = requests.post(
            f"{served.url}/invocations", data=padded(BODY, 64 * 1024), headers=JSON, timeout=5
        )

    # THEN the small one ran on the loop (no thread hop), the large one off it
    assert (small.status_code, large.status_code) == (200, 200)
    assert burning.on_loop == [True, False]


def test_a_bare_text_or_image_body_never_runs_on_the_event_loop(burning: BurningBackend) -> None:
    # GIVEN a server; WHEN a tiny body of a media type that is decoded (image, text) comes
    burning.seconds = 0.0
    ran_on: list[Any] = []
    with serving(fake_predictor(burning), threads=0) as served:
        endpoint = served.endpoint
        original = endpoint.table.perform

        def spy(*args: Any, **kwargs: Any) -> Any:
            try:
                asyncio.get_running_loop()
                ran_on.append("loop")
            except RuntimeError:
                ran_on.append("thread")
            return original(*args, **kwargs)

        endpoint.table.perform = spy
        for media in ("image/png", "text/plain"):
            reply = requests.post(
                f"{served.url}/invocations", data=b"x", headers={"Content-Type": media}, timeout=5
            )
            assert reply.status_code == 415  # this model has no processing

    # THEN each went to a thread
    assert ran_on == ["thread", "thread"]


# --- the settings ------------------------------------------------------------------------------


def test_the_body_deadline_and_connection_cap_are_read_and_bounded() -> None:
    from onnxkit.errors import ConfigurationError
    from onnxkit.settings import EndpointSettings, Settings

    minimal = {"ONNXKIT_MODEL_DIR": "/opt/ml/model"}
    default = Settings.from_env(minimal).endpoint
    read = Settings.from_env(
        {**minimal, "ONNXKIT_BODY_TIMEOUT": "2.5", "ONNXKIT_MAX_CONNECTIONS": "16"}
    ).endpoint

    assert (default.body_timeout, default.max_connections) == (30.0, 128)
    assert default.max_connections > EndpointSettings().max_concurrency
    assert (read.body_timeout, read.max_connections) == (2.5, 16)
    with pytest.raises(ConfigurationError) as refused:
        Settings.from_env({**minimal, "ONNXKIT_BODY_TIMEOUT": "0", "ONNXKIT_MAX_CONNECTIONS": "0"})
    assert "ONNXKIT_BODY_TIMEOUT" in str(refused.value)
    assert "ONNXKIT_MAX_CONNECTIONS" in str(refused.value)
