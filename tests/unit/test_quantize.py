"""The quantization gate: selection rules on made-up results, then real runs on small models."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxkit.session import load_session
from onnxkit_tools.quantize import (
    EXIT_NONE_PASSED,
    REPORT_SCHEMA,
    Budget,
    CandidateResult,
    GateOptions,
    QuantizeError,
    Report,
    add_quantize_arguments,
    detect_task,
    explain_rejection,
    format_table,
    has_external_data,
    judge,
    mixed_keep_sets,
    model_size_bytes,
    quantize_with_gate,
    run_quantize,
)

EMBEDDING = {"cosine_min": 0.999, "cosine_mean": 0.9995, "max_abs_error": 0.01}
FP32_EMBEDDING: dict[str, Any] = {"quality": {"cosine_min": 1.0}}


def made_up(
    name: str,
    *,
    size: float = 0.25,
    b1: float = 0.6,
    batch: float | None = None,
    cosine: float = 0.999,
    **quality: float,
) -> CandidateResult:
    """A measured candidate with fp32 at 10 ms for batch 1 and 100 ms per batch."""
    return CandidateResult(
        name=name,
        quantization={"candidate": name, "method": "dynamic", "per_channel": True},
        size_bytes=int(size * 1e6),
        size_ratio=size,
        latency_b1_ms=10 * b1,
        latency_batch_ms=100 * (batch if batch is not None else b1),
        latency_b1_ratio=b1,
        latency_batch_ratio=batch if batch is not None else b1,
        fp32_latency_b1_ms=10.0,
        fp32_latency_batch_ms=100.0,
        quality={**EMBEDDING, "cosine_min": cosine, **quality},
    )


def chosen(candidates: list[CandidateResult], budget: Budget, task: str = "embedding") -> str:
    winner = judge(candidates, budget, task, FP32_EMBEDDING)
    return winner.name if winner else ""


# --- selection: pure functions ----------------------------------------------------------------


def test_quality_first_takes_the_smallest_then_the_fastest() -> None:
    # GIVEN two passing candidates of nearly equal size and a larger, faster one
    candidates = [
        made_up("small-slow", size=0.25, b1=0.8),
        made_up("small-fast", size=0.26, b1=0.5),  # within 5% of the smallest: ties on size
        made_up("large-fastest", size=0.5, b1=0.3),
    ]
    # THEN size decides first, and speed among the equally small
    assert chosen(candidates, Budget()) == "small-fast"


def test_a_clearly_smaller_candidate_beats_a_faster_one_under_quality() -> None:
    candidates = [made_up("fast", size=0.30, b1=0.5), made_up("small", size=0.25, b1=0.9)]
    assert chosen(candidates, Budget()) == "small"


def test_quality_limit_comes_before_size() -> None:
    candidates = [made_up("tiny-bad", size=0.1, cosine=0.95), made_up("ok", size=0.3)]
    assert chosen(candidates, Budget()) == "ok"
    assert candidates[0].failures == ["min cosine 0.9500 < 0.99"]


def test_never_slower_than_fp32_within_the_documented_tolerance() -> None:
    slower = made_up("slower", b1=1.10)
    noise = made_up("noise", b1=1.04)
    judge([slower, noise], Budget(), "embedding", FP32_EMBEDDING)
    assert slower.failures == ["b1 latency 1.10x fp32 > 1.05x"]
    assert noise.passed


def test_equally_small_and_nearly_equally_fast_go_to_the_faster_batch() -> None:
    # Batch-1 ratios 0.02 apart are timing noise under quality: the batch ratio decides.
    candidates = [made_up("a", b1=0.50, batch=0.9), made_up("b", b1=0.52, batch=0.6)]
    assert chosen(candidates, Budget()) == "b"


def test_prefer_speed_takes_the_literally_fastest() -> None:
    candidates = [made_up("a", b1=0.50, batch=0.9), made_up("b", b1=0.52, batch=0.6)]
    assert chosen(candidates, Budget.for_preference("speed")) == "a"


def test_prefer_speed_trades_quality_down_to_its_floor() -> None:
    candidates = [
        made_up("faithful", b1=0.7, cosine=0.995),
        made_up("fast", b1=0.5, cosine=0.98),
        made_up("fastest-broken", b1=0.4, cosine=0.95),
    ]
    assert chosen(candidates, Budget.for_preference("quality")) == "faithful"
    assert chosen(candidates, Budget.for_preference("speed")) == "fast"
    assert chosen(candidates, Budget.for_preference("speed", min_cosine=0.99)) == "faithful"


def test_budget_defaults_and_overrides() -> None:
    assert Budget.for_preference("quality").min_cosine == 0.99
    assert Budget.for_preference("speed").min_cosine == 0.97
    assert Budget.for_preference("speed", max_accuracy_drop=None).max_accuracy_drop == 0.02
    assert Budget.for_preference("quality", max_size_ratio=0.3).max_size_ratio == 0.3
    with pytest.raises(QuantizeError, match="prefer"):
        Budget.for_preference("smallest")
    with pytest.raises(QuantizeError, match="unknown"):
        Budget.for_preference("quality", min_cosin=0.9)


def test_classifier_limits_use_accuracy_or_agreement() -> None:
    fp32 = {"quality": {"accuracy": 0.98, "agreement": 1.0}}
    dropped = made_up("dropped", accuracy=0.965, agreement=0.97)
    kept = made_up("kept", accuracy=0.975, agreement=0.99)
    judge([dropped, kept], Budget(), "classification", fp32)
    assert dropped.failures == ["accuracy drop 1.50 points > 1 point"]
    assert kept.passed
    # Without labels, the share of changed predictions is held to the same limit.
    unlabelled = made_up("unlabelled", agreement=0.97)
    judge([unlabelled], Budget(), "classification", {"quality": {"agreement": 1.0}})
    assert unlabelled.failures == ["top-1 disagreement 3.00% > 1%"]


def test_none_passing_names_the_failed_limits_and_what_to_try() -> None:
    candidates = [
        made_up("dynamic-qint8-channel", cosine=0.983),
        made_up("weight-only-int8", b1=1.2, cosine=0.998),
        made_up("huge", size=1.3),
        CandidateResult("broken", {"candidate": "broken"}, error="RuntimeError: no kernel"),
    ]
    assert judge(candidates, Budget(), "embedding", FP32_EMBEDDING) is None
    message = explain_rejection(candidates, Budget(), "embedding")
    assert "dynamic-qint8-channel: min cosine 0.9830 < 0.99" in message
    assert "weight-only-int8: b1 latency 1.20x fp32 > 1.05x" in message
    assert "huge: size 1.30x fp32 > 1x" in message
    assert "--prefer speed (quality floor min cosine 0.97" in message
    assert "which would choose dynamic-qint8-channel" in message
    assert "--min-cosine" in message
    assert "--max-latency-ratio" in message
    assert candidates[3].failures == ["build failed: RuntimeError: no kernel"]
    # Asking what --prefer speed would pick leaves the real verdicts alone.
    assert candidates[0].failures == ["min cosine 0.9830 < 0.99"]


def test_the_per_channel_hint_appears_when_no_candidate_was_per_channel() -> None:
    candidate = made_up("dynamic-qint8-tensor", cosine=0.86)
    candidate.quantization["per_channel"] = False
    judge([candidate], Budget(), "embedding", FP32_EMBEDDING)
    assert "per-channel" in explain_rejection([candidate], Budget(), "embedding")


def test_mixed_keep_sets_follow_the_measured_shares() -> None:
    ranking = [(["a"], 0.5), (["b"], 0.25), (["c", "d"], 0.15), (["e"], 0.1), (["f"], 0.0)]
    assert mixed_keep_sets(ranking, (0.5, 0.75, 0.9, 0.97)) == [
        ("a",),
        ("a", "b"),
        ("a", "b", "c", "d"),
        ("a", "b", "c", "d", "e"),
    ]
    assert mixed_keep_sets([(["a"], 0.0)]) == []


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


def test_report_round_trips_through_json_and_reselects() -> None:
    # GIVEN a report of three measured candidates, judged by the quality budget
    candidates = [
        made_up("faithful", b1=0.7, cosine=0.995),
        made_up("fast", b1=0.5, cosine=0.98),
        made_up("broken", b1=0.4, cosine=0.9),
    ]
    winner = judge(candidates, Budget(), "embedding", FP32_EMBEDDING)
    report = Report(
        source="m.onnx",
        target="out.onnx",
        task="embedding",
        output="y",
        budget=Budget(),
        fp32={**FP32_EMBEDDING, "size_bytes": 4_000_000, "latency_b1_ms": 10.0},
        candidates=candidates,
        chosen=winner.name if winner else None,
    )
    # WHEN it is written as JSON, read back and judged by the speed budget
    document = json.loads(json.dumps(report.to_dict()))
    speed = Report.from_dict(document).reselect(Budget.for_preference("speed"))
    # THEN the same measurements give the speed choice, and nothing claims to be written
    assert document["chosen"] == "faithful"
    assert document["quantization"]["candidate"] == "faithful"
    assert speed.chosen == "fast"
    assert speed.target is None
    assert [c.passed for c in speed.candidates] == [True, True, False]
    with pytest.raises(QuantizeError, match="schema"):
        Report.from_dict({"schema": "something else"})


# --- small real models --------------------------------------------------------------------------


def _embedding_model(path: Path, *, external: bool = False, seed: int = 0) -> None:
    """Token ids -> Gather -> mean -> MatMul -> Tanh -> MatMul: an embedding model in miniature."""
    rng = np.random.default_rng(seed)
    table = rng.normal(0, 1, (200, 32)).astype(np.float32)
    w1 = rng.normal(0, 0.3, (32, 64)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (64, 24)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["tokens"], name="embed"),
            helper.make_node(
                "ReduceMean", ["tokens"], ["pooled"], axes=[1], keepdims=0, name="mean"
            ),
            helper.make_node("MatMul", ["pooled", "w1"], ["hidden"], name="dense1"),
            helper.make_node("Tanh", ["hidden"], ["act"], name="tanh"),
            helper.make_node("MatMul", ["act", "w2"], ["embedding"], name="dense2"),
        ],
        "tiny_embedder",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 8])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 24])],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(w2, "w2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=0,
        )
    else:
        onnx.save_model(model, str(path))


def _ids(rows: int, seed: int) -> dict[str, np.ndarray]:
    return {"ids": np.random.default_rng(seed).integers(0, 200, (rows, 8), dtype=np.int64)}


# Tiny models run in microseconds, where int8's extra ops can cost more than they save; these
# tests check the gate's mechanics, so the latency limit is opened up.
LOOSE_LATENCY = Budget.for_preference("quality", max_latency_ratio=10.0)
QUICK = GateOptions(b1_repeats=(5, 20), batch_repeats=(3, 5), time_budget_s=0.2)


@pytest.fixture(scope="module")
def embedding_gate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Report, Path]:
    """One full gate run on the synthetic embedding model (every candidate family)."""
    folder = tmp_path_factory.mktemp("embedder")
    _embedding_model(folder / "fp32" / "model.onnx")
    np.savez(folder / "calibration.npz", **_ids(48, seed=1))
    np.savez(folder / "validation.npz", **_ids(40, seed=2))
    report = quantize_with_gate(
        folder / "fp32" / "model.onnx",
        folder / "int8" / "model.onnx",
        folder / "calibration.npz",
        folder / "validation.npz",
        LOOSE_LATENCY,
        QUICK,
    )
    return report, folder


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


def test_report_json_schema(embedding_gate) -> None:
    report, _ = embedding_gate
    document = json.loads(json.dumps(report.to_dict()))
    assert document["schema"] == REPORT_SCHEMA
    assert {
        "source",
        "target",
        "task",
        "output",
        "budget",
        "chosen",
        "quantization",
        "fp32",
        "candidates",
        "sensitivity",
        "data",
        "settings",
        "seconds",
    } <= set(document)
    assert set(document["budget"]) >= {
        "prefer",
        "min_cosine",
        "max_accuracy_drop",
        "max_latency_ratio",
        "max_size_ratio",
    }
    assert {"size_bytes", "latency_b1_ms", "latency_batch_ms", "quality"} <= set(document["fp32"])
    for row in document["candidates"]:
        assert {
            "name",
            "quantization",
            "size_bytes",
            "size_ratio",
            "latency_b1_ms",
            "latency_batch_ms",
            "latency_b1_ratio",
            "latency_batch_ratio",
            "quality",
            "passed",
            "failures",
            "error",
        } <= set(row)
        assert row["quantization"]["method"] in {"dynamic", "static", "weight-only", "mixed"}
        assert row["passed"] == (not row["failures"])
    assert document["quantization"]["candidate"] == document["chosen"]
    assert document["data"] == {
        "validation_rows": 40,
        "calibration_rows": 48,
        "calibration_rows_used": 48,
        "labels": False,
    }
    # The table shows every candidate, pass or fail.
    table = format_table(report)
    for row in document["candidates"]:
        assert row["name"] in table
    assert "<- chosen" in table


def test_external_data_in_and_out(tmp_path: Path) -> None:
    # GIVEN a model whose tensors live in model.onnx.data
    source = tmp_path / "fp32" / "model.onnx"
    _embedding_model(source, external=True)
    assert has_external_data(source)
    assert model_size_bytes(source) > source.stat().st_size + 20_000
    target = tmp_path / "int8" / "model.onnx"
    # WHEN the gate runs on it
    report = quantize_with_gate(
        source,
        target,
        _ids(16, seed=1),
        _ids(16, seed=2),
        LOOSE_LATENCY,
        GateOptions(candidates=("dynamic-qint8-*",), **_quick_timing()),
    )
    # THEN the output keeps its tensors beside it, the sizes count the data files, and it runs
    assert report.chosen is not None
    assert report.settings["external_data"] is True
    assert (tmp_path / "int8" / "model.onnx.data").is_file()
    assert has_external_data(target)
    assert report.fp32["size_bytes"] == model_size_bytes(source)
    assert model_size_bytes(target) == pytest.approx(report.chosen_candidate.size_bytes, rel=0.05)
    expected = load_session(source).run(None, _ids(4, seed=3))[0]
    actual = load_session(target).run(None, _ids(4, seed=3))[0]
    np.testing.assert_allclose(actual, expected, atol=0.2)


def _quick_timing() -> dict[str, Any]:
    return {"b1_repeats": (3, 10), "batch_repeats": (2, 4), "time_budget_s": 0.1}


def test_gate_on_the_digits_classifier(digits_dir: Path, tmp_path: Path) -> None:
    # GIVEN the digits example (fp32 MLP, held-out split with labels, calibration rows)
    report = quantize_with_gate(
        digits_dir / "fp32" / "model.onnx",
        tmp_path / "model.onnx",
        digits_dir / "calibration.npz",
        digits_dir / "validation.npz",
        LOOSE_LATENCY,
        GateOptions(candidates=("dynamic-*", "static-minmax", "mixed-*"), **_quick_timing()),
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


def test_cli_writes_the_model_and_report_and_prints_every_candidate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "model.onnx"
    _embedding_model(source)
    np.savez(tmp_path / "cal.npz", **_ids(16, seed=1))
    np.savez(tmp_path / "val.npz", **_ids(16, seed=2))
    parser = argparse.ArgumentParser(prog="onnxkit quantize")
    add_quantize_arguments(parser)
    common = [
        str(source),
        "--calibration",
        str(tmp_path / "cal.npz"),
        "--validation",
        str(tmp_path / "val.npz"),
        "--candidates",
        "dynamic-qint8-*",
        "--max-latency-ratio",
        "10",
    ]
    # WHEN a budget can be met
    args = parser.parse_args(
        [*common, "--out", str(tmp_path / "q.onnx"), "--report", str(tmp_path / "r.json")]
    )
    assert run_quantize(args) == 0
    out = capsys.readouterr().out
    assert "dynamic-qint8-tensor" in out
    assert "dynamic-qint8-channel" in out
    assert "<- chosen" in out
    assert (tmp_path / "q.onnx").is_file()
    assert json.loads((tmp_path / "r.json").read_text())["schema"] == REPORT_SCHEMA
    # WHEN no candidate can meet it: exit non-zero, nothing written, the limit named
    args = parser.parse_args(
        [*common, "--out", str(tmp_path / "none.onnx"), "--max-size-ratio", "0.01"]
    )
    assert run_quantize(args) == EXIT_NONE_PASSED
    captured = capsys.readouterr()
    assert "size 0." in captured.err
    assert "> 0.01x" in captured.err
    assert "--max-size-ratio" in captured.err
    assert not (tmp_path / "none.onnx").exists()
    assert "fail: size" in captured.out


def test_help_documents_the_budget_defaults() -> None:
    parser = argparse.ArgumentParser(prog="onnxkit quantize")
    add_quantize_arguments(parser)
    text = " ".join(parser.format_help().split())
    for phrase in ("--prefer", "min cosine >= 0.99", "min cosine >= 0.97", "1.05x", "exit status"):
        assert phrase in text
    # A description the caller (the `onnxkit` parser) set is kept.
    described = argparse.ArgumentParser(description="the lead's words")
    add_quantize_arguments(described)
    assert described.description == "the lead's words"


def test_data_that_does_not_fit_the_model_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    _embedding_model(source)
    with pytest.raises(QuantizeError, match="no array named 'ids'"):
        quantize_with_gate(source, tmp_path / "q.onnx", {"tokens": np.zeros((2, 8))}, _ids(2, 0))
    with pytest.raises(QuantizeError, match="int64"):
        quantize_with_gate(
            source, tmp_path / "q.onnx", _ids(2, 0), {"ids": np.zeros((2, 8), np.float32)}
        )


def test_options_that_cannot_work_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    _embedding_model(source)
    with pytest.raises(QuantizeError, match="no candidate matches"):
        quantize_with_gate(
            source,
            tmp_path / "q.onnx",
            _ids(2, 0),
            _ids(2, 1),
            options=GateOptions(candidates=("x*",)),
        )
    with pytest.raises(QuantizeError, match="batch 0"):
        quantize_with_gate(
            source, tmp_path / "q.onnx", _ids(2, 0), _ids(2, 1), options=GateOptions(batch=0)
        )
