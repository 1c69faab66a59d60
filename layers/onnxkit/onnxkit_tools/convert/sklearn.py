"""scikit-learn (and estimators that follow its API) to ONNX through skl2onnx, and the same
estimator's answers for the parity check."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from onnxkit_tools.convert.base import Converted
from onnxkit_tools.convert.errors import ConvertError

PACKAGES = ("skl2onnx", "scikit-learn")
BOOSTERS = ("xgboost", "lightgbm")
INPUT = "X"  # what skl2onnx names the input of a model converted from an array
# What numpy names arrays saved without a name (np.savez(path, rows)): such an input is INPUT.
_UNNAMED = re.compile(r"^arr_\d+$")
# The ai.onnx.ml opset of the tree and linear operators: 3 is the newest that skl2onnx and
# onnxmltools' booster converters both write (onnxmltools refuses 5).
ML_OPSET = 3


def opset_map(opset: int) -> dict[str, int]:
    """The opsets to target: ``opset`` for the default domain, :data:`ML_OPSET` for ML ops."""
    return {"": opset, "ai.onnx.ml": ML_OPSET}


def is_estimator(model: Any) -> bool:
    """A fitted-or-not scikit-learn style estimator (it has ``fit`` and ``get_params``)."""
    return hasattr(model, "fit") and hasattr(model, "get_params")


def _final_step(model: Any) -> Any:
    steps = getattr(model, "steps", None)
    return steps[-1][1] if steps else model


def is_classifier(model: Any) -> bool:
    """The model (or a pipeline's last step) predicts labels."""
    from sklearn.base import is_classifier as sklearn_is_classifier

    return bool(sklearn_is_classifier(_final_step(model)))


def default_feed(model: Any, rows: int, seed: int) -> tuple[dict[str, np.ndarray], str] | None:
    """Random normal float32 rows as wide as the fitted model says it takes, or None."""
    count = getattr(model, "n_features_in_", None)
    if count is None:
        return None
    array = np.random.default_rng(seed).normal(size=(rows, int(count))).astype(np.float32)
    return {INPUT: array}, f"{rows} random normal rows x {count} float32 (seed {seed})"


def convert(model: Any, feed: dict[str, np.ndarray], opset: int) -> Converted:
    """Convert ``model`` on the one array of ``feed`` and ask the estimator the same rows.

    Raises:
        ConvertError: The feed is not one array, or the conversion or the estimator fails.
    """
    if len(feed) != 1:
        raise ConvertError(
            f"a scikit-learn model takes one array of rows x features, not {', '.join(feed)}"
        )
    name, sample = next(iter(feed.items()))
    if sample.ndim != 2:
        raise ConvertError(f"want rows x features, got shape {sample.shape}")
    onnx_model = convert_sklearn(model, sample, opset, INPUT if _UNNAMED.match(name) else name)
    name = onnx_model.graph.input[0].name
    used = [b for b in BOOSTERS if _uses(model, b)]
    packages = (*PACKAGES, *(("onnxmltools", *used) if used else ()))
    return Converted(
        onnx_model, reference_outputs(model, sample), "sklearn", packages, {name: sample}
    )


def _uses(model: Any, package: str) -> bool:
    """The model, or one of a pipeline's steps, comes from ``package``."""
    steps = [step for _, step in getattr(model, "steps", [])] or [model]
    return any(type(step).__module__.split(".")[0] == package for step in steps)


def convert_sklearn(model: Any, sample: np.ndarray, opset: int, name: str = INPUT) -> Any:
    """An ONNX model of ``model`` whose input, ``name``, takes ``sample``'s type and width (its
    batch axis dynamic); classifiers give ``label`` and a plain ``probabilities`` tensor (no
    ZipMap).

    Raises:
        ConvertError: skl2onnx is missing, has no converter for the model, or fails.
    """
    try:
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import guess_data_type
    except ImportError as exc:
        raise ConvertError(
            "converting scikit-learn models needs skl2onnx: pip install 'onnxkit[tools]'"
        ) from exc
    _register_boosters()
    options = {id(_final_step(model)): {"zipmap": False}} if is_classifier(model) else None
    ((_, guessed),) = guess_data_type(sample[:1])
    inputs = [(name, type(guessed)([None, *sample.shape[1:]]))]
    try:
        return to_onnx(model, initial_types=inputs, target_opset=opset_map(opset), options=options)
    except Exception as exc:  # skl2onnx raises RuntimeError, MissingShapeCalculator, ...
        name = type(_final_step(model)).__name__
        raise ConvertError(
            f"skl2onnx could not convert {name}: {type(exc).__name__}: {str(exc)[:300]}"
        ) from exc


# package -> (onnxmltools' converter module and function, the classifier and regressor classes,
# the alias skl2onnx registers them under)
_BOOSTER_CONVERTERS = {
    "xgboost": (
        "onnxmltools.convert.xgboost.operator_converters.XGBoost",
        "convert_xgboost",
        ("XGBClassifier", "XGBRegressor"),
        "XGBoost",
    ),
    "lightgbm": (
        "onnxmltools.convert.lightgbm.operator_converters.LightGbm",
        "convert_lightgbm",
        ("LGBMClassifier", "LGBMRegressor"),
        "LightGbm",
    ),
}


def _register_boosters() -> None:
    """Teach skl2onnx XGBoost's and LightGBM's scikit-learn estimators (alone or in a
    pipeline) with onnxmltools' converters, for whichever of the two is imported: a fitted
    booster means its package is, and neither is imported otherwise.

    Raises:
        ConvertError: A booster is in use but onnxmltools is not installed.
    """
    import importlib
    import sys

    wanted = [name for name in BOOSTERS if name in sys.modules]
    if not wanted:
        return
    try:
        from skl2onnx import update_registered_converter
        from skl2onnx.common.shape_calculator import (
            calculate_linear_classifier_output_shapes as classifier_shapes,
        )
        from skl2onnx.common.shape_calculator import (
            calculate_linear_regressor_output_shapes as regressor_shapes,
        )
    except ImportError:
        return  # convert_sklearn says skl2onnx is missing
    options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    for package in wanted:
        module_name, function, (classifier, regressor), alias = _BOOSTER_CONVERTERS[package]
        try:
            converter = getattr(importlib.import_module(module_name), function)
        except ImportError as exc:
            raise ConvertError(
                "converting XGBoost or LightGBM models needs onnxmltools: pip install "
                "'onnxkit[convert-boosters]'"
            ) from exc
        booster = sys.modules[package]
        update_registered_converter(
            getattr(booster, classifier), f"{alias}{classifier}", classifier_shapes, converter,
            options=options,
        )  # fmt: skip
        update_registered_converter(
            getattr(booster, regressor), f"{alias}{regressor}", regressor_shapes, converter
        )


def reference_outputs(model: Any, sample: np.ndarray) -> list[tuple[np.ndarray, str]]:
    """What the estimator itself answers, in skl2onnx's output order, each with its kind:
    classifiers ``(labels, label)`` then ``(probabilities, float)`` when it has
    ``predict_proba``; regressors ``predict``; transformers ``transform``.

    Raises:
        ConvertError: The estimator cannot predict on the sample (not fitted, wrong width).
    """
    try:
        if is_classifier(model):
            answers = [(np.asarray(model.predict(sample)), "label")]
            if hasattr(model, "predict_proba"):
                answers.append((np.asarray(model.predict_proba(sample)), "float"))
            return answers
        if hasattr(model, "predict"):
            return [(np.asarray(model.predict(sample)), "float")]
        return [(np.asarray(model.transform(sample)), "float")]
    except Exception as exc:  # NotFittedError, ValueError on the width, ...
        raise ConvertError(
            f"{type(model).__name__} cannot answer the sample: {type(exc).__name__}: {exc}"
        ) from exc
