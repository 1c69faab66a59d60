"""Five models behind one function under start-api and a moto S3 server: each loads on its first
request, a memory budget that fits three evicts the least recently used, an evicted model
reloads with the same answer, metrics are per model, and the repository index lists all five
with their states (issue 10's acceptance)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO, WIDTH, offset_model
from tests.integration.conftest import emf_counts, function_env, serve_api_logged

pytestmark = pytest.mark.integration

STORE = "s3://onnxkit-it/many"
NAMES = ("m1", "m2", "m3", "m4", "m5")


def post(base: str, path: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{base}{path}", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def infer(base: str, name: str, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip
    status, answer = post(base, f"/v2/models/{name}/infer", json.dumps(body).encode())
    assert status == 200, answer
    assert answer["model_name"] == name
    (output,) = answer["outputs"]
    return np.array(output["data"], np.float32).reshape(output["shape"])


def index(base: str) -> dict[str, dict[str, Any]]:
    status, rows = post(base, "/v2/repository/index", b"{}")
    assert status == 200, rows
    return {row["name"]: row for row in rows}


def test_five_models_behind_one_function_with_a_budget_for_three(
    rie: Path, local_s3: Any, tmp_path: Path
) -> None:
    from onnxkit_tools.registry import Registry, publish_model

    # GIVEN five models in the store, m_k adding k to its input
    registry = Registry.from_uri(STORE, cache_dir=tmp_path / "pub", s3_client=local_s3.client())
    for k, name in enumerate(NAMES, start=1):
        path = offset_model(tmp_path / "src" / name, float(k))
        publish_model(registry, path, name=name, version="1", alias="prod", cpu_graph=False)

    # AND one function serving all five, with a memory budget that fits three (each counts as
    # twice its 256 KiB of weights: three take 1.5 MiB, four 2 MiB and more)
    env_file = tmp_path / "env.json"
    settings = function_env(
        local_s3.endpoint,
        tmp_path / "lambda-tmp",
        ONNXKIT_MODEL_STORE=STORE,
        ONNXKIT_MODELS=",".join(NAMES),
        ONNXKIT_MODELS_MEMORY_MB="2",
        PYTHONPATH=str(REPO / "layers" / "onnxkit"),
    )
    del settings["PredictFunction"]["ONNXKIT_MODEL_NAME"]
    env_file.write_text(json.dumps(settings))
    log_path = tmp_path / "function.log"
    x = np.random.default_rng(10).standard_normal((2, WIDTH)).astype(np.float32)
    with serve_api_logged(env_file, log_path) as (base, api):
        # THEN nothing is loaded before a request, and the index lists all five
        assert {n: r["state"] for n, r in index(base).items()} == dict.fromkeys(
            NAMES, "UNAVAILABLE"
        )

        # WHEN each model is asked once, in order
        first = {name: infer(base, name, x) for name in NAMES}

        # THEN each answers its own sum (numpy is the reference), the first three were evicted
        # in turn, and the last three are loaded
        for k, name in enumerate(NAMES, start=1):
            np.testing.assert_allclose(first[name], x + np.float32(k), rtol=0, atol=1e-6)
        rows = index(base)
        assert {n: r["state"] for n, r in rows.items()} == {
            "m1": "UNAVAILABLE", "m2": "UNAVAILABLE",
            "m3": "READY", "m4": "READY", "m5": "READY",
        }  # fmt: skip
        assert "evicted" in rows["m1"]["reason"]
        assert rows["m3"]["version"] == "1"

        # WHEN the evicted m1 is asked again THEN it reloads with the same answer, evicting m3
        np.testing.assert_array_equal(infer(base, "m1", x), first["m1"])
        rows = index(base)
        assert {n for n, r in rows.items() if r["state"] == "READY"} == {"m1", "m4", "m5"}

        # AND an unknown model is a 404 naming what is served
        status, error = post(base, "/v2/models/m9/infer", b"{}")
        assert status == 404
        assert error["error"]["code"] == "model_not_found"
        assert "'m1', 'm2', 'm3', 'm4', 'm5'" in error["error"]["message"]
        assert api.poll() is None, "start-api must not have restarted"

    # AND the metrics are per model: inferences, loads (m1 twice) and evictions
    log = log_path.read_text()
    assert emf_counts(log, "InferenceMs", "model") == {"m1": 2, "m2": 1, "m3": 1, "m4": 1, "m5": 1}
    assert emf_counts(log, "ModelLoadMs", "model") == {"m1": 2, "m2": 1, "m3": 1, "m4": 1, "m5": 1}
    assert emf_counts(log, "ModelEvictions", "model") == {"m1": 1, "m2": 1, "m3": 1}
