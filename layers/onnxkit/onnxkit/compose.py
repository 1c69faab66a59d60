"""The composition root: Settings -> model source -> session -> backend (-> batching) -> Predictor.

The function (``adapters/lambda_api``), the endpoint container (``adapters/endpoint``) and the
CLI build what they serve here, and nowhere else; the library below never creates AWS clients
or reads the environment by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxkit.aws import AwsClients
from onnxkit.backends import Backend
from onnxkit.backends.batching import BatchingBackend
from onnxkit.backends.onnxruntime import OnnxruntimeBackend
from onnxkit.backends.sagemaker import SageMakerBackend
from onnxkit.canary import CanaryAborter, CanaryPolicy, MemoryProbe, memory_limit_bytes
from onnxkit.errors import IntegrityError, ModelNotReadyError
from onnxkit.jobs import JobQueue, Jobs, JobsOff, jobs_missing
from onnxkit.manifest import Manifest
from onnxkit.phases import Phases
from onnxkit.predictor import Observer, Predictor, Refresh
from onnxkit.routes import ENDPOINT, FUNCTION, Edge
from onnxkit.session import open_session, warm_up
from onnxkit.settings import ENV_BACKEND, ENV_SAGEMAKER_ENDPOINT, ForwardSettings, Settings
from onnxkit.sources import (
    FolderSource,
    ModelSource,
    Prefetched,
    StoreSource,
    choose_backend,
    open_source,
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
        background=role == ENDPOINT,
        canary=canary_policy(settings, source),
    )


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
            f"configured; set {ENV_SAGEMAKER_ENDPOINT} or {ENV_BACKEND}=lambda"
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
