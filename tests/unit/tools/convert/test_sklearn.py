"""onnxkit convert on scikit-learn models built here from packaged data sets: the written model
is checked against the estimator itself, and every failure is a clear error with nothing
written."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier

from onnxkit.session import load_session
from onnxkit_tools.cli import main
from onnxkit_tools.convert import ConvertError, ParityError, Tolerance, convert_model
from onnxkit_tools.convert.convert import _run
from onnxkit_tools.convert.parity import compare_output

MODULE = """\
import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.datasets import load_diabetes
from sklearn.ensemble import GradientBoostingRegressor


def regressor():
    X, y = load_diabetes(return_X_y=True)
    return GradientBoostingRegressor(n_estimators=30, random_state=0).fit(X, y)


class Doubler(RegressorMixin, BaseEstimator):
    def fit(self, X, y=None):
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X):
        return 2 * np.asarray(X).sum(axis=1)


def doubler():
    return Doubler().fit(np.ones((3, 4)))
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The user's own code: a module on sys.path that builds fitted models."""
    name = f"user_models_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_a_regressor_from_a_factory_converts_and_answers_like_sklearn(
    user_module: str, tmp_path: Path
) -> None:
    # GIVEN a gradient-boosted regressor the user's code fits on the diabetes data set
    out = tmp_path / "out" / "model.onnx"
    # WHEN it is converted
    report = convert_model(f"{user_module}:regressor", out)
    # THEN the ONNX model answers like a regressor fitted the same way, on the real rows,
    # at batch 1 and at batch 7 (the batch axis is dynamic)
    X, y = load_diabetes(return_X_y=True)
    reference = GradientBoostingRegressor(n_estimators=30, random_state=0).fit(X, y)
    session = load_session(out, intra_op_threads=1)
    rows = X.astype(np.float32)
    for batch in (rows[:1], rows[:7], rows):
        (got,) = session.run(None, {"X": batch})
        np.testing.assert_allclose(got.ravel(), reference.predict(batch), atol=1e-3)
    # ... and the report beside it says so
    written = json.loads((tmp_path / "out" / "model.conversion.json").read_text())
    assert written["parity"]["passed"] is True
    assert written["framework"] == "sklearn"
    assert written["inputs"][0]["shape"][1] == 10
    assert set(written["converter"]) == {"skl2onnx", "scikit-learn"}
    assert report.parity.outputs[0].max_abs_error <= 1e-4


def test_a_pickled_classifier_converts_with_identical_labels(tmp_path: Path) -> None:
    # GIVEN a random forest on iris saved with joblib
    X, y = load_iris(return_X_y=True)
    forest = RandomForestClassifier(n_estimators=15, random_state=0).fit(X, y)
    joblib.dump(forest, tmp_path / "forest.joblib")
    np.savez(tmp_path / "rows.npz", X=X.astype(np.float32))
    out = tmp_path / "forest.onnx"
    # WHEN it is converted from the command line, with the iris rows as the sample
    code = main(
        [
            "convert",
            str(tmp_path / "forest.joblib"),
            "--allow-pickle",
            "--sample",
            str(tmp_path / "rows.npz"),
            "--out",
            str(out),
        ]
    )
    # THEN every label is the forest's own, and the probabilities are a plain tensor
    assert code == 0
    session = load_session(out, intra_op_threads=1)
    label, probabilities = session.run(None, {"X": X.astype(np.float32)})
    np.testing.assert_array_equal(label, forest.predict(X.astype(np.float32)))
    np.testing.assert_allclose(probabilities, forest.predict_proba(X), atol=1e-5)


def test_a_pickle_is_read_only_when_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    joblib.dump({"not": "a model"}, tmp_path / "thing.pkl")

    code = main(["convert", str(tmp_path / "thing.pkl"), "--out", str(tmp_path / "m.onnx")])

    assert code == 1
    assert "--allow-pickle" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_an_estimator_skl2onnx_cannot_convert_is_a_clear_error(
    user_module: str, tmp_path: Path
) -> None:
    with pytest.raises(ConvertError, match="skl2onnx could not convert Doubler"):
        convert_model(f"{user_module}:doubler", tmp_path / "m.onnx")

    assert list(tmp_path.glob("m*")) == []


