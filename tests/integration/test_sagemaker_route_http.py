"""MiniLM routed to SageMaker over real HTTP: start-api -> boto3 InvokeEndpoint -> the local
endpoint server, against the Lambda path on the same model (cosine >= 0.9999)."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxkit_tools.net import wait_http
from tests.conftest import EVENTS, REPO, expected_code, expected_status
from tests.integration.conftest import ONNXKIT, cli_env, function_env

pytestmark = pytest.mark.integration

STORE = "s3://onnxkit-it/sagemaker-route"
EVENT_FILES = sorted(EVENTS.glob("sagemaker_*.json"))


@pytest.fixture(scope="module")
def minilm(local_s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM fp32 published as minilm@prod, with backend "sagemaker" in its manifest."""
    from onnxkit_tools.examples.minilm import build_minilm, default_minilm_dir
    from onnxkit_tools.registry import Registry, publish_model

    folder = default_minilm_dir()
    build_minilm(folder)
    store = Registry.from_uri(
        STORE, cache_dir=tmp_path_factory.mktemp("pub"), s3_client=local_s3.client()
    )
    if "1" not in store.list_versions("minilm"):
        publish_model(
            store, folder / "fp32" / "model.onnx", name="minilm", version="1", alias="prod",
            backend="sagemaker",
        )  # fmt: skip
    return folder


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [ONNXKIT, *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )


@pytest.fixture(scope="module")
def servers(minilm: Path, local_s3: Any, tmp_path_factory) -> Iterator[dict[str, str]]:
    """The endpoint server, start-api routing to it, and start-api running it in-process."""
    from onnxkit_tools.net import free_port

    folder = tmp_path_factory.mktemp("route")
    common = function_env(local_s3.endpoint, folder / "tmp-a")["PredictFunction"]
    common.update({"ONNXKIT_MODEL_STORE": STORE, "ONNXKIT_MODEL_NAME": "minilm"})
    env = {**cli_env(), "AWS_ENDPOINT_URL_S3": local_s3.endpoint}
    processes: list[subprocess.Popen] = []
    urls: dict[str, str] = {}

    def serve(name: str, command: str, values: dict[str, str], ready: str, environ: dict) -> None:
        # One at a time, each on a port picked just before it starts: a server already
        # running (or its emulator) cannot take the port of one still starting.
        files = folder / f"{name}.json"
        files.write_text(json.dumps({"PredictFunction": values}))
        port = free_port()
        process = start(
            ["local", command, "--port", str(port), "--env-vars", str(files)],
            environ,
            folder / f"{name}.log",
        )
        processes.append(process)
        urls[name] = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{urls[name]}{ready}", timeout_s=90, process=process)
        except TimeoutError as exc:
            log = (folder / f"{name}.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"{name}: {exc}\n{log}") from exc

    try:
        serve("endpoint", "start-endpoint", common, "/ping", env)
        routed = {
            **common,
            "ONNXKIT_BACKEND": "sagemaker",
            "ONNXKIT_SAGEMAKER_ENDPOINT": "onnxkit-local",
            "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": urls["endpoint"],
        }
        serve("routed", "start-api", routed, "/v2/health/ready", cli_env())
        in_process = {
            **common,
            "ONNXKIT_BACKEND": "lambda",
            "ONNXKIT_CACHE_DIR": str(folder / "b"),
        }
        serve("lambda", "start-api", in_process, "/v2/health/ready", cli_env())
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


def embeddings(url: str, body: bytes) -> np.ndarray:
    request = urllib.request.Request(
        f"{url}/v2/models/minilm/infer", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        answer = json.loads(reply.read())
    output = answer["outputs"][0]
    assert output["name"] == "sentence_embedding"
    return np.asarray(output["data"], np.float32).reshape(output["shape"])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_routed_embeddings_equal_the_lambda_path(servers: dict[str, str], minilm: Path) -> None:
    # GIVEN varied held-out texts, tokenized as the model expects
    data = np.load(minilm / "validation.npz")
    ids, mask = data["input_ids"][:16], data["attention_mask"][:16]
    body = json.dumps(
        {"inputs": [
            {"name": "input_ids", "shape": list(ids.shape), "datatype": "INT64",
             "data": ids.tolist()},
            {"name": "attention_mask", "shape": list(mask.shape), "datatype": "INT64",
             "data": mask.tolist()},
        ]}
    ).encode()  # fmt: skip

    # WHEN the same request goes through the SageMaker route and through the Lambda path
    routed = embeddings(servers["routed"], body)
    local = embeddings(servers["lambda"], body)

    # THEN the embeddings agree
    assert routed.shape == (16, 384)
    assert cosine(routed, local).min() >= 0.9999


def test_tritonclient_through_the_sagemaker_route(servers: dict[str, str]) -> None:
    import tritonclient.http as httpclient

    event = json.loads((EVENTS / "sagemaker_minilm_infer_200.json").read_text())
    request = json.loads(event["body"])
    client = httpclient.InferenceServerClient(servers["routed"].removeprefix("http://") + "/Prod")
    tensors = []
    for spec in request["inputs"]:
        tensor = httpclient.InferInput(spec["name"], spec["shape"], "INT64")
        tensor.set_data_from_numpy(np.asarray(spec["data"], np.int64), binary_data=False)
        tensors.append(tensor)
    wanted = [httpclient.InferRequestedOutput("sentence_embedding", binary_data=False)]
    result = client.infer("minilm", tensors, outputs=wanted).as_numpy("sentence_embedding")
    local = embeddings(servers["lambda"], event["body"].encode())
    assert cosine(result, local).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(result, axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("event_file", EVENT_FILES, ids=lambda p: p.stem)
def test_sagemaker_events_over_curl(servers: dict[str, str], event_file: Path) -> None:
    event = json.loads(event_file.read_text())
    result = subprocess.run(
        ["curl", "-s", "-o", "/dev/stderr", "-w", "%{http_code}", "-X", event["httpMethod"],
         f"{servers['routed']}{event['path']}", "-H", "Content-Type: application/json",
         "--data-binary", event["body"]],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert int(result.stdout) == expected_status(event_file), result.stderr
    code = expected_code(event_file)
    if code is not None:  # curl wrote the body to stderr
        assert json.loads(result.stderr)["error"]["code"] == code
