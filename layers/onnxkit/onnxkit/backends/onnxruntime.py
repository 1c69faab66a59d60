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
            raise run_error(exc) from exc
        return {
            name: _utf8(result) if result.dtype.kind == "O" else result
            for name, result in zip(names, results, strict=True)
        }


# onnxruntime reports a kernel's refusal of its input through the status of the run alone:
# INVALID_ARGUMENT (a type or rank the graph does not take, an index out of range) or FAIL
# with the kernel's message. These are the input's fault once it passed the signature check:
# a dynamic dimension that a Reshape or a broadcast cannot take, a token id past the vocabulary.
_CLIENT_STATUS = ("InvalidArgument",)
_CLIENT_FAILURES = (
    "reshape",
    "broadcast",
    "shape",
    "dimension",
    "out of bounds",
    "out of range",
    "invalid rank",
)


def run_error(error: Exception) -> InvalidInputError | InferenceError:
    """What a failed ``session.run`` means for the client, in our words.

    Input the model cannot take (onnxruntime's ``InvalidArgument``, or a kernel's failure over
    shapes, dimensions or indices) is the client's: 400. Anything else (memory, a provider
    failing, a kernel bug) is ours: 500, counted against a canary. onnxruntime's own text is
    logged, never returned (it names source files and the graph's nodes).
    """
    kind = type(error).__name__
    text = str(error).lower()
    if kind in _CLIENT_STATUS or (
        kind in ("Fail", "RuntimeException") and any(s in text for s in _CLIENT_FAILURES)
    ):
        logger.info("the model refused the input: %s: %s", kind, str(error)[:500])
        return InvalidInputError(
            "the model cannot run on this input: a dimension, a shape or a value it does not "
            "take (a length its graph cannot reshape, an index past a table); check the "
            "model's metadata and send what it expects"
        )
    logger.error("inference failed", exc_info=error)
    return InferenceError(
        "the model failed on this input; the logs have the details under the request id"
    )


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