def test_parity_outside_the_tolerance_names_the_worst_row_and_writes_no_model(
    user_module: str, tmp_path: Path
) -> None:
    # GIVEN a tolerance no float32 model can meet (an exact match, cosine above 1)
    strict = Tolerance(min_cosine=1.01, max_abs_error=0.0)
    # WHEN the regressor is converted under it
    with pytest.raises(ParityError, match=r"output 'variable'.*worst at sample row \d+"):
        convert_model(f"{user_module}:regressor", tmp_path / "m.onnx", tolerance=strict)
    # THEN only the report was written, and it says which row was furthest off
    assert not (tmp_path / "m.onnx").exists()
    written = json.loads((tmp_path / "m.conversion.json").read_text())
    assert written["parity"]["passed"] is False
    assert written["target"] is None


def test_a_failed_conversion_says_the_model_at_out_is_an_earlier_one(
    user_module: str, tmp_path: Path
) -> None:
    # GIVEN a model converted earlier at --out
    convert_model(f"{user_module}:regressor", tmp_path / "m.onnx")
    before = (tmp_path / "m.onnx").read_bytes()
    # WHEN a second conversion fails parity
    strict = Tolerance(min_cosine=1.01, max_abs_error=0.0)
    with pytest.raises(ParityError, match=r"m\.onnx is an earlier one, left as it was"):
        convert_model(f"{user_module}:regressor", tmp_path / "m.onnx", tolerance=strict)
    # THEN the earlier model is untouched, and the message said it is not this run's
    assert (tmp_path / "m.onnx").read_bytes() == before


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("no_such_module_here:model", "cannot import"),
        ("json:no_such_attribute", "has no attribute"),
        ("json:decoder", "not a model"),
        ("missing.joblib", "allow-pickle"),
    ],
)
def test_sources_that_are_not_models_are_clear_errors(
    source: str, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConvertError, match=message):
        convert_model(source, tmp_path / "m.onnx")


