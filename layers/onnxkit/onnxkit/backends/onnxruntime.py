"""The in-process backend: an onnxruntime session inside the function."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxkit.backends import requested_outputs
from onnxkit.errors import InferenceError
from onnxkit.manifest import Manifest

if TYPE_CHECKING:
    from onnxkit.processing import Pipeline

logger = logging.getLogger(__name__)


class OnnxruntimeBackend:
    """Runs a manifest's model with an already created onnxruntime session."""

    def __init__(self, manifest: Manifest, session: Any) -> None:
        self.manifest = manifest
        self._session = session
        self.processing: Pipeline | None = None

    def run(
        self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the session; see :class:`onnxkit.backends.Backend`."""
        names = requested_outputs(self.manifest, outputs)
        try:
            results = self._session.run(names, inputs)
        except Exception as exc:  # onnxruntime's own error types; never echo their text
            logger.exception("inference failed")
            raise InferenceError(
                "the model failed on this input; see the function's logs for the request id"
            ) from exc
        return dict(zip(names, results, strict=True))
