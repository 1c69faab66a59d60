"""Where a model runs: the ``Backend`` protocol and its implementations."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from onnxkit.manifest import Manifest


class Backend(Protocol):
    """A loaded model that turns named input arrays into named output arrays."""

    manifest: Manifest

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