def test_a_batch_axis_fixed_at_export_is_caught(tmp_path: Path) -> None:
    # GIVEN a graph whose batch axis was exported as a fixed 4
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "w"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2])],
        [numpy_helper.from_array(np.ones((3, 2), np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    # WHEN it runs on a sample of another size, THEN the error says what to look at
    onnx.save(model, tmp_path / "fixed.onnx")
    with pytest.raises(ConvertError, match="axis fixed"):
        _run(tmp_path / "fixed.onnx", {"X": np.ones((64, 3), np.float32)})


def test_label_parity_reports_the_first_difference() -> None:
    parity = compare_output(
        "label", np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]), "label", Tolerance()
    )

    assert (parity.passed, parity.worst_row, parity.agreement) == (False, 2, 0.75)


def test_scores_report_top1_agreement_per_row_and_per_token() -> None:
    # GIVEN 4 rows of 3 scores where row 2's two best trade places (a tiny change), and
    # per-token logits (2 rows x 3 tokens x 2 labels) where one token's label flips
    expected = np.array([[3.0, 1, 0], [0, 2, 1], [1, 1.001, 0], [0, 0, 5]])
    actual = expected.copy()
    actual[2] = [1.001, 1.0, 0]
    tokens = np.array([[[1.0, 0], [0, 1], [1, 0]], [[0, 1], [1, 0], [0.5, 0.4]]])
    flipped = tokens.copy()
    flipped[1, 2] = [0.4, 0.5]

    scores = compare_output("logits", actual, expected, "float", Tolerance())
    per_token = compare_output("logits", flipped, tokens, "float", Tolerance())
    column = compare_output("y", expected[:, :1], expected[:, :1], "float", Tolerance())

    # THEN 3 of 4 rows and 5 of 6 tokens agree (counted by hand); one value per row has none
    assert scores.top1_agreement == 0.75
    assert per_token.top1_agreement == pytest.approx(5 / 6)
    assert column.top1_agreement is None
    # ... and the verdict still comes from cosine and max abs error alone: the swapped near-tie
    # (cosine 0.9999995) passes, the flipped token (cosine 2.4 / 2.41) does not
    assert scores.passed
    assert not per_token.passed


def test_one_value_per_row_is_judged_on_the_whole_column() -> None:
    # per-row cosines of scalars only compare signs: the column's cosine is the measure
    expected = np.array([1.0, 2.0, 3.0])
    actual = np.array([1.0, 2.0, 3.5])
    off = compare_output("y", actual[:, None], expected[:, None], "float", Tolerance())

    by_hand = expected @ actual / np.linalg.norm(expected) / np.linalg.norm(actual)
    assert off.cosine_min == pytest.approx(by_hand)
    assert (off.passed, off.worst_row, off.max_abs_error) == (False, 2, 0.5)


def _booster(kind: str, *, scaled: bool = False) -> tuple[Any, np.ndarray, np.ndarray]:
    """A fitted XGBoost or LightGBM estimator (``scaled``: behind a StandardScaler)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    package, task = kind.split("-")
    pytest.importorskip(package, reason=f"{package} is not installed (the dev extra)")
    if task == "classifier":
        X, y = load_iris(return_X_y=True)
    else:
        X, y = load_diabetes(return_X_y=True)
    if package == "xgboost":
        from xgboost import XGBClassifier, XGBRegressor

        model = (XGBClassifier if task == "classifier" else XGBRegressor)(n_estimators=20)
    else:
        from lightgbm import LGBMClassifier, LGBMRegressor

        booster = LGBMClassifier if task == "classifier" else LGBMRegressor
        model = booster(n_estimators=20, verbose=-1)
    if scaled:
        model = make_pipeline(StandardScaler(), model)
    return model.fit(X, y), X.astype(np.float32), y


def _as_user_module(model: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    module = type(sys)("user_boosters")
    module.model = model  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "user_boosters", module)
    return "user_boosters:model"


@pytest.mark.parametrize(
    "kind", ["xgboost-classifier", "xgboost-regressor", "lightgbm-classifier", "lightgbm-regressor"]
)
def test_boosters_convert_through_onnxmltools(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a booster the user's code fitted (as a module attribute)
    model, X, _ = _booster(kind)
    np.savez(tmp_path / "rows.npz", X=X)
    # WHEN it is converted on its own training rows
    source = _as_user_module(model, monkeypatch)
    convert_model(source, tmp_path / "m.onnx", sample=tmp_path / "rows.npz")
    # THEN the report names the converters used
    converter = json.loads((tmp_path / "m.conversion.json").read_text())["converter"]
    assert {"skl2onnx", "onnxmltools", kind.split("-")[0]} <= set(converter)
    # ... and onnxruntime gives the booster's own labels, or its predictions to float32 rounding
    session = load_session(tmp_path / "m.onnx", intra_op_threads=1)
    first = session.run(None, {"X": X})[0]
    if kind.endswith("classifier"):
        np.testing.assert_array_equal(first, model.predict(X))
    else:
        np.testing.assert_allclose(first.ravel(), model.predict(X), rtol=1e-5, atol=1e-3)


def test_float32_drift_before_a_tree_ensemble_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN boosted trees behind a StandardScaler: scikit-learn scales in float64, the ONNX
    # graph in float32, and a row sitting on a split threshold lands on the other side
    model, X, _ = _booster("xgboost-regressor", scaled=True)
    np.savez(tmp_path / "rows.npz", X=X)
    # WHEN it is converted, THEN parity fails on that row and no model is written
    with pytest.raises(ParityError, match=r"output 'variable'.*worst at sample row \d+"):
        convert_model(
            _as_user_module(model, monkeypatch), tmp_path / "m.onnx", sample=tmp_path / "rows.npz"
        )
    assert not (tmp_path / "m.onnx").exists()
    # ... and the row it names really is one where float32 scaling changes the answer
    report = json.loads((tmp_path / "m.conversion.json").read_text())
    row = report["parity"]["outputs"][0]["worst_row"]
    scaler, booster = model.steps[0][1], model.steps[1][1]
    in64 = booster.predict(scaler.transform(X[row : row + 1].astype(np.float64)))
    in32 = booster.predict(scaler.transform(X[row : row + 1]).astype(np.float32))
    assert abs(in64[0] - in32[0]) > 1e-2
