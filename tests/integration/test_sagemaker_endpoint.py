"""The SageMaker container's `serve` as a real process on loopback: contract, parity, workers,
drain."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from onnxkit_tools.net import free_port
from tests.conftest import REPO
from tests.integration.conftest import STORE, cli_env

pytestmark = pytest.mark.integration

SERVE = REPO / "functions" / "sagemaker_endpoint" / "serve"
JSON = {"Content-Type": "application/json", "Accept": "application/json"}
DRAIN_BOUND_S = 25.0  # what the server promises: under SageMaker's 30 s SIGKILL
SLOW_REQUEST_S = 2.0  # how long each request of the drain test computes


@dataclass
class Endpoint:
    """A running `serve` process."""

    process: subprocess.Popen
    url: str
    port: int
    log: Path

    def log_lines(self) -> list[dict]:
        """The JSON log lines written so far."""
        lines = []
        for line in self.log.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append({"message": line})
        return lines


@contextmanager
def serve(model_dir: Path, tmp_path: Path, **env: str) -> Iterator[Endpoint]:
    """Run `functions/sagemaker_endpoint/serve` on a free loopback port until the block ends."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    environment = {
        **cli_env(),
        "ONNXKIT_MODEL_DIR": str(model_dir),
        "ONNXKIT_MODEL_NAME": "digits",
        "ONNXKIT_BIND_HOST": "127.0.0.1",
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "ONNXKIT_INTRA_OP_THREADS": "1",
        "ONNXKIT_WORKERS": "1",
        **env,
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(SERVE)], cwd=REPO, env=environment, stdout=out, stderr=out
        )
    endpoint = Endpoint(process, f"http://127.0.0.1:{port}", port, log)
    try:
        yield endpoint
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def wait_ping(endpoint: Endpoint, status: int = 200, timeout: float = 60.0) -> requests.Response:
    """Poll /ping until it answers ``status``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert endpoint.process.poll() is None, endpoint.log.read_text()
        try:
            reply = requests.get(f"{endpoint.url}/ping", timeout=5)
            if reply.status_code == status:
                return reply
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"/ping never answered {status}:\n{endpoint.log.read_text()}")


def infer_body(name: str, array: np.ndarray, datatype: str = "FP32") -> dict:
    """One v2 input tensor."""
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": array.tolist()}


@pytest.fixture(scope="module")
def digits_folder(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits fp32 model as `onnxkit models pull` leaves it: model.onnx + manifest.json."""
    from onnxkit_tools.registry import describe_model

    folder = tmp_path_factory.mktemp("opt-ml-model")
    shutil.copy(digits_dir / "fp32" / "model.onnx", folder / "model.onnx")
    manifest = describe_model(
        folder / "model.onnx", name="digits", version="7", backend="sagemaker"
    )
    (folder / "manifest.json").write_bytes(manifest.to_json())
    return folder


