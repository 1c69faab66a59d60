"""``onnxkit convert``: a framework model to ONNX, checked against the framework on the same
inputs before anything is written."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from onnxkit_tools.convert import sklearn as sk
from onnxkit_tools.convert.errors import ConvertError, ParityError
from onnxkit_tools.convert.parity import ParityReport, Tolerance, compare_output
from onnxkit_tools.convert.sources import (
    PICKLE_SUFFIXES,
    is_reference,
    load_pickle,
    load_reference,
)

FRAMEWORKS = ("auto", "sklearn")
DEFAULT_OPSET = 17
DEFAULT_ROWS = 64
REPORT_SUFFIX = ".conversion.json"


@dataclass(frozen=True)
class ConversionReport:
    """What was converted, how, and how closely the ONNX model answers like its source."""

    source: str
    framework: str
    converter: dict[str, str]
    opset: int
    sample: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    parity: ParityReport
    target: str | None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``<model>.conversion.json``."""
        return {
            "schema": "onnxkit.conversion/1",
            "source": self.source,
            "framework": self.framework,
            "converter": self.converter,
            "opset": self.opset,
            "sample": self.sample,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "parity": self.parity.to_dict(),
            "target": self.target,
            "seconds": round(self.seconds, 2),
            "notes": self.notes,
        }


def report_path(target: Path) -> Path:
    """Where the conversion report of ``target`` goes: beside it (``model.conversion.json``)."""
    return target.with_name(target.stem + REPORT_SUFFIX)


