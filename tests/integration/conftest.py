"""Processes over loopback: a moto S3 server, the emulator, the local API, real clients."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from onnxkit_tools.local.s3 import MotoProcess, ensure_bucket
from onnxkit_tools.net import wait_http
from tests.conftest import REPO, TEXT_MODEL, publish_text_model

ONNXKIT = str(Path(sys.executable).parent / "onnxkit")
STORE = "s3://onnxkit-it/onnxkit"


@pytest.fixture(scope="session")
def rie() -> Path:
    """The Lambda Runtime Interface Emulator from the aws-sam-cli install."""
    from onnxkit_tools.local.emulator import EmulatorError, find_rie

    try:
        return find_rie(REPO)
    except EmulatorError as exc:
        pytest.skip(
            f"aws-sam-cli (which ships the emulator) is not installed; run `make setup`: {exc}"
        )


@pytest.fixture(scope="session")
def local_s3(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoProcess]:
    """A moto S3 server (its own process) with digits int8 published as version 1, alias prod."""
    from onnxkit_tools.examples.digits import digits_processing
    from onnxkit_tools.registry import Registry, publish_model

    with MotoProcess() as s3:
        client = s3.client()
        ensure_bucket(client, "onnxkit-it")
        store = Registry.from_uri(STORE, cache_dir=tmp_path_factory.mktemp("pub"), s3_client=client)
        publish_model(
            store,
            digits_dir / "int8" / "model.onnx",
            name="digits",
            version="1",
            alias="prod",
            report_path=digits_dir / "report.json",
            processing=digits_processing(digits_dir),
        )
        yield s3


def function_env(endpoint: str, cache_dir: Path, **extra: str) -> dict[str, dict[str, str]]:
    """A `sam local invoke --env-vars` document for the function.

    A PYTHONPATH set for the tests reaches the function too (the emulator replaces its own), so
    it runs the code under test, not another checkout's editable install.
    """
    here = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}
    return {
        "PredictFunction": {
            "ONNXKIT_MODEL_STORE": STORE,
            "ONNXKIT_MODEL_NAME": "digits",
            "ONNXKIT_MODEL_ALIAS": "prod",
            "ONNXKIT_CACHE_DIR": str(cache_dir),
            "AWS_ENDPOINT_URL_S3": endpoint,
            **here,
            **extra,
        }
    }


@pytest.fixture(scope="session")
def env_vars(local_s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An env-vars file pointing the function at the local S3."""
    folder = tmp_path_factory.mktemp("env")
    path = folder / "env.json"
    path.write_text(json.dumps(function_env(local_s3.endpoint, folder / "lambda-tmp")))
    return path


def cli_env() -> dict[str, str]:
    """The CLI's environment: never real AWS credentials or endpoints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ONNXKIT_"))}
    env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    return env


def run_onnxkit(*args: str, endpoint: str, store: str) -> str:
    """The `onnxkit` CLI against the store ``store`` on the moto server at ``endpoint``; its
    stdout (a non-zero exit fails the test with the CLI's stderr)."""
    env = {**cli_env(), "AWS_ENDPOINT_URL_S3": endpoint, "ONNXKIT_MODEL_STORE": store}
    result = subprocess.run(
        [ONNXKIT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="session")
def start_api(rie: Path, env_vars: Path) -> Iterator[str]:
    """`onnxkit local start-api` on a free port; yields the base URL."""
    with serve_api(env_vars) as base:
        yield base


@contextlib.contextmanager
def serve_api(env_vars: Path) -> Iterator[str]:
    """`onnxkit local start-api` with an env-vars file, on a free port, until the block ends;
    gives the base URL once the model is ready."""
    with serve_api_logged(env_vars, None) as (base, _):
        yield base


@contextlib.contextmanager
def serve_api_logged(
    env_vars: Path, log: Path | None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """:func:`serve_api`, with the function's output (its logs and EMF metrics) written to
    ``log``; gives the base URL and the process (a test checks it never restarted)."""
    from onnxkit_tools.net import free_port

    port = free_port()
    with contextlib.ExitStack() as files:
        out = files.enter_context(log.open("wb")) if log is not None else subprocess.DEVNULL
        process = subprocess.Popen(
            [ONNXKIT, "local", "start-api", "--port", str(port), "--env-vars", str(env_vars)],
            cwd=REPO,
            env=cli_env(),
            stdout=out,
            stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/v2/health/ready", process=process)
        yield base, process
    finally:
        process.terminate()
        process.wait(timeout=15)


# --- a text model: MiniLM with its tokenizer (minilm_built: tests/conftest.py) ---------------


@pytest.fixture(scope="session")
def text_published(
    local_s3: Any, minilm_built: Path, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """MiniLM fp32 published as ``minilm`` version 1 (alias prod) with its tokenizer: sentences
    in, embeddings out; truncation off, so a text over 128 tokens is refused (400)."""
    from onnxkit_tools.registry import Registry

    store = Registry.from_uri(
        STORE, cache_dir=tmp_path_factory.mktemp("pub-text"), s3_client=local_s3.client()
    )
    return publish_text_model(store, minilm_built)


@pytest.fixture(scope="session")
def text_env_vars(
    local_s3: Any, text_published: Any, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An env-vars file pointing the function at the text model in the local S3."""
    folder = tmp_path_factory.mktemp("env-text")
    path = folder / "env.json"
    values = function_env(local_s3.endpoint, folder / "lambda-tmp", ONNXKIT_MODEL_NAME=TEXT_MODEL)
    path.write_text(json.dumps(values))
    return path


def emf_counts(log: str, metric: str, dimension: str) -> Counter[str]:
    """Data points of one metric per value of a dimension (``model``, ``version``), from the
    EMF lines in a function's log."""
    counts: Counter[str] = Counter()
    for line in log.splitlines():
        if '"_aws"' not in line or "{" not in line:
            continue
        blob = json.loads(line[line.index("{") :])
        (directive,) = blob["_aws"]["CloudWatchMetrics"]
        if metric in (m["Name"] for m in directive["Metrics"]):
            value = blob[metric]
            counts[blob[dimension]] += len(value) if isinstance(value, list) else 1
    return counts
