"""The composition root: Settings -> model source -> session -> backend (-> batching) -> Predictor.

The function (``adapters/lambda_api``), the endpoint container (``adapters/endpoint``) and the
CLI build what they serve here, and nowhere else; the library below never creates AWS clients
or reads the environment by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from onnxkit.aws import AwsClients
from onnxkit.backends import Backend
from onnxkit.backends.batching import BatchingBackend
from onnxkit.backends.onnxruntime import OnnxruntimeBackend
from onnxkit.backends.sagemaker import SageMakerBackend
from onnxkit.canary import CanaryAborter, CanaryPolicy, MemoryProbe, memory_limit_bytes
from onnxkit.errors import ModelNotReadyError
from onnxkit.manifest import Manifest
from onnxkit.phases import Phases
from onnxkit.predictor import Observer, Predictor, Refresh
from onnxkit.routes import ENDPOINT, FUNCTION, Edge
from onnxkit.session import create_session, warm_up
from onnxkit.settings import ENV_BACKEND, ENV_SAGEMAKER_ENDPOINT, ForwardSettings, Settings
from onnxkit.sources import FolderSource, ModelSource, StoreSource
from onnxkit.store import ModelStore

Role = Edge
"""``function``: may forward to SageMaker, loads on the request path. ``endpoint``: runs every
model in process, loads and follows its alias in the background."""


def open_store(settings: Settings, clients: AwsClients) -> ModelStore:
    """The model store named by ``settings.model.store`` (S3 through the configured client)."""
    if not settings.model.store.startswith("s3://"):
        return ModelStore.from_uri(settings.model.store, cache_dir=settings.model.cache_dir)
    return ModelStore.from_uri(
        settings.model.store,
        cache_dir=settings.model.cache_dir,
        s3_client=clients.s3(),
        parallel_from=settings.aws.s3_parallel_mb * 1024 * 1024,
        max_concurrency=settings.aws.s3_max_concurrency,
    )


def open_source(settings: Settings, clients: AwsClients) -> ModelSource:
    """A folder source when ``model_dir`` is set, else the store.

    Raises:
        ConfigurationError: The folder does not exist, or the store has no model name.
    """
    model = settings.model
    if model.model_dir is not None:
        return FolderSource(Path(model.model_dir), name=model.name, version=model.version)
    return StoreSource(open_store(settings, clients), model)


def choose_backend(forward: ForwardSettings, manifest: Manifest) -> str:
    """``lambda`` or ``sagemaker`` for this model, in the function.

    ``auto`` follows the manifest's ``backend`` (set at publish), and sends models whose
    files exceed ``ONNXKIT_AUTO_MAX_LAMBDA_BYTES`` or whose metadata declares ``gpu: true``
    to SageMaker; anything else runs in the function.
    """
    if forward.backend != "auto":
        return forward.backend
    if manifest.backend == "sagemaker" or bool(manifest.metadata.get("gpu")):
        return "sagemaker"
    return "sagemaker" if manifest.total_size > forward.auto_max_lambda_bytes else "lambda"


def build_predictor(
    settings: Settings,
    *,
    role: Role,
    clients: AwsClients | None = None,
    observer: Observer | None = None,
    on_loaded: Callable[[Manifest, Phases], None] | None = None,
) -> Predictor:
    """Wire the Predictor a function or the endpoint serves; nothing is loaded yet.

    Its loader resolves, fetches, verifies, loads and warms the model. Serving an alias with a
    refresh interval, the predictor re-reads the alias at most once per interval and swaps in
    a new version once it is loaded, freeing the old one's files. In the function, models
    routed to SageMaker (see :func:`choose_backend`) are not downloaded: only their manifest
    is read, to validate requests before they are forwarded. In the endpoint every model runs
    in process, behind dynamic batching when ``settings.endpoint.batch_rows`` > 1.

    Args:
        settings: Validated settings (the endpoint's "auto" values already resolved).
        role: Who serves: ``function`` or ``endpoint``.
        clients: AWS clients (default: made from the settings on first use).
        observer: Receives load and inference timings (the function's metrics).
        on_loaded: Called after each successful load with the time spent in each phase
            (resolve, download, verify, session, warm-up): the function's init breakdown.

    Raises:
        ConfigurationError: The model folder does not exist, or the store has no model name.
    """
    clients = clients or AwsClients(settings.aws, settings.forward)
    source = open_source(settings, clients)

    def load(manifest: Manifest | None, phases: Phases | None = None) -> Backend:
        phases = phases or Phases()
        if (
            role == FUNCTION
            and manifest is not None
            and choose_backend(settings.forward, manifest) == "sagemaker"
        ):
            return _forwarding_backend(settings.forward, manifest, clients)
        model = source.open(manifest, phases)
        with phases.timed("session"):
            session = create_session(
                model,
                providers=settings.session.providers,
                intra_op_threads=settings.session.intra_op_threads,
                gpu_device=settings.session.gpu_device,
            )
        if manifest is None:
            assert isinstance(source, FolderSource)
            assert isinstance(model, Path)
            manifest = source.describe(session, model)
        with phases.timed("warmup"):
            warm_up(session, manifest.inputs)
        backend: Backend = OnnxruntimeBackend(manifest, session)
        if role == ENDPOINT and settings.endpoint.batching:
            backend = BatchingBackend(
                backend,
                max_size=settings.endpoint.batch_rows,
                max_wait_ms=settings.endpoint.batch_wait_ms,
            )
        if on_loaded is not None:
            on_loaded(manifest, phases)
        return backend

    def first_load() -> Backend:
        phases = Phases()
        with phases.timed("resolve"):
            manifest = source.resolve()
        return load(manifest, phases)

    def retired(old: Backend, served: tuple[Manifest, ...]) -> None:
        close = getattr(old, "close", None)
        if callable(close):  # a batching wrapper's dispatcher thread
            close()
        if served:
            source.release(*served)

    refresh = None
    if source.follows_alias and settings.model.refresh_seconds > 0:
        store_source = source if isinstance(source, StoreSource) else None
        refresh = Refresh(
            resolve=store_source.resolve_rollout if store_source else source.resolve,
            load=load,
            interval_s=settings.model.refresh_seconds,
            on_retire=retired,
            canary_pending=store_source.saw_canary if store_source else None,
        )
    return Predictor(
        source.name,
        first_load,
        settings.api,
        observer,
        refresh,
        background=role == ENDPOINT,
        canary=canary_policy(settings, source),
    )


def canary_policy(settings: Settings, source: ModelSource) -> CanaryPolicy:
    """Canary thresholds from the settings; a store source may abort a failing canary.

    The abort is the one write a function or endpoint makes to the store: a conditional
    replace of the alias document (``models/{name}/_aliases/{alias}.json``).
    """
    canary = settings.canary
    abort = None
    if isinstance(source, StoreSource) and source.follows_alias and canary.auto_rollback:
        abort = CanaryAborter(source.store.blobs, source.name, settings.model.alias)
    return CanaryPolicy(
        auto_rollback=canary.auto_rollback,
        min_requests=canary.min_requests,
        max_error_rate=canary.max_error_rate,
        abort=abort,
        memory=MemoryProbe(limit_bytes=memory_limit_bytes(canary.memory_mb)),
    )


def _forwarding_backend(
    forward: ForwardSettings, manifest: Manifest, clients: AwsClients
) -> SageMakerBackend:
    if not forward.endpoint:
        raise ModelNotReadyError(
            f"{manifest.name} {manifest.version} is routed to SageMaker but no endpoint is "
            f"configured; set {ENV_SAGEMAKER_ENDPOINT} or {ENV_BACKEND}=lambda"
        )
    return SageMakerBackend(manifest, clients.sagemaker_runtime(), forward.endpoint)
