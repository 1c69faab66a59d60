"""``onnxkit convert``: a framework model to ONNX, checked against the framework on the same
inputs before anything is written."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from onnxkit_tools.convert import huggingface as hf
from onnxkit_tools.convert import pytorch as pt
from onnxkit_tools.convert import sklearn as sk
from onnxkit_tools.convert import tfkeras as tfk
from onnxkit_tools.convert.base import Converted
from onnxkit_tools.convert.errors import ConvertError, ParityError
from onnxkit_tools.convert.parity import ParityReport, Tolerance, compare_output
from onnxkit_tools.convert.sources import (
    PICKLE_SUFFIXES,
    is_reference,
    load_pickle,
    load_reference,
)
from onnxkit_tools.quantize.candidates import EXTERNAL_DATA_BYTES, write_proto

FRAMEWORKS = ("auto", "sklearn", "pytorch", "huggingface", "tensorflow")
DEFAULT_OPSET = 17
DEFAULT_ROWS = 64
REPORT_SUFFIX = ".conversion.json"
REPORT_SCHEMA = "onnxkit.conversion/1"
# Sample rows: an .npz file, or (from Python) the arrays themselves; None generates them.
Sample = Path | Mapping[str, np.ndarray] | None


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
    task: str | None = None
    tokenizer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``<model>.conversion.json``."""
        return {
            "schema": REPORT_SCHEMA,
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
            "task": self.task,
            "tokenizer": self.tokenizer,
        }


def report_path(target: Path) -> Path:
    """Where the conversion report of ``target`` goes: beside it (``model.conversion.json``)."""
    return target.with_name(target.stem + REPORT_SUFFIX)


