"""What every framework converter hands back: the ONNX model, and the source framework's own
answers on the same feed, for the parity check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Converted:
    """One framework's conversion of one model.

    Attributes:
        model: The ONNX ``ModelProto``.
        expected: The source's answers on the feed, in the ONNX model's output order, each
            with its kind (``float`` or ``label``).
        framework: ``sklearn`` or ``pytorch``.
        packages: The distributions whose versions the report records.
        feed: The inputs both sides ran, by the ONNX model's input names.
        variants: Further feeds both sides ran, each with a label and the source's answers:
            another length along each dynamic axis past the batch (a traced shape baked in
            as a constant shows up there).
    """

    model: Any
    expected: list[tuple[np.ndarray, str]]
    framework: str
    packages: tuple[str, ...]
    feed: dict[str, np.ndarray]
    variants: list[tuple[str, dict[str, np.ndarray], list[tuple[np.ndarray, str]]]] = field(
        default_factory=list
    )


def kind_of(array: np.ndarray) -> str:
    """``label`` for integer and boolean answers, ``float`` for the rest."""
    return "label" if array.dtype.kind in "biu" else "float"
