"""The in-process backend: an onnxruntime session inside the function."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from onnxkit.errors import InferenceError, InvalidInputError
from onnxkit.manifest import Manifest

logger = logging.getLogger(__name__)


class OnnxruntimeBackend:
    """Runs a manifest's model with an already created onnxruntime session."""

    def __init__(self, manifest: Manifest, session: Any) -> None:
        self.manifest = manifest
        self._session = session
        self._output_names = [spec.name for spec in manifest.outputs]

    def run(
        self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the session; see :class:`onnxkit.backends.Backend`."""
        names = self._output_names if outputs is None else outputs
        unknown = [name for name in names if name not in self._output_names]
        if unknown:
            raise InvalidInputError(
                f"unknown output(s) {', '.join(map(repr, unknown))}; this model has "
                + ", ".join(map(repr, self._output_names))
            )
        try:
            results = self._session.run(names, inputs)
        except Exception as exc:  # onnxruntime's own error types; never echo their text
            logger.exception("inference failed")
            raise InferenceError(
                "the model failed on this input; see the function's logs for the request id"
            ) from exc
        return dict(zip(names, results, strict=True))
