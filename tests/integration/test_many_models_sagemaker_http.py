"""Many models on the SageMaker path: start-api forwards each model's requests to one local
endpoint server serving the same models, which finds the model in InvokeEndpoint's
CustomAttributes (SageMaker's /invocations names none)."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxkit_tools.net import wait_http
from tests.conftest import REPO, WIDTH, offset_model
from tests.integration.conftest import ONNXKIT, cli_env, function_env

pytestmark = pytest.mark.integration

STORE = "s3://onnxkit-it/many-sagemaker"
NAMES = ("s1", "s2", "s3")


def post(url: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        return reply.status, json.loads(reply.read())


def start(args: list[str], values: dict[str, str], folder: Path, name: str) -> subprocess.Popen:
    files = folder / f"{name}.json"
    files.write_text(json.dumps({"PredictFunction": values}))
    with (folder / f"{name}.log").open("wb") as out:
        return subprocess.Popen(
            [ONNXKIT, *args, "--env-vars", str(files)],
            cwd=REPO, env=cli_env(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def test_the_function_forwards_each_model_to_an_endpoint_serving_many(
    rie: Path, local_s3: Any, tmp_path: Path
) -> None:
    from onnxkit_tools.net import free_port
    from onnxkit_tools.registry import Registry, publish_model

    # GIVEN three models published for SageMaker, s_k adding 10 k to its input
    registry = Registry.from_uri(STORE, cache_dir=tmp_path / "pub", s3_client=local_s3.client())
    for k, name in enumerate(NAMES, start=1):
        path = offset_model(tmp_path / "src" / name, 10.0 * k)
        publish_model(
            registry, path, name=name, version="1", alias="prod", backend="sagemaker",
            cpu_graph=False,
        )  # fmt: skip

    # AND an endpoint server serving the three, and start-api forwarding to it
    common = function_env(local_s3.endpoint, tmp_path / "tmp")["PredictFunction"]
    del common["ONNXKIT_MODEL_NAME"]
    common.update({"ONNXKIT_MODEL_STORE": STORE, "ONNXKIT_MODELS": ",".join(NAMES),
                   "PYTHONPATH": str(REPO / "layers" / "onnxkit")})  # fmt: skip
    processes = []
    try:
        endpoint_port = free_port()
        # one worker: each worker process keeps its own repository, and the index below
        # asks one of them
        endpoint = start(
            ["local", "start-endpoint", "--port", str(endpoint_port)],
            {**common, "ONNXKIT_WORKERS": "1"},
            tmp_path,
            "endpoint",
        )
        processes.append(endpoint)
        endpoint_url = f"http://127.0.0.1:{endpoint_port}"
        wait_http(f"{endpoint_url}/ping", timeout_s=90, process=endpoint)
        routed = {
            **common,
            "ONNXKIT_BACKEND": "sagemaker",
            "ONNXKIT_SAGEMAKER_ENDPOINT": "onnxkit-local",
            "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": endpoint_url,
            "ONNXKIT_CACHE_DIR": str(tmp_path / "function-tmp"),
        }
        api_port = free_port()
        api = start(["local", "start-api", "--port", str(api_port)], routed, tmp_path, "api")
        processes.append(api)
        api_url = f"http://127.0.0.1:{api_port}"
        wait_http(f"{api_url}/v2/health/ready", timeout_s=90, process=api)

        # WHEN each model is asked through the function, in reverse order
        x = np.random.default_rng(3).standard_normal((1, WIDTH)).astype(np.float32)
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, WIDTH], "datatype": "FP32",
                                       "data": x.ravel().tolist()}]}).encode()  # fmt: skip
        answers = {name: post(f"{api_url}/v2/models/{name}/infer", body) for name in NAMES[::-1]}

        # THEN each answer is that model's own sum (numpy is the reference): the endpoint ran
        # the model the function named
        for k, name in enumerate(NAMES, start=1):
            status, answer = answers[name]
            assert status == 200
            assert answer["model_name"] == name
            (output,) = answer["outputs"]
            got = np.array(output["data"], np.float32).reshape(output["shape"])
            np.testing.assert_allclose(got, x + np.float32(10 * k), rtol=0, atol=1e-5)

        # AND the endpoint loaded each on its first invocation; the function loaded no graph
        _, rows = post(f"{endpoint_url}/v2/repository/index", b"{}")
        assert {(r["name"], r["state"]) for r in rows} == {(n, "READY") for n in NAMES}
        _, rows = post(f"{api_url}/v2/repository/index", b"{}")
        assert {r["name"]: r["memory_bytes"] for r in rows} == dict.fromkeys(NAMES, 0)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
