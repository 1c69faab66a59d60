"""The SageMaker container server in-process on 127.0.0.1: contract, errors, model folder, drain."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from onnxkit.adapters.endpoint import (
    EndpointServer,
    JsonLinesFormatter,
    accepts_json,
    build_endpoint_predictor,
    run_endpoint,
)
from onnxkit.backends.batching import BatchingBackend
from onnxkit.errors import IntegrityError, ModelLoadError, ModelNotFoundError, ModelNotReadyError
from onnxkit.manifest import FileEntry, Manifest, TensorSpec, describe_model
from onnxkit.predictor import Limits, Predictor
from onnxkit.session import CPU_PROVIDER, choose_providers, create_session, fallen_back
from onnxkit.settings import Settings
from onnxkit.sources import (
    MANIFEST_NAME,
    load_model_dir,
    read_manifest,
    signature_from_session,
    verify_files,
)

from .conftest import BuiltModel

JSON = {"Content-Type": "application/json"}
FAKE_MANIFEST = Manifest(
    name="fake",
    version="1",
    files=(FileEntry("model.onnx", "0" * 64, 1),),
    inputs=(TensorSpec("x", "FP32", (-1, 3)),),
    outputs=(TensorSpec("y", "FP32", (-1, 3)),),
    opset=17,
)


def settings_for(folder: Path, **overrides: Any) -> Settings:
    """Settings serving ``folder`` as model ``tiny`` on one intra-op thread."""
    values: dict[str, Any] = {
        "model_store": "",
        "model_name": "tiny",
        "model_dir": str(folder),
        "intra_op_threads": 1,
        **overrides,
    }
    return Settings(**values)


def infer_body(x: np.ndarray, name: str = "x", **extra: Any) -> bytes:
    """A v2 request for one FP32 input."""
    tensor = {"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    return json.dumps({"inputs": [tensor], **extra}).encode()


class FakeBackend:
    """Doubles ``x``; can block on a gate, count concurrency, or raise."""

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
    """A predictor named ``fake`` over a fake backend (loaded by ``loader`` when given)."""
    limits = Limits(max_request_bytes=64 * 1024, max_batch_size=64)
    return Predictor("fake", loader or (lambda: backend), limits)


@contextmanager
def serving(predictor: Predictor, **kwargs: Any) -> Iterator[EndpointServer]:
    """An endpoint on 127.0.0.1 (free port), started; closed afterwards."""
    server = EndpointServer(predictor, "127.0.0.1", 0, **kwargs).start()
    try:
        yield server
    finally:
        server.close()


def wait_ready(server: EndpointServer, timeout: float = 30.0) -> None:
    """Poll /ping until 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if requests.get(f"{server.url}/ping", timeout=5).status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("the endpoint never became ready")


@pytest.fixture
def fake() -> FakeBackend:
    """A fresh fake backend."""
    return FakeBackend()


@pytest.fixture
def fake_server(fake: FakeBackend) -> Iterator[EndpointServer]:
    """An endpoint over the fake backend, ready."""
    with serving(fake_predictor(fake), threads=4, max_request_bytes=64 * 1024) as server:
        wait_ready(server)
        yield server


@pytest.fixture
def tiny_server(tiny_model: BuiltModel) -> Iterator[EndpointServer]:
    """An endpoint serving the tiny onnx model from its folder (no manifest), ready."""
    settings = settings_for(tiny_model.folder)
    with serving(build_endpoint_predictor(settings), threads=2) as server:
        wait_ready(server)
        yield server


def error_of(response: requests.Response) -> dict[str, str]:
    """The ``error`` object of a JSON error response (checks the media type too)."""
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    return dict(body["error"])


# --- /ping and /invocations -----------------------------------------------------------------


