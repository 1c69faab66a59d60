"""The Docker-free local stack: the function's environment, a seeded S3 when none is configured,
and the endpoint container's entry point run as a child process.

``local invoke``, ``local start-api`` and ``local start-endpoint`` all work with no setup: when
neither the environment nor ``--env-vars`` names an S3 endpoint, a moto server is started on
127.0.0.1 and the default digits model is published into it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

from onnxkit.settings import (
    ENV_BIND_HOST,
    ENV_CACHE_DIR,
    ENV_MODEL_DIR,
    ENV_MODEL_NAME,
    ENV_MODEL_STORE,
    ENV_PAYLOAD_STORE,
    ENV_PORT,
    ENV_SERVE_OPENAPI,
)
from onnxkit_tools.local.s3 import (
    DEFAULT_MODEL,
    LOCAL_STORE,
    LocalS3,
    ensure_bucket,
    s3_client,
    seed_default_model,
)

SECTIONS = ("Parameters", "PredictFunction")
LOCAL_PAYLOAD_BUCKET = "onnxkit-local-payloads"
LOCAL_PAYLOAD_STORE = f"s3://{LOCAL_PAYLOAD_BUCKET}/payloads"
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_PASSED_THROUGH = ("ONNXKIT_", "POWERTOOLS_", "AWS_ENDPOINT_URL")


def function_env(env_vars: Path | None, environ: Mapping[str, str]) -> dict[str, str]:
    """The function's environment: the shell's ONNXKIT_/POWERTOOLS_/endpoint variables, then
    the ``sam local invoke --env-vars`` file's ``Parameters`` and ``PredictFunction`` sections.

    ``host.docker.internal`` (how a SAM container reaches the host) becomes 127.0.0.1.

    Raises:
        FileNotFoundError: The env-vars file does not exist.
        ValueError: It is not JSON.
    """
    env = {key: value for key, value in environ.items() if key.startswith(_PASSED_THROUGH)}
    if env_vars is not None:
        data = json.loads(env_vars.read_text())
        for section in SECTIONS:
            env.update({k: str(v) for k, v in (data.get(section) or {}).items()})
    for key, value in env.items():
        if key.startswith("AWS_ENDPOINT_URL"):
            env[key] = value.replace("host.docker.internal", "127.0.0.1")
    return env


@contextlib.contextmanager
def with_local_store(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The environment, completed with a local model: a seeded moto S3 unless one is configured.

    A model folder (``ONNXKIT_MODEL_DIR``) needs no store. Otherwise the store defaults to
    ``s3://onnxkit-local/onnxkit`` and the model to ``digits``; without an S3 endpoint a moto
    server is started for the duration, and the default model published into it.
    """
    env = dict(env)
    if env.get(ENV_MODEL_DIR):
        yield env
        return
    env.setdefault(ENV_MODEL_STORE, LOCAL_STORE)
    env.setdefault(ENV_MODEL_NAME, DEFAULT_MODEL)
    env.setdefault(ENV_CACHE_DIR, str(Path(tempfile.gettempdir()) / "onnxkit"))
    has_endpoint = "AWS_ENDPOINT_URL_S3" in env or "AWS_ENDPOINT_URL" in env
    if has_endpoint or not env[ENV_MODEL_STORE].startswith("s3://"):
        yield env
        return
    with LocalS3() as s3:
        print(f"started a local S3 (moto) at {s3.endpoint}", file=sys.stderr)
        if env[ENV_MODEL_NAME] == DEFAULT_MODEL:
            seed_default_model(s3.client(), env[ENV_MODEL_STORE])
        else:
            print(
                f"warning: the local S3 is empty; model {env[ENV_MODEL_NAME]!r} will not be "
                "found. Run `onnxkit local s3` and publish it there, then set AWS_ENDPOINT_URL_S3.",
                file=sys.stderr,
            )
        env["AWS_ENDPOINT_URL_S3"] = s3.endpoint
        env.setdefault("AWS_ACCESS_KEY_ID", "testing")
        env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        yield env


def with_payload_store(env: dict[str, str]) -> dict[str, str]:
    """The environment, with a payload store on the local S3 so uploads work locally.

    Only when the function's S3 endpoint is on this machine (a moto server): its bucket is
    created there, ``ONNXKIT_PAYLOAD_STORE`` defaulting to ``s3://onnxkit-local-payloads/payloads``.
    Presigned URLs then point at that endpoint. Never touches a remote S3.
    """
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if not endpoint or urlsplit(endpoint).hostname not in _LOOPBACK:
        return env
    env = {**env, ENV_PAYLOAD_STORE: env.get(ENV_PAYLOAD_STORE) or LOCAL_PAYLOAD_STORE}
    if env[ENV_PAYLOAD_STORE].startswith("s3://"):
        ensure_bucket(s3_client(endpoint), urlsplit(env[ENV_PAYLOAD_STORE]).netloc)
    return env


def run_endpoint(
    env: Mapping[str, str], *, port: int, module: str = "onnxkit.adapters.endpoint"
) -> int:
    """Run the endpoint container's entry point on 127.0.0.1 with ``env``, until it exits.

    It runs in a child process, as in the container (workers, drain on SIGTERM); SIGINT and
    SIGTERM received here are passed on, so Ctrl-C drains it.

    Args:
        env: The endpoint's environment (added to this process's).
        port: Where it listens.
        module: What ``python -m`` runs: the container's server, or a local wrapper of it
            (``onnxkit_tools.local.async_inference``).

    Returns:
        The server's exit code.
    """
    child_env = {
        **os.environ,
        **env,
        ENV_BIND_HOST: "127.0.0.1",
        ENV_PORT: str(port),
    }
    child_env.setdefault(ENV_SERVE_OPENAPI, "true")
    process = subprocess.Popen([sys.executable, "-m", module], env=child_env)

    def forward(signum: int, _: FrameType | None) -> None:
        process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    received: list[int] = []

    def stop(signum: int, _: FrameType | None) -> None:
        received.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    while not received:
        signal.pause()
