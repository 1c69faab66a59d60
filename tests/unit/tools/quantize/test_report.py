"""The report: its JSON form, reselection by another budget, and the table."""

from __future__ import annotations

import json

import pytest

from onnxkit_tools.quantize.budget import Budget, judge
from onnxkit_tools.quantize.errors import QuantizeError
from onnxkit_tools.quantize.report import REPORT_SCHEMA, Report, format_table
from tests.unit.tools.quantize.helpers import FP32_EMBEDDING, made_up


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


def test_report_json_schema(embedding_gate) -> None:
    report, folder = embedding_gate
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
        # npz data goes in as is: no processing is recorded
        "validation_source": f"validation: {folder / 'validation.npz'}: 40 rows of ids, as is",
        "calibration_source": f"calibration: {folder / 'calibration.npz'}: 48 rows of ids, as is",
    }
    # The table shows every candidate, pass or fail.
    table = format_table(report)
    for row in document["candidates"]:
        assert row["name"] in table
    assert "<- chosen" in table


def test_table_puts_each_graph_variant_next_to_its_namesake() -> None:
    # GIVEN candidates in build order: original graph, optimized graph, smoothed graph
    names = [
        "dynamic-qint8-channel",
        "weight-only-int8",
        "mixed-4",
        "opt-fp32",
        "opt-dynamic-qint8-channel",
        "opt-weight-only-int8",
        "smooth-dynamic-qint8-channel",
        "opt-mixed-2",
    ]
    report = Report(
        source="m.onnx",
        target=None,
        task="embedding",
        output="y",
        budget=Budget(),
        fp32={
            "quality": {"cosine_min": 1.0, "cosine_mean": 1.0, "max_abs_error": 0.0},
            "size_bytes": 4_000_000,
            "latency_b1_ms": 10.0,
            "latency_batch_ms": 100.0,
        },
        candidates=[made_up(name) for name in names],
        chosen=None,
        settings={
            "optimization": {"detail": "transformer fusion", "smoothed_original": "12 smoothed"}
        },
    )
    # WHEN the table is drawn
    table = format_table(report)
    rows = [line.split()[0] for line in table.splitlines() if line.split()[0] in names]
    # THEN opt-fp32 leads, each variant follows its namesake, and opt-mixed-<n> comes last
    assert rows == [
        "opt-fp32",
        "dynamic-qint8-channel",
        "opt-dynamic-qint8-channel",
        "smooth-dynamic-qint8-channel",
        "weight-only-int8",
        "opt-weight-only-int8",
        "mixed-4",
        "opt-mixed-2",
    ]
    assert "smoothed graph (smooth-*): 12 smoothed" in table