def test_ping_is_503_while_the_model_loads_then_200(fake: FakeBackend) -> None:
    # GIVEN a loader that takes until we let it finish
    release = threading.Event()

    def slow_loader() -> FakeBackend:
        release.wait(10)
        return fake

    with serving(fake_predictor(fake, slow_loader)) as server:
        # WHEN the server is up but the model is still loading
        ping = requests.get(f"{server.url}/ping", timeout=5)
        infer = requests.post(
            f"{server.url}/invocations", data=infer_body(np.ones((1, 3))), headers=JSON, timeout=5
        )

        # THEN /ping and /invocations answer 503 at once (no request waits for the load)
        assert ping.status_code == 503
        assert error_of(ping)["code"] == "model_not_ready"
        assert "loading" in error_of(ping)["message"]
        assert infer.status_code == 503
        assert infer.headers["Retry-After"] == "1"

        # AND once the load finishes, /ping answers 200 with an empty body
        release.set()
        wait_ready(server)
        ping = requests.get(f"{server.url}/ping", timeout=5)
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

    with serving(fake_predictor(fake, flaky_loader)) as server:
        deadline = time.monotonic() + 5
        while server.predictor.last_error is None and time.monotonic() < deadline:
            time.sleep(0.01)

        # WHEN /ping is asked after the failure
        ping = requests.get(f"{server.url}/ping", timeout=5)

        # THEN it says why, and the background retry (about a second later) makes it ready
        assert ping.status_code == 503
        message = error_of(ping)["message"]
        assert "does not match manifest.json (artifact_integrity_error); retrying" in message
        wait_ready(server, timeout=10)
    assert len(attempts) == 2


def test_invocations_match_onnxruntime(tiny_server: EndpointServer, tiny_model: BuiltModel) -> None:
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
    session = ort.InferenceSession(str(tiny_model.path), providers=[CPU_PROVIDER])
    (expected,) = session.run(["y"], {"x": x})
    np.testing.assert_array_equal(np.asarray(output["data"], np.float32).reshape(5, 2), expected)
    np.testing.assert_allclose(expected, tiny_model.compute(x)["y"], rtol=1e-6)


def test_the_v2_routes_serve_the_same_model(tiny_server: EndpointServer) -> None:
    base = tiny_server.url
    x = np.ones((2, 4), dtype=np.float32)

    metadata = requests.get(f"{base}/v2/models/tiny", timeout=5).json()
    infer = requests.post(f"{base}/v2/models/tiny/infer", data=infer_body(x), timeout=5)
    other = requests.get(f"{base}/v2/models/other", timeout=5)

    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]
    assert infer.status_code == 200
    assert requests.get(f"{base}/v2/models/tiny/ready", timeout=5).json()["ready"] is True
    assert requests.get(f"{base}/v2/health/ready", timeout=5).status_code == 200
    assert requests.get(f"{base}/v2/health/live", timeout=5).json() == {"live": True}
    assert requests.get(f"{base}/v2", timeout=5).json()["name"] == "onnxkit"
    assert other.status_code == 404
    assert error_of(other)["code"] == "model_not_found"


# --- negotiation, limits and error bodies ------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "ok"),
    [
        (None, True),
        ("", True),
        ("*/*", True),
        ("application/json", True),
        ("application/*", True),
        ("text/html, application/json;q=0.5", True),
        ("Application/JSON; charset=utf-8", True),
        ("text/csv", False),
        ("application/json;q=0", False),
        ("application/json;q=abc", False),
        ("application/x-npy, text/plain", False),
    ],
)
def test_accepts_json(accept: str | None, ok: bool) -> None:
    assert accepts_json(accept) is ok


def test_an_unacceptable_accept_is_406(fake_server: EndpointServer) -> None:
    response = requests.post(
        f"{fake_server.url}/invocations",
        data=infer_body(np.ones((1, 3))),
        headers={**JSON, "Accept": "text/csv"},
        timeout=5,
    )

    assert response.status_code == 406
    assert error_of(response)["code"] == "not_acceptable"


def test_a_wrong_content_type_is_415(fake_server: EndpointServer) -> None:
    response = requests.post(
        f"{fake_server.url}/invocations",
        data=b"1,2,3",
        headers={"Content-Type": "text/csv"},
        timeout=5,
    )

    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_media_type"
    assert response.headers["Connection"] == "close"  # the unread body cannot stay on the wire


def test_a_body_over_the_limit_is_413_before_it_is_read(fake_server: EndpointServer) -> None:
    # GIVEN a request that declares 50 MB but sends none of it
    with socket.create_connection(("127.0.0.1", fake_server.port), timeout=5) as conn:
        conn.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\n\r\n"
        )

        # WHEN the server answers (without waiting for the body)
        reply = _read_http(conn)

    # THEN it is a 413 with our JSON error, and the connection is closed
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert b"Connection: close" in head
    assert json.loads(body)["error"]["code"] == "payload_too_large"


