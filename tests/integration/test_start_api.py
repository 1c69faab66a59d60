"""`onnxkit local start-api` over real HTTP: curl, tritonclient, the stage prefix, API keys."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from onnxkit_tools.net import wait_http
from tests.conftest import REPO
from tests.integration.conftest import ONNXKIT, cli_env

pytestmark = pytest.mark.integration


def request(url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def infer_body(features: np.ndarray) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(features.shape),
                    "datatype": "FP32",
                    "data": features.tolist(),
                }
            ]
        }
    ).encode()


@pytest.mark.parametrize("prefix", ["", "/Prod"])
def test_tritonclient_reads_metadata_and_infers_like_onnxruntime(
    start_api: str, prefix: str, digits_dir: Path, digits_validation
) -> None:
    import onnxruntime as ort
    import tritonclient.http as httpclient

    # GIVEN tritonclient pointed at the local API (with and without the stage as base path)
    client = httpclient.InferenceServerClient(start_api.removeprefix("http://") + prefix)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    metadata = client.get_model_metadata("digits")
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]

    # WHEN it runs inference in JSON mode on held-out rows
    features, labels = digits_validation
    batch = features[:32]
    tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=False)
    outputs = [
        httpclient.InferRequestedOutput(name, binary_data=False)
        for name in ("label", "probabilities")
    ]
    result = client.infer("digits", [tensor], outputs=outputs)

    # THEN the outputs equal onnxruntime's on the same input
    session = ort.InferenceSession(str(digits_dir / "int8" / "model.onnx"))
    label, probabilities = session.run(["label", "probabilities"], {"input": batch})
    np.testing.assert_array_equal(result.as_numpy("label"), label)
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), probabilities, rtol=1e-6, atol=1e-7
    )
    assert np.mean(result.as_numpy("label") == labels[:32]) > 0.9


def test_tritonclient_sees_our_error_body(start_api: str) -> None:
    """Our error body is {"error": {"code", "message"}}; the v2 spec's is {"error": "text"}.

    tritonclient keeps the object as the exception's message (str() of it fails), so clients
    read ``status()`` and ``message()["code"]``. Documented in the README.
    """
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(start_api.removeprefix("http://"))
    tensor = httpclient.InferInput("input", [1, 63], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 63), np.float32), binary_data=False)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("digits", [tensor])
    assert raised.value.status() == "400"
    assert raised.value.message()["code"] == "invalid_input"
    assert "[1, 63]" in raised.value.message()["message"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_prediction(start_api: str) -> None:
    event = json.loads((REPO / "events" / "predict_infer_200.json").read_text())
    result = subprocess.run(
        [
            "curl", "-sS", "-X", "POST", f"{start_api}/v2/models/digits/infer",
            "-H", "Content-Type: application/json", "-d", event["body"],
        ],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    body = json.loads(result.stdout)
    assert body["outputs"][0]["name"] == "label"
    assert body["outputs"][0]["data"] == [0]


def test_errors_over_http_keep_status_and_body(start_api: str) -> None:
    status, body = request(f"{start_api}/v2/models/resnet/infer", b'{"inputs": []}')
    assert status == 404
    assert body["error"]["code"] == "model_not_found"
    status, body = request(f"{start_api}/v2/models/digits/infer", b"{not json")
    assert status == 400
    assert body["error"]["code"] == "invalid_input"


def test_api_key_is_enforced_when_configured(rie: Path, env_vars: Path) -> None:
    from onnxkit_tools.net import free_port

    port = free_port()
    process = subprocess.Popen(
        [ONNXKIT, "local", "start-api", "--port", str(port), "--env-vars", str(env_vars),
         "--api-key", "s3cret"],
        cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    live = f"http://127.0.0.1:{port}/v2/health/live"
    try:
        wait_http(live, process=process, headers={"x-api-key": "s3cret"})
        assert request(live)[0] == 403
        assert request(live, headers={"x-api-key": "wrong"})[0] == 403
        assert request(live, headers={"x-api-key": "s3cret"})[0] == 200
    finally:
        process.terminate()
        process.wait(timeout=15)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_sigterm_stops_start_api_and_its_emulator(rie: Path, env_vars: Path) -> None:
    from onnxkit_tools.net import free_port

    port = free_port()
    process = subprocess.Popen(
        [ONNXKIT, "local", "start-api", "--port", str(port), "--env-vars", str(env_vars)],
        cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_http(f"http://127.0.0.1:{port}/v2/health/live", process=process)
    children = subprocess.run(
        ["pgrep", "-P", str(process.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert children, "start-api should run the emulator as a child process"
    process.terminate()
    assert process.wait(timeout=15) == 0
    assert not _port_open(port)
    for pid in children:
        assert not Path(f"/proc/{pid}").exists(), f"emulator {pid} outlived start-api"
