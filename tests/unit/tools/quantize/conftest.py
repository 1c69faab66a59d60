"""Fixtures only the quantize tests use: one full gate run shared by the gate and report tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxkit_tools.quantize.gate import quantize_with_gate
from onnxkit_tools.quantize.report import Report
from tests.unit.tools.quantize.helpers import LOOSE_LATENCY, QUICK, embedding_model, token_ids


@pytest.fixture(scope="package")
def embedding_gate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Report, Path]:
    """One full gate run on the synthetic embedding model (every candidate family)."""
    folder = tmp_path_factory.mktemp("embedder")
    embedding_model(folder / "fp32" / "model.onnx")
    np.savez(folder / "calibration.npz", **token_ids(48, seed=1))
    np.savez(folder / "validation.npz", **token_ids(40, seed=2))
    report = quantize_with_gate(
        folder / "fp32" / "model.onnx",
        folder / "int8" / "model.onnx",
        folder / "calibration.npz",
        folder / "validation.npz",
        LOOSE_LATENCY,
        QUICK,
    )
    return report, folder
