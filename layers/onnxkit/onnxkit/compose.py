"""The composition root: Settings -> model source -> session -> backend (-> batching) -> Predictor.

The function (``adapters/lambda_api``), the endpoint container (``adapters/endpoint``) and the
CLI build what they serve here, and nowhere else; the library below never creates AWS clients
or reads the environment by itself.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxkit.aws import AwsClients
from onnxkit.backends import Backend
from onnxkit.backends.batching import BatchingBackend
from onnxkit.backends.onnxruntime import OnnxruntimeBackend
from onnxkit.backends.sagemaker import SageMakerBackend
from onnxkit.canary import (
    CanaryAborter,
    CanaryPolicy,
    MemoryProbe,
    memory_limit_bytes,
    read_mem_available,
)
from onnxkit.errors import ConfigurationError, IntegrityError, ModelNotReadyError
from onnxkit.jobs import JobQueue, Jobs, JobsOff, jobs_missing
from onnxkit.manifest import Manifest
from onnxkit.payloads import PayloadStore
from onnxkit.phases import Phases
from onnxkit.predictor import Observer, Predictor, Refresh
from onnxkit.repository import Budget, Catalog, ModelRepository, folder_bytes, memory_cost
from onnxkit.routes import ENDPOINT, FUNCTION, Edge
from onnxkit.session import open_session, warm_up
from onnxkit.settings import (
    ENV_BACKEND,
    ENV_MODEL_STORE,
    ENV_MODELS,
    ENV_SAGEMAKER_ENDPOINT,
    ForwardSettings,
    Settings,
)
from onnxkit.sources import (
    FolderSource,
    ModelSource,
    Prefetched,
    StoreSource,
    choose_backend,
    open_source,
    open_store,
)

if TYPE_CHECKING:
    from onnxkit.processing import Pipeline

Role = Edge
"""``function``: may forward to SageMaker, loads on the request path. ``endpoint``: runs every
model in process, loads and follows its alias in the background."""


def build_predictor(
    settings: Settings,
    *,
    role: Role,
    clients: AwsClients | None = None,
    observer: Observer | None = None,
    on_loaded: Callable[[Manifest, Phases], None] | None = None,
    source: ModelSource | None = None,
    prefetched: Prefetched | None = None,
    background: bool | None = None,
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
        source: Where the model comes from (default: :func:`open_source`).
        prefetched: The first load's resolve and download, already done from ``source``
            (the function's cold start); a later load starts afresh.
        background: Loads happen off the request path (default: in the endpoint); a
            repository's models load on their request instead.

    Raises:
        ConfigurationError: The model folder does not exist, or the store has no model name.
    """
    clients = clients or AwsClients(settings.aws, settings.forward)
    source = source or open_source(settings, clients)
    ahead = [prefetched] if prefetched is not None else []

    def load(
        manifest: Manifest | None,
        phases: Phases | None = None,
        model: Path | bytes | None = None,
        session: Any = None,
    ) -> Backend:
        phases = phases or Phases()
        if (
            role == FUNCTION
            and manifest is not None
            and choose_backend(settings.forward, manifest) == "sagemaker"
        ):
            # Processing runs here, before the request crosses the network: the endpoint
            # gets the model's tensors, validated.
            forwarding = _forwarding_backend(settings.forward, manifest, clients)
            forwarding.processing = load_pipeline(source, manifest, phases)
            return forwarding
        if model is None:
            model = source.open(manifest, phases)
        if session is None:
            with phases.timed("session"):
                session = open_session(model, settings.session)
        if manifest is None:
            assert isinstance(source, FolderSource)
            assert isinstance(model, Path)
            manifest = source.describe(session, model)
        with phases.timed("warmup"):
            warm_up(session, manifest.inputs)
        backend: Backend = OnnxruntimeBackend(manifest, session)
        backend.processing = load_pipeline(source, manifest, phases)
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
        if ahead:  # once: a failed first load is retried from scratch
            ready = ahead.pop()
            if ready.error is not None:
                raise ready.error
            return load(ready.manifest, ready.phases, ready.model, ready.session)
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
        background=role == ENDPOINT if background is None else background,
        canary=canary_policy(settings, source),
        payloads=payload_store(settings, clients),
        load_retry_s=settings.model.load_retry_seconds,
    )


def build_server(
    settings: Settings, *, role: Role, clients: AwsClients | None = None
) -> Predictor | ModelRepository:
    """What an edge serves: one model's predictor, or a repository with ``ONNXKIT_MODELS``.

    Raises:
        ConfigurationError: As :func:`build_predictor`.
    """
    if settings.models.enabled:
        return build_repository(settings, role=role, clients=clients)
    return build_predictor(settings, role=role, clients=clients)


