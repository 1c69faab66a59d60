"""The registry end to end over real HTTP: CLI publish/promote/rollback, start-api follows prod."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from onnxkit_tools.net import wait_http
from tests.conftest import REPO
from tests.integration.conftest import ONNXKIT, cli_env, function_env, run_onnxkit

pytestmark = pytest.mark.integration

STORE = "s3://onnxkit-it/registry"
BODY = json.loads((REPO / "events" / "predict_infer_200.json").read_text())["body"].encode()


def onnxkit(*args: str, endpoint: str) -> str:
    return run_onnxkit(*args, endpoint=endpoint, store=STORE)


def served_version(base: str) -> str:
    request = urllib.request.Request(
        f"{base}/v2/models/digits/infer", data=BODY, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())["model_version"]


def eventually(base: str, version: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while (seen := served_version(base)) != version:
        assert time.monotonic() < deadline, f"still serving {seen}, expected {version}"
        time.sleep(0.2)


def test_publish_promote_serve_rollback_over_http(
    rie: Path, local_s3: Any, digits_dir: Path, tmp_path: Path
) -> None:
    from onnxkit_tools.net import free_port

    endpoint = local_s3.endpoint
    int8 = str(digits_dir / "int8" / "model.onnx")
    fp32 = str(digits_dir / "fp32" / "model.onnx")

    # GIVEN v1 published and promoted to prod with the CLI
    out = onnxkit("publish", int8, "--name", "digits", "--alias", "prod", endpoint=endpoint)
    assert "published digits version 1" in out
    # versions are immutable
    env = {**cli_env(), "AWS_ENDPOINT_URL_S3": endpoint}
    again = subprocess.run(
        [ONNXKIT, "publish", int8, "--name", "digits", "--version", "1", "--store", STORE],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert again.returncode == 1
    assert "version_exists" in again.stderr

    # AND start-api serving digits@prod, re-reading the alias every 0.3 s
    env_file = tmp_path / "env.json"
    settings = function_env(endpoint, tmp_path / "lambda-tmp", ONNXKIT_REFRESH_SECONDS="0.3")
    settings["PredictFunction"]["ONNXKIT_MODEL_STORE"] = STORE
    env_file.write_text(json.dumps(settings))
    port = free_port()
    api = subprocess.Popen(
        [ONNXKIT, "local", "start-api", "--port", str(port), "--env-vars", str(env_file)],
        cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/v2/health/ready", process=api)
        assert served_version(base) == "1"

        # WHEN v2 is published and promoted, THEN start-api serves it without a restart
        onnxkit("publish", fp32, "--name", "digits", endpoint=endpoint)
        out = onnxkit("models", "promote", "digits", "2", "--alias", "prod", endpoint=endpoint)
        assert "digits@prod: 1 -> 2" in out
        eventually(base, "2")

        # WHEN prod is rolled back, THEN v1 serves again
        out = onnxkit("models", "rollback", "digits", "--alias", "prod", endpoint=endpoint)
        assert "2 -> 1" in out
        eventually(base, "1")
        assert api.poll() is None, "start-api must not have restarted"
    finally:
        api.terminate()
        api.wait(timeout=15)

    listing = onnxkit("models", "list", endpoint=endpoint)
    assert "digits: versions 1, 2; aliases prod->1" in listing
    shown = json.loads(onnxkit("models", "show", "digits@2", endpoint=endpoint))
    assert shown["version"] == "2"
    assert shown["files"][0]["size"] == Path(fp32).stat().st_size

    # AND a pulled copy is byte-identical, verified
    pulled = tmp_path / "pulled"
    onnxkit("models", "pull", "digits@prod", "--out", str(pulled), endpoint=endpoint)
    assert (pulled / "model.onnx").read_bytes() == Path(int8).read_bytes()
    assert json.loads((pulled / "manifest.json").read_text())["version"] == "1"
