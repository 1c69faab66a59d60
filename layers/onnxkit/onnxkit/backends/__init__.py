"""Where a model runs: the ``Backend`` protocol and its implementations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from onnxkit.errors import InvalidInputError
from onnxkit.manifest import Manifest

if TYPE_CHECKING:
    from onnxkit.processing import Pipeline


def requested_outputs(manifest: Manifest, outputs: list[str] | None) -> list[str]:
    """The output names to produce: all in signature order, or the requested ones if known.

    Raises:
        InvalidInputError: A requested name is not one of the model's outputs.
    """
    available = [spec.name for spec in manifest.outputs]
    if outputs is None:
        return available
    unknown = [name for name in outputs if name not in available]
    if unknown:
        raise InvalidInputError(
            f"unknown output(s) {', '.join(map(repr, unknown))}; this model has "
            + ", ".join(map(repr, available))
        )
    return outputs


class Backend(Protocol):
    """A loaded model that turns named input arrays into named output arrays.

    Attributes:
        manifest: The version it runs.
        processing: The version's declared processing, loaded (None: tensors only). The
            predictor applies it around :meth:`run`; it travels with the backend so that a
            swap or a canary always pairs a version with its own tokenizer and labels.
    """

    manifest: Manifest
    processing: Pipeline | None

    def run(
        self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the model.

        Args:
            inputs: One validated array per model input.
            outputs: Names to return, in this order; None returns all, in signature order.

        Raises:
            InvalidInputError: An unknown output name.
            InferenceError: The model failed on valid input.
        """
        ...