def convert_model(
    source: Any,
    target: Path,
    *,
    framework: str = "auto",
    sample: Sample = None,
    rows: int = DEFAULT_ROWS,
    opset: int = DEFAULT_OPSET,
    axes: dict[str, dict[int, str]] | None = None,
    allow_pickle: bool = False,
    tolerance: Tolerance | None = None,
    seed: int = 0,
    task: str = hf.DEFAULT_TASK,
    external: bool | None = None,
    label: str | None = None,
    inputs: Sequence[str] | None = None,
) -> ConversionReport:
    """Convert ``source`` to ONNX at ``target`` when it answers like the source framework.

    Both run the same sample (``sample``, or ``rows`` random rows shaped from the model); the
    parity report is written beside ``target`` either way, the model only when every output
    is within ``tolerance``.

    Args:
        source: ``module:attribute`` (a model, or a function returning one), a TorchScript
            archive (``.pt``/``.pth``/``.ts``), a transformers checkpoint folder, a TensorFlow
            SavedModel folder, a Keras ``.keras``/``.h5`` file, or a pickle-based file
            (``.joblib``/``.pkl``, or a ``torch.save``d module), read only with
            ``allow_pickle``; or, from Python, the model object itself.
        target: The ``.onnx`` file to write.
        framework: ``auto`` (from the loaded object), ``sklearn``, ``pytorch``,
            ``huggingface`` or ``tensorflow``.
        sample: An ``.npz`` (or, from Python, a mapping of arrays): one array, or one per
            input named as the model names them.
        rows: Random rows to generate when no sample is given.
        opset: The ONNX opset to target.
        axes: PyTorch: the dynamic axes per input (default: batch, and sequence for token
            ids and 3-D float inputs); an input given ``{}`` is exported static. TensorFlow
            takes them from the signature (None axes are dynamic).
        allow_pickle: Read pickle-based files (they run code when loaded).
        tolerance: What counts as the same answer (default cos >= 0.9999 or max abs <= 1e-4).
        seed: The random rows' seed.
        task: A transformers checkpoint's task (:data:`huggingface.TASKS`).
        external: Write the weights to ``MODEL.onnx.data`` beside the graph; None: when they
            pass 1.5 GB (protobuf cannot hold a graph over 2 GB in one file).
        label: What the report calls the source (default: ``source``, or a model object's
            class).
        inputs: A transformers checkpoint: the tokenizer's inputs the ONNX model takes
            (default all); the others keep the model's defaults (``token_type_ids``: zeros,
            one segment).

    Raises:
        ConvertError: The source cannot be loaded or converted, or the converted model does
            not run on the sample (an axis fixed that should be dynamic, say).
        ParityError: The converted model answers differently (the report names the worst row).
    """
    started = time.perf_counter()
    tolerance = tolerance or Tolerance()
    if framework not in FRAMEWORKS:
        raise ConvertError(f"framework must be one of {', '.join(FRAMEWORKS)}, not {framework!r}")
    if target.suffix != ".onnx":
        raise ConvertError(f"--out must name an .onnx file, not {target.name}")
    loaded = None if isinstance(source, str | Path) else source
    where = "" if loaded is not None else str(source)  # a path or module:attribute to load
    if loaded is not None:
        label = label or f"{type(loaded).__module__}.{type(loaded).__qualname__} (in memory)"
    shown = label or where  # what the report and the messages call it
    checkpoint = Path(where) if where and hf.is_checkpoint(Path(where)) else None
    if inputs and checkpoint is None:
        raise ConvertError("--inputs is for transformers checkpoints")
    if checkpoint is not None:
        _expect(framework, "huggingface", f"{shown} is a transformers checkpoint")
        converted, described = _convert_checkpoint(checkpoint, task, sample, opset, axes, inputs)
    elif where and tfk.is_saved_model(Path(where)):
        _expect(framework, "tensorflow", f"{shown} is a TensorFlow SavedModel")
        saved = tfk.load_saved_model(Path(where))
        converted, described = _convert_tensorflow(saved, sample, rows, seed, opset, axes)
    else:
        model = loaded if loaded is not None else _load(where, allow_pickle=allow_pickle)
        kind = _framework(model, shown, framework)
        if kind == "tensorflow":
            keras = tfk.keras_source(model, f"Keras model {shown}")
            converted, described = _convert_tensorflow(keras, sample, rows, seed, opset, axes)
        else:
            feed, described = _feed(model, kind, sample, rows, seed)
            if kind == "sklearn":
                converted = sk.convert(model, feed, opset)
            else:
                converted = pt.convert(model, feed, opset, axes)
    target.parent.mkdir(parents=True, exist_ok=True)
    if external is None:
        external = _weight_bytes(converted.model) > EXTERNAL_DATA_BYTES
    with tempfile.TemporaryDirectory(prefix=".onnxkit-convert-", dir=target.parent) as folder:
        staged = Path(folder) / target.name
        write_proto(converted.model, staged, external=external)
        report = _check(converted, staged, shown, target, opset, described, tolerance)
        report = replace(
            report,
            seconds=time.perf_counter() - started,
            task=task if checkpoint is not None else None,
        )
        report_file = report_path(target)
        if not report.parity.passed:
            report_file.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
            stale = f"; {target} is an earlier one, left as it was" if target.exists() else ""
            raise ParityError(
                "the ONNX model does not answer like the source; nothing was written: "
                + "; ".join(report.parity.failures())
                + f" (report: {report_file}{stale})"
            )
        for file in Path(folder).iterdir():  # the graph and its external data
            os.replace(file, target.parent / file.name)
    copied = hf.copy_tokenizer(checkpoint, target) if checkpoint is not None else None
    if copied is not None:
        report = replace(report, tokenizer=copied.name)
    report_file.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _weight_bytes(model: Any) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def _check(
    converted: Converted,
    staged: Path,
    source: str,
    target: Path,
    opset: int,
    described: str,
    tolerance: Tolerance,
) -> ConversionReport:
    """Run the staged ONNX model on the converter's feeds and compare with the source."""
    actual, session = _run(staged, converted.feed)
    names = [o.name for o in session.get_outputs()]
    if len(actual) < len(converted.expected):
        raise ConvertError(
            f"the ONNX model has {len(actual)} outputs where the source answers "
            f"{len(converted.expected)}"
        )
    compared = [
        compare_output(name, got, want, how, tolerance)
        for name, got, (want, how) in zip(names, actual, converted.expected, strict=False)
    ]
    for label, feed, expected in converted.variants:
        try:
            answers = session.run(None, feed)
        except Exception as exc:  # onnxruntime's shape errors
            raise ConvertError(
                f"the ONNX model declares a dynamic axis but fails at {label}: "
                f"{type(exc).__name__}: {str(exc)[:300]}. A shape the trace saw as a constant "
                "(a Python int from tensor.size()) is baked into the graph"
            ) from exc
        compared += [
            compare_output(f"{name}@{label}", got, want, how, tolerance)
            for name, got, (want, how) in zip(names, answers, expected, strict=False)
        ]
    parity = ParityReport(
        rows=len(next(iter(converted.feed.values()))), tolerance=tolerance, outputs=compared
    )
    data = staged.with_name(f"{target.name}.data")
    return ConversionReport(
        source=source,
        framework=converted.framework,
        converter=_versions(converted.packages),
        opset=opset,
        sample=described,
        inputs=_signature(session.get_inputs()),
        outputs=_signature(session.get_outputs()),
        parity=parity,
        target=str(target) if parity.passed else None,
        notes=[f"weights in {data.name} (external data)"] if data.exists() else [],
    )


