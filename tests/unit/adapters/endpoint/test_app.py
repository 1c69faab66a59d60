"""One worker's app under uvicorn on 127.0.0.1: the contract, errors, limits, protocol, drain."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from onnxkit.backends.batching import BatchingBackend
from onnxkit.compose import build_predictor
from onnxkit.errors import IntegrityError
from onnxkit.settings import Settings
from onnxkit.sources import MANIFEST_NAME
from onnxkit_tools.registry import describe_model
from tests.unit.adapters.endpoint.server_in_thread import (
    JSON,
    FakeBackend,
    error_of,
    fake_predictor,
    infer_body,
    read_http,
    refused_within,
    serving,
)
from tests.unit.conftest import BuiltModel


def folder_settings(folder: Path, **environ: str) -> Settings:
    """The container's settings for a model folder, as its environment gives them."""
    return Settings.from_env(
        {"ONNXKIT_MODEL_DIR": str(folder), "ONNXKIT_INTRA_OP_THREADS": "1", **environ}
    )


@pytest.fixture
def fake() -> FakeBackend:
    """A fresh fake backend."""
    return FakeBackend()


@pytest.fixture
def fake_server(fake: FakeBackend) -> Any:
    """The endpoint over the fake backend, ready."""
    with serving(fake_predictor(fake)) as served:
        yield served


@pytest.fixture
def tiny_server(tiny_model: BuiltModel) -> Any:
    """The endpoint serving the tiny onnx model from its folder (no manifest), ready."""
    predictor = build_predictor(
        folder_settings(tiny_model.folder, ONNXKIT_MODEL_NAME="tiny"), role="endpoint"
    )
    with serving(predictor) as served:
        yield served


def invoke_in_background(pool: ThreadPoolExecutor, url: str, count: int) -> list[Any]:
    """``count`` POST /invocations from the pool's threads; their futures."""
    body = infer_body(np.ones((1, 3)))
    return [
        pool.submit(requests.post, f"{url}/invocations", data=body, headers=JSON, timeout=10)
        for _ in range(count)
    ]


# --- /ping and /invocations -----------------------------------------------------------------


def test_ping_is_503_while_the_model_loads_then_200(fake: FakeBackend) -> None:
    # GIVEN a loader that takes until we let it finish
    release = threading.Event()

    def slow_loader() -> FakeBackend:
        release.wait(10)
        return fake

    with serving(fake_predictor(fake, slow_loader), ready=False) as served:
        # WHEN the server is up but the model is still loading
        ping = requests.get(f"{served.url}/ping", timeout=5)
        infer = requests.post(
            f"{served.url}/invocations", data=infer_body(np.ones((1, 3))), headers=JSON, timeout=5
        )

        # THEN /ping and /invocations answer 503 at once (no request waits for the load)
        assert ping.status_code == 503
        assert error_of(ping)["code"] == "model_not_ready"
        assert "loading" in error_of(ping)["message"]
        assert infer.status_code == 503
        assert infer.headers["Retry-After"] == "1"

        # AND once the load finishes, /ping answers 200 with an empty body
        release.set()
        served.wait_ready()
        ping = requests.get(f"{served.url}/ping", timeout=5)
        assert ping.status_code == 200
        assert ping.content == b""


def test_a_failed_load_is_retried_and_ping_says_why(fake: FakeBackend) -> None:
    # GIVEN a loader that fails once, then works
    attempts: list[int] = []

    def flaky_loader() -> FakeBackend:
        attempts.append(1)
        if len(attempts) == 1:
            raise IntegrityError("model.onnx does not match manifest.json")
        return fake

    with serving(fake_predictor(fake, flaky_loader), ready=False) as served:
        deadline = time.monotonic() + 5
        while served.predictor.last_error is None and time.monotonic() < deadline:
            time.sleep(0.01)

        # WHEN /ping is asked after the failure
        ping = requests.get(f"{served.url}/ping", timeout=5)

        # THEN it says why, and the background retry (about a second later) makes it ready
        assert ping.status_code == 503
        message = error_of(ping)["message"]
        assert "does not match its manifest" in message
        assert "(artifact_integrity_error); retrying" in message
        assert "manifest.json" not in message  # the file is named in the logs, not to clients
        served.wait_ready(timeout=10)
    assert len(attempts) == 2


def test_invocations_match_onnxruntime(tiny_server: Any, tiny_model: BuiltModel) -> None:
    import onnxruntime as ort

    # GIVEN a batch of rows
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)

    # WHEN it is posted to /invocations
    response = requests.post(
        f"{tiny_server.url}/invocations", data=infer_body(x, id="req-1"), headers=JSON, timeout=10
    )

    # THEN the v2 response holds onnxruntime's own outputs
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["model_name"] == "tiny"
    assert body["model_version"] == "local"
    assert body["id"] == "req-1"
    (output,) = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("y", "FP32", [5, 2])
    session = ort.InferenceSession(str(tiny_model.path), providers=["CPUExecutionProvider"])
    (expected,) = session.run(["y"], {"x": x})
    np.testing.assert_array_equal(np.asarray(output["data"], np.float32).reshape(5, 2), expected)
    np.testing.assert_allclose(expected, tiny_model.compute(x)["y"], rtol=1e-6)


