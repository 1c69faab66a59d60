"""The function's cold start: load the model in a thread, import the rest of the code beside it.

Python code cannot run in parallel (the GIL); network waits, hashing and onnxruntime's session
creation can, because they release it. The cold start is scheduled around that:

1. ``functions/predict/app.py`` calls :func:`start_loading` first. Its thread imports boto3,
   makes the S3 client, then reads the alias, the manifest and the verified artifact (into
   memory for small models), then creates the onnxruntime session, warms it up and builds the
   predictor.
2. Meanwhile the main thread (:meth:`Loading.import_beside`) waits for the download to
   start, imports numpy and onnxruntime while the bytes come down (the thread needs them
   next), then waits for the session to start and returns: the caller imports the rest (the
   composition root, the route table, the codecs, Powertools) while onnxruntime builds it.
3. :meth:`Loading.wait` joins the thread before init ends, so Lambda's init phase still pays
   for the whole load (and SnapStart snapshots a loaded model).

Importing everything first would delay the network by that long; importing everything beside
the network would slow the download down (each read waits for the GIL) for code the session
does not need.

This module imports only the standard library and the light parts of onnxkit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from onnxkit.aws import AwsClients
from onnxkit.phases import LOAD_PHASES, Phases
from onnxkit.settings import Settings

if TYPE_CHECKING:
    from onnxkit.manifest import Manifest
    from onnxkit.predictor import Serving
    from onnxkit.sources import Prefetched

INIT_PHASES = ("imports", *LOAD_PHASES)
"""The phases an init breakdown reports: the main thread's imports, then the model load's."""


class Loading:
    """A model load running in a thread; :meth:`wait` returns its predictor.

    Use :func:`start_loading`.

    Attributes:
        started: ``time.perf_counter()`` when the load started (the init's reference point).
        caller_from: When the caller went on with its own imports: ``started``, or when
            :meth:`import_beside` returned.
        clients: The AWS clients the load uses (and the function after it).
        phases: Milliseconds per phase of the first successful load (empty until then).
        manifest: The loaded version (None until then, or when the load failed).
    """

    def __init__(self, settings: Settings, clients: AwsClients | None) -> None:
        self.started = time.perf_counter()
        self.caller_from = self.started
        self.phases = Phases()
        self.manifest: Manifest | None = None
        self._settings = settings
        self.clients = clients or AwsClients(settings.aws, settings.forward)
        self._predictor: Serving | None = None
        self._error: BaseException | None = None
        self._download = threading.Event()
        self._session = threading.Event()
        self._thread = threading.Thread(target=self._run, name="onnxkit-load", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            if self._settings.models.enabled:  # many models: each loads on its request
                from onnxkit.compose import build_repository
                from onnxkit.routes import FUNCTION

                self._predictor = build_repository(
                    self._settings, role=FUNCTION, clients=self.clients
                )
                return
            from onnxkit.sources import open_source, prefetch

            source = open_source(self._settings, self.clients)
            ready = prefetch(source, self._settings.forward, on_download=self._download.set)
            ready = _with_session(ready, self._settings, on_start=self._session.set)
            self._session.set()  # (also when there was no session to make)

            from onnxkit.compose import build_predictor
            from onnxkit.routes import FUNCTION

            predictor = build_predictor(
                self._settings,
                role=FUNCTION,
                clients=self.clients,
                on_loaded=self._loaded,
                source=source,
                prefetched=ready,
            )
            # A failed load is kept by the predictor (and retried by the next request).
            predictor.try_load()
            self._predictor = predictor
        except BaseException as exc:  # re-raised in wait(), on the main thread
            self._error = exc
        finally:
            self._download.set()
            self._session.set()

    def import_beside(self, timeout: float = 2.0) -> None:
        """Import numpy and onnxruntime while the model downloads, then return once the
        session is being made (or the load is over): the caller's own imports then run
        beside onnxruntime's work instead of against the load's Python work.

        Args:
            timeout: The longest to wait at each step (a slow store must not hold the
                caller's imports back past the point where they cost nothing).
        """
        self._download.wait(timeout)
        import numpy  # noqa: F401  what the session needs next, while the bytes come down
        import onnxruntime  # noqa: F401

        self._session.wait(timeout)
        self.caller_from = time.perf_counter()

    def _loaded(self, manifest: Manifest, phases: Phases) -> None:
        if self.manifest is None:  # the first load is the init's
            self.manifest = manifest
            for phase, ms in phases.ms.items():
                self.phases.add(phase, ms)

    def wait(self) -> Serving:
        """Join the load; the predictor, loaded unless the load failed (then it retries).

        Raises:
            ConfigurationError: The settings cannot build a predictor (fails init at once).
        """
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._predictor is not None
        return self._predictor


def _with_session(
    ready: Prefetched, settings: Settings, on_start: Callable[[], None]
) -> Prefetched:
    """The prefetched model's session, made before the composition root is imported."""
    if ready.model is None:
        return ready
    from onnxkit.errors import OnnxkitError
    from onnxkit.session import open_session

    on_start()
    try:
        with ready.phases.timed("session"):
            session = open_session(ready.model, settings.session)
    except OnnxkitError as exc:  # the first load raises it; the next request retries
        return replace(ready, model=None, error=exc)
    return replace(ready, session=session)


def start_loading(settings: Settings, *, clients: AwsClients | None = None) -> Loading:
    """Start loading the function's model in a thread, now.

    Args:
        settings: The function's settings.
        clients: AWS clients to use (tests: moto); default made from the settings.
    """
    return Loading(settings, clients)