def test_a_chunked_body_is_read_and_limited(fake_server: EndpointServer) -> None:
    def chunks(data: bytes, size: int = 7) -> Iterator[bytes]:
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


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_input"),
        (b"", "invalid_input"),
        (b"[]", "invalid_input"),
        (
            json.dumps(
                {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
            ).encode(),
            "invalid_input",
        ),
    ],
)
def test_bad_requests_are_400_in_our_words(
    fake_server: EndpointServer, body: bytes, code: str
) -> None:
    response = requests.post(f"{fake_server.url}/invocations", data=body, headers=JSON, timeout=5)

    assert response.status_code == 400
    assert error_of(response)["code"] == code


def test_a_malformed_content_length_is_400(fake_server: EndpointServer) -> None:
    with socket.create_connection(("127.0.0.1", fake_server.port), timeout=5) as conn:
        conn.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n")
        reply = _read_http(conn)

    assert reply.startswith(b"HTTP/1.1 400")
    assert b'"invalid_input"' in reply


def test_a_malformed_request_line_gets_a_json_error(fake_server: EndpointServer) -> None:
    with socket.create_connection(("127.0.0.1", fake_server.port), timeout=5) as conn:
        conn.sendall(b"NONSENSE\r\n\r\n")
        reply = _read_http(conn)

    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["error"]["code"] == "bad_request"


def test_unknown_routes_are_404_and_wrong_methods_405(fake_server: EndpointServer) -> None:
    missing = requests.get(f"{fake_server.url}/nope", timeout=5)
    wrong = requests.get(f"{fake_server.url}/invocations", timeout=5)
    head = requests.head(f"{fake_server.url}/ping", timeout=5)

    assert missing.status_code == 404
    assert error_of(missing)["code"] == "route_not_found"
    assert wrong.status_code == 405
    assert wrong.headers["Allow"] == "POST"
    assert error_of(wrong)["code"] == "method_not_allowed"
    assert head.status_code == 200


