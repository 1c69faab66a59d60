"""onnxkit convert on TensorFlow SavedModels and Keras models built here: the written model is
checked against numpy computed from the layers' own weights, at other batch sizes and lengths,
and broken conversions are clear errors with nothing written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxkit.session import load_session
from onnxkit_tools.cli import main
from onnxkit_tools.convert import ConvertError, convert_model

tf = pytest.importorskip("tensorflow", reason="tensorflow is not installed (convert-tensorflow)")
keras = pytest.importorskip("keras", reason="keras is not installed (convert-tensorflow)")


def regressor() -> Any:
    """8 features -> 16 relu -> 1, seeded weights (no training needed to test conversion)."""
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8,), name="features"),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(1),
        ]
    )


def by_hand(model: Any, rows: np.ndarray) -> np.ndarray:
    """The regressor's answer worked out with numpy from its weights."""
    (w1, b1), (w2, b2) = (layer.get_weights() for layer in model.layers)
    hidden = np.maximum(rows.astype(np.float64) @ w1 + b1, 0)
    return hidden @ w2 + b2


def pooled() -> Any:
    """Two inputs, one of them a sequence of any length; two outputs."""
    keras.utils.set_random_seed(1)
    dense = keras.Input((4,), name="dense")
    sequence = keras.Input((None, 3), name="steps")
    mean = keras.layers.GlobalAveragePooling1D()(sequence)
    joined = keras.layers.Concatenate()([dense, mean])
    return keras.Model(
        [dense, sequence],
        [keras.layers.Dense(2, name="score")(joined), keras.layers.Dense(1, name="gate")(joined)],
    )


def lgamma_model() -> Any:
    """A layer whose op (Lgamma) has no ONNX operator."""
    inputs = keras.Input((4,), name="x")
    return keras.Model(inputs, keras.layers.Lambda(tf.math.lgamma)(keras.layers.Dense(4)(inputs)))


def _run(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = load_session(path, intra_op_threads=1)
    return [np.asarray(a) for a in session.run(None, feed)]


def _rows(count: int, width: int = 8, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, width)).astype(np.float32)


def test_a_keras_file_converts_and_answers_like_its_weights(tmp_path: Path) -> None:
    # GIVEN a Keras regressor saved as a .keras file
    model = regressor()
    model.save(tmp_path / "regressor.keras")
    out = tmp_path / "onnx" / "model.onnx"

    # WHEN it is converted
    report = convert_model(str(tmp_path / "regressor.keras"), out)

    # THEN the ONNX model answers like numpy on the weights, at a batch it never saw
    rows = _rows(7)
    (answer,) = _run(out, {"features": rows})
    np.testing.assert_allclose(answer, by_hand(model, rows), rtol=1e-5, atol=1e-5)
    assert report.framework == "tensorflow"
    assert report.inputs == [{"name": "features", "type": "tensor(float)", "shape": ["batch", 8]}]
    assert report.outputs == [{"name": "output_0", "type": "tensor(float)", "shape": ["batch", 1]}]
    assert set(report.converter) >= {"keras", "tf2onnx"}
    assert report.parity.passed
    assert report.parity.rows == 64


def test_a_saved_model_keeps_its_signature_names(tmp_path: Path) -> None:
    # GIVEN the regressor exported as a SavedModel (what TensorFlow Serving loads)
    model = regressor()
    model.export(str(tmp_path / "saved"), verbose=False)
    out = tmp_path / "model.onnx"

    # WHEN the folder is converted with a sample of its own
    rows = _rows(20, seed=9)
    np.savez(tmp_path / "sample.npz", features=rows)
    report = convert_model(str(tmp_path / "saved"), out, sample=tmp_path / "sample.npz")

    # THEN the inputs and outputs are the serving signature's, and the answers the weights'
    session = load_session(out, intra_op_threads=1)
    assert [i.name for i in session.get_inputs()] == ["features"]
    assert [o.name for o in session.get_outputs()] == ["output_0"]
    (answer,) = _run(out, {"features": rows[:3]})
    np.testing.assert_allclose(answer, by_hand(model, rows[:3]), rtol=1e-5, atol=1e-5)
    assert report.parity.rows == 20
    assert "sample.npz" in report.sample


