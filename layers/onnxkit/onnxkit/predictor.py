"""The backend-agnostic core: decode -> run -> encode, plus model readiness.

A :class:`Predictor` owns one served model. It loads it through a loader callable (store ->
verified files -> session -> warm-up), remembers why a load failed, and tries again on the
next request, so a transient fault (S3 down, a corrupt artifact being repaired) heals
without a restart and never leaves a half-loaded model behind.

Following an alias that names a canary (``onnxkit.canary``), it keeps the canary loaded beside
the stable version, sends the canary its share of requests, counts the canary's failures and
rolls it back automatically when they pass the configured rate.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from onnxkit import __version__
from onnxkit.backends import Backend, requested_outputs
from onnxkit.canary import CanaryHealth, CanaryPolicy, Rollout, canary_memory_need, should_roll_back
from onnxkit.codecs import (
    InferenceRequest,
    InferenceResponse,
    ReferenceReader,
    Reply,
    check_size,
    decode_request,
    encode_reply,
    split_body,
)
from onnxkit.errors import (
    ConflictError,
    InferenceError,
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    OnnxkitError,
    PayloadStoreUnavailableError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from onnxkit.errors import error_body as _error_body
from onnxkit.manifest import Manifest
from onnxkit.media import binary_header_length, media_type
from onnxkit.payloads import PayloadStore
from onnxkit.settings import ENV_MODELS, LOAD_RETRY_MAX_SECONDS, ApiSettings

if TYPE_CHECKING:
    from onnxkit.processing import Pipeline

logger = logging.getLogger(__name__)

BARE_MEDIA_TYPES = ("text/plain", "image/png", "image/jpeg")
"""Bodies that are one input, not a v2 request: a sentence or an image (models with processing)."""

SERVER_NAME = "onnxkit"
SERVER_EXTENSIONS = ("model_repository", "model_repository_metadata")
VERSION_HEADER = "x-onnxkit-model-version"
"""Names the version an inference ran on, in error responses (the body says it on success)."""


class Observer(Protocol):
    """Receives timings (the Lambda adapter turns them into metrics)."""

    def model_loaded(self, manifest: Manifest, milliseconds: float) -> None:
        """A model finished loading."""
        ...

    def inference_done(self, manifest: Manifest, milliseconds: float, batch: int) -> None:
        """An inference finished (backend time only)."""
        ...

    def inference_failed(self, manifest: Manifest) -> None:
        """An inference failed on our side (5xx) on this version."""
        ...

    def model_evicted(self, manifest: Manifest) -> None:
        """A version was unloaded to make room for another model (many models)."""
        ...


class Serving(Protocol):
    """What the route table and the edges serve: one :class:`Predictor`, or a repository of
    many (``onnxkit.repository.ModelRepository``)."""

    model_name: str

    @property
    def limits(self) -> ApiSettings: ...

    @property
    def ready(self) -> bool: ...

    @property
    def current_backend(self) -> Backend | None: ...

    @property
    def refresh_interval(self) -> float: ...

    def observe(self, observer: Observer) -> None: ...

    def try_load(self) -> bool: ...

    def refresh(self, *, force: bool = False) -> bool: ...

    def check_ready(self) -> None: ...

    def server_metadata(self) -> dict[str, Any]: ...

    def server_ready(self) -> dict[str, Any]: ...

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]: ...

    def model_ready(self, name: str, version: str | None = None) -> dict[str, Any]: ...

    def infer(
        self,
        name: str,
        version: str | None,
        body: bytes | str | None,
        *,
        content_type: str | None = None,
        header_length: str | None = None,
    ) -> Reply: ...

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]: ...

    def load_model(self, name: str) -> list[dict[str, Any]]: ...

    def unload_model(self, name: str) -> list[dict[str, Any]]: ...

    def predictor_for(
        self, name: str, version: str | None = None
    ) -> tuple[Predictor, str | None]: ...


class NullObserver:
    """Receives timings and drops them."""

    def model_loaded(self, manifest: Manifest, milliseconds: float) -> None:
        pass

    def inference_done(self, manifest: Manifest, milliseconds: float, batch: int) -> None:
        pass

    def inference_failed(self, manifest: Manifest) -> None:
        pass

    def model_evicted(self, manifest: Manifest) -> None:
        pass


@dataclass
class _Canary:
    """A loaded canary: its backend, its share of requests, its health in this process."""

    backend: Backend
    weight: int
    health: CanaryHealth = field(default_factory=CanaryHealth)


@dataclass(frozen=True)
class Refresh:
    """How a predictor follows an alias: check it every ``interval_s``, swap when it moved.

    Attributes:
        resolve: What the alias asks for now: a manifest, or a :class:`Rollout` (a stable
            version and maybe a canary).
        load: A ready backend for a manifest (fetch, verify, session, warm-up).
        interval_s: Seconds between checks.
        clock: Monotonic seconds (injectable for tests).
        on_swap: Called with (old, new) after the stable version changed, e.g. to free the old
            cached files (used when ``on_retire`` is not set).
        on_retire: Called with a backend no longer served and the manifests still served
            (stable, canary), to close it and free its files; replaces ``on_swap``.
        canary_pending: Whether the last resolve saw a canary, so the first load follows it
            at once rather than after an interval.
    """

    resolve: Callable[[], Manifest | Rollout | None]
    load: Callable[[Manifest | None], Backend]
    interval_s: float
    clock: Callable[[], float] = time.monotonic
    on_swap: Callable[[Backend, Backend], None] | None = None
    on_retire: Callable[[Backend, tuple[Manifest, ...]], None] | None = None
    canary_pending: Callable[[], bool] | None = None


class Predictor:
    """Serves one model: metadata, readiness and inference in the v2 protocol's terms.

    Args:
        model_name: The name clients use in ``/v2/models/{name}``.
        loader: Builds a ready backend (may raise any OnnxkitError).
        limits: Body and batch limits.
        observer: Receives load and inference timings.
        refresh: Follow an alias: swap in the new version once it is loaded (None: never).
        background: Loads and alias refreshes happen off the request path (the endpoint's
            background thread calls :meth:`try_load` and :meth:`refresh`); a request that
            finds no model gets 503 at once instead of waiting for a load. Off for the
            function, whose requests (re)try the load themselves.
        canary: How canaries are routed, checked and rolled back (default thresholds, no
            store write, no memory check).
        payloads: Uploads, inputs by reference and outputs to S3 (default: off).
        load_retry_s: After a failed load, requests get its error (with ``Retry-After``) for
            this long before one tries again; doubled after each failure up to
            :data:`~onnxkit.settings.LOAD_RETRY_MAX_SECONDS`, reset by a success (0: every
            request tries). A store fault heals without a restart, and a broken artifact
            (a corrupt file, a 90 MB labels file) is not downloaded again on every request.
        clock: Monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        model_name: str,
        loader: Callable[[], Backend],
        limits: ApiSettings,
        observer: Observer | None = None,
        refresh: Refresh | None = None,
        *,
        background: bool = False,
        canary: CanaryPolicy | None = None,
        payloads: PayloadStore | None = None,
        load_retry_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model_name = model_name
        self.payloads = payloads or PayloadStore.disabled()
        self._loader = loader
        self._limits = limits
        self._background = background
        self._observer = observer or NullObserver()
        self._refresh = refresh
        self._backend: Backend | None = None
        self._last_error: OnnxkitError | None = None
        self._refresh_error: OnnxkitError | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()
        self._policy = canary or CanaryPolicy()
        self._canary: _Canary | None = None
        self._canary_lock = threading.Lock()  # health counts and the rollback decision
        self._rolled_back: str | None = None  # the canary version this process stopped
        self._abort_pending = ""  # why, while its abort is not written to the store yet
        self._stable_growth: int | None = None  # RSS the stable load added (memory check)
        self._load_retry_s = load_retry_s
        self._clock = clock
        self._failed_loads = 0
        self._retry_at = 0.0  # no load is tried before this, after a failure

    # -- loading ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether a model is loaded and serving."""
        return self._backend is not None

    def observe(self, observer: Observer) -> None:
        """Send timings to ``observer`` from now on (the function's metrics exist only after
        the model started loading)."""
        self._observer = observer

    @property
    def limits(self) -> ApiSettings:
        """The body and batch limits."""
        return self._limits

    @property
    def current_backend(self) -> Backend | None:
        """The serving backend, or None before the first load."""
        return self._backend

    @property
    def refresh_interval(self) -> float:
        """Seconds between alias checks (0: the model does not follow an alias)."""
        return self._refresh.interval_s if self._refresh is not None else 0.0

    @property
    def last_error(self) -> OnnxkitError | None:
        """Why the most recent load failed (None after a success)."""
        return self._last_error

    @property
    def served_manifests(self) -> tuple[Manifest, ...]:
        """The versions loaded now: the stable one, and a canary's (empty before a load)."""
        return tuple(b.manifest for b in (self._backend, *self._canary_backends()) if b)

    @property
    def served_versions(self) -> tuple[str, ...]:
        """The version names loaded now."""
        return tuple(m.version for m in self.served_manifests)

    @property
    def measured_growth(self) -> int | None:
        """Resident memory the last load was measured to add (None: not measurable)."""
        return self._stable_growth

    def unload(self) -> tuple[Manifest, ...]:
        """Drop the loaded versions (a repository's eviction); the next request reloads.

        Returns:
            The versions dropped, whose cached files the caller may delete.
        """
        with self._lock:
            dropped = [b for b in (self._backend, *self._canary_backends()) if b]
            self._backend, self._canary = None, None
        for backend in dropped:
            close = getattr(backend, "close", None)
            if callable(close):  # a batching wrapper's dispatcher thread
                close()
        return tuple(b.manifest for b in dropped)

    def load(self) -> Backend:
        """Load the model if it is not loaded yet; return the serving backend.

        Raises:
            OnnxkitError: The load failed (the specific cause: store, integrity, cache...).
        """
        backend = self._backend
        if backend is not None:
            return backend
        with self._lock:
            if self._backend is not None:
                return self._backend
            last, wait = self._last_error, self._retry_at - self._clock()
            if last is not None and wait > 0:
                # Backing off: the last failure again, without its old traceback, and when
                # to come back.
                last.headers["Retry-After"] = str(max(1, math.ceil(wait)))
                raise last.with_traceback(None)
            started = time.perf_counter()
            rss_before = self._rss()
            try:
                backend = self._loader()
            except ModelNotFoundError as exc:
                # The configured model missing from the store is our fault, not the caller's.
                self._last_error = ModelNotReadyError(
                    f"the configured model cannot be found: {exc.message}",
                    public=f"the configured model {self.model_name!r} is not in the store (not "
                    "published, or its alias is not set); it loads once it is",
                )
                self._back_off()
                logger.error("model load failed: %s", exc.message)
                raise self._last_error from exc
            except OnnxkitError as exc:
                self._last_error = exc
                self._back_off()
                logger.error("model load failed: %s (%s)", exc.message, exc.code)
                raise
            except Exception as exc:
                self._last_error = ModelNotReadyError(
                    f"model {self.model_name!r} could not be loaded; the logs have the cause"
                )
                self._back_off()
                logger.exception("model load failed unexpectedly")
                raise self._last_error from exc
            elapsed = (time.perf_counter() - started) * 1000
            rss_after = self._rss()
            if rss_before is not None and rss_after is not None:
                self._stable_growth = rss_after - rss_before
            self._backend, self._last_error = backend, None
            self._failed_loads = 0
            if self._refresh is not None:
                self._next_check = self._refresh.clock() + self._refresh.interval_s
            manifest = backend.manifest
            logger.info(
                "model loaded",
                extra={"model": manifest.name, "version": manifest.version, "load_ms": elapsed},
            )
            self._observer.model_loaded(manifest, elapsed)
        pending = self._refresh.canary_pending if self._refresh is not None else None
        if pending is not None and pending():
            self.refresh(force=True)  # the alias runs a canary: load it now, not in a minute
        return backend

    def _back_off(self) -> None:
        """After a failed load: no new attempt for ``load_retry_s``, doubled per failure."""
        self._failed_loads += 1
        delay = min(self._load_retry_s * 2 ** (self._failed_loads - 1), LOAD_RETRY_MAX_SECONDS)
        self._retry_at = self._clock() + delay

    @property
    def canary_version(self) -> str | None:
        """The canary version receiving requests, or None."""
        canary = self._canary
        return canary.backend.manifest.version if canary is not None else None

    @property
    def canary_health(self) -> CanaryHealth | None:
        """The serving canary's requests and failures in this process, or None."""
        canary = self._canary
        return canary.health if canary is not None else None

    def _rss(self) -> int | None:
        memory = self._policy.memory
        return memory.rss() if memory is not None else None

    @property
    def refresh_error(self) -> OnnxkitError | None:
        """Why the newest alias target is not serving (None when it is, or when not following)."""
        return self._refresh_error

    def refresh(self, *, force: bool = False) -> bool:
        """Follow the alias: if it moved, load the new version and swap it in.

        The current version keeps serving while the new one is fetched, verified and loaded,
        and keeps serving if that fails (the failure is logged, kept in ``refresh_error`` and
        retried at the next check). Checks happen at most once per interval; concurrent
        callers never wait for a load in progress.

        A canary on the alias is loaded beside the stable version (when memory allows), its
        weight followed, and freed when it is dropped; a finished canary (now the stable
        version) takes over without a reload.

        Returns:
            True when the stable version or the canary changed.
        """
        refresh, current = self._refresh, self._backend
        if refresh is None or current is None:
            return False
        if not force and refresh.clock() < self._next_check:
            return False
        if not self._lock.acquire(blocking=False):
            return False
        retired: list[Backend] = []
        try:
            self._next_check = refresh.clock() + refresh.interval_s
            self._retry_abort()
            started = time.perf_counter()
            try:
                target = refresh.resolve()
                rollout = target if isinstance(target, Rollout) else Rollout(stable=target)  # type: ignore[arg-type]
                stable = self._follow_stable(refresh, current, rollout, retired)
            except OnnxkitError as exc:
                self._refresh_error = exc
                logger.warning(
                    "alias target not loaded; still serving version %s: %s (%s)",
                    current.manifest.version,
                    exc.message,
                    exc.code,
                )
                return False
            self._refresh_error = None
            canary_changed = self._follow_canary(refresh, stable, rollout, retired)
        finally:
            self._lock.release()
        served = self.served_manifests
        for old in retired:
            if refresh.on_retire is not None:
                refresh.on_retire(old, served)
            elif refresh.on_swap is not None and stable is not current:
                refresh.on_swap(old, stable)
        if stable is current:
            return canary_changed
        elapsed = (time.perf_counter() - started) * 1000
        logger.info(
            "model swapped",
            extra={
                "model": stable.manifest.name,
                "from": current.manifest.version,
                "to": stable.manifest.version,
            },
        )
        self._observer.model_loaded(stable.manifest, elapsed)
        return True

    def _canary_backends(self) -> tuple[Backend, ...]:
        canary = self._canary
        return (canary.backend,) if canary is not None else ()

    def _follow_stable(
        self, refresh: Refresh, current: Backend, rollout: Rollout, retired: list[Backend]
    ) -> Backend:
        """Serve the rollout's stable version; the running canary takes over without a reload."""
        if rollout.stable == current.manifest:
            return current
        canary = self._canary
        if canary is not None and canary.backend.manifest == rollout.stable:
            self._backend = canary.backend  # finished: the canary is the stable version now
            self._canary = None
            logger.info(
                "canary finished",
                extra={"model": rollout.stable.name, "version": rollout.stable.version},
            )
        else:
            self._backend = refresh.load(rollout.stable)
        retired.append(current)
        return self._backend

    def _follow_canary(
        self, refresh: Refresh, stable: Backend, rollout: Rollout, retired: list[Backend]
    ) -> bool:
        """Load, re-weight or drop the canary as the rollout says; True when it changed."""
        wanted = rollout.canary
        if wanted is not None and wanted.version == self._rolled_back:
            wanted = None  # this process rolled it back; its abort may not be stored yet
        if wanted == stable.manifest:
            wanted = None
        canary = self._canary
        if canary is not None and wanted == canary.backend.manifest:
            canary.weight = rollout.weight
            return False
        if canary is not None:  # dropped or replaced: stop routing, then free it
            self._canary = None
            retired.append(canary.backend)
            logger.info(
                "canary dropped",
                extra={"model": stable.manifest.name, "version": canary.backend.manifest.version},
            )
        if wanted is None:
            return canary is not None
        refusal = self._memory_refusal(wanted, stable.manifest)
        if refusal is not None:
            self._refresh_error = refusal
            logger.warning("canary %s not loaded: %s", wanted.version, refusal.message)
            return canary is not None
        started = time.perf_counter()
        try:
            backend = refresh.load(wanted)
        except OnnxkitError as exc:
            self._refresh_error = exc
            logger.warning(
                "canary %s not loaded; serving version %s only: %s (%s)",
                wanted.version,
                stable.manifest.version,
                exc.message,
                exc.code,
            )
            return canary is not None
        self._canary = _Canary(backend, rollout.weight)
        logger.info(
            "canary loaded",
            extra={"model": wanted.name, "version": wanted.version, "weight": rollout.weight},
        )
        self._observer.model_loaded(wanted, (time.perf_counter() - started) * 1000)
        return True

    def _memory_refusal(self, canary: Manifest, stable: Manifest) -> OnnxkitError | None:
        """Why the canary would not fit in memory beside the stable version, or None."""
        memory = self._policy.memory
        if memory is None:
            return None
        left = memory.left()
        if left is None:
            return None  # nothing to measure with (not Linux): do not guess
        need = canary_memory_need(canary, stable, self._stable_growth)
        if need <= left:
            return None
        mib = 1024 * 1024
        return OnnxkitError(
            f"canary {canary.version} needs about {need // mib} MiB but only {left // mib} MiB "
            f"are left beside version {stable.version}; serving the stable version only "
            "(raise the function's memory)",
            code="canary_insufficient_memory",
        )

    # -- canary health ---------------------------------------------------------------------

    def _count_canary(self, backend: Backend, *, failed: bool) -> None:
        """Count a canary inference; roll the canary back when its failures pass the rate."""
        canary = self._canary
        if canary is None or canary.backend is not backend:
            return
        policy = self._policy
        with self._canary_lock:
            if self._canary is not canary:
                return  # dropped or rolled back meanwhile
            canary.health.requests += 1
            canary.health.failures += failed
            if not should_roll_back(
                canary.health,
                min_requests=policy.min_requests,
                max_error_rate=policy.max_error_rate,
            ):
                return
            version = backend.manifest.version
            reason = (
                f"{canary.health.failures} of {canary.health.requests} canary requests failed "
                f"(more than {policy.max_error_rate:.0%})"
            )
            if not policy.auto_rollback:
                if canary.health.failures == canary.health.requests or failed:
                    logger.warning("canary %s is failing: %s (auto rollback off)", version, reason)
                return
            self._canary = None  # stop routing to it at once, in this process
            self._rolled_back = version
            self._abort_pending = reason
        logger.warning(
            "canary rolled back",
            extra={"model": backend.manifest.name, "version": version, "reason": reason},
        )
        self._retry_abort()

    def _retry_abort(self) -> None:
        """Write a pending canary abort to the store (retried at each refresh until it lands)."""
        version, reason, abort = self._rolled_back, self._abort_pending, self._policy.abort
        if not reason or version is None or abort is None:
            return
        try:
            wrote = abort(version, reason)
        except OnnxkitError as exc:
            self._refresh_error = exc
            logger.warning(
                "canary %s stopped here but not aborted in the store yet: %s (%s)",
                version,
                exc.message,
                exc.code,
            )
            return
        self._abort_pending = ""
        logger.info("canary aborted in the store" if wrote else "canary already ended in the store")

    def check_ready(self) -> None:
        """Raise unless a model is loaded, saying why not (never starts a load itself).

        Raises:
            ModelNotReadyError: Still loading, or the last load failed (its reason included).
        """
        if self._backend is not None:
            return
        cause = self._last_error
        if cause is None:
            loading = "the model is still loading; retry in a moment"
            raise ModelNotReadyError(loading, public=loading, headers={"Retry-After": "1"})
        raise ModelNotReadyError(
            f"the model is not loaded: {cause.message} ({cause.code}); retrying in the background",
            public=f"the model is not loaded: {cause.client_message} ({cause.code}); retrying in "
            "the background",
            headers={"Retry-After": "5"},
        )

    def try_load(self) -> bool:
        """Load at init without raising: a failure is kept and retried on the next request."""
        try:
            self.load()
        except OnnxkitError:
            return False
        return True

    # -- the protocol ----------------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        """``GET /v2``."""
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(SERVER_EXTENSIONS)}

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """``POST /v2/repository/index``: the one model served, and its state."""
        if not self.ready:
            cause = self._last_error
            reason = f"{cause.client_message} ({cause.code})" if cause else "loading"
            rows = [
                {"name": self.model_name, "version": "", "state": "UNAVAILABLE", "reason": reason}
            ]
        else:
            rows = [
                {"name": m.name, "version": m.version, "state": "READY", "reason": ""}
                for m in self.served_manifests
            ]
        return [r for r in rows if r["state"] == "READY"] if ready_only else rows

    def predictor_for(self, name: str, version: str | None = None) -> tuple[Predictor, str | None]:
        """The predictor serving ``name`` (itself) and the version to pass it."""
        return self, version

    def load_model(self, name: str) -> list[dict[str, Any]]:
        """``POST /v2/repository/models/{name}/load``: the model, loaded (it is the only one).

        Raises:
            ModelNotFoundError: Another name.
            OnnxkitError: The model cannot be loaded now.
        """
        self._served(name, None)
        return self.repository_index()

    def unload_model(self, name: str) -> list[dict[str, Any]]:
        """``POST /v2/repository/models/{name}/unload``: refused; one model is always served.

        Raises:
            ModelNotFoundError: Another name.
            ConflictError: Always (409).
        """
        if name != self.model_name:
            self._served(name, None)  # the 404 naming what is served
        raise ConflictError(
            f"this server serves one model ({self.model_name!r}) and keeps it loaded; "
            f"unloading applies to a server of many models ({ENV_MODELS})",
            code="cannot_unload",
        )

    def server_ready(self) -> dict[str, Any]:
        """``GET /v2/health/ready``: ready once the model is loaded (the function tries to load it).

        Raises:
            OnnxkitError: The model cannot be loaded now (why, with a 5xx status).
        """
        self._current()
        return {"ready": True}

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """``GET /v2/models/{name}[/versions/{version}]``.

        Raises:
            ModelNotFoundError: Another model or version than the one served.
            OnnxkitError: The model cannot be loaded now.
        """
        backend = self._served(name, version)
        manifest, pipeline = backend.manifest, backend.processing
        parameters: dict[str, Any] = {
            "opset": manifest.opset,
            "quantization": manifest.quantization,
            "backend": manifest.backend,
            "sha256": manifest.model_file.sha256,
        }
        outputs = manifest.outputs
        if pipeline is not None:
            # ``inputs`` stays the model's tensors (still accepted); what processing takes
            # instead, and what it adds to the outputs, are listed beside them.
            outputs = pipeline.outputs
            parameters["processing"] = manifest.processing
            parameters["processed_inputs"] = [spec.to_dict() for spec in pipeline.inputs]
            parameters["content_types"] = pipeline.accepted_media_types()
        return {
            "name": manifest.name,
            "versions": [manifest.version],
            "platform": "onnxruntime_onnx",
            "inputs": [spec.to_dict() for spec in manifest.inputs],
            "outputs": [spec.to_dict() for spec in outputs],
            "parameters": parameters,
        }

    def model_ready(self, name: str, version: str | None = None) -> dict[str, Any]:
        """``GET /v2/models/{name}[/versions/{version}]/ready``."""
        manifest = self._served(name, version).manifest
        return {"name": manifest.name, "version": manifest.version, "ready": True}

    def infer(
        self,
        name: str,
        version: str | None,
        body: bytes | str | None,
        *,
        content_type: str | None = None,
        header_length: str | None = None,
    ) -> Reply:
        """``POST /v2/models/{name}[/versions/{version}]/infer``: decode, process, run, encode.

        The body is a v2 request (JSON, or JSON followed by binary tensors when
        ``header_length`` is set), or, for a model with declared processing, a bare body:
        one sentence (``text/plain``), one image (``image/png``, ``image/jpeg``) or a JSON
        list of sentences. The route table accepted the media type already. An input may
        reference an upload in the payload store instead of carrying its data, and outputs may
        be written there (:mod:`onnxkit.payloads`).

        Args:
            name: The model name in the path.
            version: The version in the path, if any.
            body: The request body (already base64-decoded by the edge where needed).
            content_type: The request's ``Content-Type``.
            header_length: The ``Inference-Header-Content-Length`` header (binary tensors).

        Returns:
            The encoded answer: JSON, or the binary form when the request asked for it.

        Raises:
            OnnxkitError: 4xx for anything the caller sent wrong, 5xx for our faults.
        """
        bare, data, binary = self._read(body, content_type, header_length, model=name)
        backend = self._served(name, version, route=True)
        manifest = backend.manifest
        pipeline = backend.processing
        try:
            request = self._decode(pipeline, manifest, bare, body, data, binary)
            self.payloads.check_outputs(request)
            wanted = pipeline.model_outputs(request.outputs) if pipeline else request.outputs
            inputs = (
                pipeline.preprocess(request.inputs, raw_images=bool(bare))
                if pipeline
                else request.inputs
            )
            started = time.perf_counter()
            try:
                outputs = backend.run(inputs, wanted)
            except InvalidInputError as refusal:
                if version is None:  # routed by weight: was it the input, or the canary?
                    self._judge_refusal(backend, inputs, wanted, refusal)
                raise
            elapsed = (time.perf_counter() - started) * 1000
            if pipeline is not None:
                outputs = pipeline.postprocess(outputs, request.outputs)
            reply = encode_reply(
                InferenceResponse(
                    model_name=manifest.name,
                    model_version=manifest.version,
                    outputs=outputs,
                    id=request.id,
                    stored=self.payloads.store_outputs(request, outputs),
                ),
                request,
                content_type=content_type,
            )
        except Exception as exc:
            raise self._failed(backend, exc, routed=version is None) from exc
        batch = max((a.shape[0] for a in inputs.values() if a.ndim), default=1)
        self._observer.inference_done(manifest, elapsed, batch)
        if version is None:
            self._count_canary(backend, failed=False)
        return reply

    def validate(
        self,
        name: str,
        version: str | None,
        body: bytes | str | None,
        *,
        content_type: str | None = None,
        header_length: str | None = None,
    ) -> Backend:
        """Check a request as :meth:`infer` does, without running it (a job is checked before
        it is queued): decoded against the signature, through the processing, outputs known.

        Args:
            name: The model name in the path.
            version: The version in the path, if any (else the stable version's rules).
            body: The request body.
            content_type: The request's ``Content-Type``.
            header_length: The ``Inference-Header-Content-Length`` header (binary tensors).

        Returns:
            The backend that would serve the request.

        Raises:
            OnnxkitError: 4xx for anything the caller sent wrong; 5xx when the model cannot
                be loaded.
        """
        bare, data, binary = self._read(body, content_type, header_length, model=name)
        backend = self._served(name, version)
        pipeline = backend.processing
        # The request runs elsewhere: its uploads are checked, not read into this function.
        checker = self.payloads.checker()
        request = self._decode(
            pipeline, backend.manifest, bare, body, data, binary, references=checker
        )
        wanted = pipeline.model_outputs(request.outputs) if pipeline else request.outputs
        requested_outputs(backend.manifest, wanted)
        if pipeline is not None:
            pipeline.preprocess(request.inputs, raw_images=bool(bare))
        return backend

    def _read(
        self,
        body: bytes | str | None,
        content_type: str | None,
        header_length: str | None,
        *,
        model: str | None = None,
    ) -> tuple[str, dict[str, Any] | list[Any], bytes]:
        """A body's bare media type ("" for a v2 request), its JSON and its binary part
        (``model`` names the upload path in a 413)."""
        media = media_type(content_type) if content_type else ""
        if media in BARE_MEDIA_TYPES:  # the body is one input: no JSON in it
            check_size(body, max_bytes=self._limits.max_request_bytes, model=model)
            return media, {}, b""
        data, binary = split_body(
            body,
            binary_header_length(content_type, header_length),
            max_bytes=self._limits.max_request_bytes,
            allow_list=True,
            model=model,
        )
        return "", data, binary

    def _decode(
        self,
        pipeline: Pipeline | None,
        manifest: Manifest,
        media: str,
        body: bytes | str | None,
        data: dict[str, Any] | list[Any],
        binary: bytes,
        references: ReferenceReader | None = None,
    ) -> InferenceRequest:
        """The request's inputs: a bare body's (``media`` set) or a list's through the
        processing, else the v2 request's (uploads read by ``references``, default the
        payload store's reader)."""
        if media:
            if pipeline is None:
                raise UnsupportedMediaTypeError(
                    f"Content-Type {media!r} needs a model published with processing "
                    f"(a tokenizer or an image preprocessing); {manifest.name} "
                    f"{manifest.version} takes application/json (v2 tensors)"
                )
            if not body:
                raise InvalidInputError("the request body is empty")
            return InferenceRequest(inputs=pipeline.from_body(media, body))
        if isinstance(data, list):
            if pipeline is None:
                raise InvalidInputError("the body must be a JSON object with an 'inputs' list")
            if len(data) > self._limits.max_batch_size:
                raise PayloadTooLargeError(
                    f"{len(data)} sentences are over the batch limit of "
                    f"{self._limits.max_batch_size}; split them into smaller requests"
                )
            return InferenceRequest(inputs=pipeline.from_list(data))
        raw_inputs = data.get("inputs")
        listed = raw_inputs if isinstance(raw_inputs, list) else []  # decode_request says why
        names = {str(raw.get("name")) for raw in listed if isinstance(raw, dict)}
        signature = pipeline.signature_for(names) if pipeline else manifest.inputs
        return decode_request(
            data,
            signature,
            max_batch_size=self._limits.max_batch_size,
            binary=binary,
            references=references or self.payloads.reader(),
        )

    def _judge_refusal(
        self,
        backend: Backend,
        inputs: dict[str, Any],
        wanted: list[str] | None,
        refusal: InvalidInputError,
    ) -> None:
        """A canary that refuses an input its stable version takes is failing, not the client.

        onnxruntime's refusal of an input (an index past a table, a shape a Reshape cannot take)
        is the client's 400, except when the canary refuses what the stable version runs: then
        the canary is broken on valid input, a fault that counts toward its rollback. Only a
        canary's refusal costs this second run, on the stable version.

        Raises:
            InferenceError: The stable version runs the input (the canary's fault).
        """
        canary, stable = self._canary, self._backend
        if canary is None or canary.backend is not backend or stable is None:
            return
        try:
            stable.run(inputs, wanted)
        except Exception:
            return  # the stable version refuses it too: the client's input
        raise InferenceError(
            f"canary {backend.manifest.version} refused an input that version "
            f"{stable.manifest.version} runs"
        ) from refusal

    def _failed(self, backend: Backend, error: Exception, *, routed: bool) -> OnnxkitError:
        """An inference error naming its version; a server fault counts against a canary when
        the canary got the request by its weight (``routed``). A request that names the
        canary's version picks its own traffic: counting it would let any client abort a
        rollout with a few requests of its choosing."""
        manifest = backend.manifest
        if not isinstance(error, OnnxkitError):
            logger.exception("inference failed unexpectedly on version %s", manifest.version)
            # The generic 500 of error_body, which reveals nothing; the traceback is logged here.
            _, payload, _ = _error_body(error)
            error = OnnxkitError(payload["error"]["message"], code=payload["error"]["code"])
        error.headers[VERSION_HEADER] = manifest.version
        if error.status >= 500 and not isinstance(error, PayloadStoreUnavailableError):
            # S3 failing for uploads or results is not the version's fault (nor the canary's).
            self._observer.inference_failed(manifest)
            if routed:
                self._count_canary(backend, failed=True)
        return error

    def _current(self) -> Backend:
        """The serving backend: loaded (and its alias refreshed) here, or in the background."""
        if self._background:
            self.check_ready()
        else:
            self.refresh()  # at most once per interval; a swap shows in load() below
        return self.load()

    def _served(self, name: str, version: str | None, *, route: bool = False) -> Backend:
        """The backend for a request: a named version (stable or canary), else the stable one,
        or with ``route`` the canary for its share of requests."""
        if name != self.model_name:
            raise ModelNotFoundError(
                f"model {name!r} is not served here; this endpoint serves {self.model_name!r}"
            )
        backend = self._current()
        canary = self._canary
        if version is None:
            if route and canary is not None and self._policy.draw() * 100 < canary.weight:
                return canary.backend
            return backend
        if version == backend.manifest.version:
            return backend
        if canary is not None and version == canary.backend.manifest.version:
            return canary.backend
        served = ", ".join(repr(b.manifest.version) for b in (backend, *self._canary_backends()))
        raise ModelNotFoundError(
            f"model {name!r} version {version!r} is not served here; the served "
            f"version{'s are' if canary else ' is'} {served}"
        )
