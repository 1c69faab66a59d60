"""`onnxkit local start-endpoint` as a newcomer runs it: no setup, or a model folder."""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from onnxkit_tools.net import wait_http
from tests.conftest import EVENTS, REPO
from tests.integration.conftest import ONNXKIT, cli_env

pytestmark = pytest.mark.integration

INFER = json.loads((EVENTS / "predict_infer_200.json").read_text())["body"]


@contextmanager
def start_endpoint(*args: str) -> Iterator[str]:
    """`onnxkit local start-endpoint ARGS` on a free port, one worker; yields its URL."""
    from onnxkit_tools.net import free_port

    port = free_port()
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: nobody reads while it serves
        process = subprocess.Popen(
            [ONNXKIT, "local", "start-endpoint", "--port", str(port), "--workers", "1", *args],
            cwd=REPO, env=cli_env(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{base}/ping", process=process, timeout_s=120)
            yield base
        finally:
            process.send_signal(signal.SIGINT)  # Ctrl-C: drained, and the local S3 stopped
            code = process.wait(timeout=30)
            log.seek(0)
            assert code == 0, log.read()[-3000:]


def test_with_no_arguments_it_serves_the_default_model_from_its_own_s3() -> None:
    with start_endpoint() as base:
        reply = requests.post(
            f"{base}/invocations",
            data=INFER,
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        metadata = requests.get(f"{base}/v2/models/digits", timeout=10)

    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["model_name"], body["model_version"]) == ("digits", "1")
    assert {o["name"]: o["data"] for o in body["outputs"]}["label"] == [0]  # row 0 is a 0
    assert metadata.json()["versions"] == ["1"]


def test_a_model_folder_is_served_under_its_manifests_name(digits_dir: Path) -> None:
    with start_endpoint("--model-dir", str(digits_dir / "int8")) as base:
        reply = requests.post(
            f"{base}/v2/models/digits/infer",
            data=INFER,
            headers={"Content-Type": "application/json"},
            timeout=30,
        )

    assert reply.status_code == 200, reply.text
    assert reply.json()["model_name"] == "digits"  # not the folder's name, int8
    assert reply.json()["model_version"] == "local"