def convert_model(
    source: str,
    target: Path,
    *,
    framework: str = "auto",
    sample: Path | None = None,
    rows: int = DEFAULT_ROWS,
    opset: int = DEFAULT_OPSET,
    allow_pickle: bool = False,
    tolerance: Tolerance | None = None,
    seed: int = 0,
) -> ConversionReport:
    """Convert ``source`` to ONNX at ``target`` when it answers like the source framework.

    Both run the same sample rows (``sample``, or ``rows`` random rows shaped from the model's
    signature); the parity report is written beside ``target`` either way, the model only when
    every output is within ``tolerance``.

    Args:
        source: ``module:attribute`` (a model, or a function returning one) or a pickle-based
            file (``.joblib``/``.pkl``, read only with ``allow_pickle``).
        target: The ``.onnx`` file to write.
        framework: ``auto`` (from the loaded object) or ``sklearn``.
        sample: An ``.npz`` with the input rows (one array, or one named ``X``).
        rows: Random rows to generate when no sample is given.
        opset: The ONNX opset to target.
        allow_pickle: Read pickle-based files (they run code when loaded).
        tolerance: What counts as the same answer (default cos >= 0.9999 or max abs <= 1e-4).
        seed: The random rows' seed.

    Raises:
        ConvertError: The source cannot be loaded or converted, or the converted model does
            not run on the sample (a batch axis left fixed, say).
        ParityError: The converted model answers differently (the report names the worst row).
    """
    started = time.perf_counter()
    tolerance = tolerance or Tolerance()
    if framework not in FRAMEWORKS:
        raise ConvertError(f"framework must be one of {', '.join(FRAMEWORKS)}, not {framework!r}")
    if target.suffix != ".onnx":
        raise ConvertError(f"--out must name an .onnx file, not {target.name}")
    model = _load(source, allow_pickle=allow_pickle)
    if not sk.is_estimator(model):
        raise ConvertError(
            f"{source} is a {type(model).__module__}.{type(model).__name__}, not a model "
            "onnx convert reads: it converts scikit-learn estimators and pipelines"
        )
    rows_array, described = _sample(model, sample, rows, seed)
    onnx_model = sk.convert_sklearn(model, rows_array, opset)
    expected = sk.reference_outputs(model, rows_array)
    actual, session = _run(onnx_model, rows_array)
    names = [o.name for o in session.get_outputs()]
    if len(actual) < len(expected):
        raise ConvertError(
            f"the ONNX model has {len(actual)} outputs where the source answers {len(expected)}"
        )
    parity = ParityReport(
        rows=len(rows_array),
        tolerance=tolerance,
        outputs=[
            compare_output(name, got, want, kind, tolerance)
            for name, got, (want, kind) in zip(names, actual, expected, strict=False)
        ],
    )
    report = ConversionReport(
        source=source,
        framework="sklearn",
        converter=_versions(sk.PACKAGES),
        opset=opset,
        sample=described,
        inputs=_signature(session.get_inputs()),
        outputs=_signature(session.get_outputs()),
        parity=parity,
        target=str(target) if parity.passed else None,
        seconds=time.perf_counter() - started,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    report_file = report_path(target)
    report_file.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if not parity.passed:
        raise ParityError(
            "the ONNX model does not answer like the source; nothing was written: "
            + "; ".join(parity.failures())
            + f" (report: {report_file})"
        )
    import onnx

    onnx.save(onnx_model, str(target))
    return report


def _load(source: str, *, allow_pickle: bool) -> Any:
    path = Path(source)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return load_pickle(path, allow_pickle=allow_pickle)
    if is_reference(source):
        return load_reference(source)
    if path.exists():
        raise ConvertError(
            f"cannot tell what {path.name} holds: give a .joblib/.pkl file or module:attribute"
        )
    raise ConvertError(f"no file at {source}, and it is not a module:attribute reference")


def _sample(model: Any, sample: Path | None, rows: int, seed: int) -> tuple[np.ndarray, str]:
    if sample is not None:
        try:
            with np.load(sample) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise ConvertError(f"cannot read {sample}: {exc}") from exc
        if "X" in arrays:
            array = arrays["X"]
        elif len(arrays) == 1:
            array = next(iter(arrays.values()))
        else:
            raise ConvertError(
                f"{sample.name} holds {', '.join(sorted(arrays))}: give one array, or name the "
                "input rows X"
            )
        if array.ndim != 2 or not len(array):
            raise ConvertError(f"{sample.name}: want rows x features, got shape {array.shape}")
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
        return array, f"{sample}: {len(array)} rows x {array.shape[1]} ({array.dtype})"
    width = sk.features(model)
    if width is None:
        raise ConvertError(
            f"{type(model).__name__} does not say how many features it takes (not fitted?); "
            "pass --sample rows.npz"
        )
    if rows < 2:
        raise ConvertError(f"--rows must be at least 2, not {rows}")
    array = np.random.default_rng(seed).normal(size=(rows, width)).astype(np.float32)
    return array, f"{rows} random normal rows x {width} float32 (seed {seed}), from the model"


def _run(onnx_model: Any, rows: np.ndarray) -> tuple[list[np.ndarray], Any]:
    """Run all rows as one batch, and the first row alone: a batch axis fixed at export
    fails one of the two."""
    from onnxkit.session import load_session

    try:
        session = load_session(onnx_model.SerializeToString(), intra_op_threads=1)
    except Exception as exc:
        raise ConvertError(f"onnxruntime cannot load the converted model: {exc}") from exc
    names = [o.name for o in session.get_outputs()]
    feed_name = session.get_inputs()[0].name
    try:
        outputs = session.run(None, {feed_name: rows})
        single = session.run(None, {feed_name: rows[:1]})
    except Exception as exc:  # onnxruntime's shape and type errors
        raise ConvertError(
            f"the converted model does not run on the sample ({len(rows)} rows, and 1 row): "
            f"{type(exc).__name__}: {str(exc)[:300]}. Is an axis fixed that should be dynamic?"
        ) from exc
    for name, whole, one in zip(names, outputs, single, strict=True):
        if len(whole) != len(rows) or len(one) != 1:
            raise ConvertError(
                f"output {name!r} has {len(whole)} rows for {len(rows)} input rows: the batch "
                "axis is not the first axis, or is fixed"
            )
    return [np.asarray(o) for o in outputs], session


def _signature(values: Any) -> list[dict[str, Any]]:
    """Name, type and shape of onnxruntime's inputs or outputs (symbolic axes by name)."""
    return [{"name": v.name, "type": v.type, "shape": list(v.shape)} for v in values]


def _versions(packages: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found
