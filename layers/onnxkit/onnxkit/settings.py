"""One typed ``Settings`` object in sections, built from ``ONNXKIT_*`` variables once, at init.

Each role reads its sections: the function reads ``model``, ``canary``, ``aws``, ``session``,
``api``, ``function`` and ``forward``; the endpoint container reads ``model``, ``canary``,
``aws``, ``session``, ``api`` and ``endpoint``. Environment names are the constants below;
nothing else in the library reads the environment.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from onnxkit.errors import ConfigurationError
from onnxkit.names import NAME_RULE, is_name

PREFIX = "ONNXKIT_"

# -- model and store
ENV_MODEL_STORE = "ONNXKIT_MODEL_STORE"
ENV_MODEL_NAME = "ONNXKIT_MODEL_NAME"
ENV_MODEL_ALIAS = "ONNXKIT_MODEL_ALIAS"
ENV_MODEL_VERSION = "ONNXKIT_MODEL_VERSION"
ENV_MODEL_DIR = "ONNXKIT_MODEL_DIR"
ENV_CACHE_DIR = "ONNXKIT_CACHE_DIR"
ENV_REFRESH_SECONDS = "ONNXKIT_REFRESH_SECONDS"
ENV_LOAD_RETRY_SECONDS = "ONNXKIT_LOAD_RETRY_SECONDS"
# -- model canaries (``onnxkit models promote --canary``)
ENV_CANARY_AUTO_ROLLBACK = "ONNXKIT_CANARY_AUTO_ROLLBACK"
ENV_CANARY_MIN_REQUESTS = "ONNXKIT_CANARY_MIN_REQUESTS"
ENV_CANARY_MAX_ERROR_RATE = "ONNXKIT_CANARY_MAX_ERROR_RATE"
# Lambda's own variable: the function's memory, against which a canary's load is checked.
ENV_FUNCTION_MEMORY = "AWS_LAMBDA_FUNCTION_MEMORY_SIZE"
# -- AWS clients
ENV_S3_MAX_ATTEMPTS = "ONNXKIT_S3_MAX_ATTEMPTS"
ENV_S3_CONNECT_TIMEOUT = "ONNXKIT_S3_CONNECT_TIMEOUT"
ENV_S3_READ_TIMEOUT = "ONNXKIT_S3_READ_TIMEOUT"
ENV_S3_PARALLEL_MB = "ONNXKIT_S3_PARALLEL_MB"
ENV_S3_MAX_CONCURRENCY = "ONNXKIT_S3_MAX_CONCURRENCY"
# -- onnxruntime session
ENV_PROVIDERS = "ONNXKIT_PROVIDERS"
ENV_INTRA_OP_THREADS = "ONNXKIT_INTRA_OP_THREADS"
# -- what both HTTP edges enforce and serve
ENV_MAX_REQUEST_BYTES = "ONNXKIT_MAX_REQUEST_BYTES"
ENV_MAX_BATCH_SIZE = "ONNXKIT_MAX_BATCH_SIZE"
ENV_SERVE_OPENAPI = "ONNXKIT_SERVE_OPENAPI"
# -- the Lambda function
ENV_ROUTE_PREFIX = "ONNXKIT_ROUTE_PREFIX"
# Powertools' own variable; read here so a missing one falls back instead of failing each flush.
ENV_METRICS_NAMESPACE = "POWERTOOLS_METRICS_NAMESPACE"
# Powertools' own switch too: with tracing off the X-Ray SDK is never imported (~0.1-0.3 s of
# cold start on these machines).
ENV_TRACE_DISABLED = "POWERTOOLS_TRACE_DISABLED"
# -- forwarding to SageMaker
ENV_BACKEND = "ONNXKIT_BACKEND"
ENV_SAGEMAKER_ENDPOINT = "ONNXKIT_SAGEMAKER_ENDPOINT"
ENV_SAGEMAKER_TIMEOUT = "ONNXKIT_SAGEMAKER_TIMEOUT"
ENV_SAGEMAKER_MAX_ATTEMPTS = "ONNXKIT_SAGEMAKER_MAX_ATTEMPTS"
ENV_AUTO_MAX_LAMBDA_BYTES = "ONNXKIT_AUTO_MAX_LAMBDA_BYTES"
ENV_SAGEMAKER_MODE = "ONNXKIT_SAGEMAKER_MODE"
ENV_SAGEMAKER_INFERENCE_COMPONENT = "ONNXKIT_SAGEMAKER_INFERENCE_COMPONENT"
# -- payloads through S3: uploads in, results and job outputs out
ENV_PAYLOAD_STORE = "ONNXKIT_PAYLOAD_STORE"
ENV_UPLOAD_MAX_BYTES = "ONNXKIT_UPLOAD_MAX_BYTES"
ENV_PAYLOAD_URL_SECONDS = "ONNXKIT_PAYLOAD_URL_SECONDS"
ENV_INLINE_RESULT_BYTES = "ONNXKIT_INLINE_RESULT_BYTES"
# -- many models behind one function or endpoint
ENV_MODELS = "ONNXKIT_MODELS"
ENV_MODELS_ALLOW = "ONNXKIT_MODELS_ALLOW"
ENV_MODELS_MEMORY_MB = "ONNXKIT_MODELS_MEMORY_MB"
ENV_MODELS_DISK_MB = "ONNXKIT_MODELS_DISK_MB"
# -- the endpoint container
ENV_BIND_HOST = "ONNXKIT_BIND_HOST"
ENV_PORT = "SAGEMAKER_BIND_TO_PORT"  # SageMaker's own variable (set for some deployments)
ENV_WORKERS = "ONNXKIT_WORKERS"
ENV_SERVER_THREADS = "ONNXKIT_SERVER_THREADS"
ENV_MAX_CONCURRENCY = "ONNXKIT_MAX_CONCURRENCY"
ENV_DYNAMIC_BATCH_ROWS = "ONNXKIT_DYNAMIC_BATCH_ROWS"
ENV_DYNAMIC_BATCH_WAIT_MS = "ONNXKIT_DYNAMIC_BATCH_WAIT_MS"
ENV_DRAIN_SECONDS = "ONNXKIT_DRAIN_SECONDS"
ENV_HEADER_TIMEOUT = "ONNXKIT_HEADER_TIMEOUT"
ENV_BODY_TIMEOUT = "ONNXKIT_BODY_TIMEOUT"
ENV_MAX_CONNECTIONS = "ONNXKIT_MAX_CONNECTIONS"

# Old names still read, each with a warning naming its replacement. ONNXKIT_BATCH_MAX_SIZE
# (dynamic batching) sat next to ONNXKIT_MAX_BATCH_SIZE (the 413 limit) with another meaning.
DEPRECATED_VARIABLES = {
    "ONNXKIT_BATCH_MAX_SIZE": ENV_DYNAMIC_BATCH_ROWS,
    "ONNXKIT_BATCH_MAX_WAIT_MS": ENV_DYNAMIC_BATCH_WAIT_MS,
}

KNOWN_VARIABLES = frozenset(
    {
        value
        for name, value in dict(globals()).items()
        if name.startswith("ENV_") and isinstance(value, str) and value.startswith(PREFIX)
    }
    | set(DEPRECATED_VARIABLES)
)

# Lambda's synchronous invoke limit is 6 MB (6,291,456 bytes) for the whole event.
DEFAULT_MAX_REQUEST_BYTES = 6 * 1024 * 1024
DEFAULT_MAX_BATCH_SIZE = 1024
BACKENDS = ("auto", "lambda", "sagemaker")
# How the SageMaker endpoint answers: ``realtime`` (InvokeEndpoint, also with inference
# components scaled to zero) or ``async`` (InvokeEndpointAsync only: requests become jobs).
SAGEMAKER_MODES = ("realtime", "async")
# SageMaker asynchronous inference takes inputs of up to 1 GB: the upload path's ceiling.
DEFAULT_UPLOAD_MAX_BYTES = 1024 * 1024 * 1024
DEFAULT_PAYLOAD_URL_SECONDS = 900
# A job's result up to this size comes back inside GET /v2/jobs/{id}, else as a presigned URL.
DEFAULT_INLINE_RESULT_BYTES = 1024 * 1024
# `auto` sends models whose files exceed this to SageMaker: past ~250 MB a Lambda cold start
# spends seconds downloading and loading, and /tmp and memory must grow with the model.
DEFAULT_AUTO_MAX_LAMBDA_BYTES = 250 * 1000 * 1000
CPU_PROVIDER = "CPUExecutionProvider"
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
DEFAULT_PROVIDERS: tuple[str, ...] = (CPU_PROVIDER,)
KNOWN_PROVIDERS = (*GPU_PROVIDERS, CPU_PROVIDER)
DEFAULT_PORT = 8080  # SageMaker's contract
# A failed model load is tried again after ONNXKIT_LOAD_RETRY_SECONDS, doubling up to this.
LOAD_RETRY_MAX_SECONDS = 30.0
# SageMaker sends SIGKILL 30 s after SIGTERM: finish in-flight work well before that.
DEFAULT_DRAIN_SECONDS = 25.0

STORE_PATTERN = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|file://.+")

T = TypeVar("T")


@dataclass(frozen=True)
class ModelSettings:
    """Which model is served and where it comes from.

    Attributes:
        store: ``s3://bucket/prefix`` or ``file:///dir``; empty when ``model_dir`` serves.
        name: The model served; None with a ``model_dir`` whose manifest names it.
        alias: Alias resolved at load time (``prod``); ignored when ``version`` is set.
        version: An explicit version that pins the model, or None.
        model_dir: A local model folder instead of the store (SageMaker's ``/opt/ml/model``).
        cache_dir: Where verified artifacts are kept between invocations (Lambda's /tmp).
        refresh_seconds: How often a server following an alias re-reads it (0: never).
        load_retry_seconds: After a failed load, how long requests get its error before the
            next attempt; doubled after each failure up to :data:`LOAD_RETRY_MAX_SECONDS`
            (0: every request tries again).
    """

    store: str = ""
    name: str | None = None
    alias: str = "prod"
    version: str | None = None
    model_dir: str | None = None
    cache_dir: str = "/tmp/onnxkit"  # noqa: S108 - Lambda's only writable disk
    refresh_seconds: float = 60.0
    load_retry_seconds: float = 1.0

    @property
    def ref(self) -> str:
        """The version when pinned, else the alias."""
        return self.version or self.alias


@dataclass(frozen=True)
class CanarySettings:
    """How a server following an alias runs its canary.

    Attributes:
        auto_rollback: Stop and abort a canary whose error rate passes ``max_error_rate``.
        min_requests: Canary requests seen (in one process) before its error rate is judged.
        max_error_rate: Failed (5xx) canary inferences per canary request that trigger it.
        memory_mb: The function's memory (``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``); None outside
            Lambda, where the system's available memory is used.
    """

    auto_rollback: bool = True
    min_requests: int = 10
    max_error_rate: float = 0.1
    memory_mb: int | None = None


@dataclass(frozen=True)
class AwsSettings:
    """The S3 client's retry budget (botocore standard mode), timeouts in seconds, and when
    model files come down as parallel ranged GETs (``s3_parallel_mb``, 0: never) with how
    many in flight."""

    s3_max_attempts: int = 3
    s3_connect_timeout: float = 2.0
    s3_read_timeout: float = 10.0
    s3_parallel_mb: int = 64
    s3_max_concurrency: int = 8


@dataclass(frozen=True)
class SessionSettings:
    """onnxruntime: providers in order of preference, intra-op threads, GPU device.

    Attributes:
        providers: Execution providers, preferred first.
        intra_op_threads: 0 = the CPUs this process may use (the endpoint divides them among
            its workers).
        gpu_device: The CUDA device index (the endpoint gives each worker its own GPU).
    """

    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    intra_op_threads: int = 0
    gpu_device: int = 0

    @property
    def wants_gpu(self) -> bool:
        """Whether a GPU provider is asked for."""
        return any(p in GPU_PROVIDERS for p in self.providers)


@dataclass(frozen=True)
class ApiSettings:
    """What both HTTP edges enforce and serve.

    Attributes:
        max_request_bytes: Larger bodies are refused with 413.
        max_batch_size: Larger first dimensions are refused with 413.
        serve_openapi: Answer ``GET /v2/openapi.json`` (off behind API Gateway by default).
    """

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    serve_openapi: bool = False


@dataclass(frozen=True)
class FunctionSettings:
    """The Lambda function's edge: a path prefix to strip (``/zip``), the metrics namespace,
    and whether requests are traced with X-Ray (Powertools' Tracer)."""

    route_prefix: str = ""
    metrics_namespace: str = "Onnxkit"
    tracing: bool = True


@dataclass(frozen=True)
class ForwardSettings:
    """Where the function runs a model, and how it forwards to a SageMaker endpoint.

    Attributes:
        backend: ``lambda`` (in the function), ``sagemaker`` (forward) or ``auto`` (the
            manifest's backend, or sagemaker above ``auto_max_lambda_bytes``).
        endpoint: The endpoint name the sagemaker backend invokes.
        timeout: Seconds to wait for an invocation (SageMaker's own limit is 60).
        max_attempts: botocore's retry budget for InvokeEndpoint.
        auto_max_lambda_bytes: Model size above which ``auto`` picks sagemaker.
        mode: ``realtime`` (InvokeEndpoint) or ``async`` (the endpoint is an asynchronous
            one: SageMaker-routed requests go through ``POST /v2/models/{name}/jobs``).
        inference_component: The inference component to invoke on the endpoint (real-time
            scale to zero), or None for a plain endpoint.
    """

    backend: str = "auto"
    endpoint: str | None = None
    timeout: float = 60.0
    max_attempts: int = 2
    auto_max_lambda_bytes: int = DEFAULT_AUTO_MAX_LAMBDA_BYTES
    mode: str = "realtime"
    inference_component: str | None = None


@dataclass(frozen=True)
class PayloadSettings:
    """Payloads through S3: uploads in, results and asynchronous jobs out.

    Attributes:
        store: ``s3://bucket/prefix`` under which ``uploads/``, ``results/`` and ``jobs/``
            live; empty: the upload path and jobs are off (413 and 404 say so).
        upload_max_bytes: The largest upload a presigned URL is signed for.
        url_seconds: How long a presigned URL stays valid.
        inline_result_bytes: A job result up to this size is returned inline.
    """

    store: str = ""
    upload_max_bytes: int = DEFAULT_UPLOAD_MAX_BYTES
    url_seconds: int = DEFAULT_PAYLOAD_URL_SECONDS
    inline_result_bytes: int = DEFAULT_INLINE_RESULT_BYTES

    @property
    def enabled(self) -> bool:
        """Whether a payload store is configured."""
        return bool(self.store)


@dataclass(frozen=True)
class ModelsSettings:
    """Many models behind one function or endpoint (``ONNXKIT_MODELS``).

    Attributes:
        names: The models served, loaded on their first request; empty with ``every``.
        every: ``*``: every model under the store prefix (listed when asked for).
        allow: fnmatch patterns a name must match (empty: any listed name).
        memory_mb: Memory the loaded models may take before the least recently used is
            evicted (None: a share of the function's memory, or of the machine's).
        disk_mb: Cache-folder bytes the loaded models' files may take (None: a share of the
            cache folder's file system, Lambda's ``EphemeralStorage``).
    """

    names: tuple[str, ...] = ()
    every: bool = False
    allow: tuple[str, ...] = ()
    memory_mb: int | None = None
    disk_mb: int | None = None

    @property
    def enabled(self) -> bool:
        """Whether several models are served (``ONNXKIT_MODELS`` is set)."""
        return self.every or bool(self.names)


@dataclass(frozen=True)
class EndpointSettings:
    """The endpoint container's HTTP server.

    Attributes:
        host: Address to bind (the container sets ``0.0.0.0``).
        port: TCP port (SageMaker: 8080 or ``SAGEMAKER_BIND_TO_PORT``).
        workers: Server processes; 0 = one per GPU with a GPU provider, else one per vCPU.
        threads: Threads per worker that run the model; None = 8 on GPU, else 0, which runs
            it on the worker's event loop (least overhead for CPU-bound small models).
        max_concurrency: Requests in flight per worker before new ones get 503 ``overloaded``.
        batch_rows: Dynamic batching: rows per merged batch (0 or 1: off).
        batch_wait_ms: How long a request may wait for others to batch with.
        drain_seconds: Bound on finishing in-flight requests after SIGTERM.
        header_timeout: Seconds a client has to send a request's headers (and between the
            chunks of its body) before the connection is closed.
        body_timeout: Seconds a client has to send a whole body, from the end of its headers,
            however steadily it trickles; then 408 and close.
        max_connections: Connections a worker holds at once (idle kept-alive ones make way
            for new ones); more are answered 503 ``overloaded`` and closed. Keep it above
            ``max_concurrency``.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    workers: int = 0
    threads: int | None = None
    max_concurrency: int = 64
    batch_rows: int = 0
    batch_wait_ms: float = 5.0
    drain_seconds: float = DEFAULT_DRAIN_SECONDS
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 128

    @property
    def batching(self) -> bool:
        """Whether dynamic batching is on."""
        return self.batch_rows > 1


@dataclass(frozen=True)
class Settings:
    """Everything a function or the endpoint container needs to know, validated, in sections.

    Attributes:
        model: Which model, from where.
        canary: Canary routing and automatic rollback.
        aws: AWS client retries and timeouts.
        session: onnxruntime providers and threads.
        api: Limits and documents both HTTP edges share.
        function: The Lambda edge.
        forward: Backend routing and the SageMaker client.
        endpoint: The endpoint container's server.
        payloads: Uploads, results and jobs through S3.
        models: Many models served at once (``ONNXKIT_MODELS``).
        ignored_variables: ``ONNXKIT_*`` names no setting reads (likely typos; logged at init).
        deprecated_variables: Old names that were read, each with its replacement.
    """

    model: ModelSettings = field(default_factory=ModelSettings)
    canary: CanarySettings = field(default_factory=CanarySettings)
    aws: AwsSettings = field(default_factory=AwsSettings)
    session: SessionSettings = field(default_factory=SessionSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    function: FunctionSettings = field(default_factory=FunctionSettings)
    forward: ForwardSettings = field(default_factory=ForwardSettings)
    endpoint: EndpointSettings = field(default_factory=EndpointSettings)
    payloads: PayloadSettings = field(default_factory=PayloadSettings)
    models: ModelsSettings = field(default_factory=ModelsSettings)
    ignored_variables: tuple[str, ...] = ()
    deprecated_variables: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from an environment mapping.

        Args:
            environ: Usually ``os.environ``; only the names above are read.

        Returns:
            Validated settings.

        Raises:
            ConfigurationError: Listing every missing or invalid value at once.
        """
        reader = _Reader(environ)
        models = reader.models()
        settings = cls(
            # ONNXKIT_MODELS set (even wrongly, reported below): no single model is required
            model=reader.model(many=models.enabled or bool(reader.raw(ENV_MODELS))),
            canary=reader.canary(),
            aws=reader.aws(),
            session=SessionSettings(
                providers=reader.read(ENV_PROVIDERS, _providers, DEFAULT_PROVIDERS, bool),
                intra_op_threads=reader.integer(ENV_INTRA_OP_THREADS, 0, 0, 256),
            ),
            api=ApiSettings(
                max_request_bytes=reader.integer(
                    ENV_MAX_REQUEST_BYTES, DEFAULT_MAX_REQUEST_BYTES, 1
                ),
                max_batch_size=reader.integer(ENV_MAX_BATCH_SIZE, DEFAULT_MAX_BATCH_SIZE, 1),
                serve_openapi=reader.flag(ENV_SERVE_OPENAPI, False),
            ),
            function=FunctionSettings(
                route_prefix=reader.read(ENV_ROUTE_PREFIX, str, "", _is_route_prefix).rstrip("/"),
                metrics_namespace=reader.read(ENV_METRICS_NAMESPACE, str, "Onnxkit", bool),
                tracing=not reader.flag(ENV_TRACE_DISABLED, False),
            ),
            forward=reader.forward(),
            endpoint=reader.endpoint(),
            payloads=reader.payloads(),
            models=models,
            ignored_variables=tuple(unknown_variables(environ)),
            deprecated_variables=tuple(reader.deprecated),
        )
        if reader.problems:
            raise ConfigurationError(reader.problems)
        return settings


class _Reader:
    """Reads and converts variables, collecting every problem instead of stopping at one."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []
        self.deprecated: list[tuple[str, str]] = []

    def raw(self, name: str) -> str:
        value = self.environ.get(name, "").strip()
        if value:
            return value
        for old, new in DEPRECATED_VARIABLES.items():
            if new == name and self.environ.get(old, "").strip():
                self.deprecated.append((old, new))
                return self.environ[old].strip()
        return ""

    def read(
        self, name: str, convert: Callable[[str], T], default: T, check: Callable[[T], bool]
    ) -> T:
        raw = self.raw(name)
        if not raw:
            return default
        try:
            value = convert(raw)
        except ValueError:
            self.problems.append(f"{name}={raw!r} is not a valid {convert.__name__}")
            return default
        if not check(value):
            self.problems.append(f"{name}={raw!r} is out of range")
            return default
        return value

    def integer(self, name: str, default: int, low: int, high: int | None = None) -> int:
        return self.read(name, int, default, lambda v: v >= low and (high is None or v <= high))

    def number(self, name: str, default: float, check: Callable[[float], bool]) -> float:
        return self.read(name, float, default, check)

    def flag(self, name: str, default: bool) -> bool:
        return self.read(name, _flag, default, lambda _: True)

    def name(self, name: str, default: str) -> str:
        return self.read(name, str, default, is_name)

    def required(self, name: str, check: Callable[[str], bool], hint: str) -> str:
        raw = self.raw(name)
        if not raw:
            self.problems.append(f"{name} is required ({hint})")
        elif not check(raw):
            self.problems.append(f"{name}={raw!r} is invalid ({hint})")
        return raw

    def model(self, *, many: bool = False) -> ModelSettings:
        model_dir = self.raw(ENV_MODEL_DIR) or None
        if model_dir is None:
            store = self.required(ENV_MODEL_STORE, _is_store, "s3://bucket/prefix or file:///dir")
            name: str | None
            if many:  # ONNXKIT_MODELS names them; ONNXKIT_MODEL_NAME is not read
                name = self.name(ENV_MODEL_NAME, "") or None
            else:
                name = self.required(ENV_MODEL_NAME, is_name, NAME_RULE)
        else:  # a local folder (SageMaker's /opt/ml/model) stands in for the store
            store = self.raw(ENV_MODEL_STORE)
            name = self.name(ENV_MODEL_NAME, "") or None  # else its manifest names it
        return ModelSettings(
            store=store.rstrip("/"),
            name=name,
            alias=self.name(ENV_MODEL_ALIAS, "prod"),
            version=self.name(ENV_MODEL_VERSION, "") or None,
            model_dir=model_dir,
            cache_dir=self.read(ENV_CACHE_DIR, str, ModelSettings.cache_dir, bool),
            refresh_seconds=self.number(
                ENV_REFRESH_SECONDS, 60.0, lambda v: math.isfinite(v) and v >= 0
            ),
            load_retry_seconds=self.number(
                ENV_LOAD_RETRY_SECONDS, 1.0, lambda v: math.isfinite(v) and 0 <= v <= 60
            ),
        )

    def canary(self) -> CanarySettings:
        memory = self.integer(ENV_FUNCTION_MEMORY, 0, 128, 10240)
        return CanarySettings(
            auto_rollback=self.flag(ENV_CANARY_AUTO_ROLLBACK, True),
            min_requests=self.integer(ENV_CANARY_MIN_REQUESTS, 10, 1),
            max_error_rate=self.number(
                ENV_CANARY_MAX_ERROR_RATE, 0.1, lambda v: math.isfinite(v) and 0 <= v < 1
            ),
            memory_mb=memory or None,
        )

    def aws(self) -> AwsSettings:
        return AwsSettings(
            s3_max_attempts=self.integer(ENV_S3_MAX_ATTEMPTS, 3, 1, 20),
            s3_connect_timeout=self.number(ENV_S3_CONNECT_TIMEOUT, 2.0, _is_timeout),
            s3_read_timeout=self.number(ENV_S3_READ_TIMEOUT, 10.0, _is_timeout),
            s3_parallel_mb=self.integer(ENV_S3_PARALLEL_MB, 64, 0),
            s3_max_concurrency=self.integer(ENV_S3_MAX_CONCURRENCY, 8, 1, 64),
        )

    def forward(self) -> ForwardSettings:
        forward = ForwardSettings(
            backend=self.read(ENV_BACKEND, str, "auto", BACKENDS.__contains__),
            endpoint=self.read(ENV_SAGEMAKER_ENDPOINT, str, "", _is_endpoint) or None,
            timeout=self.number(ENV_SAGEMAKER_TIMEOUT, 60.0, _is_timeout),
            max_attempts=self.integer(ENV_SAGEMAKER_MAX_ATTEMPTS, 2, 1, 10),
            auto_max_lambda_bytes=self.integer(
                ENV_AUTO_MAX_LAMBDA_BYTES, DEFAULT_AUTO_MAX_LAMBDA_BYTES, 1
            ),
            mode=self.read(ENV_SAGEMAKER_MODE, str, "realtime", SAGEMAKER_MODES.__contains__),
            inference_component=self.read(ENV_SAGEMAKER_INFERENCE_COMPONENT, str, "", _is_endpoint)
            or None,
        )
        if forward.backend == "sagemaker" and not forward.endpoint:
            self.problems.append(f"{ENV_BACKEND}=sagemaker needs {ENV_SAGEMAKER_ENDPOINT}")
        return forward

    def payloads(self) -> PayloadSettings:
        return PayloadSettings(
            store=self.read(ENV_PAYLOAD_STORE, str, "", _is_s3_store).rstrip("/"),
            upload_max_bytes=self.integer(ENV_UPLOAD_MAX_BYTES, DEFAULT_UPLOAD_MAX_BYTES, 1),
            url_seconds=self.integer(
                ENV_PAYLOAD_URL_SECONDS, DEFAULT_PAYLOAD_URL_SECONDS, 1, 604800
            ),
            inline_result_bytes=self.integer(
                ENV_INLINE_RESULT_BYTES, DEFAULT_INLINE_RESULT_BYTES, 0
            ),
        )

    def models(self) -> ModelsSettings:
        raw = self.raw(ENV_MODELS)
        names = tuple(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
        every = names == ("*",)
        if every:
            names = ()
        else:
            bad = [n for n in names if not is_name(n)]
            if bad:
                self.problems.append(
                    f"{ENV_MODELS}={raw!r} holds what is not a model name: "
                    f"{', '.join(map(repr, bad))} (a comma-separated list of lower-case names, "
                    "or *)"
                )
                names = ()
        allow = tuple(p.strip() for p in self.raw(ENV_MODELS_ALLOW).split(",") if p.strip())
        memory = self.integer(ENV_MODELS_MEMORY_MB, 0, 1)
        disk = self.integer(ENV_MODELS_DISK_MB, 0, 1)
        return ModelsSettings(
            names=names,
            every=every,
            allow=allow,
            memory_mb=memory or None,
            disk_mb=disk or None,
        )

    def endpoint(self) -> EndpointSettings:
        threads = self.integer(ENV_SERVER_THREADS, -1, 0, 256)
        return EndpointSettings(
            host=self.read(ENV_BIND_HOST, str, EndpointSettings.host, _is_host),
            port=self.integer(ENV_PORT, DEFAULT_PORT, 1, 65535),
            workers=self.integer(ENV_WORKERS, 0, 0, 256),
            threads=None if threads < 0 else threads,
            max_concurrency=self.integer(ENV_MAX_CONCURRENCY, 64, 1, 65536),
            batch_rows=self.integer(ENV_DYNAMIC_BATCH_ROWS, 0, 0, 65536),
            batch_wait_ms=self.number(
                ENV_DYNAMIC_BATCH_WAIT_MS, 5.0, lambda v: math.isfinite(v) and 0 <= v <= 1000
            ),
            drain_seconds=self.number(
                ENV_DRAIN_SECONDS,
                DEFAULT_DRAIN_SECONDS,
                lambda v: math.isfinite(v) and 0 <= v <= 3600,
            ),
            header_timeout=self.number(ENV_HEADER_TIMEOUT, 10.0, lambda v: 0 < v <= 600),
            body_timeout=self.number(ENV_BODY_TIMEOUT, 30.0, lambda v: 0 < v <= 600),
            max_connections=self.integer(ENV_MAX_CONNECTIONS, 128, 1, 65536),
        )


def read_aws_settings(environ: Mapping[str, str]) -> AwsSettings:
    """The AWS client section alone (for tools that open a store without serving a model).

    Raises:
        ConfigurationError: A bad ``ONNXKIT_S3_*`` value.
    """
    reader = _Reader(environ)
    aws = reader.aws()
    if reader.problems:
        raise ConfigurationError(reader.problems)
    return aws


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


def _flag(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


_flag.__name__ = "boolean (true/false)"


def _is_endpoint(value: str) -> bool:
    # SageMaker endpoint names: letters, digits and hyphens, up to 63 characters.
    return re.fullmatch(r"[A-Za-z0-9](-*[A-Za-z0-9]){0,62}", value) is not None


def _is_store(value: str) -> bool:
    return STORE_PATTERN.fullmatch(value) is not None


def _is_s3_store(value: str) -> bool:
    return value.startswith("s3://") and _is_store(value)


def _is_timeout(value: float) -> bool:
    return math.isfinite(value) and 0 < value <= 900  # Lambda's own ceiling


def _is_route_prefix(value: str) -> bool:
    return value.startswith("/") and " " not in value


def _is_host(value: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9.:\[\]-]+", value) is not None
