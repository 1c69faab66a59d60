"""What every framework converter hands back: the ONNX model, and the source framework's own
answers on the same feed, for the parity check."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# A further feed: its label (``sequence=12``), the inputs, and the source's answers on them.
Variant = tuple[str, dict[str, np.ndarray], list[tuple[np.ndarray, str]]]
Answers = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class Converted:
    """One framework's conversion of one model.

    Attributes:
        model: The ONNX ``ModelProto``.
        expected: The source's answers on the feed, in the ONNX model's output order, each
            with its kind (``float`` or ``label``).
        framework: ``sklearn``, ``pytorch``, ``huggingface`` or ``tensorflow``.
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
    variants: list[Variant] = field(default_factory=list)


def kind_of(array: np.ndarray) -> str:
    """``label`` for integer and boolean answers, ``float`` for the rest."""
    return "label" if array.dtype.kind in "biu" else "float"


def shorter_variants(
    feed: dict[str, np.ndarray], axes: dict[str, dict[int, str]], answer: Answers
) -> list[Variant]:
    """The feed cut one shorter along each dynamic axis past the batch, with the source's
    answers on it (one variant per axis label; inputs sharing a label are cut together).

    Args:
        feed: The inputs the conversion ran.
        axes: Per input, its dynamic axes by label (``{1: "sequence"}``).
        answer: Runs the source model on a feed.
    """
    variants = []
    labels = sorted({label for a in axes.values() for axis, label in a.items() if axis > 0})
    for label in labels:
        cut = {}
        for name, array in feed.items():
            sliced = array
            for axis, named in axes.get(name, {}).items():
                if named == label and axis > 0 and array.shape[axis] > 1:
                    sliced = np.take(sliced, range(array.shape[axis] - 1), axis=axis)
            cut[name] = np.ascontiguousarray(sliced)
        if all(cut[n].shape == feed[n].shape for n in feed):
            continue
        size = next(
            cut[n].shape[a] for n in feed for a, named in axes.get(n, {}).items() if named == label
        )
        variants.append((f"{label}={size}", cut, [(a, kind_of(a)) for a in answer(cut)]))
    return variants
