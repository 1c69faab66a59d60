"""Where a source model comes from: a ``module:attribute`` the user's own code defines, or a
pickle-based file (joblib, pickle) read only when the user says they trust it."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any

from onnxkit_tools.convert.errors import ConvertError
from onnxkit_tools.convert.sklearn import is_estimator
from onnxkit_tools.convert.tfkeras import is_keras_model

PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_reference(source: str) -> bool:
    """``package.module:attribute`` (the attribute may be dotted)."""
    return bool(_REFERENCE.match(source)) and not Path(source).exists()


def is_torch_module(value: Any) -> bool:
    """A ``torch.nn.Module`` (TorchScript included), told without importing torch."""
    return any(
        f"{cls.__module__}.{cls.__qualname__}"
        in ("torch.nn.modules.module.Module", "torch.jit._script.ScriptModule")
        for cls in type(value).__mro__
    )


def is_model(value: Any) -> bool:
    """A scikit-learn style estimator (``fit`` and ``get_params``), a PyTorch module or a
    Keras model: what a factory returns, never a factory itself."""
    return is_estimator(value) or is_torch_module(value) or is_keras_model(value)


def load_reference(source: str) -> Any:
    """Import ``module:attribute`` from the current folder or ``sys.path``; anything callable
    that is neither a model nor a class (a factory, wrapped or not) is called without
    arguments and its result is the model.

    Raises:
        ConvertError: The module does not import or has no such attribute.
    """
    module_name, _, attribute = source.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as `python -m` would find the user's module
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConvertError(f"cannot import {module_name!r} for {source}: {exc}") from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConvertError(f"{module_name!r} has no attribute {attribute!r} ({source})")
        target = getattr(target, part)
    if callable(target) and not isinstance(target, type) and not is_model(target):
        try:
            return target()
        except Exception as exc:  # the user's factory
            raise ConvertError(f"{source}() failed: {type(exc).__name__}: {exc}") from exc
    return target


def load_pickle(path: Path, *, allow_pickle: bool) -> Any:
    """Read a joblib or pickle file, only when ``allow_pickle``.

    Unpickling runs whatever code the file names, so a file is read only when the user vouches
    for it; a served model artifact is never a pickle.

    Raises:
        ConvertError: Not allowed, missing, or not readable.
    """
    if not allow_pickle:
        raise ConvertError(
            f"{path.name} is a pickle: loading one runs any code it contains. Pass "
            "--allow-pickle if you made this file yourself, or point at the code that builds "
            "the model (module:factory)"
        )
    if not path.is_file():
        raise ConvertError(f"no file at {path}")
    try:
        import joblib

        return joblib.load(path)
    except Exception as exc:  # joblib re-raises whatever unpickling hit
        raise ConvertError(f"cannot read {path.name}: {type(exc).__name__}: {exc}") from exc