def test_the_v2_routes_serve_the_same_model(tiny_server: Any) -> None:
    base = tiny_server.url
    x = np.ones((2, 4), dtype=np.float32)

    metadata = requests.get(f"{base}/v2/models/tiny", timeout=5).json()
    infer = requests.post(f"{base}/v2/models/tiny/infer", data=infer_body(x), timeout=5)
    boto3_path = requests.post(
        f"{base}/endpoints/any-name/invocations", data=infer_body(x), timeout=5
    )
    other = requests.get(f"{base}/v2/models/other", timeout=5)

    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]
    assert infer.status_code == 200
    assert boto3_path.json()["outputs"] == infer.json()["outputs"]
    assert requests.get(f"{base}/v2/models/tiny/ready", timeout=5).json()["ready"] is True
    assert requests.get(f"{base}/v2/health/ready", timeout=5).status_code == 200
    assert requests.get(f"{base}/v2/health/live", timeout=5).json() == {"live": True}
    assert requests.get(f"{base}/v2", timeout=5).json()["name"] == "onnxkit"
    assert other.status_code == 404
    assert error_of(other)["code"] == "model_not_found"


def test_the_openapi_document_is_served_when_asked_for(fake_server: Any) -> None:
    document = requests.get(f"{fake_server.url}/v2/openapi.json", timeout=5).json()

    assert document["openapi"].startswith("3.")
    assert {"/ping", "/invocations", "/v2/models/{name}/infer"} <= set(document["paths"])


# --- negotiation, limits and error bodies ------------------------------------------------------


def test_an_unacceptable_accept_is_406(fake_server: Any) -> None:
    response = requests.post(
        f"{fake_server.url}/invocations",
        data=infer_body(np.ones((1, 3))),
        headers={**JSON, "Accept": "text/csv"},
        timeout=5,
    )

    assert response.status_code == 406
    assert error_of(response)["code"] == "not_acceptable"


def test_a_wrong_content_type_is_415(fake_server: Any) -> None:
    response = requests.post(
        f"{fake_server.url}/invocations",
        data=b"1,2,3",
        headers={"Content-Type": "text/csv"},
        timeout=5,
    )

    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_media_type"


def test_a_body_over_the_limit_is_413_before_it_is_read(fake_server: Any) -> None:
    # GIVEN a request that declares 50 MB but sends none of it
    with socket.create_connection(("127.0.0.1", fake_server.port), timeout=5) as conn:
        conn.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\n\r\n"
        )

        # WHEN the server answers (without waiting for the body)
        reply = read_http(conn)

    # THEN it is a 413 with our JSON error, and the connection is closed
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert b"connection: close" in head.lower()
    assert json.loads(body)["error"]["code"] == "payload_too_large"


def test_a_chunked_body_is_read_and_limited(fake_server: Any) -> None:
    def chunks(data: bytes, size: int = 7) -> Any:
        for i in range(0, len(data), size):
            yield data[i : i + size]

    body = infer_body(np.ones((2, 3)))
    ok = requests.post(f"{fake_server.url}/invocations", data=chunks(body), headers=JSON, timeout=5)
    big = requests.post(
        f"{fake_server.url}/invocations",
        data=chunks(b" " * (70 * 1024), 8192),
        headers=JSON,
        timeout=5,
    )

    assert ok.status_code == 200
    assert ok.json()["outputs"][0]["data"] == [2.0] * 6
    assert big.status_code == 413
    assert error_of(big)["code"] == "payload_too_large"


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[]",
        json.dumps(
            {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
        ).encode(),
    ],
    ids=["malformed", "empty", "not-an-object", "wrong-shape"],
)
def test_bad_requests_are_400_in_our_words(fake_server: Any, body: bytes) -> None:
    response = requests.post(f"{fake_server.url}/invocations", data=body, headers=JSON, timeout=5)

    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_input"


def test_unknown_routes_are_404_and_wrong_methods_405(fake_server: Any) -> None:
    missing = requests.get(f"{fake_server.url}/nope", timeout=5)
    wrong = requests.get(f"{fake_server.url}/invocations", timeout=5)
    head = requests.head(f"{fake_server.url}/ping", timeout=5)
    trailing = requests.get(f"{fake_server.url}/v2/health/live/", timeout=5)

    assert missing.status_code == 404
    assert error_of(missing)["code"] == "route_not_found"
    assert wrong.status_code == 405
    assert wrong.headers["Allow"] == "POST"
    assert error_of(wrong)["code"] == "method_not_allowed"
    assert head.status_code == 200
    assert trailing.json() == {"live": True}


