"""The gate on small real models: every candidate built and measured, the best one written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from onnxkit.session import load_session
from onnxkit_tools.quantize.candidates import has_external_data, model_size_bytes
from onnxkit_tools.quantize.errors import QuantizeError
from onnxkit_tools.quantize.gate import GateOptions, quantize_with_gate
from onnxkit_tools.quantize.report import format_table
from tests.unit.tools.quantize.helpers import (
    LOOSE_LATENCY,
    embedding_model,
    quick_timing,
    token_ids,
)


def test_gate_on_an_embedding_model_measures_every_candidate(embedding_gate) -> None:
    report, folder = embedding_gate
    names = [c.name for c in report.candidates]
    # THEN every family was built and measured, mixed ones from measured sensitivity
    assert names[:8] == [
        "dynamic-qint8-tensor",
        "dynamic-qint8-channel",
        "dynamic-quint8-tensor",
        "dynamic-quint8-channel",
        "static-minmax",
        "static-entropy",
        "static-percentile",
        "weight-only-int8",
    ]
    assert any(name.startswith("mixed-") for name in names)
    assert report.task == "embedding"
    assert report.output == "embedding"
    assert {row["nodes"][0] for row in report.sensitivity} == {"embed", "dense1", "dense2"}
    measured = [c for c in report.candidates if c.error is None]
    assert len(measured) >= 8
    for candidate in measured:
        assert 0 < candidate.size_ratio < 1
        assert candidate.latency_b1_ratio > 0
        assert candidate.latency_batch_ratio > 0
        assert -1 <= candidate.quality["cosine_min"] <= candidate.quality["cosine_mean"] <= 1
    # AND the chosen one was written, passes, and reproduces its measured quality
    winner = report.chosen_candidate
    assert winner is not None
    assert winner.passed
    assert winner.quality["cosine_min"] >= 0.99
    smallest = min(c.size_ratio for c in report.candidates if c.passed)
    assert winner.size_ratio <= smallest * (1 + report.budget.size_tolerance)
    # Dynamic int8 scales activations per batch, so run in the gate's batches to compare.
    batch = report.settings["batch"]
    feed = dict(np.load(folder / "validation.npz"))
    expected = _run_batched(folder / "fp32" / "model.onnx", feed, batch)
    actual = _run_batched(folder / "int8" / "model.onnx", feed, batch)
    cosines = (actual * expected).sum(1) / np.linalg.norm(actual, axis=1)
    cosines /= np.linalg.norm(expected, axis=1)
    assert cosines.min() == pytest.approx(winner.quality["cosine_min"], abs=1e-5)


def _run_batched(model: Path, feed: dict[str, np.ndarray], batch: int) -> np.ndarray:
    session = load_session(model)
    rows = len(next(iter(feed.values())))
    return np.concatenate(
        [
            session.run(None, {k: v[i : i + batch] for k, v in feed.items()})[0]
            for i in range(0, rows, batch)
        ]
    )


def test_external_data_in_and_out(tmp_path: Path) -> None:
    # GIVEN a model whose tensors live in model.onnx.data
    source = tmp_path / "fp32" / "model.onnx"
    embedding_model(source, external=True)
    assert has_external_data(source)
    assert model_size_bytes(source) > source.stat().st_size + 20_000
    target = tmp_path / "int8" / "model.onnx"
    # WHEN the gate runs on it
    report = quantize_with_gate(
        source,
        target,
        token_ids(16, seed=1),
        token_ids(16, seed=2),
        LOOSE_LATENCY,
        GateOptions(candidates=("dynamic-qint8-*",), **quick_timing()),
    )
    # THEN the output keeps its tensors beside it, the sizes count the data files, and it runs
    assert report.chosen is not None
    assert report.settings["external_data"] is True
    assert (tmp_path / "int8" / "model.onnx.data").is_file()
    assert has_external_data(target)
    assert report.fp32["size_bytes"] == model_size_bytes(source)
    assert model_size_bytes(target) == pytest.approx(report.chosen_candidate.size_bytes, rel=0.05)
    expected = load_session(source).run(None, token_ids(4, seed=3))[0]
    actual = load_session(target).run(None, token_ids(4, seed=3))[0]
    np.testing.assert_allclose(actual, expected, atol=0.2)


def test_gate_on_the_digits_classifier(digits_dir: Path, tmp_path: Path) -> None:
    # GIVEN the digits example (fp32 MLP, held-out split with labels, calibration rows)
    report = quantize_with_gate(
        digits_dir / "fp32" / "model.onnx",
        tmp_path / "model.onnx",
        digits_dir / "calibration.npz",
        digits_dir / "validation.npz",
        LOOSE_LATENCY,
        GateOptions(candidates=("dynamic-*", "static-minmax", "mixed-*"), **quick_timing()),
    )
    # THEN it is judged as a classifier on its integer output, with accuracy from the labels
    assert (report.task, report.output) == ("classification", "label")
    assert report.data["labels"] is True
    assert report.fp32["quality"]["accuracy"] > 0.9
    winner = report.chosen_candidate
    assert winner is not None
    assert report.fp32["quality"]["accuracy"] - winner.quality["accuracy"] <= 0.01
    assert winner.size_ratio < 0.5
    assert {r["op_type"] for r in report.sensitivity} == {"MatMul"}
    assert "accuracy" in format_table(report)


def test_digits_example_report_keeps_its_keys(digits_dir: Path) -> None:
    report = json.loads((digits_dir / "report.json").read_text())
    assert (digits_dir / "int8" / "model.onnx").is_file()
    assert set(np.load(digits_dir / "validation.npz").files) == {"input", "label"}
    assert report["dataset"]["name"] == "sklearn.datasets.load_digits"
    assert report["dataset"]["validation_rows"] == 450
    for row in ("fp32", "int8"):
        assert {
            "accuracy",
            "agreement",
            "size_bytes",
            "latency_b1_ms",
            "latency_batch_ms",
        } <= set(report[row])
    assert report["quantization"]["weight_type"] == "QInt8"
    assert {"method", "per_channel", "candidate"} <= set(report["quantization"])
    assert report["fp32"]["accuracy"] - report["int8"]["accuracy"] <= 0.01
    assert report["int8"]["size_bytes"] < report["fp32"]["size_bytes"]
    assert report["gate"]["chosen"] == report["quantization"]["candidate"]


def test_data_that_does_not_fit_the_model_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    embedding_model(source)
    with pytest.raises(QuantizeError, match="no array named 'ids'"):
        quantize_with_gate(
            source, tmp_path / "q.onnx", {"tokens": np.zeros((2, 8))}, token_ids(2, 0)
        )
    with pytest.raises(QuantizeError, match="int64"):
        quantize_with_gate(
            source, tmp_path / "q.onnx", token_ids(2, 0), {"ids": np.zeros((2, 8), np.float32)}
        )


def test_options_that_cannot_work_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    embedding_model(source)
    with pytest.raises(QuantizeError, match="no candidate matches"):
        quantize_with_gate(
            source,
            tmp_path / "q.onnx",
            token_ids(2, 0),
            token_ids(2, 1),
            options=GateOptions(candidates=("x*",)),
        )
    with pytest.raises(QuantizeError, match="batch 0"):
        quantize_with_gate(
            source,
            tmp_path / "q.onnx",
            token_ids(2, 0),
            token_ids(2, 1),
            options=GateOptions(batch=0),
        )