@pytest.fixture(scope="module")
def slow_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A model that spins a 256x256 MatMul ``spin`` times, and the spin for ~SLOW_REQUEST_S.

    x FLOAT [N, 4] and spin INT64 [1] -> y FLOAT [N, 2] = x @ W; the Loop's result joins y
    multiplied by zero, so onnxruntime cannot drop or fold it.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    size = 256
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["state_in", "spin_weights"], ["product"]),
            helper.make_node("Tanh", ["product"], ["state_out"]),
        ],
        "spin",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_in", TensorProto.FLOAT, [size, size]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [size, size]),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Squeeze", ["spin", "axis0"], ["trips"]),
            helper.make_node("Loop", ["trips", "keep_going", "state0"], ["final"], body=body),
            helper.make_node("ReduceSum", ["final"], ["total"], keepdims=0),
            helper.make_node("Mul", ["total", "zero"], ["nothing"]),
            helper.make_node("MatMul", ["x", "weights"], ["xw"]),
            helper.make_node("Add", ["xw", "nothing"], ["y"]),
        ],
        "slow",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("spin", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [
            numpy_helper.from_array(np.array([0], np.int64), "axis0"),
            numpy_helper.from_array(np.array(True), "keep_going"),
            numpy_helper.from_array(np.full((size, size), 0.01, np.float32), "state0"),
            numpy_helper.from_array(
                (rng.normal(size=(size, size)) / size).astype(np.float32), "spin_weights"
            ),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(4, 2), "weights"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = tmp_path_factory.mktemp("slow-model")
    onnx.save_model(model, str(folder / "model.onnx"))

    # Calibrate: how many trips take SLOW_REQUEST_S on this machine, one thread.
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(folder / "model.onnx"), options)
    feed = {"x": np.ones((1, 4), np.float32), "spin": np.array([200], np.int64)}
    session.run(None, feed)
    started = time.perf_counter()
    session.run(None, feed)
    per_trip = (time.perf_counter() - started) / 200
    return folder, max(10, int(SLOW_REQUEST_S / per_trip))


# --- contract and parity -----------------------------------------------------------------------


def test_serve_answers_ping_and_invocations_like_onnxruntime(
    digits_folder: Path, digits_validation: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    import onnxruntime as ort
    import tritonclient.http as httpclient

    with serve(digits_folder, tmp_path) as endpoint:
        # GIVEN the container's entry point, verified model loaded
        assert wait_ping(endpoint).content == b""

        # WHEN held-out rows are posted to /invocations, as SageMaker forwards InvokeEndpoint
        features, labels = digits_validation
        batch = features[:32]
        reply = requests.post(
            f"{endpoint.url}/invocations",
            data=json.dumps({"id": "it-1", "inputs": [infer_body("input", batch)]}),
            headers=JSON,
            timeout=30,
        )

        # THEN the outputs are onnxruntime's, under the manifest's name and version
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert (body["model_name"], body["model_version"], body["id"]) == ("digits", "7", "it-1")
        outputs = {o["name"]: o for o in body["outputs"]}
        session = ort.InferenceSession(str(digits_folder / "model.onnx"))
        label, probabilities = session.run(["label", "probabilities"], {"input": batch})
        np.testing.assert_array_equal(outputs["label"]["data"], label)
        np.testing.assert_allclose(
            np.asarray(outputs["probabilities"]["data"], np.float32).reshape(
                outputs["probabilities"]["shape"]
            ),
            probabilities,
            rtol=1e-6,
            atol=1e-7,
        )
        assert np.mean(label == labels[:32]) > 0.9

        # AND a v2 client (tritonclient) gets the same through the v2 routes
        client = httpclient.InferenceServerClient(endpoint.url.removeprefix("http://"))
        assert client.is_server_ready()
        assert client.get_model_metadata("digits")["versions"] == ["7"]
        tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=False)
        result = client.infer(
            "digits", [tensor], outputs=[httpclient.InferRequestedOutput("label", False)]
        )
        np.testing.assert_array_equal(result.as_numpy("label"), label)

        # AND refusals are our JSON errors
        csv = requests.post(
            f"{endpoint.url}/invocations",
            data=b"1,2",
            headers={"Content-Type": "text/csv"},
            timeout=30,
        )
        assert (csv.status_code, csv.json()["error"]["code"]) == (415, "unsupported_media_type")
        xml = requests.post(
            f"{endpoint.url}/invocations",
            data=b"{}",
            headers={**JSON, "Accept": "text/xml"},
            timeout=30,
        )
        assert (xml.status_code, xml.json()["error"]["code"]) == (406, "not_acceptable")
        wrong = requests.post(
            f"{endpoint.url}/invocations",
            data=json.dumps({"inputs": [infer_body("input", batch[:, :10])]}),
            headers=JSON,
            timeout=30,
        )
        assert (wrong.status_code, wrong.json()["error"]["code"]) == (400, "invalid_input")

        endpoint.process.send_signal(signal.SIGTERM)
        assert endpoint.process.wait(15) == 0

    messages = [line.get("message") for line in endpoint.log_lines()]
    assert "model files verified" in messages
    assert "stopped by SIGTERM" in messages


def test_without_a_model_folder_serve_loads_from_the_registry(
    local_s3: Any, digits_dir: Path, tmp_path: Path
) -> None:
    import onnxruntime as ort

    # GIVEN no model folder, the store on moto, and a backend setting that would forward
    environment = {
        "ONNXKIT_MODEL_DIR": "",
        "ONNXKIT_MODEL_STORE": STORE,
        "ONNXKIT_CACHE_DIR": str(tmp_path / "cache"),
        "AWS_ENDPOINT_URL_S3": local_s3.endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "ONNXKIT_BACKEND": "sagemaker",
        "ONNXKIT_SAGEMAKER_ENDPOINT": "this-very-endpoint",
    }
    with serve(tmp_path / "unused", tmp_path, **environment) as endpoint:
        wait_ping(endpoint)

        # WHEN a request arrives
        x = np.arange(64, dtype=np.float32).reshape(1, 64) % 17
        reply = requests.post(
            f"{endpoint.url}/invocations",
            data=json.dumps({"inputs": [infer_body("input", x)]}),
            headers=JSON,
            timeout=30,
        )

        # THEN the alias's version answers from this process (never forwarded to itself)
        assert reply.status_code == 200, reply.text
        assert reply.json()["model_version"] == "1"
        session = ort.InferenceSession(str(digits_dir / "int8" / "model.onnx"))
        (label,) = session.run(["label"], {"input": x})
        outputs = {o["name"]: o["data"] for o in reply.json()["outputs"]}
        assert outputs["label"] == label.tolist()
        endpoint.process.send_signal(signal.SIGTERM)
        assert endpoint.process.wait(15) == 0


def test_a_tampered_model_folder_never_becomes_healthy(digits_folder: Path, tmp_path: Path) -> None:
    # GIVEN a pulled folder whose model changed after the manifest was written
    folder = tmp_path / "tampered"
    shutil.copytree(digits_folder, folder)
    model = folder / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))

    with serve(folder, tmp_path) as endpoint:
        # THEN /ping says 503 and why, while the process keeps retrying
        reply = wait_ping(endpoint, status=503)
        deadline = time.monotonic() + 15
        while "does not match" not in reply.text and time.monotonic() < deadline:
            time.sleep(0.1)
            reply = requests.get(f"{endpoint.url}/ping", timeout=5)
        assert "does not match its manifest" in reply.json()["error"]["message"]

        # AND SIGTERM still stops it cleanly
        endpoint.process.send_signal(signal.SIGTERM)
        assert endpoint.process.wait(15) == 0


