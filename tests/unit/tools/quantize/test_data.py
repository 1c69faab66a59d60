"""The gate's data: which output is compared, and how."""

from __future__ import annotations

import pytest

from onnxkit_tools.quantize.data import detect_task
from onnxkit_tools.quantize.errors import QuantizeError


def test_task_detection() -> None:
    labels_and_scores = [("label", "tensor(int64)"), ("probabilities", "tensor(float)")]
    task = detect_task(labels_and_scores)
    assert (task.kind, task.output, task.score_output) == (
        "classification",
        "label",
        "probabilities",
    )
    logits = detect_task([("logits", "tensor(float)")], "classification")
    assert (logits.kind, logits.output, logits.argmax) == ("classification", "logits", True)
    assert detect_task([("embedding", "tensor(float)")]).kind == "embedding"
    assert detect_task([("y", "tensor(float)")], "regression").kind == "regression"
    with pytest.raises(QuantizeError):
        detect_task([("label", "tensor(int64)")], "embedding")
