"""``onnxkit local``: the function, the API and the SageMaker endpoint on this machine, without
AWS or Docker."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from onnxkit.settings import ENV_MODEL_DIR, ENV_PAYLOAD_STORE, ENV_SERVE_OPENAPI, ENV_WORKERS
from onnxkit_tools.local.emulator import Emulator
from onnxkit_tools.local.s3 import (
    LOCAL_BUCKET,
    LOCAL_STORE,
    LocalS3,
    ensure_bucket,
    seed_default_model,
)
from onnxkit_tools.local.stack import (
    function_env,
    run_endpoint,
    wait_for_signal,
    with_local_store,
    with_payload_store,
)

_ENV_VARS = click.option(
    "--env-vars",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSON in `sam local invoke --env-vars` form: {"PredictFunction": {"VAR": "value"}} '
    "(its Parameters section too; host.docker.internal becomes 127.0.0.1)",
)


def _function_options(command: Any) -> Any:
    for option in reversed(
        [
            _ENV_VARS,
            click.option(
                "--function-dir",
                type=click.Path(exists=True, file_okay=False, path_type=Path),
                default=Path("functions/predict"),
                show_default=True,
                help="folder holding the function's app.py",
            ),
            click.option(
                "--memory",
                type=click.IntRange(128, 10240),
                default=2048,
                show_default=True,
                help="memory size in MB",
            ),
            click.option(
                "--timeout",
                type=click.IntRange(1, 900),
                default=30,
                show_default=True,
                help="function timeout in seconds",
            ),
        ]
    ):
        command = option(command)
    return command


@click.group()
def local() -> None:
    """Run the function, its API and the SageMaker endpoint on 127.0.0.1: no AWS, no Docker.

    With no S3 endpoint in the environment or --env-vars, invoke, start-api and start-endpoint
    start their own moto S3 and publish the default digits model into it.
    """


@local.command()
@click.option("--port", type=click.IntRange(1, 65535), default=4566, show_default=True)
@click.option(
    "--bucket", multiple=True, help=f"bucket to create (repeatable; default {LOCAL_BUCKET})"
)
@click.option("--seed", is_flag=True, help=f"publish the default digits model to {LOCAL_STORE}")
def s3(port: int, bucket: tuple[str, ...], seed: bool) -> int:
    """Serve S3 (moto) on 127.0.0.1 until interrupted."""
    with LocalS3(port) as server:
        for name in bucket or (LOCAL_BUCKET,):
            ensure_bucket(server.client(), name)
        if seed:
            seed_default_model(server.client())
            click.echo(f"published digits v1 (alias prod) to {LOCAL_STORE}", err=True)
        click.echo(f"local S3 on {server.endpoint}; export AWS_ENDPOINT_URL_S3={server.endpoint}")
        sys.stdout.flush()
        wait_for_signal()
    return 0


@local.command()
@click.option(
    "--event",
    "-e",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="API Gateway event JSON (events/*.json)",
)
@_function_options
def invoke(
    event: Path, env_vars: Path | None, function_dir: Path, memory: int, timeout: int
) -> int:
    """Invoke the function once with an event; print its Lambda response JSON on stdout.

    Runs functions/predict under the Lambda Runtime Interface Emulator (from aws-sam-cli) on
    127.0.0.1, as `sam local invoke -e EVENT` does in a container.
    """
    payload = json.loads(event.read_text())  # a typo fails before anything starts
    with (
        with_local_store(function_env(env_vars, os.environ)) as env,
        Emulator(function_dir, env, memory_mb=memory, timeout_s=timeout) as emulator,
    ):
        click.echo(json.dumps(emulator.invoke(payload), indent=2))
    return 0


@local.command("start-api")
@click.option("--port", type=click.IntRange(0, 65535), default=3000, show_default=True)
@click.option("--stage", default="Prod", show_default=True, help="stage prefix also served")
@click.option("--api-key", help="require this x-api-key header, as API Gateway would")
@click.option(
    "--binary-media-type",
    "binary_media_types",
    multiple=True,
    metavar="TYPE",
    help="a binary media type of the API, e.g. image/png, image/* or */* (repeatable; replaces "
    "the template's list). A body whose Content-Type matches one reaches the function "
    "base64-encoded; a base64 reply is sent as bytes when the first Accept type matches one. "
    "[default: PredictApi's BinaryMediaTypes in ./template.yaml]",
)
@_function_options
def start_api(
    port: int,
    stage: str,
    api_key: str | None,
    binary_media_types: tuple[str, ...],
    env_vars: Path | None,
    function_dir: Path,
    memory: int,
    timeout: int,
) -> int:
    """Serve the REST API on 127.0.0.1 through the emulator, like `sam local start-api`.

    Each HTTP request becomes an API Gateway REST proxy event for the function. Paths work at
    the root and under the stage (/Prod/v2/...). Bodies and base64 replies follow the API's
    binary media types as API Gateway does (template.yaml's, or --binary-media-type). With a
    local S3, uploads work too: a payload bucket is created there and ONNXKIT_PAYLOAD_STORE set
    (s3://onnxkit-local-payloads/payloads unless given), so presigned URLs point at it. GET
    /v2/openapi.json serves the API's document (ONNXKIT_SERVE_OPENAPI=false turns it off, as it
    is behind API Gateway by default).
    """
    from onnxkit_tools.local.api_gateway import (
        LocalApi,
        normalize_media_types,
        template_binary_media_types,
    )
    from onnxkit_tools.template import TemplateError

    # Settled before anything starts: a bad value or an unreadable template fails at once.
    try:
        media_types = (
            normalize_media_types(binary_media_types)
            if binary_media_types
            else template_binary_media_types()
        )
    except TemplateError as exc:
        hint = "run from the project folder or pass --binary-media-type"
        raise click.UsageError(f"{exc}; {hint}") from exc
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--binary-media-type") from exc

    env = function_env(env_vars, os.environ)
    env.setdefault(ENV_SERVE_OPENAPI, "true")
    # The port is taken first: the local S3 and the emulator pick free ports and open loopback
    # connections of their own, and one of those could otherwise land on it before it is bound.
    function: list[Emulator] = []
    try:
        api = LocalApi(
            lambda event: function[0].invoke(event),
            port,
            stage=stage,
            api_key=api_key,
            binary_media_types=media_types,
        )
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); pick another with --port"
        ) from exc
    with (
        with_local_store(env) as stored,
        Emulator(
            function_dir, with_payload_store(stored), memory_mb=memory, timeout_s=timeout
        ) as emulator,
    ):
        function.append(emulator)
        click.echo(
            f"serving on {api.url} (also under /{stage}); try: curl {api.url}/v2/health/ready",
            err=True,
        )
        click.echo(f"binary media types: {', '.join(media_types) or 'none'}", err=True)
        sys.stderr.flush()
        api.serve_forever()  # until Ctrl-C or SIGTERM
    return 0


@local.command("start-endpoint")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option(
    "--model-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="serve this folder (model.onnx, and manifest.json from `onnxkit models pull`) instead "
    "of the store",
)
@click.option(
    "--workers", type=click.IntRange(1, 256), help="server processes (default: one per vCPU)"
)
@click.option(
    "--async",
    "asynchronous",
    is_flag=True,
    help="also emulate SageMaker's asynchronous inference (InvokeEndpointAsync): inputs read "
    f"from S3, replies written under {ENV_PAYLOAD_STORE}'s async-output/ (errors: "
    "async-failure/), as an endpoint config's AsyncInferenceConfig would",
)
@_ENV_VARS
def start_endpoint(
    port: int,
    model_dir: Path | None,
    workers: int | None,
    asynchronous: bool,
    env_vars: Path | None,
) -> int:
    """Run the SageMaker endpoint container's server on 127.0.0.1 (CPU).

    Serves /ping, /invocations (and /endpoints/NAME/invocations, which boto3's
    sagemaker-runtime client calls when AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME points here) with the
    same v2 JSON as the function. The model comes from --model-dir, or from the registry
    (ONNXKIT_MODEL_STORE / ONNXKIT_MODEL_NAME / ONNXKIT_MODEL_ALIAS; with none of those, the
    default digits model in a local moto S3). SIGTERM or Ctrl-C drains in-flight requests.

    With --async it also answers /endpoints/NAME/async-invocations as SageMaker's asynchronous
    front end does (ONNXKIT_PAYLOAD_STORE names where inputs are read and replies written;
    on a local S3 its bucket is created).
    """
    env = function_env(env_vars, os.environ)
    if model_dir is not None:
        env[ENV_MODEL_DIR] = str(model_dir.resolve())
    if workers is not None:
        env[ENV_WORKERS] = str(workers)
    if asynchronous and not env.get(ENV_PAYLOAD_STORE, "").startswith("s3://"):
        raise click.UsageError(f"--async needs {ENV_PAYLOAD_STORE}=s3://bucket/prefix")
    with with_local_store(env) as env:
        module = "onnxkit.adapters.endpoint"
        if asynchronous:
            from onnxkit_tools.local.async_inference import prepare_store

            prepare_store(env)
            module = "onnxkit_tools.local.async_inference"
        click.echo(f"endpoint on http://127.0.0.1:{port} (/ping, /invocations)", err=True)
        return run_endpoint(with_payload_store(env), port=port, module=module)
