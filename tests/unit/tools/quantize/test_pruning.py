"""Magnitude pruning as a gate candidate: exactly the asked share of each weight matrix is
zero, only when asked for, and the table shows what it buys (the compressed size)."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnxkit_tools.quantize.candidates import build_pruned, compressed_size
from onnxkit_tools.quantize.gate import GateOptions, quantize_with_gate
from onnxkit_tools.quantize.report import format_table
from tests.unit.tools.quantize.helpers import (
    LOOSE_LATENCY,
    embedding_model,
    quick_timing,
    token_ids,
)


def test_pruning_zeroes_the_smallest_share_of_each_matrix_only(tmp_path: Path) -> None:
    # GIVEN the tiny embedder (a Gather table and two MatMul weights)
    embedding_model(tmp_path / "m.onnx")
    before = {
        i.name: numpy_helper.to_array(i) for i in onnx.load(tmp_path / "m.onnx").graph.initializer
    }
    # WHEN it is pruned to 75%
    build_pruned(tmp_path / "m.onnx", tmp_path / "p.onnx", sparsity=0.75, then_dynamic=False)
    after = {
        i.name: numpy_helper.to_array(i) for i in onnx.load(tmp_path / "p.onnx").graph.initializer
    }
    # THEN each MatMul weight keeps exactly its largest quarter (numpy's own ranking)
    for name in ("w1", "w2"):
        w = before[name]
        keep = np.abs(w) > np.quantile(np.abs(w), 0.75)
        np.testing.assert_array_equal(after[name], np.where(keep, w, 0))
        assert (after[name] == 0).mean() == 0.75
    # ... the embedding table is not a MatMul weight and is left alone
    np.testing.assert_array_equal(after["table"], before["table"])


def test_compressed_size_is_zlib_of_the_file(tmp_path: Path) -> None:
    embedding_model(tmp_path / "m.onnx")

    expected = len(zlib.compress((tmp_path / "m.onnx").read_bytes(), 6))

    assert compressed_size(tmp_path / "m.onnx") == expected


def test_pruning_candidates_run_only_when_named(tmp_path: Path) -> None:
    embedding_model(tmp_path / "fp32.onnx")
    np.savez(tmp_path / "cal.npz", **token_ids(32, seed=1))
    np.savez(tmp_path / "val.npz", **token_ids(32, seed=2))
    common = (
        tmp_path / "fp32.onnx",
        tmp_path / "q.onnx",
        tmp_path / "cal.npz",
        tmp_path / "val.npz",
    )

    default = quantize_with_gate(
        *common, LOOSE_LATENCY, GateOptions(candidates=("dynamic-*",), **quick_timing())
    )
    asked = quantize_with_gate(
        *common,
        LOOSE_LATENCY,
        GateOptions(candidates=("dynamic-qint8-channel", "prune-50*"), **quick_timing()),
    )

    assert not any(c.name.startswith("prune-") for c in default.candidates)
    assert "zip×" not in format_table(default)
    assert [c.name for c in asked.candidates] == [
        "dynamic-qint8-channel",
        "prune-50",
        "prune-50-dynamic",
    ]
    pruned = asked.candidates[1]
    assert pruned.quantization["sparsity"] == 0.5
    # stored dense, the zeros only show once compressed
    assert pruned.size_ratio > 0.95
    assert pruned.compressed_ratio is not None
    assert pruned.compressed_ratio < asked.fp32["compressed_ratio"]
    assert "zip×" in format_table(asked)