def test_an_unexpected_failure_is_a_generic_500(
    fake: FakeBackend, fake_server: EndpointServer, caplog: pytest.LogCaptureFixture
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


# --- threads and connections -----------------------------------------------------------------


def test_concurrent_inferences_are_bounded_by_server_threads(fake: FakeBackend) -> None:
    # GIVEN two request slots and a model that blocks
    fake.gate = threading.Event()
    with serving(fake_predictor(fake), threads=2) as server:
        wait_ready(server)
        with ThreadPoolExecutor(5) as pool:
            # WHEN five requests arrive at once
            futures = [
                pool.submit(
                    requests.post,
                    f"{server.url}/invocations",
                    data=infer_body(np.ones((1, 3))),
                    headers=JSON,
                    timeout=10,
                )
                for _ in range(5)
            ]
            assert fake.entered.acquire(timeout=5)
            assert fake.entered.acquire(timeout=5)
            time.sleep(0.2)
            # THEN only two run; /ping still answers while they do
            assert fake.running == 2
            assert requests.get(f"{server.url}/ping", timeout=2).status_code == 200
            fake.gate.set()
            assert [f.result(10).status_code for f in futures] == [200] * 5
    assert fake.most_running == 2


def test_connections_over_the_cap_get_503(fake: FakeBackend) -> None:
    with serving(fake_predictor(fake), max_connections=1) as server:
        wait_ready(server)
        with requests.Session() as held:
            deadline = time.monotonic() + 5  # until wait_ready's own connection is released
            while held.get(f"{server.url}/ping", timeout=5).status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            refused = requests.get(f"{server.url}/ping", timeout=5)  # held stays open

    assert refused.status_code == 503
    assert error_of(refused)["code"] == "overloaded"


# --- graceful drain --------------------------------------------------------------------------


def test_drain_finishes_in_flight_requests_and_refuses_new_connections(
    fake: FakeBackend,
) -> None:
    # GIVEN two requests in flight on a model that blocks
    fake.gate = threading.Event()
    server = EndpointServer(fake_predictor(fake), "127.0.0.1", 0).start()
    wait_ready(server)
    with ThreadPoolExecutor(3) as pool:
        in_flight = [
            pool.submit(
                requests.post,
                f"{server.url}/invocations",
                data=infer_body(np.full((1, 3), i, dtype=np.float32)),
                headers=JSON,
                timeout=10,
            )
            for i in range(2)
        ]
        assert fake.entered.acquire(timeout=5)
        assert fake.entered.acquire(timeout=5)

        # WHEN the server drains
        drained = pool.submit(server.drain, 10.0)

        # THEN new connections are refused while the requests still run
        assert _refused_within(server.port, 2.0)
        assert not drained.done()
        assert all(not f.done() for f in in_flight)

        # AND once the model finishes, both requests complete and the drain reports success
        fake.gate.set()
        responses = [f.result(10) for f in in_flight]
        assert drained.result(10) is True
    assert [r.status_code for r in responses] == [200, 200]
    assert [r.json()["outputs"][0]["data"][0] for r in responses] == [0.0, 2.0]
    assert all(r.headers["Connection"] == "close" for r in responses)
    server.close()


def test_drain_does_not_wait_for_idle_keep_alive_connections(fake: FakeBackend) -> None:
    server = EndpointServer(fake_predictor(fake), "127.0.0.1", 0).start()
    wait_ready(server)
    with requests.Session() as idle:
        assert idle.get(f"{server.url}/ping", timeout=5).status_code == 200  # stays open

        started = time.perf_counter()
        assert server.drain(10.0) is True
        assert time.perf_counter() - started < 2.0
    server.close()


def test_drain_gives_up_at_its_bound(fake: FakeBackend) -> None:
    fake.gate = threading.Event()
    server = EndpointServer(fake_predictor(fake), "127.0.0.1", 0).start()
    wait_ready(server)
    with ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(
            requests.post,
            f"{server.url}/invocations",
            data=infer_body(np.ones((1, 3))),
            headers=JSON,
            timeout=10,
        )
        assert fake.entered.acquire(timeout=5)

        started = time.perf_counter()
        assert server.drain(0.3) is False
        assert 0.25 <= time.perf_counter() - started < 2.0

        fake.gate.set()
        assert stuck.result(10).status_code == 200
    server.close()


def test_ping_is_503_once_draining(fake_server: EndpointServer) -> None:
    assert fake_server.ping()[0] == 200

    fake_server.drain(1.0)

    with pytest.raises(ModelNotReadyError, match="shutting down"):
        fake_server.ping()


def test_run_endpoint_serves_until_stopped_and_returns_0(tiny_model: BuiltModel) -> None:
    # GIVEN run_endpoint in a thread (signals belong to the main thread: a stop event instead)
    stop = threading.Event()
    ready: list[EndpointServer] = []
    settings = settings_for(tiny_model.folder)
    with ThreadPoolExecutor(1) as pool:
        code = pool.submit(run_endpoint, settings, "127.0.0.1", 0, stop=stop, on_ready=ready.append)
        deadline = time.monotonic() + 10
        while not ready and time.monotonic() < deadline:
            time.sleep(0.01)
        server = ready[0]
        wait_ready(server)
        x = np.ones((1, 4), dtype=np.float32)
        reply = requests.post(
            f"{server.url}/invocations", data=infer_body(x), headers=JSON, timeout=5
        )
        assert reply.status_code == 200

        # WHEN it is stopped
        stop.set()

        # THEN it drains and returns 0, and the port no longer accepts
        assert code.result(10) == 0
    assert _refused_within(server.port, 1.0)


def test_run_endpoint_reports_a_port_in_use(tiny_model: BuiltModel) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = settings_for(tiny_model.folder)

        assert run_endpoint(settings, "127.0.0.1", port, stop=threading.Event()) == 1


# --- the model folder ------------------------------------------------------------------------


def write_manifest(model: BuiltModel, name: str = "tiny") -> Manifest:
    """What `onnxkit models pull` leaves beside the files: manifest.json."""
    manifest = describe_model(model.path, name=name, version="3")
    (model.folder / MANIFEST_NAME).write_bytes(manifest.to_json())
    return manifest


def test_a_folder_with_a_manifest_is_verified_and_served_as_described(
    tiny_external_model: BuiltModel,
) -> None:
    # GIVEN a pulled folder: graph, external data and manifest
    manifest = write_manifest(tiny_external_model)
    assert len(manifest.files) == 2

    # WHEN it is loaded
    backend = load_model_dir(tiny_external_model.folder, settings_for(tiny_external_model.folder))

    # THEN it serves the manifest's name, version and signature
    assert backend.manifest == manifest
    x = np.ones((3, 4), dtype=np.float32)
    np.testing.assert_allclose(backend.run({"x": x})["y"], tiny_external_model.compute(x)["y"])


@pytest.mark.parametrize("target", ["model.onnx", "model.onnx.data"])
def test_a_tampered_file_is_refused_before_loading(
    tiny_external_model: BuiltModel, target: str
) -> None:
    # GIVEN a verified folder in which one byte of one file then changed (same size)
    write_manifest(tiny_external_model)
    path = tiny_external_model.folder / target
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    created: list[Path] = []

    # WHEN it is loaded, THEN integrity fails before any session is created
    with pytest.raises(IntegrityError, match=f"{target} does not match"):
        load_model_dir(
            tiny_external_model.folder,
            settings_for(tiny_external_model.folder),
            session_factory=lambda p, s: created.append(p),
        )
    assert created == []


def test_missing_or_resized_files_are_refused(tiny_external_model: BuiltModel) -> None:
    manifest = write_manifest(tiny_external_model)
    data = tiny_external_model.folder / "model.onnx.data"
    data.write_bytes(data.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match=r"bytes but manifest\.json says"):
        verify_files(tiny_external_model.folder, manifest)
    data.unlink()
    with pytest.raises(IntegrityError, match="cannot be read"):
        verify_files(tiny_external_model.folder, manifest)


def test_an_invalid_manifest_is_an_integrity_error(tiny_model: BuiltModel) -> None:
    (tiny_model.folder / MANIFEST_NAME).write_text("{not json")

    with pytest.raises(IntegrityError):
        read_manifest(tiny_model.folder)


def test_the_server_never_gets_ready_on_a_tampered_folder(tiny_model: BuiltModel) -> None:
    write_manifest(tiny_model)
    tiny_model.path.write_bytes(tiny_model.path.read_bytes()[:-1] + b"\x00")
    settings = settings_for(tiny_model.folder)

    with serving(build_endpoint_predictor(settings)) as server:
        deadline = time.monotonic() + 5
        while server.predictor.last_error is None and time.monotonic() < deadline:
            time.sleep(0.02)
        ping = requests.get(f"{server.url}/ping", timeout=5)

    assert ping.status_code == 503
    assert "does not match manifest.json" in error_of(ping)["message"]
    assert "artifact_integrity_error" in error_of(ping)["message"]


def test_without_a_manifest_the_signature_comes_from_the_session(
    typed_model: BuiltModel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        backend = load_model_dir(typed_model.folder, settings_for(typed_model.folder))

    assert "not verified" in caplog.text
    assert backend.manifest.inputs == (
        TensorSpec("ids", "INT64", (-1, 3)),
        TensorSpec("mask", "BOOL", (-1, 3)),
    )
    assert backend.manifest.outputs == (
        TensorSpec("masked", "INT64", (-1, 3)),
        TensorSpec("inverted", "BOOL", (-1, 3)),
    )
    assert backend.manifest.version == "local"
    assert backend.manifest.metadata["verified"] is False


def test_signature_from_session_maps_dimensions_and_refuses_other_types() -> None:
    class Arg:
        def __init__(self, name: str, type_: str, shape: list[Any]) -> None:
            self.name, self.type, self.shape = name, type_, shape

    class Session:
        def get_inputs(self) -> list[Arg]:
            return [Arg("a", "tensor(float16)", ["batch", None, 7])]

        def get_outputs(self) -> list[Arg]:
            return [Arg("b", "tensor(uint8)", [])]

    inputs, outputs = signature_from_session(Session())
    assert inputs == (TensorSpec("a", "FP16", (-1, -1, 7)),)
    assert outputs == (TensorSpec("b", "UINT8", ()),)

    Session.get_outputs = lambda self: [Arg("m", "seq(map(int64,tensor(float)))", [])]  # type: ignore[method-assign]
    with pytest.raises(ModelLoadError, match="zipmap"):
        signature_from_session(Session())


def test_a_folder_without_a_model_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model_dir(tmp_path / "missing", settings_for(tmp_path))
    (tmp_path / "a.onnx").write_bytes(b"")
    (tmp_path / "b.onnx").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match=r"a\.onnx, b\.onnx"):
        load_model_dir(tmp_path, settings_for(tmp_path))


def test_the_only_onnx_file_is_used_when_model_onnx_is_absent(tiny_model: BuiltModel) -> None:
    tiny_model.path.rename(tiny_model.folder / "whatever.onnx")

    backend = load_model_dir(tiny_model.folder, settings_for(tiny_model.folder))

    assert backend.manifest.model_file.path == "whatever.onnx"


def test_batching_is_wired_from_the_settings(tiny_model: BuiltModel) -> None:
    # GIVEN settings that turn dynamic batching on
    settings = settings_for(tiny_model.folder, batch_max_size=8, batch_max_wait_ms=100)
    predictor = build_endpoint_predictor(settings)
    assert isinstance(predictor.load(), BatchingBackend)

    # WHEN concurrent requests arrive at the endpoint
    with serving(predictor, threads=4) as server:
        wait_ready(server)
        rows = [np.full((1, 4), i, dtype=np.float32) for i in range(4)]
        with ThreadPoolExecutor(4) as pool:
            replies = list(
                pool.map(
                    lambda x: requests.post(
                        f"{server.url}/invocations", data=infer_body(x), headers=JSON, timeout=10
                    ),
                    rows,
                )
            )

    # THEN each gets its own row's result
    for x, reply in zip(rows, replies, strict=True):
        got = np.asarray(reply.json()["outputs"][0]["data"], np.float32).reshape(1, 2)
        np.testing.assert_allclose(got, tiny_model.compute(x)["y"], rtol=1e-6)


# --- execution providers ---------------------------------------------------------------------


def test_choose_providers_keeps_what_the_build_offers_with_cpu_last(
    caplog: pytest.LogCaptureFixture,
) -> None:
    offered = ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU_PROVIDER]

    assert choose_providers(["CUDAExecutionProvider", CPU_PROVIDER], offered) == [
        "CUDAExecutionProvider",
        CPU_PROVIDER,
    ]
    assert choose_providers(["CUDAExecutionProvider"], offered) == [
        "CUDAExecutionProvider",
        CPU_PROVIDER,
    ]
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING):
        chosen = choose_providers(["CUDAExecutionProvider", CPU_PROVIDER], [CPU_PROVIDER])
    assert chosen == [CPU_PROVIDER]
    assert "CUDAExecutionProvider requested but not in this onnxruntime build" in caplog.text


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_a_session_that_fell_back_to_cpu_says_so(
    tiny_model: BuiltModel, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a build that claims CUDA (so it is passed to onnxruntime), on a machine without it
    with caplog.at_level(logging.WARNING):
        session = create_session(
            tiny_model.path,
            providers=["CUDAExecutionProvider", CPU_PROVIDER],
            intra_op_threads=1,
            available=["CUDAExecutionProvider", CPU_PROVIDER],
        )

    # THEN the session runs on CPU and the log names the lost accelerator
    assert session.get_providers() == [CPU_PROVIDER]
    assert "CUDAExecutionProvider requested but the session runs on CPUExecutionProvider" in (
        caplog.text
    )
    assert fallen_back([CPU_PROVIDER], [CPU_PROVIDER]) == []


def test_the_real_build_falls_back_to_cpu_with_a_warning(
    tiny_model: BuiltModel, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tiny_model.folder, providers=("CUDAExecutionProvider", CPU_PROVIDER))

    with caplog.at_level(logging.WARNING):
        backend = load_model_dir(tiny_model.folder, settings)

    assert backend.run({"x": np.ones((1, 4), np.float32)})["y"].shape == (1, 2)
    assert "CUDAExecutionProvider" in caplog.text


# --- logging ---------------------------------------------------------------------------------


def test_log_records_are_json_lines_with_their_extras() -> None:
    record = logging.makeLogRecord(
        {"name": "onnxkit.x", "levelname": "INFO", "msg": "hello %s", "args": ("you",)}
    )
    record.status = 200

    line = json.loads(JsonLinesFormatter().format(record))

    assert line["message"] == "hello you"
    assert line["status"] == 200
    assert line["level"] == "INFO"
    assert line["time"].endswith("+00:00")


# --- helpers ---------------------------------------------------------------------------------


def _read_http(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _refused_within(port: int, seconds: float) -> bool:
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
