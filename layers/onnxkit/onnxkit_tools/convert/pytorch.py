"""PyTorch modules to ONNX through ``torch.onnx.export`` (batch and sequence axes dynamic by
default), and the module's own answers on the same feed for the parity check."""

from __future__ import annotations

import inspect
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from onnxkit_tools.convert.base import Converted, kind_of, shorter_variants
from onnxkit_tools.convert.errors import ConvertError
from onnxkit_tools.convert.sources import is_torch_module

PACKAGES = ("torch",)
TORCH_SUFFIXES = (".pt", ".pth", ".ts")
# The sequence length of generated token inputs: unlike 8, 16, 32 or 64 it is no model's width,
# so an output axis of this size is the sequence.
SEQUENCE = 13


def is_module(model: Any) -> bool:
    """A ``torch.nn.Module`` (TorchScript included), told without importing torch."""
    return is_torch_module(model)


def load_file(path: Path, *, allow_pickle: bool) -> Any:
    """A TorchScript archive (no pickled code), or with ``allow_pickle`` a ``torch.save``d
    module.

    Raises:
        ConvertError: Missing, weights only (a state dict), or a pickle without
            ``allow_pickle``.
    """
    import torch

    if not path.is_file():
        raise ConvertError(f"no file at {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is still read
            return torch.jit.load(str(path), map_location="cpu")
    except RuntimeError:
        pass  # not TorchScript: a torch.save file
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=not allow_pickle)
    except Exception as exc:
        if not allow_pickle:
            raise ConvertError(
                f"{path.name} is a pickled module: loading one runs any code it contains. Pass "
                "--allow-pickle if you saved it yourself, save it with torch.jit.script(...)"
                ".save(), or point at the code that builds it (module:factory)"
            ) from exc
        raise ConvertError(f"cannot read {path.name}: {type(exc).__name__}: {exc}") from exc
    if isinstance(loaded, dict):
        raise ConvertError(
            f"{path.name} holds weights only (a state dict): point at module:factory, code that "
            "builds the module and loads them"
        )
    return loaded


def input_names(module: Any) -> list[str]:
    """The forward method's positional parameters (a TorchScript module's as compiled), or
    the names a wrapper with ``*tensors`` declares in ``onnx_input_names``."""
    declared = getattr(module, "onnx_input_names", None)
    if declared:
        return list(declared)
    forward = module.forward
    try:
        parameters = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError):  # TorchScript methods have no Python signature
        schema = getattr(forward, "schema", None)
        if schema is None:
            return ["input"]
        return [a.name for a in schema.arguments if a.name != "self"]
    return [
        p.name
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"
    ]


def default_feed(module: Any, rows: int, seed: int) -> tuple[dict[str, np.ndarray], str] | None:
    """Rows for the first input, shaped from the module's first layer: Linear (rows x
    in_features), Conv1d/Conv2d (rows x channels x 32 [x 32]) or Embedding (token ids, rows x
    13); None when no such layer comes first."""
    import torch

    rng = np.random.default_rng(seed)
    name = input_names(module)[0]
    for layer in module.modules():
        if isinstance(layer, torch.nn.Linear):
            shape: tuple[int, ...] = (rows, layer.in_features)
        elif isinstance(layer, torch.nn.Conv1d):
            shape = (rows, layer.in_channels, 32)
        elif isinstance(layer, torch.nn.Conv2d):
            shape = (rows, layer.in_channels, 32, 32)
        elif isinstance(layer, torch.nn.Embedding):
            ids = rng.integers(0, layer.num_embeddings, (rows, SEQUENCE), dtype=np.int64)
            return {name: ids}, f"{rows} x {SEQUENCE} random token ids (seed {seed})"
        else:
            continue
        array = rng.normal(size=shape).astype(np.float32)
        return {name: array}, f"random normal float32 {'x'.join(map(str, shape))} (seed {seed})"
    return None


def default_axes(feed: dict[str, np.ndarray]) -> dict[str, dict[int, str]]:
    """Axis 0 is the batch; axis 1 is the sequence for token ids (2-D integers) and for 3-D
    float inputs (batch, sequence, features)."""
    axes = {}
    for name, array in feed.items():
        axes[name] = {0: "batch"}
        if (array.ndim == 2 and array.dtype.kind in "iu") or (
            array.ndim == 3 and array.dtype.kind == "f"
        ):
            axes[name][1] = "sequence"
    return axes


