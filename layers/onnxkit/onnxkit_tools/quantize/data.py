"""The gate's data: npz loading, feeds for the model's inputs, the task, and measured quality."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxkit_tools.numeric import row_cosines
from onnxkit_tools.quantize.errors import QuantizeError

TASKS = ("auto", "classification", "embedding", "regression")
LABEL_KEY = "label"


@dataclass(frozen=True)
class _Task:
    kind: str  # classification | embedding | regression
    output: str  # compared output: class labels (classification) or the float output
    score_output: str | None  # float output whose divergence ranks node sensitivity
    argmax: bool  # classification read from a float output by argmax


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file.

    Raises:
        QuantizeError: The file is missing or not an npz archive.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        raise QuantizeError(f"cannot read {path} as .npz: {exc}") from exc


def _model_feed(session: Any, arrays: dict[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    """The arrays named after the model's inputs, cast to their element types, same row count.

    Raises:
        QuantizeError: An input is missing, has another kind of type, or the row counts differ.
    """
    feed = {}
    for spec in session.get_inputs():
        if spec.name not in arrays:
            raise QuantizeError(
                f"{what} data has no array named {spec.name!r} (the model's inputs are "
                f"{[i.name for i in session.get_inputs()]}; arrays: {sorted(arrays)})"
            )
        array = arrays[spec.name]
        dtype = _ORT_TYPES.get(spec.type)
        if dtype is not None and array.dtype != dtype:
            if np.dtype(dtype).kind != array.dtype.kind and not (
                np.dtype(dtype).kind in "iu" and array.dtype.kind in "iu"
            ):
                raise QuantizeError(
                    f"{what} array {spec.name!r} is {array.dtype}, the model wants {spec.type}"
                )
            array = array.astype(dtype)
        feed[spec.name] = np.ascontiguousarray(array)
    rows = {len(a) for a in feed.values()}
    if len(rows) != 1 or 0 in rows:
        raise QuantizeError(f"{what} arrays need the same, non-zero number of rows: {rows}")
    return feed


def _rows(feed: dict[str, np.ndarray]) -> int:
    return len(next(iter(feed.values())))


def _head(feed: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    return {name: array[:rows] for name, array in feed.items()}


def detect_task(outputs: Sequence[tuple[str, str]], requested: str = "auto") -> _Task:
    """Which output to compare and how.

    ``auto``: an integer output makes a classifier judged on that output; otherwise the first
    float output is compared, as an embedding when rows hold more than one value, else as a
    regression. ``classification`` without an integer output takes the argmax of the first
    float output.

    Args:
        outputs: (name, onnxruntime type string) per model output, in graph order.
        requested: One of :data:`TASKS`.

    Raises:
        QuantizeError: No output fits the task.
    """
    if requested not in TASKS:
        raise QuantizeError(f"task must be one of {', '.join(TASKS)}, not {requested!r}")
    integers = [name for name, kind in outputs if kind.startswith("tensor(int")]
    floats = [name for name, kind in outputs if kind.startswith(("tensor(float", "tensor(double"))]
    score = floats[0] if floats else None
    if requested in ("auto", "classification") and integers:
        return _Task("classification", integers[0], score, argmax=False)
    if requested == "classification":
        if not floats:
            raise QuantizeError("classification needs an integer output or a float score output")
        return _Task("classification", floats[0], score, argmax=True)
    if not floats:
        raise QuantizeError(f"no float output to compare for {requested}: outputs {outputs}")
    # auto: embedding or regression is decided from the output width once it has run.
    return _Task(
        "embedding" if requested != "regression" else "regression", floats[0], score, False
    )


def _run(
    session: Any, feed: dict[str, np.ndarray], names: list[str], batch: int
) -> dict[str, np.ndarray]:
    """Run ``names`` over all rows, ``batch`` rows at a time."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, _rows(feed), batch):
        outputs = session.run(names, {k: v[start : start + batch] for k, v in feed.items()})
        for name, value in zip(names, outputs, strict=True):
            parts[name].append(np.asarray(value))
    return {name: np.concatenate(values) for name, values in parts.items()}


def _flat_rows(array: np.ndarray) -> np.ndarray:
    return array.reshape(len(array), -1).astype(np.float64)


def _predictions(task: _Task, value: np.ndarray) -> np.ndarray:
    if task.argmax:
        return np.asarray(value.reshape(len(value), -1).argmax(axis=1))
    return np.asarray(value).reshape(len(value), -1)[:, 0]


def measure_quality(
    task: _Task, actual: np.ndarray, expected: np.ndarray, labels: np.ndarray | None
) -> dict[str, float]:
    """Quality of ``actual`` against the fp32 ``expected`` (and against labels when given).

    Classification: top-1 ``agreement`` with fp32 and ``accuracy``. Embedding and regression:
    per-row cosine (``cosine_min``, ``cosine_mean``), ``max_abs_error`` and ``relative_error``
    (max-abs error over fp32's largest magnitude).
    """
    if task.kind == "classification":
        predicted, reference = _predictions(task, actual), _predictions(task, expected)
        quality = {"agreement": float(np.mean(predicted == reference))}
        if labels is not None:
            quality["accuracy"] = float(np.mean(predicted == labels.reshape(-1)))
        return quality
    error = np.abs(_flat_rows(actual) - _flat_rows(expected))
    cosines = row_cosines(actual, expected)
    scale = float(np.abs(expected).max()) or 1.0
    return {
        "cosine_min": float(cosines.min()),
        "cosine_mean": float(cosines.mean()),
        "max_abs_error": float(error.max()),
        "relative_error": float(error.max() / scale),
    }


def divergence(actual: np.ndarray, expected: np.ndarray) -> float:
    """How far a probe's output moved from fp32: mean per-row ``1 - cosine``, or for one value
    per row the mean relative error. Small moves add up roughly linearly, so nodes rank by it."""
    if _flat_rows(expected).shape[1] > 1:
        return float(np.mean(1.0 - row_cosines(actual, expected)))
    a, b = _flat_rows(actual)[:, 0], _flat_rows(expected)[:, 0]
    return float(np.mean(np.abs(a - b)) / (np.mean(np.abs(b)) or 1.0))
