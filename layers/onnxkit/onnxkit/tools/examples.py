"""Example models built from packages on disk (never fetched from a hub at run time)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from onnxkit.tools.quantize import evaluate_classifier, quantize_dynamic_int8

DIGITS_INPUT = "input"
DIGITS_OUTPUTS = ("label", "probabilities")
# The budget this example is held to: int8 may lose at most one accuracy point.
MAX_ACCURACY_DROP = 0.01


class QualityGateError(RuntimeError):
    """The quantized model lost more quality than the budget allows."""


def build_digits(out: Path, *, seed: int = 0) -> dict[str, Any]:
    """Train an MLP on scikit-learn's bundled digits, export fp32 ONNX, quantize to int8.

    Writes ``out/fp32/model.onnx``, ``out/int8/model.onnx``, ``out/validation.npz`` (the
    held-out split) and ``out/report.json``.

    Returns:
        The report: accuracy, agreement, size and latency of both models.

    Raises:
        QualityGateError: int8 accuracy dropped more than one point below fp32.
    """
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MaxAbsScaler

    digits = load_digits()
    features = digits.data.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        features, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )
    # The scaler is part of the graph, so clients send raw 0..16 pixel values.
    classifier = MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=400, random_state=seed)
    model = make_pipeline(MaxAbsScaler(), classifier).fit(x_train, y_train)

    fp32 = out / "fp32" / "model.onnx"
    int8 = out / "int8" / "model.onnx"
    fp32.parent.mkdir(parents=True, exist_ok=True)
    onnx_model = to_onnx(
        model,
        initial_types=[(DIGITS_INPUT, FloatTensorType([None, 64]))],
        options={id(classifier): {"zipmap": False}},
        target_opset=17,
    )
    fp32.write_bytes(onnx_model.SerializeToString())
    quantize_dynamic_int8(fp32, int8)
    np.savez_compressed(out / "validation.npz", input=x_test, label=y_test)

    fp32_eval, reference = evaluate_classifier(
        fp32, x_test, y_test, input_name=DIGITS_INPUT, label_output=DIGITS_OUTPUTS[0]
    )
    int8_eval, _ = evaluate_classifier(
        int8,
        x_test,
        y_test,
        input_name=DIGITS_INPUT,
        label_output=DIGITS_OUTPUTS[0],
        reference=reference,
    )
    report = {
        "model": "digits",
        "dataset": {"name": "sklearn.datasets.load_digits", "validation_rows": len(y_test)},
        "fp32": fp32_eval.to_dict(),
        "int8": int8_eval.to_dict(),
        "quantization": {"method": "dynamic", "weight_type": "QInt8", "per_channel": False},
        "max_accuracy_drop": MAX_ACCURACY_DROP,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if fp32_eval.accuracy - int8_eval.accuracy > MAX_ACCURACY_DROP:
        raise QualityGateError(
            f"int8 accuracy {int8_eval.accuracy:.4f} is more than {MAX_ACCURACY_DROP:.0%} below "
            f"fp32 {fp32_eval.accuracy:.4f}; try per-channel quantization or keep fp32"
        )
    return report