def convert(
    module: Any,
    feed: dict[str, np.ndarray],
    opset: int,
    axes: dict[str, dict[int, str]] | None = None,
) -> Converted:
    """Export ``module`` (in eval mode) on ``feed`` and run the module itself on the same feed.

    ``feed`` is keyed by the forward method's parameter names (one unnamed array goes to the
    first); ``axes`` replaces :func:`default_axes` for the inputs it names, and
    each output's batch axis (and sequence axis, when it has the input's length) follows.

    Raises:
        ConvertError: The feed does not fit forward's parameters, or the export fails.
    """
    import torch

    names = input_names(module)
    if set(feed) - set(names):
        if len(feed) == 1 and names:
            feed = {names[0]: next(iter(feed.values()))}
        else:
            raise ConvertError(
                f"the sample names {', '.join(sorted(feed))}; forward takes {', '.join(names)}"
            )
    used = [n for n in names if n in feed]
    unknown = set(axes or {}) - set(used)
    if unknown:
        raise ConvertError(
            f"--dynamic-axes names {', '.join(sorted(unknown))}; the inputs are {', '.join(used)}"
        )
    axes = {**default_axes(feed), **(axes or {})}
    module = module.eval()
    args = tuple(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in used)
    try:
        with torch.no_grad():
            answers = _flatten(module(*args))
    except Exception as exc:  # the user's forward
        raise ConvertError(f"the module fails on the sample: {type(exc).__name__}: {exc}") from exc
    outputs = getattr(module, "onnx_output_names", None) or (
        [f"output_{i}" for i in range(len(answers))] if len(answers) > 1 else ["output"]
    )
    if len(outputs) != len(answers):
        raise ConvertError(f"forward answered {len(answers)} tensors for outputs {outputs}")
    sequences = {feed[n].shape[1] for n in used if 1 in axes.get(n, {}) and feed[n].ndim > 1}
    output_axes = {
        name: {0: "batch", **({1: "sequence"} if _has_sequence(a, sequences) else {})}
        for name, a in zip(outputs, answers, strict=True)
    }
    with tempfile.TemporaryDirectory(prefix="onnxkit-export-") as scratch:
        exported = Path(scratch) / "model.onnx"
        _export(
            module,
            args,
            exported,
            used,
            outputs,
            {**{n: axes[n] for n in used if axes.get(n)}, **output_axes},
            opset,
        )
        import onnx

        onnx_model = onnx.load(str(exported))
    expected = [(a, kind_of(a)) for a in answers]
    used_feed = {n: feed[n] for n in used}
    return Converted(
        onnx_model,
        expected,
        "pytorch",
        PACKAGES,
        used_feed,
        shorter_variants(
            used_feed, {n: axes.get(n, {}) for n in used}, lambda cut: _answer(module, cut)
        ),
    )


def _export(
    module: Any,
    args: tuple[Any, ...],
    target: Path,
    inputs: list[str],
    outputs: list[str],
    axes: dict[str, dict[int, str]],
    opset: int,
) -> None:
    import torch

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's notices and tracer warnings
            torch.onnx.export(
                module,
                args,
                str(target),
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:  # unsupported operators, data-dependent control flow, ...
        raise ConvertError(
            f"torch.onnx.export could not export {type(module).__name__}: "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from exc


def _answer(module: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return _flatten(module(*(torch.from_numpy(a) for a in feed.values())))


def _has_sequence(answer: np.ndarray, sequences: set[int]) -> bool:
    return answer.ndim > 1 and len(sequences) == 1 and answer.shape[1] in sequences


def _flatten(result: Any) -> list[np.ndarray]:
    """Tensors out of a tensor, a tuple or list, or a dict (a transformers ModelOutput)."""
    import torch

    if isinstance(result, torch.Tensor):
        return [result.detach().cpu().numpy()]
    if isinstance(result, dict):
        result = list(result.values())
    if isinstance(result, list | tuple):
        return [array for item in result for array in _flatten(item)]
    raise ConvertError(f"forward returned a {type(result).__name__}, not tensors")