def build_repository(
    settings: Settings,
    *,
    role: Role,
    clients: AwsClients | None = None,
    budget: Budget | None = None,
) -> ModelRepository:
    """Many models from the store (``ONNXKIT_MODELS``), each loaded on its first request.

    Every model shares the store, its cache folder and the AWS clients; each has its own
    predictor, which follows its alias (``ONNXKIT_MODEL_ALIAS``) like a single model's. A
    request naming a version or an alias (``/v2/models/{name}/versions/{ref}``) that the
    model's alias does not serve gets a predictor pinned to it, counted and evicted like the
    others.

    Args:
        settings: Validated settings with ``models`` enabled.
        role: Who serves: ``function`` or ``endpoint``.
        clients: AWS clients (default: made from the settings).
        budget: The memory and disk budgets (default: :func:`repository_budget`).

    Raises:
        ConfigurationError: No store (many models come from the store, not a folder).
    """
    if not settings.model.store or settings.model.model_dir is not None:
        raise ConfigurationError(
            [f"{ENV_MODELS} serves models from a store: set {ENV_MODEL_STORE}, not a model folder"]
        )
    clients = clients or AwsClients(settings.aws, settings.forward)
    store = open_store(settings, clients)
    cpu_graph = not settings.session.wants_gpu

    def make(name: str, ref: str | None) -> tuple[Predictor, Forget]:
        model = replace(settings.model, name=name, version=None)
        if ref is not None and store.has_alias(name, ref):  # another alias than the configured
            model = replace(model, alias=ref)
        elif ref is not None:  # a version: one that is not published is 404, with no entry
            store.get_manifest(name, ref)
            model = replace(model, version=ref)
        source = StoreSource(store, model, cpu_graph=cpu_graph)
        predictor = build_predictor(
            replace(settings, model=model),
            role=role,
            clients=clients,
            source=source,
            background=False,
        )

        def forget(dropped: tuple[Manifest, ...], served: tuple[Manifest, ...]) -> None:
            kept = {store.local_dir(m) for m in served}
            for manifest in dropped:
                if store.local_dir(manifest) not in kept:
                    store.drop(manifest)

        return predictor, forget

    # The endpoint's workers (resolved by then) each keep a repository: a share of the machine.
    workers = max(1, settings.endpoint.workers) if role == ENDPOINT else 1

    def forwarded(manifest: Manifest) -> bool:  # runs on SageMaker: no memory here
        return role == FUNCTION and choose_backend(settings.forward, manifest) == "sagemaker"

    chosen = settings.models
    catalog = Catalog(
        chosen.names,
        lister=store.list_models if chosen.every else None,
        allow=chosen.allow,
        ttl_s=settings.model.refresh_seconds or 60.0,
    )
    return ModelRepository(
        make,
        catalog,
        settings.api,
        budget or repository_budget(settings, workers=workers),
        memory_of=lambda manifests: memory_cost(m for m in manifests if not forwarded(m)),
        disk_of=lambda manifests: folder_bytes(store.local_dir(m) for m in manifests),
    )


Forget = Callable[[tuple[Manifest, ...], tuple[Manifest, ...]], None]

# Shares of what the process has that loaded models may take by default: the rest is the
# runtime, the request being served and the model loading next.
MEMORY_SHARE = 0.6
DISK_SHARE = 0.8


def repository_budget(settings: Settings, *, workers: int = 1) -> Budget:
    """The repository's budgets: the configured ones, else shares of what there is.

    Memory: ``ONNXKIT_MODELS_MEMORY_MB``, else :data:`MEMORY_SHARE` of the function's memory
    (``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``) or of the machine's available memory. Disk:
    ``ONNXKIT_MODELS_DISK_MB``, else :data:`DISK_SHARE` of the cache folder's file system
    (Lambda's ``/tmp``, sized by ``EphemeralStorage``). A default is divided among the
    endpoint's ``workers`` (processes with a repository each); a configured value is each
    one's own.
    """
    mib = 1024 * 1024
    chosen = settings.models
    memory: int | None
    if chosen.memory_mb is not None:
        memory = chosen.memory_mb * mib
    elif settings.canary.memory_mb is not None:
        memory = int(settings.canary.memory_mb * mib * MEMORY_SHARE)
    else:
        available = read_mem_available()
        memory = int(available * MEMORY_SHARE / workers) if available is not None else None
    if chosen.disk_mb is not None:
        disk: int | None = chosen.disk_mb * mib
    else:
        folder = Path(settings.model.cache_dir)
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:
            disk = int(shutil.disk_usage(folder).total * DISK_SHARE / workers)
        except OSError:
            disk = None
    return Budget(memory_bytes=memory, disk_bytes=disk)


def payload_store(settings: Settings, clients: AwsClients) -> PayloadStore:
    """Uploads in, results out (``ONNXKIT_PAYLOAD_STORE``); off without a store."""
    payloads = settings.payloads
    client = clients.payloads_s3() if payloads.enabled else None
    return PayloadStore(payloads, client, memory_mb=settings.canary.memory_mb)


def load_pipeline(source: ModelSource, manifest: Manifest, phases: Phases) -> Pipeline | None:
    """A version's declared processing with its files read and verified (None: none declared).

    Raises:
        IntegrityError: A file does not hold what its declaration needs.
        OnnxkitError: A file cannot be read from the store.
    """
    if not manifest.processing:
        return None
    from onnxkit.processing import Pipeline

    with phases.timed("processing"):
        try:
            return Pipeline(manifest, lambda path: source.read(manifest, path))
        except ValueError as exc:
            raise IntegrityError(
                f"{manifest.name} {manifest.version}: its processing cannot be loaded ({exc}); "
                "publish the version again with valid processing files"
            ) from exc


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
            f"configured; set {ENV_SAGEMAKER_ENDPOINT} or {ENV_BACKEND}=lambda",
            public=f"{manifest.name} {manifest.version} runs on a SageMaker endpoint, and this "
            "server has none configured",
        )
    return SageMakerBackend(
        manifest,
        clients.sagemaker_runtime(),
        forward.endpoint,
        inference_component=forward.inference_component,
        asynchronous=forward.mode == "async",
    )


def build_jobs(settings: Settings, clients: AwsClients) -> Jobs:
    """The function's asynchronous jobs: a :class:`JobQueue` on the payload store and the
    async SageMaker endpoint, or :class:`JobsOff` saying which setting is missing."""

    missing = jobs_missing(settings)
    if missing:
        return JobsOff(missing)
    assert settings.forward.endpoint is not None  # jobs_missing checked it
    return JobQueue(
        clients.s3(),
        clients.sagemaker_runtime(),
        settings.forward.endpoint,
        settings.payloads.store,
        inline_result_bytes=settings.payloads.inline_result_bytes,
        url_seconds=settings.payloads.url_seconds,
    )