def _convert_checkpoint(
    folder: Path,
    task: str,
    sample: Sample,
    opset: int,
    axes: dict[str, dict[int, str]] | None,
    inputs: Sequence[str] | None,
) -> tuple[Converted, str]:
    tokenizer, model = hf.load_checkpoint(folder, task)
    names = hf.input_names(tokenizer)
    if inputs:
        unknown = [n for n in inputs if n not in names]
        if unknown or "input_ids" not in inputs:
            raise ConvertError(
                f"--inputs must name input_ids and only the tokenizer's inputs "
                f"({', '.join(names)}), not {', '.join(inputs)}"
            )
        names = [n for n in names if n in inputs]
    if sample is not None:
        feed, described = _feed(model, "pytorch", sample, DEFAULT_ROWS, 0)
        missing = [n for n in names if n not in feed]
        if missing:
            where = sample.name if isinstance(sample, Path) else "the sample"
            raise ConvertError(f"{where} lacks {', '.join(missing)} (the tokenizer's inputs)")
    elif tokenizer is None:
        raise ConvertError(f"{folder} has no tokenizer to make a sample from: pass --sample")
    else:
        feed, described = hf.default_feed(tokenizer, names)
    converted = pt.convert(hf.wrap(model, task, names), feed, opset, axes)
    return replace(converted, framework="huggingface", packages=hf.PACKAGES), described


def _convert_tensorflow(
    source: tfk.Source,
    sample: Sample,
    rows: int,
    seed: int,
    opset: int,
    axes: dict[str, dict[int, str]] | None,
) -> tuple[Converted, str]:
    if axes:
        raise ConvertError(
            "--dynamic-axes is for PyTorch: a TensorFlow model's signature says which axes are "
            "dynamic (None in its input shapes)"
        )
    feed, described = _feed(source, "tensorflow", sample, rows, seed)
    return tfk.convert(source, feed, opset), described


def _expect(asked: str, found: str, what: str) -> None:
    if asked not in ("auto", found):
        raise ConvertError(f"{what}, not {asked}")


def _framework(model: Any, source: str, asked: str) -> str:
    found = (
        "sklearn"
        if sk.is_estimator(model)
        else "pytorch"
        if pt.is_module(model)
        else "tensorflow"
        if tfk.is_keras_model(model)
        else None
    )
    if found is None:
        raise ConvertError(
            f"{source} is a {type(model).__module__}.{type(model).__name__}, not a model onnxkit "
            "convert reads: it converts scikit-learn estimators and pipelines, PyTorch modules "
            "and Keras models"
        )
    _expect(asked, found, f"{source} is a {found} model")
    return found


