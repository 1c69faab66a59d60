"""The backend-agnostic core: decode -> run -> encode, plus model readiness.

A :class:`Predictor` owns one served model. It loads it through a loader callable (store ->
verified files -> session -> warm-up), remembers why a load failed, and tries again on the
next request, so a transient fault (S3 down, a corrupt artifact being repaired) heals
without a restart and never leaves a half-loaded model behind.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from onnxkit import __version__
from onnxkit.backends import Backend
from onnxkit.codecs import (
    InferenceResponse,
    decode_request,
    encode_response,
    parse_json,
)
from onnxkit.errors import ModelNotFoundError, ModelNotReadyError, OnnxkitError
from onnxkit.manifest import Manifest
from onnxkit.settings import ApiSettings

logger = logging.getLogger(__name__)

SERVER_NAME = "onnxkit"
SERVER_EXTENSIONS = ("model_repository_metadata",)


class Observer(Protocol):
    """Receives timings (the Lambda adapter turns them into metrics)."""

    def model_loaded(self, manifest: Manifest, milliseconds: float) -> None:
        """A model finished loading."""
        ...

    def inference_done(self, manifest: Manifest, milliseconds: float, batch: int) -> None:
        """An inference finished (backend time only)."""
        ...


class _NullObserver:
    def model_loaded(self, manifest: Manifest, milliseconds: float) -> None:
        pass

    def inference_done(self, manifest: Manifest, milliseconds: float, batch: int) -> None:
        pass


@dataclass(frozen=True)
class Refresh:
    """How a predictor follows an alias: check it every ``interval_s``, swap when it moved.

    Attributes:
        resolve: The manifest the alias points to now.
        load: A ready backend for a manifest (fetch, verify, session, warm-up).
        interval_s: Seconds between checks.
        clock: Monotonic seconds (injectable for tests).
        on_swap: Called with (old, new) after a swap, e.g. to free the old cached files.
    """

    resolve: Callable[[], Manifest | None]
    load: Callable[[Manifest | None], Backend]
    interval_s: float
    clock: Callable[[], float] = time.monotonic
    on_swap: Callable[[Backend, Backend], None] | None = None


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
    ) -> None:
        self.model_name = model_name
        self._loader = loader
        self._limits = limits
        self._background = background
        self._observer = observer or _NullObserver()
        self._refresh = refresh
        self._backend: Backend | None = None
        self._last_error: OnnxkitError | None = None
        self._refresh_error: OnnxkitError | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()

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
            started = time.perf_counter()
            try:
                backend = self._loader()
            except ModelNotFoundError as exc:
                # The configured model missing from the store is our fault, not the caller's.
                self._last_error = ModelNotReadyError(
                    f"the configured model cannot be found: {exc.message}"
                )
                logger.error("model load failed: %s", exc.message)
                raise self._last_error from exc
            except OnnxkitError as exc:
                self._last_error = exc
                logger.error("model load failed: %s (%s)", exc.message, exc.code)
                raise
            except Exception as exc:
                self._last_error = ModelNotReadyError(
                    f"model {self.model_name!r} could not be loaded; the logs have the cause"
                )
                logger.exception("model load failed unexpectedly")
                raise self._last_error from exc
            elapsed = (time.perf_counter() - started) * 1000
            self._backend, self._last_error = backend, None
            if self._refresh is not None:
                self._next_check = self._refresh.clock() + self._refresh.interval_s
            manifest = backend.manifest
            logger.info(
                "model loaded",
                extra={"model": manifest.name, "version": manifest.version, "load_ms": elapsed},
            )
            self._observer.model_loaded(manifest, elapsed)
            return backend

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

        Returns:
            True when a new version was swapped in.
        """
        refresh, current = self._refresh, self._backend
        if refresh is None or current is None:
            return False
        if not force and refresh.clock() < self._next_check:
            return False
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._next_check = refresh.clock() + refresh.interval_s
            started = time.perf_counter()
            try:
                manifest = refresh.resolve()
                if manifest == current.manifest:
                    self._refresh_error = None
                    return False
                backend = refresh.load(manifest)
            except OnnxkitError as exc:
                self._refresh_error = exc
                logger.warning(
                    "alias target not loaded; still serving version %s: %s (%s)",
                    current.manifest.version,
                    exc.message,
                    exc.code,
                )
                return False
            self._backend, self._refresh_error = backend, None
        finally:
            self._lock.release()
        elapsed = (time.perf_counter() - started) * 1000
        logger.info(
            "model swapped",
            extra={
                "model": backend.manifest.name,
                "from": current.manifest.version,
                "to": backend.manifest.version,
            },
        )
        self._observer.model_loaded(backend.manifest, elapsed)
        if refresh.on_swap is not None:
            refresh.on_swap(current, backend)
        return True

    def check_ready(self) -> None:
        """Raise unless a model is loaded, saying why not (never starts a load itself).

        Raises:
            ModelNotReadyError: Still loading, or the last load failed (its reason included).
        """
        if self._backend is not None:
            return
        cause = self._last_error
        if cause is None:
            raise ModelNotReadyError(
                "the model is still loading; retry in a moment", headers={"Retry-After": "1"}
            )
        raise ModelNotReadyError(
            f"the model is not loaded: {cause.message} ({cause.code}); retrying in the background",
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
        manifest = self._served(name, version).manifest
        return {
            "name": manifest.name,
            "versions": [manifest.version],
            "platform": "onnxruntime_onnx",
            "inputs": [spec.to_dict() for spec in manifest.inputs],
            "outputs": [spec.to_dict() for spec in manifest.outputs],
            "parameters": {
                "opset": manifest.opset,
                "quantization": manifest.quantization,
                "backend": manifest.backend,
                "sha256": manifest.model_file.sha256,
            },
        }

    def model_ready(self, name: str, version: str | None = None) -> dict[str, Any]:
        """``GET /v2/models/{name}[/versions/{version}]/ready``."""
        manifest = self._served(name, version).manifest
        return {"name": manifest.name, "version": manifest.version, "ready": True}

    def infer(self, name: str, version: str | None, body: bytes | str | None) -> dict[str, Any]:
        """``POST /v2/models/{name}[/versions/{version}]/infer``: decode, run, encode.

        The media type was negotiated by the route table already.

        Raises:
            OnnxkitError: 4xx for anything the caller sent wrong, 5xx for our faults.
        """
        data = parse_json(body, max_bytes=self._limits.max_request_bytes)
        backend = self._served(name, version)
        manifest = backend.manifest
        request = decode_request(data, manifest.inputs, max_batch_size=self._limits.max_batch_size)
        started = time.perf_counter()
        outputs = backend.run(request.inputs, request.outputs)
        elapsed = (time.perf_counter() - started) * 1000
        batch = max((a.shape[0] for a in request.inputs.values() if a.ndim), default=1)
        self._observer.inference_done(manifest, elapsed, batch)
        return encode_response(
            InferenceResponse(
                model_name=manifest.name,
                model_version=manifest.version,
                outputs=outputs,
                id=request.id,
            )
        )

    def _current(self) -> Backend:
        """The serving backend: loaded (and its alias refreshed) here, or in the background."""
        if self._background:
            self.check_ready()
        else:
            self.refresh()  # at most once per interval; a swap shows in load() below
        return self.load()

    def _served(self, name: str, version: str | None) -> Backend:
        if name != self.model_name:
            raise ModelNotFoundError(
                f"model {name!r} is not served here; this endpoint serves {self.model_name!r}"
            )
        backend = self._current()
        if version is not None and version != backend.manifest.version:
            raise ModelNotFoundError(
                f"model {name!r} version {version!r} is not served here; "
                f"the served version is {backend.manifest.version!r}"
            )
        return backend
