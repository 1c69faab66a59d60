"""The in-process backend: an onnxruntime session inside the function.

BYTES tensors are object arrays of ``bytes`` everywhere else; onnxruntime's string tensors
want ``str`` (it would turn ``b"a"`` into the text ``"b'a'"``), so they are converted here,
both ways, as UTF-8.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxkit.backends import requested_outputs
from onnxkit.errors import InferenceError, InvalidInputError
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
        feed = {
            name: _strings(name, array) if array.dtype.kind == "O" else array
            for name, array in inputs.items()
        }
        try:
            results = self._session.run(names, feed)
        except Exception as exc:  # onnxruntime's own error types; never echo their text
            logger.exception("inference failed")
            raise InferenceError(
                "the model failed on this input; see the function's logs for the request id"
            ) from exc
        return {
            name: _utf8(result) if result.dtype.kind == "O" else result
            for name, result in zip(names, results, strict=True)
        }


def _strings(name: str, array: np.ndarray) -> np.ndarray:
    """A BYTES input as the ``str`` elements onnxruntime's string tensors take.

    Raises:
        InvalidInputError: An element is not UTF-8 text.
    """
    texts = np.empty(array.size, dtype=object)
    for index, item in enumerate(array.ravel().tolist()):
        try:
            texts[index] = item.decode()
        except UnicodeDecodeError as exc:
            raise InvalidInputError(
                f"input {name!r}: BYTES element {index} is not UTF-8 text; this model takes "
                "strings (ONNX tensor(string)), which must be UTF-8"
            ) from exc
    return texts.reshape(array.shape)


def _utf8(array: np.ndarray) -> np.ndarray:
    """A string output as BYTES: an object array of UTF-8 ``bytes``."""
    items = np.empty(array.size, dtype=object)
    items[:] = [text.encode() for text in array.ravel().tolist()]
    return items.reshape(array.shape)