def test_an_unexpected_failure_is_a_generic_500(
    fake: FakeBackend, fake_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake.error = RuntimeError("secret internals")

    with caplog.at_level(logging.ERROR):
        response = requests.post(
            f"{fake_server.url}/invocations",
            data=infer_body(np.ones((1, 3))),
            headers=JSON,
            timeout=5,
        )

    assert response.status_code == 500
    assert error_of(response)["code"] == "internal_error"
    assert "secret" not in response.text
    assert "secret internals" in caplog.text  # the traceback is logged, not returned


# --- threads, concurrency and the protocol's limits ------------------------------------------


def test_concurrent_inferences_are_bounded_by_the_threads(fake: FakeBackend) -> None:
    # GIVEN two model threads and a model that blocks
    fake.gate = threading.Event()
    with serving(fake_predictor(fake), threads=2) as served, ThreadPoolExecutor(5) as pool:
        # WHEN five requests arrive at once
        futures = invoke_in_background(pool, served.url, 5)
        assert fake.entered.acquire(timeout=5)
        assert fake.entered.acquire(timeout=5)
        time.sleep(0.2)
        # THEN only two run; /ping still answers while they do
        assert fake.running == 2
        assert requests.get(f"{served.url}/ping", timeout=2).status_code == 200
        fake.gate.set()
        assert [f.result(10).status_code for f in futures] == [200] * 5
    assert fake.most_running == 2


def test_requests_over_the_concurrency_limit_get_503_but_ping_is_answered(
    fake: FakeBackend,
) -> None:
    # GIVEN a limit of two requests in flight, both taken by a model that blocks
    fake.gate = threading.Event()
    with (
        serving(fake_predictor(fake), threads=4, max_concurrency=2) as served,
        ThreadPoolExecutor(2) as pool,
    ):
        held = invoke_in_background(pool, served.url, 2)
        assert fake.entered.acquire(timeout=5)
        assert fake.entered.acquire(timeout=5)

        # WHEN a third request and a health check arrive
        refused = requests.post(
            f"{served.url}/invocations", data=infer_body(np.ones((1, 3))), headers=JSON, timeout=5
        )
        ping = requests.get(f"{served.url}/ping", timeout=5)

        # THEN the request gets our JSON 503 and the health check is still answered
        fake.gate.set()
        assert [f.result(10).status_code for f in held] == [200, 200]
    assert refused.status_code == 503
    assert error_of(refused)["code"] == "overloaded"
    assert refused.headers["Retry-After"] == "1"
    assert ping.status_code == 200


def test_clients_that_never_finish_their_headers_are_timed_out(fake: FakeBackend) -> None:
    # GIVEN a one-second header deadline and ten clients that stop half-way through headers
    with serving(fake_predictor(fake), header_timeout=1.0) as served:
        stalled = []
        for _ in range(10):
            conn = socket.create_connection(("127.0.0.1", served.port), timeout=10)
            conn.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
            stalled.append(conn)

        # WHEN a valid request comes meanwhile
        ok = requests.post(
            f"{served.url}/invocations", data=infer_body(np.ones((1, 3))), headers=JSON, timeout=5
        )

        # THEN it is answered, and each stalled client gets 408 and a closed connection
        assert ok.status_code == 200
        for conn in stalled:
            reply = read_http(conn)
            conn.close()
            assert reply.startswith(b"HTTP/1.1 408"), reply[:80]
            assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"


def test_too_many_or_too_large_headers_are_refused_with_json(fake_server: Any) -> None:
    many = "".join(f"X-H{i}: v\r\n" for i in range(200))
    large = f"X-Big: {'a' * 100_000}\r\n"
    for extra in (many, large):
        with socket.create_connection(("127.0.0.1", fake_server.port), timeout=5) as conn:
            conn.sendall(f"GET /ping HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
            reply = read_http(conn)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400")
        assert json.loads(body)["error"]["code"] == "bad_request"


# --- graceful drain --------------------------------------------------------------------------


def test_a_stop_finishes_in_flight_requests_and_refuses_new_connections(
    fake: FakeBackend,
) -> None:
    # GIVEN two requests in flight on a model that blocks (in threads: the loop stays free)
    fake.gate = threading.Event()
    with serving(fake_predictor(fake), threads=2) as served, ThreadPoolExecutor(3) as pool:
        in_flight = [
            pool.submit(
                requests.post,
                f"{served.url}/invocations",
                data=infer_body(np.full((1, 3), i, dtype=np.float32)),
                headers=JSON,
                timeout=10,
            )
            for i in range(2)
        ]
        assert fake.entered.acquire(timeout=5)
        assert fake.entered.acquire(timeout=5)

        # WHEN the server is told to stop (what SIGTERM does)
        served.server.should_exit = True

        # THEN new connections are refused while the requests still run
        assert refused_within(served.port, 2.0)
        assert all(not f.done() for f in in_flight)

        # AND once the model finishes, both requests complete
        fake.gate.set()
        responses = [f.result(10) for f in in_flight]
    assert [r.status_code for r in responses] == [200, 200]
    assert [r.json()["outputs"][0]["data"][0] for r in responses] == [0.0, 2.0]


def test_a_stop_does_not_wait_for_idle_keep_alive_connections(fake: FakeBackend) -> None:
    with serving(fake_predictor(fake)) as served, requests.Session() as idle:
        assert idle.get(f"{served.url}/ping", timeout=5).status_code == 200  # stays open

        started = time.perf_counter()
        served.server.should_exit = True
        assert refused_within(served.port, 5.0)
        deadline = time.monotonic() + 5
        while served.server.server_state.connections and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not served.server.server_state.connections
        assert time.perf_counter() - started < 5.0


# --- the model folder behind the server -----------------------------------------------------


def test_the_server_never_gets_ready_on_a_tampered_folder(tiny_model: BuiltModel) -> None:
    manifest = describe_model(tiny_model.path, name="tiny", version="3")
    (tiny_model.folder / MANIFEST_NAME).write_bytes(manifest.to_json())
    tiny_model.path.write_bytes(tiny_model.path.read_bytes()[:-1] + b"\x00")
    predictor = build_predictor(folder_settings(tiny_model.folder), role="endpoint")

    with serving(predictor, ready=False) as served:
        deadline = time.monotonic() + 5
        while served.predictor.last_error is None and time.monotonic() < deadline:
            time.sleep(0.02)
        ping = requests.get(f"{served.url}/ping", timeout=5)

    assert ping.status_code == 503
    assert "does not match its manifest" in error_of(ping)["message"]
    assert "artifact_integrity_error" in error_of(ping)["message"]


def test_batching_is_wired_from_the_settings(tiny_model: BuiltModel) -> None:
    # GIVEN settings that turn dynamic batching on
    settings = folder_settings(
        tiny_model.folder, ONNXKIT_DYNAMIC_BATCH_ROWS="8", ONNXKIT_DYNAMIC_BATCH_WAIT_MS="100"
    )
    predictor = build_predictor(settings, role="endpoint")
    assert isinstance(predictor.load(), BatchingBackend)

    # WHEN concurrent requests arrive at the endpoint
    with serving(predictor, threads=4) as served, ThreadPoolExecutor(4) as pool:
        rows = [np.full((1, 4), i, dtype=np.float32) for i in range(4)]
        replies = list(
            pool.map(
                lambda x: requests.post(
                    f"{served.url}/invocations", data=infer_body(x), headers=JSON, timeout=10
                ),
                rows,
            )
        )

    # THEN each gets its own row's result
    for x, reply in zip(rows, replies, strict=True):
        got = np.asarray(reply.json()["outputs"][0]["data"], np.float32).reshape(1, 2)
        np.testing.assert_allclose(got, tiny_model.compute(x)["y"], rtol=1e-6)


def test_sagemaker_s_binary_media_type_carries_the_header_size_both_ways(
    tiny_server: Any, tiny_model: BuiltModel
) -> None:
    """InvokeEndpoint passes no custom header: the binary extension's JSON size travels as the
    media type's json-header-size, as Triton's SageMaker server and its clients do."""
    import onnxruntime as ort
    import tritonclient.http as httpclient

    # GIVEN a binary request built by tritonclient, its size in SageMaker's media type
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    tensor = httpclient.InferInput("x", [3, 4], "FP32")
    tensor.set_data_from_numpy(x)  # binary
    body, size = httpclient.InferenceServerClient.generate_request_body(
        [tensor], outputs=[httpclient.InferRequestedOutput("y", binary_data=True)]
    )
    media = "application/vnd.sagemaker-triton.binary+json"

    # WHEN it is invoked as boto3's sagemaker-runtime does (the endpoint's path)
    response = requests.post(
        f"{tiny_server.url}/endpoints/tiny/invocations",
        data=body,
        headers={"Content-Type": f"{media};json-header-size={size}"},
        timeout=10,
    )

    # THEN the answer is binary, its JSON size in the same media type, and onnxruntime's values
    assert response.status_code == 200, response.text
    answered, _, parameter = response.headers["Content-Type"].partition(";json-header-size=")
    assert answered == media
    result = httpclient.InferenceServerClient.parse_response_body(
        response.content, header_length=int(parameter)
    )
    session = ort.InferenceSession(str(tiny_model.path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(result.as_numpy("y"), session.run(["y"], {"x": x})[0], rtol=1e-6)
