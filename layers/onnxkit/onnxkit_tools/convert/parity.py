"""Parity between a source framework and onnxruntime on the same inputs: per output, the max abs
error, the minimum cosine and, for labels, the share of identical answers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from onnxkit_tools.numeric import row_cosines

# A float output passes when either holds (the acceptance: cos >= 0.9999 or max abs <=
# 1e-4); a label output passes only when every label is identical.
MIN_COSINE = 0.9999
MAX_ABS_ERROR = 1e-4


@dataclass(frozen=True)
class Tolerance:
    """What counts as the same answer."""

    min_cosine: float = MIN_COSINE
    max_abs_error: float = MAX_ABS_ERROR


@dataclass(frozen=True)
class OutputParity:
    """One output compared over every sample row.

    Attributes:
        name: The ONNX output's name.
        kind: ``float`` (scores, probabilities, regressions, embeddings) or ``label``.
        passed: Within the tolerance (labels: every one identical).
        worst_row: The sample row furthest from the source (the first differing label).
        max_abs_error: Largest absolute difference (float outputs).
        cosine_min: Smallest per-row cosine; for one value per row, the cosine of the whole
            column (a per-row cosine of scalars only compares signs).
        agreement: Share of identical labels (label outputs).
        top1_agreement: Float outputs with several values per row or per position (scores,
            logits, probabilities): the share of rows (positions, for per-token outputs)
            whose largest value is at the same index on both sides. Reported, not judged:
            an embedding's argmax means nothing, and a tie can flip it.
    """

    name: str
    kind: str
    passed: bool
    worst_row: int
    max_abs_error: float | None = None
    cosine_min: float | None = None
    agreement: float | None = None
    top1_agreement: float | None = None


@dataclass(frozen=True)
class ParityReport:
    """Every output's parity, and the verdict."""

    rows: int
    tolerance: Tolerance
    outputs: list[OutputParity] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every output within the tolerance."""
        return all(o.passed for o in self.outputs)

    def failures(self) -> list[str]:
        """One sentence per output outside the tolerance, naming the worst sample row."""
        said = []
        for o in self.outputs:
            if o.passed:
                continue
            if o.kind == "label":
                said.append(
                    f"output {o.name!r}: {o.agreement:.2%} of labels identical; "
                    f"first difference at sample row {o.worst_row}"
                )
            else:
                said.append(
                    f"output {o.name!r}: max abs error {o.max_abs_error:.3g} > "
                    f"{self.tolerance.max_abs_error:g} and min cosine {o.cosine_min:.6f} < "
                    f"{self.tolerance.min_cosine:g}; worst at sample row {o.worst_row}"
                )
        return said

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the conversion report."""
        return {
            "rows": self.rows,
            "passed": self.passed,
            "tolerance": asdict(self.tolerance),
            "outputs": [asdict(o) for o in self.outputs],
        }


def compare_output(
    name: str, actual: np.ndarray, expected: np.ndarray, kind: str, tolerance: Tolerance
) -> OutputParity:
    """Compare one onnxruntime output with the source framework's answer for the same rows.

    Raises:
        ValueError: The two hold a different number of rows or values per row.
    """
    rows = len(expected)
    if kind == "label":
        a, e = np.asarray(actual).reshape(rows, -1), np.asarray(expected).reshape(rows, -1)
        if a.shape != e.shape:
            raise ValueError(f"output {name!r}: {a.shape} against the source's {e.shape}")
        same = (a == e).all(axis=1)
        worst = int(np.argmin(same)) if not same.all() else 0
        return OutputParity(name, kind, bool(same.all()), worst, agreement=float(same.mean()))
    a = np.asarray(actual, dtype=np.float64).reshape(rows, -1)
    e = np.asarray(expected, dtype=np.float64).reshape(rows, -1)
    if a.shape != e.shape:
        raise ValueError(f"output {name!r}: {a.shape} against the source's {e.shape}")
    errors = np.abs(a - e).max(axis=1) if a.size else np.zeros(rows)
    max_abs = float(errors.max()) if rows else 0.0
    if a.shape[1] == 1:
        cosine = float(row_cosines(a.reshape(1, -1), e.reshape(1, -1))[0])
        worst = int(np.argmax(errors))
    else:
        cosines = row_cosines(a, e)
        cosine = float(cosines.min())
        worst = (
            int(np.argmax(errors)) if max_abs > tolerance.max_abs_error else int(cosines.argmin())
        )
    passed = bool(max_abs <= tolerance.max_abs_error or cosine >= tolerance.min_cosine)
    if not np.isfinite(a).all() and np.isfinite(e).all():
        passed = False  # NaN or inf where the source had numbers
    return OutputParity(
        name,
        kind,
        passed,
        worst,
        max_abs_error=max_abs,
        cosine_min=cosine,
        top1_agreement=_top1(np.asarray(actual), np.asarray(expected)),
    )


def _top1(actual: np.ndarray, expected: np.ndarray) -> float | None:
    """Share of rows (or positions) whose argmax over the last axis agrees; None for one
    value per row."""
    if actual.ndim < 2 or actual.shape[-1] < 2 or not actual.size:
        return None
    return float((actual.argmax(axis=-1) == expected.argmax(axis=-1)).mean())
