"""One typed ``Settings`` object, built from ``ONNXKIT_*`` environment variables once, at init."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from onnxkit.errors import ConfigurationError

PREFIX = "ONNXKIT_"

ENV_MODEL_STORE = "ONNXKIT_MODEL_STORE"
ENV_MODEL_NAME = "ONNXKIT_MODEL_NAME"
ENV_MODEL_ALIAS = "ONNXKIT_MODEL_ALIAS"
ENV_MODEL_VERSION = "ONNXKIT_MODEL_VERSION"
ENV_CACHE_DIR = "ONNXKIT_CACHE_DIR"
ENV_INTRA_OP_THREADS = "ONNXKIT_INTRA_OP_THREADS"
ENV_MAX_REQUEST_BYTES = "ONNXKIT_MAX_REQUEST_BYTES"
ENV_MAX_BATCH_SIZE = "ONNXKIT_MAX_BATCH_SIZE"
ENV_S3_MAX_ATTEMPTS = "ONNXKIT_S3_MAX_ATTEMPTS"
ENV_S3_CONNECT_TIMEOUT = "ONNXKIT_S3_CONNECT_TIMEOUT"
ENV_S3_READ_TIMEOUT = "ONNXKIT_S3_READ_TIMEOUT"
ENV_ROUTE_PREFIX = "ONNXKIT_ROUTE_PREFIX"
ENV_REFRESH_SECONDS = "ONNXKIT_REFRESH_SECONDS"
ENV_MODEL_DIR = "ONNXKIT_MODEL_DIR"
ENV_BACKEND = "ONNXKIT_BACKEND"
ENV_SAGEMAKER_ENDPOINT = "ONNXKIT_SAGEMAKER_ENDPOINT"
ENV_SAGEMAKER_TIMEOUT = "ONNXKIT_SAGEMAKER_TIMEOUT"
ENV_SAGEMAKER_MAX_ATTEMPTS = "ONNXKIT_SAGEMAKER_MAX_ATTEMPTS"
ENV_AUTO_MAX_LAMBDA_BYTES = "ONNXKIT_AUTO_MAX_LAMBDA_BYTES"
ENV_PROVIDERS = "ONNXKIT_PROVIDERS"
ENV_SERVER_THREADS = "ONNXKIT_SERVER_THREADS"
ENV_BATCH_MAX_SIZE = "ONNXKIT_BATCH_MAX_SIZE"
ENV_BATCH_MAX_WAIT_MS = "ONNXKIT_BATCH_MAX_WAIT_MS"
# Read by the endpoint container's `serve` entry point only (0.0.0.0 there; 127.0.0.1 in tests).
ENV_BIND_HOST = "ONNXKIT_BIND_HOST"
# Powertools' own variable; read here so a missing one falls back instead of failing each flush.
ENV_METRICS_NAMESPACE = "POWERTOOLS_METRICS_NAMESPACE"

KNOWN_VARIABLES = frozenset(
    {
        ENV_MODEL_STORE,
        ENV_MODEL_NAME,
        ENV_MODEL_ALIAS,
        ENV_MODEL_VERSION,
        ENV_CACHE_DIR,
        ENV_INTRA_OP_THREADS,
        ENV_MAX_REQUEST_BYTES,
        ENV_MAX_BATCH_SIZE,
        ENV_S3_MAX_ATTEMPTS,
        ENV_S3_CONNECT_TIMEOUT,
        ENV_S3_READ_TIMEOUT,
        ENV_ROUTE_PREFIX,
        ENV_REFRESH_SECONDS,
        ENV_MODEL_DIR,
        ENV_BACKEND,
        ENV_SAGEMAKER_ENDPOINT,
        ENV_SAGEMAKER_TIMEOUT,
        ENV_SAGEMAKER_MAX_ATTEMPTS,
        ENV_AUTO_MAX_LAMBDA_BYTES,
        ENV_PROVIDERS,
        ENV_SERVER_THREADS,
        ENV_BATCH_MAX_SIZE,
        ENV_BATCH_MAX_WAIT_MS,
        ENV_BIND_HOST,
    }
)

# Lambda's synchronous invoke limit is 6 MB (6,291,456 bytes) for the whole event.
DEFAULT_MAX_REQUEST_BYTES = 6 * 1024 * 1024
DEFAULT_MAX_BATCH_SIZE = 1024
BACKENDS = ("auto", "lambda", "sagemaker")
# `auto` sends models whose files exceed this to SageMaker: past ~250 MB a Lambda cold start
# spends seconds downloading and loading, and /tmp and memory must grow with the model.
DEFAULT_AUTO_MAX_LAMBDA_BYTES = 250 * 1000 * 1000
DEFAULT_PROVIDERS: tuple[str, ...] = ("CPUExecutionProvider",)
KNOWN_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider", "TensorrtExecutionProvider")

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
STORE_PATTERN = re.compile(r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|file://.+)$")

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """Everything the function needs to know, validated.

    Attributes:
        model_store: ``s3://bucket/prefix`` or ``file:///dir``.
        model_name: The model this function serves.
        model_alias: Alias resolved at load time (``prod``); ignored when ``model_version`` is set.
        model_version: An explicit version that pins the model, or None.
        cache_dir: Where verified artifacts are kept between invocations (Lambda's /tmp).
        intra_op_threads: onnxruntime intra-op threads; 0 means "the CPUs this process may use".
        max_request_bytes: Larger bodies are refused with 413.
        max_batch_size: Larger first dimensions are refused with 413.
        s3_max_attempts: botocore's retry budget (standard mode) for S3 calls.
        s3_connect_timeout: Seconds.
        s3_read_timeout: Seconds.
        route_prefix: A path prefix stripped before routing (``/zip`` for the zip variant).
        refresh_seconds: How often a function serving an alias re-reads it (0: never).
        metrics_namespace: CloudWatch namespace for the function's metrics.
        model_dir: A local model folder instead of the store (SageMaker's ``/opt/ml/model``).
        backend: ``lambda`` (in-process), ``sagemaker`` (forward to an endpoint) or ``auto``
            (the manifest's backend, or sagemaker above ``auto_max_lambda_bytes``).
        sagemaker_endpoint: The endpoint name the sagemaker backend invokes.
        sagemaker_timeout: Seconds to wait for an invocation (SageMaker's own limit is 60).
        sagemaker_max_attempts: botocore's retry budget for InvokeEndpoint.
        auto_max_lambda_bytes: Model size above which ``auto`` picks sagemaker.
        providers: onnxruntime execution providers in order of preference.
        server_threads: Request threads of the endpoint container's HTTP server.
        batch_max_size: Server-side dynamic batching: rows per merged batch (0: off).
        batch_max_wait_ms: How long a request may wait for others to batch with.
        ignored_variables: ``ONNXKIT_*`` names no setting reads (likely typos; logged at init).
    """

    model_store: str
    model_name: str
    model_alias: str = "prod"
    model_version: str | None = None
    cache_dir: str = "/tmp/onnxkit"  # noqa: S108 - Lambda's only writable disk
    intra_op_threads: int = 0
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    s3_max_attempts: int = 3
    s3_connect_timeout: float = 2.0
    s3_read_timeout: float = 10.0
    route_prefix: str = ""
    refresh_seconds: float = 60.0
    metrics_namespace: str = "Onnxkit"
    model_dir: str | None = None
    backend: str = "auto"
    sagemaker_endpoint: str | None = None
    sagemaker_timeout: float = 60.0
    sagemaker_max_attempts: int = 2
    auto_max_lambda_bytes: int = DEFAULT_AUTO_MAX_LAMBDA_BYTES
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    server_threads: int = 8
    batch_max_size: int = 0
    batch_max_wait_ms: float = 5.0
    ignored_variables: tuple[str, ...] = ()

    @property
    def model_ref(self) -> str:
        """The version when pinned, else the alias."""
        return self.model_version or self.model_alias

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from an environment mapping.

        Args:
            environ: Usually ``os.environ``; only ``ONNXKIT_*`` names are read.

        Returns:
            Validated settings.

        Raises:
            ConfigurationError: Listing every missing or invalid value at once.
        """
        problems: list[str] = []

        def read(
            name: str, convert: Callable[[str], T], default: T, check: Callable[[T], bool]
        ) -> T:
            raw = environ.get(name, "").strip()
            if not raw:
                return default
            try:
                value = convert(raw)
            except ValueError:
                problems.append(f"{name}={raw!r} is not a valid {convert.__name__}")
                return default
            if not check(value):
                problems.append(f"{name}={raw!r} is out of range")
                return default
            return value

        def required(name: str, pattern: re.Pattern[str], hint: str) -> str:
            raw = environ.get(name, "").strip()
            if not raw:
                problems.append(f"{name} is required ({hint})")
            elif not pattern.match(raw):
                problems.append(f"{name}={raw!r} is invalid ({hint})")
            return raw

        model_dir = environ.get(ENV_MODEL_DIR, "").strip() or None
        if model_dir is None:
            store = required(ENV_MODEL_STORE, STORE_PATTERN, "s3://bucket/prefix or file:///dir")
        else:  # a local folder (SageMaker's /opt/ml/model) stands in for the store
            store = environ.get(ENV_MODEL_STORE, "").strip()
        name = required(ENV_MODEL_NAME, NAME_PATTERN, "lower-case letters, digits, . _ -")
        alias = read(ENV_MODEL_ALIAS, str, "prod", _is_name)
        version: str | None = read(ENV_MODEL_VERSION, str, "", _is_name) or None
        prefix = read(ENV_ROUTE_PREFIX, str, "", _is_route_prefix).rstrip("/")

        settings: dict[str, Any] = {
            "model_store": store.rstrip("/"),
            "model_name": name,
            "model_alias": alias,
            "model_version": version,
            "cache_dir": read(ENV_CACHE_DIR, str, cls.cache_dir, bool),
            "intra_op_threads": read(ENV_INTRA_OP_THREADS, int, 0, lambda v: 0 <= v <= 256),
            "max_request_bytes": read(
                ENV_MAX_REQUEST_BYTES, int, DEFAULT_MAX_REQUEST_BYTES, lambda v: v > 0
            ),
            "max_batch_size": read(
                ENV_MAX_BATCH_SIZE, int, DEFAULT_MAX_BATCH_SIZE, lambda v: v > 0
            ),
            "s3_max_attempts": read(ENV_S3_MAX_ATTEMPTS, int, 3, lambda v: 1 <= v <= 20),
            "s3_connect_timeout": read(ENV_S3_CONNECT_TIMEOUT, float, 2.0, _is_timeout),
            "s3_read_timeout": read(ENV_S3_READ_TIMEOUT, float, 10.0, _is_timeout),
            "route_prefix": prefix,
            "refresh_seconds": read(
                ENV_REFRESH_SECONDS, float, 60.0, lambda v: math.isfinite(v) and v >= 0
            ),
            "metrics_namespace": read(ENV_METRICS_NAMESPACE, str, "Onnxkit", bool),
            "model_dir": model_dir,
            "backend": read(ENV_BACKEND, str, "auto", BACKENDS.__contains__),
            "sagemaker_endpoint": read(ENV_SAGEMAKER_ENDPOINT, str, "", _is_endpoint) or None,
            "sagemaker_timeout": read(ENV_SAGEMAKER_TIMEOUT, float, 60.0, _is_timeout),
            "sagemaker_max_attempts": read(
                ENV_SAGEMAKER_MAX_ATTEMPTS, int, 2, lambda v: 1 <= v <= 10
            ),
            "auto_max_lambda_bytes": read(
                ENV_AUTO_MAX_LAMBDA_BYTES, int, DEFAULT_AUTO_MAX_LAMBDA_BYTES, lambda v: v > 0
            ),
            "providers": read(ENV_PROVIDERS, _providers, DEFAULT_PROVIDERS, bool),
            "server_threads": read(ENV_SERVER_THREADS, int, 8, lambda v: 1 <= v <= 256),
            "batch_max_size": read(ENV_BATCH_MAX_SIZE, int, 0, lambda v: 0 <= v <= 65536),
            "batch_max_wait_ms": read(
                ENV_BATCH_MAX_WAIT_MS, float, 5.0, lambda v: math.isfinite(v) and 0 <= v <= 1000
            ),
        }
        settings["ignored_variables"] = tuple(unknown_variables(environ))
        if settings["backend"] == "sagemaker" and not settings["sagemaker_endpoint"]:
            problems.append(f"{ENV_BACKEND}=sagemaker needs {ENV_SAGEMAKER_ENDPOINT}")
        if problems:
            raise ConfigurationError(problems)
        return cls(**settings)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """``ONNXKIT_*`` names that no setting reads: likely typos, worth a warning at init."""
    return sorted(k for k in environ if k.startswith(PREFIX) and k not in KNOWN_VARIABLES)


def _providers(raw: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in raw.split(",") if p.strip())
    unknown = [p for p in names if p not in KNOWN_PROVIDERS]
    if unknown:
        raise ValueError(f"unknown provider(s) {unknown}")
    return names


_providers.__name__ = "comma-separated list of onnxruntime providers"


def _is_endpoint(value: str) -> bool:
    # SageMaker endpoint names: letters, digits and hyphens, up to 63 characters.
    return re.fullmatch(r"[A-Za-z0-9](-*[A-Za-z0-9]){0,62}", value) is not None


def _is_timeout(value: float) -> bool:
    return math.isfinite(value) and 0 < value <= 900  # Lambda's own ceiling


def _is_name(value: str) -> bool:
    return NAME_PATTERN.match(value) is not None


def _is_route_prefix(value: str) -> bool:
    return value.startswith("/") and " " not in value