def _load(source: str, *, allow_pickle: bool) -> Any:
    path = Path(source)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return load_pickle(path, allow_pickle=allow_pickle)
    if path.suffix.lower() in pt.TORCH_SUFFIXES:
        return pt.load_file(path, allow_pickle=allow_pickle)
    if path.suffix.lower() in tfk.KERAS_SUFFIXES:
        return tfk.load_file(path)
    if is_reference(source):
        return load_reference(source)
    if path.exists():
        raise ConvertError(
            f"cannot tell what {path.name} holds: give module:attribute, a .joblib/.pkl, "
            ".pt/.pth/.ts or .keras/.h5 file, or a SavedModel or transformers checkpoint folder"
        )
    raise ConvertError(f"no file at {source}, and it is not a module:attribute reference")


def _feed(
    model: Any, kind: str, sample: Sample, rows: int, seed: int
) -> tuple[dict[str, np.ndarray], str]:
    if isinstance(sample, Mapping):
        arrays = {k: np.asarray(v) for k, v in sample.items()}
        return _sample_feed(arrays, kind, "the given arrays")
    if sample is not None:
        try:
            with np.load(sample) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise ConvertError(f"cannot read {sample}: {exc}") from exc
        return _sample_feed(arrays, kind, str(sample))
    if rows < 2:
        raise ConvertError(f"rows must be at least 2, not {rows}")
    makers = {"sklearn": sk.default_feed, "pytorch": pt.default_feed}
    made = makers.get(kind, tfk.default_feed)(model, rows, seed)
    if made is None:
        what = model.described if kind == "tensorflow" else type(model).__name__
        raise ConvertError(
            f"cannot tell what {what} takes (not fitted, no first layer to read the shape from, "
            "or inputs that are not floats, such as token ids): pass --sample rows.npz"
        )
    return made


def _sample_feed(
    arrays: dict[str, np.ndarray], kind: str, where: str
) -> tuple[dict[str, np.ndarray], str]:
    """The feed from sample arrays (float ones as float32), and what the report calls it."""
    name = Path(where).name
    if not arrays or any(a.ndim < 1 or not len(a) for a in arrays.values()):
        raise ConvertError(f"{name}: every array needs rows")
    if len({len(a) for a in arrays.values()}) > 1:
        raise ConvertError(f"{name}: the arrays hold different numbers of rows")
    if kind == "sklearn" and len(arrays) > 1:
        if "X" not in arrays:
            raise ConvertError(
                f"{name} holds {', '.join(sorted(arrays))}: give one array, or name the input "
                "rows X"
            )
        arrays = {"X": arrays["X"]}
    feed = {k: a.astype(np.float32) if a.dtype.kind == "f" else a for k, a in arrays.items()}
    shapes = ", ".join(f"{k} {'x'.join(map(str, a.shape))} {a.dtype}" for k, a in feed.items())
    return feed, f"{where}: {shapes}"


def _run(model: Path, feed: dict[str, np.ndarray]) -> tuple[list[np.ndarray], Any]:
    """Run all rows as one batch, and the first row alone: a batch axis fixed at export
    fails one of the two."""
    from onnxkit.session import load_session

    try:
        session = load_session(model, intra_op_threads=1)
    except Exception as exc:
        raise ConvertError(f"onnxruntime cannot load the converted model: {exc}") from exc
    names = [o.name for o in session.get_outputs()]
    rows = len(next(iter(feed.values())))
    try:
        outputs = session.run(None, feed)
        single = session.run(None, {k: v[:1] for k, v in feed.items()})
    except Exception as exc:  # onnxruntime's shape and type errors
        raise ConvertError(
            f"the converted model does not run on the sample ({rows} rows, and 1 row): "
            f"{type(exc).__name__}: {str(exc)[:300]}. Is an axis fixed that should be dynamic?"
        ) from exc
    for name, whole, one in zip(names, outputs, single, strict=True):
        if len(whole) != rows or len(one) != 1:
            raise ConvertError(
                f"output {name!r} has {len(whole)} rows for {rows} input rows: the batch "
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