# --- graceful drain ----------------------------------------------------------------------------


def test_sigterm_drains_in_flight_requests_refuses_new_ones_and_exits_0(
    slow_folder: tuple[Path, int], tmp_path: Path
) -> None:
    folder, spin = slow_folder
    with serve(folder, tmp_path, ONNXKIT_MODEL_NAME="slow", ONNXKIT_SERVER_THREADS="4") as endpoint:
        wait_ping(endpoint)

        # GIVEN three slow requests in flight (each ~SLOW_REQUEST_S of compute)
        def slow_request(row: int) -> requests.Response:
            x = np.full((1, 4), row, np.float32)
            body = {"inputs": [infer_body("x", x), infer_body("spin", np.array([spin]), "INT64")]}
            return requests.post(
                f"{endpoint.url}/invocations", data=json.dumps(body), headers=JSON, timeout=60
            )

        with ThreadPoolExecutor(3) as pool:
            in_flight = [pool.submit(slow_request, row) for row in range(3)]
            time.sleep(0.5)
            assert not any(f.done() for f in in_flight)

            # WHEN SageMaker sends SIGTERM
            signalled = time.monotonic()
            endpoint.process.send_signal(signal.SIGTERM)

            # THEN new connections are refused while the old requests still run
            refused_after = _refused_within(endpoint.port, 3.0)
            assert refused_after is not None, "the port still accepts connections"
            assert not all(f.done() for f in in_flight)
            assert endpoint.process.poll() is None

            # AND every in-flight request completes with the right answer
            replies = [f.result(60) for f in in_flight]
        assert [r.status_code for r in replies] == [200, 200, 200]
        for row, reply in enumerate(replies):
            assert reply.json()["outputs"][0]["data"] == [row * 12.0, row * 16.0]

        # AND the process exits 0 within the drain bound
        code = endpoint.process.wait(DRAIN_BOUND_S + 5)
        stopped_after = time.monotonic() - signalled
    assert code == 0
    assert stopped_after < DRAIN_BOUND_S
    messages = [str(line.get("message")) for line in endpoint.log_lines()]
    assert "Shutting down" in messages  # uvicorn's drain...
    assert not [m for m in messages if m.startswith("Cancel ")]  # ...finished within its bound


