"""Numeric helpers shared by the quantization gate, the examples and the benchmarks."""

from __future__ import annotations

import numpy as np


def row_cosines(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row (dimension 0) of two arrays of the same shape.

    Rows are flattened first, so ``[N, 384]`` and ``[N, 10, 10]`` both give N values. Two
    all-zero rows count as identical (1.0), not as orthogonal.

    Args:
        actual: The array under test.
        expected: The reference.

    Returns:
        float64 array of N cosines in [-1, 1].
    """
    a = np.asarray(actual, dtype=np.float64).reshape(len(actual), -1)
    b = np.asarray(expected, dtype=np.float64).reshape(len(expected), -1)
    norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cosines = (a * b).sum(axis=1) / np.maximum(norm_a * norm_b, 1e-30)
    return np.where((norm_a == 0) & (norm_b == 0), 1.0, cosines)