def test_several_inputs_and_outputs_and_a_free_sequence_axis(tmp_path: Path) -> None:
    # GIVEN a two-input model whose second input is a sequence of any length
    model = pooled()
    model.save(tmp_path / "pooled.keras")
    out = tmp_path / "model.onnx"

    # WHEN it is converted from generated rows
    report = convert_model(str(tmp_path / "pooled.keras"), out)

    # THEN both outputs are checked at the generated length and one shorter...
    checked = [o.name for o in report.parity.outputs]
    assert checked == ["output_0", "output_1", "output_0@sequence=12", "output_1@sequence=12"]
    shapes = {i["name"]: i["shape"] for i in report.inputs}
    assert shapes == {"dense": ["batch", 4], "steps": ["batch", "sequence", 3]}
    # ... and the model answers like Keras at a length neither run used
    rng = np.random.default_rng(2)
    dense = rng.normal(size=(3, 4)).astype(np.float32)
    steps = rng.normal(size=(3, 30, 3)).astype(np.float32)
    score, gate = _run(out, {"dense": dense, "steps": steps})
    want_score, want_gate = (np.asarray(a) for a in model([dense, steps]))
    np.testing.assert_allclose(score, want_score, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gate, want_gate, rtol=1e-5, atol=1e-5)


def test_an_op_with_no_onnx_equivalent_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"

    with pytest.raises(ConvertError, match="no ONNX equivalent: Lgamma"):
        convert_model(f"{__name__}:lgamma_model", out)

    assert not out.exists()


def test_a_batch_fixed_in_the_signature_is_caught(tmp_path: Path) -> None:
    # GIVEN a SavedModel whose signature fixes the batch at 64 rows
    model = regressor()
    spec = tf.TensorSpec((64, 8), tf.float32, name="features")
    module = tf.Module()
    module.model = model
    module.serve = tf.function(lambda features: {"y": model(features)}, input_signature=[spec])
    tf.saved_model.save(
        module, str(tmp_path / "fixed"), signatures={"serving_default": module.serve}
    )
    out = tmp_path / "model.onnx"

    # WHEN it is converted (64 rows answer; the 1-row check does not)
    with pytest.raises(ConvertError, match="Is an axis fixed that should be dynamic"):
        convert_model(str(tmp_path / "fixed"), out)

    # THEN nothing is written
    assert not out.exists()


def test_a_keras_file_with_code_in_it_is_refused_unrun(tmp_path: Path) -> None:
    # GIVEN a .keras file whose Lambda layer carries Python code
    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0)(inputs))
    model.save(tmp_path / "lambda.keras")

    # WHEN it is converted, THEN safe mode refuses it and says what to do instead
    with pytest.raises(ConvertError, match=r"holds Python code.*module:factory"):
        convert_model(str(tmp_path / "lambda.keras"), tmp_path / "model.onnx")


def test_dynamic_axes_and_a_wrong_framework_are_refused_for_tensorflow(tmp_path: Path) -> None:
    regressor().export(str(tmp_path / "saved"), verbose=False)

    with pytest.raises(ConvertError, match="signature says which axes"):
        convert_model(str(tmp_path / "saved"), tmp_path / "a.onnx", axes={"features": {}})
    with pytest.raises(ConvertError, match="is a TensorFlow SavedModel, not pytorch"):
        convert_model(str(tmp_path / "saved"), tmp_path / "b.onnx", framework="pytorch")


def test_the_cli_converts_a_saved_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    regressor().export(str(tmp_path / "saved"), verbose=False)
    out = tmp_path / "model.onnx"

    code = main(["convert", str(tmp_path / "saved"), "--out", str(out), "--rows", "16"])

    assert code == 0
    printed = capsys.readouterr().out
    assert "parity output_0: max abs error" in printed
    assert "(tensorflow, opset 17)" in printed
    report = json.loads(out.with_name("model.conversion.json").read_text())
    assert report["framework"] == "tensorflow"
    assert report["parity"]["rows"] == 16
