"""The function's cold start: load the model in a thread while the rest of the code imports.

``functions/predict/app.py`` calls :func:`start_loading` before it imports the Lambda edge
(Powertools, the route table, the codecs). The thread resolves the alias, downloads and
verifies the artifact (into memory for small models), creates the onnxruntime session and
warms it up. Network waits and onnxruntime's own work (it releases the GIL) then overlap
the main thread's imports, so the init phase costs about the longer of the two instead of
their sum. :meth:`Loading.wait` joins it before init ends, so Lambda's init phase still pays
for the whole load (and SnapStart snapshots a loaded model).

This module imports only the standard library and the light parts of onnxkit.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from onnxkit.aws import AwsClients
from onnxkit.phases import LOAD_PHASES, Phases
from onnxkit.settings import Settings

if TYPE_CHECKING:
    from onnxkit.manifest import Manifest
    from onnxkit.predictor import Predictor

INIT_PHASES = ("imports", *LOAD_PHASES)
"""The phases an init breakdown reports: the main thread's imports, then the model load's."""


class Loading:
    """A model load running in a thread; :meth:`wait` returns its predictor.

    Use :func:`start_loading`.

    Attributes:
        started: ``time.perf_counter()`` when the load started (the init's reference point).
        clients: The AWS clients the load uses (and the function after it).
        phases: Milliseconds per phase of the first successful load (empty until then).
        manifest: The loaded version (None until then, or when the load failed).
    """

    def __init__(self, settings: Settings, clients: AwsClients | None) -> None:
        self.started = time.perf_counter()
        self.phases = Phases()
        self.manifest: Manifest | None = None
        self._settings = settings
        self.clients = clients or AwsClients(settings.aws, settings.forward)
        self._predictor: Predictor | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="onnxkit-load", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            from onnxkit.compose import build_predictor
            from onnxkit.routes import FUNCTION

            predictor = build_predictor(
                self._settings, role=FUNCTION, clients=self.clients, on_loaded=self._loaded
            )
            # A failed load is kept by the predictor (and retried by the next request).
            predictor.try_load()
            self._predictor = predictor
        except BaseException as exc:  # re-raised in wait(), on the main thread
            self._error = exc

    def _loaded(self, manifest: Manifest, phases: Phases) -> None:
        if self.manifest is None:  # the first load is the init's
            self.manifest = manifest
            for phase, ms in phases.ms.items():
                self.phases.add(phase, ms)

    def wait(self) -> Predictor:
        """Join the load; the predictor, loaded unless the load failed (then it retries).

        Raises:
            ConfigurationError: The settings cannot build a predictor (fails init at once).
        """
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._predictor is not None
        return self._predictor


def start_loading(settings: Settings, *, clients: AwsClients | None = None) -> Loading:
    """Start loading the function's model in a thread, now.

    Args:
        settings: The function's settings.
        clients: AWS clients to use (tests: moto); default made from the settings.
    """
    return Loading(settings, clients)
