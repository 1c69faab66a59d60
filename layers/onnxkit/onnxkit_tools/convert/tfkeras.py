"""TensorFlow SavedModels and Keras models to ONNX through tf2onnx, and the source's own
answers on the same feed for the parity check.

A SavedModel is converted from its ``serving_default`` signature, as TensorFlow Serving
serves it, the way tf2onnx's own command line does (variables frozen, captures kept out of
the inputs): its input and output names become the ONNX model's. A Keras model (a ``.keras``
or ``.h5`` file, or ``module:attribute``) is first exported to a SavedModel with
``model.export``, so its inputs are named after its Input layers and its outputs ``output_0``,
``output_1``, ... ``.keras`` files load in Keras's safe mode: a Lambda layer's pickled code is
refused, never run.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from onnxkit_tools.convert.base import Converted, kind_of, shorter_variants
from onnxkit_tools.convert.errors import ConvertError

KERAS_SUFFIXES = (".keras", ".h5")
SIGNATURE = "serving_default"  # what `model.export()` and tf.saved_model.save write, and serve
# The length of a generated variable axis past the batch (as PyTorch's: no model's width).
SEQUENCE = 13
# ONNX domains whose operators onnx.defs knows: a node there that it does not know is a
# TensorFlow op tf2onnx left as it was (it converts on, by design, past what it cannot map).
_STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
_INSTALL = "pip install 'onnxkit[convert-tensorflow]' (tensorflow-cpu and tf2onnx)"


def packages() -> tuple[str, ...]:
    """The distributions the report records: TensorFlow's (the CPU build when that is the one
    installed), Keras and tf2onnx."""
    try:
        version("tensorflow-cpu")
        tensorflow = "tensorflow-cpu"
    except PackageNotFoundError:
        tensorflow = "tensorflow"
    return (tensorflow, "keras", "tf2onnx")


def is_saved_model(path: Path) -> bool:
    """A TensorFlow SavedModel folder (``saved_model.pb`` inside)."""
    return path.is_dir() and (path / "saved_model.pb").is_file()


def is_keras_model(model: Any) -> bool:
    """A Keras model (Keras 3 or tf.keras), told without importing TensorFlow."""
    return any(
        cls.__name__ in ("Model", "Functional", "Sequential")
        and cls.__module__.split(".")[0] in ("keras", "tf_keras")
        for cls in type(model).__mro__
    )


@dataclass(frozen=True)
class Source:
    """A SavedModel's serving signature.

    Attributes:
        specs: The inputs as ``tf.TensorSpec`` (named; None where an axis is free).
        outputs: The output names.
        call: Runs the signature on tensors, one per spec, and answers a dict by output name.
        described: What was loaded, for messages.
        folder: The SavedModel folder.
        signature: The signature's name.
        scratch: What keeps ``folder`` alive when it is a temporary export.
    """

    specs: list[Any]
    outputs: list[str]
    call: Callable[..., dict[str, Any]]
    described: str
    folder: Path
    signature: str
    scratch: Any = field(default=None, repr=False)

    @property
    def input_names(self) -> list[str]:
        """The inputs' names, in order."""
        return [spec.name for spec in self.specs]

    def answer(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The source's answers on ``feed`` (keyed by input name), in :attr:`outputs` order."""
        import tensorflow as tf

        tensors = [tf.constant(feed[s.name], dtype=s.dtype) for s in self.specs]
        answered = self.call(*tensors)
        return [np.asarray(answered[name]) for name in self.outputs]


def _quiet() -> None:
    """TensorFlow's C++ banner and tf2onnx's per-op log lines (its errors become ours)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("tensorflow", "tf2onnx"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _import() -> Any:
    _quiet()
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise ConvertError(f"converting TensorFlow or Keras models needs {_INSTALL}") from exc
    tf.get_logger().setLevel(logging.ERROR)  # tf2onnx's calls of deprecated TF1 freezing APIs
    return tf


def load_file(path: Path) -> Any:
    """A Keras model from a ``.keras`` or ``.h5`` file, in safe mode.

    Raises:
        ConvertError: Missing, unreadable, or holding code (a Lambda layer) that safe mode
            refuses.
    """
    _import()
    import keras

    if not path.is_file():
        raise ConvertError(f"no file at {path}")
    try:
        return keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError, OSError, TypeError, ...
        reason = f"{type(exc).__name__}: {str(exc)[:300]}"
        if "safe_mode" in str(exc):
            reason = (
                "it holds Python code (a Lambda layer), which loading would run; rebuild the "
                "model from your code and point at it as module:factory"
            )
        raise ConvertError(f"cannot read {path.name}: {reason}") from exc


def load_saved_model(path: Path, described: str | None = None) -> Source:
    """A SavedModel folder's ``serving_default`` signature (its only one, if named otherwise).

    Raises:
        ConvertError: Unreadable, or no signature to serve.
    """
    tf = _import()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # TensorFlow's errors are its own classes
        raise ConvertError(f"cannot load the SavedModel at {path}: {str(exc)[:300]}") from exc
    signatures = dict(loaded.signatures)
    if SIGNATURE in signatures:
        name = SIGNATURE
    elif len(signatures) == 1:
        name = next(iter(signatures))
    else:
        found = ", ".join(sorted(signatures)) or "none"
        raise ConvertError(
            f"the SavedModel at {path} has no {SIGNATURE} signature to serve (it has: {found}); "
            "export one with model.export(folder) or tf.saved_model.save(..., signatures=...)"
        )
    positional, named = signatures[name].structured_input_signature
    if positional:
        raise ConvertError(f"signature {name!r} takes positional inputs; serve named ones")
    names = sorted(named)
    specs = [tf.TensorSpec(named[n].shape, named[n].dtype, name=n) for n in names]
    outputs = list(signatures[name].structured_outputs)

    def call(*tensors: Any) -> dict[str, Any]:
        # Through ``loaded``, which owns the variables the signature reads: it lives as long
        # as this function does.
        return dict(loaded.signatures[name](**dict(zip(names, tensors, strict=True))))

    described = described or f"SavedModel {path} (signature {name!r})"
    return Source(specs, outputs, call, described, path, name)


def keras_source(model: Any, described: str) -> Source:
    """A Keras model, exported to a temporary SavedModel (``model.export``, inference mode).

    Raises:
        ConvertError: Keras cannot export it (a subclassed model never called, say).
    """
    _import()
    scratch = tempfile.TemporaryDirectory(prefix="onnxkit-keras-")
    folder = Path(scratch.name) / "saved_model"
    try:
        model.export(str(folder), verbose=False)
    except Exception as exc:  # Keras's own errors while it traces the model
        scratch.cleanup()
        raise ConvertError(
            f"Keras could not export {described} to a SavedModel: {type(exc).__name__}: "
            f"{str(exc)[:300]}"
        ) from exc
    source = load_saved_model(folder, described)
    return replace(source, scratch=scratch)


def default_feed(source: Source, rows: int, seed: int) -> tuple[dict[str, np.ndarray], str] | None:
    """Random normal rows for float inputs (free axes past the batch get
    :data:`SEQUENCE`); None when an input is not float (token ids need their vocabulary)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in source.specs:
        if not spec.dtype.is_floating:
            return None
        shape = (rows, *(SEQUENCE if d is None else d for d in spec.shape[1:]))
        feed[spec.name] = rng.normal(size=shape).astype(spec.dtype.as_numpy_dtype)
    shapes = ", ".join(f"{n} {'x'.join(map(str, a.shape))}" for n, a in feed.items())
    return feed, f"random normal {shapes} (seed {seed})"


def convert(source: Source, feed: dict[str, np.ndarray], opset: int) -> Converted:
    """Convert ``source`` with tf2onnx and run the source itself on ``feed``.

    ``feed`` is keyed by the input names (one unnamed array goes to the only input); the
    axes the signature leaves free (None) stay dynamic: the batch is named ``batch``, the
    others ``sequence`` (axis 1) or ``dim<k>``.

    Raises:
        ConvertError: The feed does not fit the inputs, the source fails on it, or tf2onnx
            cannot map an op (the message names the TensorFlow ops).
    """
    _import()
    import tf2onnx
    from tf2onnx import tf_loader

    feed = _fit(source, feed)
    try:
        expected = source.answer(feed)
    except Exception as exc:  # the user's model
        raise ConvertError(f"the model fails on the sample: {type(exc).__name__}: {exc}") from exc
    try:
        graph, inputs, outputs, _, renames = tf_loader.from_saved_model(
            str(source.folder),
            None,
            None,
            tag=["serve"],
            signatures=[source.signature],
            return_initialized_tables=True,
            return_tensors_to_rename=True,
        )
        model, _ = tf2onnx.convert.from_graph_def(
            graph,
            name=source.signature,
            input_names=inputs,
            output_names=outputs,
            opset=opset,
            tensors_to_rename=renames,
        )
    except Exception as exc:  # tf2onnx's own errors, and TensorFlow's while it traces
        raise ConvertError(
            f"tf2onnx could not convert {source.described}: {type(exc).__name__}: {str(exc)[:300]}"
        ) from exc
    unmapped = sorted(_unmapped_ops(model.graph))
    if unmapped:
        raise ConvertError(
            f"{source.described} uses TensorFlow ops with no ONNX equivalent: "
            f"{', '.join(unmapped)}. Replace them in the model (or compute them outside it)"
        )
    order = [o.name for o in model.graph.output]
    if sorted(order) != sorted(source.outputs):
        raise ConvertError(f"tf2onnx named the outputs {order}, the source {source.outputs}")
    _name_axes(model, source)
    answers = dict(zip(source.outputs, expected, strict=True))
    axes = {s.name: _free_axes(s) for s in source.specs}
    return Converted(
        model,
        [(answers[name], kind_of(answers[name])) for name in order],
        "tensorflow",
        packages(),
        feed,
        shorter_variants(feed, axes, lambda cut: _in_order(source, cut, order)),
    )


def _in_order(source: Source, feed: dict[str, np.ndarray], order: list[str]) -> list[np.ndarray]:
    answers = dict(zip(source.outputs, source.answer(feed), strict=True))
    return [answers[name] for name in order]


def _fit(source: Source, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feed`` keyed and typed as the inputs are."""
    names = source.input_names
    if len(feed) == 1 and len(names) == 1 and names[0] not in feed:
        feed = {names[0]: next(iter(feed.values()))}
    missing = [n for n in names if n not in feed]
    if missing:
        raise ConvertError(
            f"the sample names {', '.join(sorted(feed))}; the model takes {', '.join(names)}"
        )
    fitted = {}
    for spec in source.specs:
        array = feed[spec.name]
        if len(array.shape) != len(spec.shape) or any(
            d is not None and d != n for d, n in zip(spec.shape[1:], array.shape[1:], strict=True)
        ):
            want = "x".join("?" if d is None else str(d) for d in spec.shape)
            raise ConvertError(
                f"input {spec.name!r} takes {want}, the sample gives "
                f"{'x'.join(map(str, array.shape))}"
            )
        fitted[spec.name] = array.astype(spec.dtype.as_numpy_dtype, copy=False)
    return fitted


def _free_axes(spec: Any) -> dict[int, str]:
    """The axes a spec leaves free, by the names :func:`convert` gives them."""
    return {
        axis: "batch" if axis == 0 else "sequence" if axis == 1 else f"dim{axis}"
        for axis, size in enumerate(spec.shape)
        if size is None
    }


def _name_axes(model: Any, source: Source) -> None:
    """tf2onnx names free axes ``unk__N``: the inputs' get :func:`_free_axes`'s names, every
    output's first axis ``batch``, and an output axis sharing an input's name follows it."""
    renamed: dict[str, str] = {}
    by_name = {s.name: s for s in source.specs}
    for value in model.graph.input:
        spec = by_name.get(value.name)
        if spec is None:
            continue
        names = _free_axes(spec)
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis in names and dim.dim_param:
                renamed[dim.dim_param] = names[axis]
                dim.dim_param = names[axis]
    for value in model.graph.output:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis == 0 and not dim.dim_value:
                dim.dim_param = "batch"
            elif dim.dim_param in renamed:
                dim.dim_param = renamed[dim.dim_param]


def _unmapped_ops(graph: Any) -> set[str]:
    """Operators in the standard domains that ONNX does not define, subgraphs included."""
    import onnx

    found = set()
    for node in graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        if domain in _STANDARD_DOMAINS and not onnx.defs.has(node.op_type, domain):
            found.add(node.op_type)
        for attribute in node.attribute:
            for subgraph in (attribute.g, *attribute.graphs):
                if subgraph.node:
                    found |= _unmapped_ops(subgraph)
    return found