def test_sigterm_with_only_idle_connections_exits_at_once(
    digits_folder: Path, tmp_path: Path
) -> None:
    with serve(digits_folder, tmp_path) as endpoint, requests.Session() as keep_alive:
        wait_ping(endpoint)
        assert keep_alive.get(f"{endpoint.url}/ping", timeout=5).status_code == 200

        started = time.monotonic()
        endpoint.process.send_signal(signal.SIGTERM)

        assert endpoint.process.wait(DRAIN_BOUND_S) == 0
        assert time.monotonic() - started < 3.0


@pytest.mark.parametrize(
    ("environ", "reasons"),
    [
        (
            {"ONNXKIT_WORKERS": "-1", "ONNXKIT_MAX_CONCURRENCY": "0"},
            ["ONNXKIT_WORKERS='-1' is out of range", "ONNXKIT_MAX_CONCURRENCY='0' is out of range"],
        ),
        (
            {"ONNXKIT_MODEL_DIR": "/no/such/folder"},
            ["ONNXKIT_MODEL_DIR=/no/such/folder is not a folder"],
        ),
        (
            {"ONNXKIT_MODEL_DIR": "", "ONNXKIT_MODEL_STORE": "s3://bucket/onnxkit"},
            ["ONNXKIT_MODEL_NAME is required"],
        ),
    ],
    ids=["bad-values", "missing-folder", "store-without-name"],
)
def test_a_bad_configuration_exits_2_at_once_with_the_reason(
    tmp_path: Path, environ: dict[str, str], reasons: list[str]
) -> None:
    environment = {
        **cli_env(),
        "ONNXKIT_MODEL_DIR": str(tmp_path),
        "SAGEMAKER_BIND_TO_PORT": str(free_port()),
        "ONNXKIT_BIND_HOST": "127.0.0.1",
        **environ,
    }

    done = subprocess.run(
        [sys.executable, str(SERVE)], env=environment, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 2
    for reason in reasons:
        assert reason in done.stderr


def test_two_workers_answer_ping_only_once_both_have_loaded(
    digits_folder: Path, tmp_path: Path
) -> None:
    # GIVEN serve with two worker processes
    with serve(digits_folder, tmp_path, ONNXKIT_WORKERS="2") as endpoint:
        wait_ping(endpoint)

        # THEN both workers have started and loaded the verified model before /ping said 200
        messages = [str(line.get("message")) for line in endpoint.log_lines()]
        workers = {m for m in messages if m.startswith("Started server process")}
        assert len(workers) == 2
        assert messages.count("model files verified") == 2

        # AND requests are answered on a pool of connections (the kernel spreads them)
        x = np.arange(64, dtype=np.float32).reshape(1, 64) % 17
        body = json.dumps({"inputs": [infer_body("input", x)]})
        with ThreadPoolExecutor(8) as pool:
            replies = list(
                pool.map(
                    lambda _: requests.post(
                        f"{endpoint.url}/invocations", data=body, headers=JSON, timeout=30
                    ),
                    range(32),
                )
            )
        assert [r.status_code for r in replies] == [200] * 32

        # AND SIGTERM stops the supervisor and both workers, exit 0
        endpoint.process.send_signal(signal.SIGTERM)
        assert endpoint.process.wait(DRAIN_BOUND_S) == 0


# --- helpers ---------------------------------------------------------------------------------


def _refused_within(port: int, seconds: float) -> float | None:
    """Seconds until a connection to the port is refused, or None if it never was."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except ConnectionRefusedError:
            return time.monotonic() - started
        except ConnectionResetError:
            pass  # caught while the listening socket closed: the next try is refused
        time.sleep(0.02)
    return None
