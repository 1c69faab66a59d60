"""``onnxkit bench`` as a user runs it: a subprocess on a MatMul chain (about a millisecond a run,
so per-call overhead does not dominate), its report, plots, and the floor measured beside it."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.integration.conftest import ONNXKIT

pytestmark = pytest.mark.integration

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FLOOR_TOLERANCE = 0.15
WIDTH = 512


def matmul_chain(folder: Path, links: int = 4) -> Path:
    """x [n, 16, 512] through ``links`` 512x512 MatMuls with Relu: ~1 ms at batch 1 here."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights, name = [], [], "x"
    for i in range(links):
        weight = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
        weights.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [name, f"w{i}"], [f"m{i}"]))
        name = f"r{i}" if i < links - 1 else "y"
        nodes.append(helper.make_node("Relu", [f"m{i}"], [name]))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16, WIDTH])],
        weights,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(proto, str(path))
    return path


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (the file must start with the PNG signature)."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_bench_writes_the_report_and_its_1_vcpu_latency_matches_the_floor(
    tmp_path: Path,
) -> None:
    # GIVEN a model of about a millisecond a run
    model = matmul_chain(tmp_path / "model")
    out = tmp_path / "bench"

    # WHEN onnxkit bench runs on it, as a user would
    done = subprocess.run(
        [ONNXKIT, "bench", str(model), "--out", str(out), "--seconds", "0.6", "--batch", "4"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )

    # THEN it succeeds, prints the summary, writes the report, the numbers and three PNGs
    assert done.returncode == 0, done.stderr
    assert "recommended Lambda MemorySize" in done.stdout
    assert "break-even" in done.stdout
    report = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()
    for name in ("cost_per_million.png", "latency.png", "monthly_cost.png"):
        width, height = png_size(out / name)
        assert width > 100
        assert height > 100
        assert f"]({name})" in markdown
    assert set(report["plots"].values()) == {
        "cost_per_million.png",
        "latency.png",
        "monthly_cost.png",
    }
    recommended = report["lambda"]["recommended"]["memory_mb"]
    assert f"**MemorySize {recommended} MB**" in markdown
    assert report["prices"]["date"] in markdown

    # AND the 1-vCPU batch-1 latency is within 15% of the bare InferenceSession.run floor
    # measured in the same process, read from the shares rather than from the report's ratio
    (one,) = [s for s in report["measurement"]["shares"] if s["vcpus"] == 1]
    assert one["pinned"]
    assert len(one["cpus"]) == 1
    (bench_b1,) = [t for t in one["timings"] if t["batch"] == 1]
    ratio = bench_b1["p50_ms"] / one["floor"]["p50_ms"]
    assert abs(ratio - 1) <= FLOOR_TOLERANCE, (bench_b1, one["floor"])
    assert report["floor"]["ratio"] == pytest.approx(ratio)
    assert {t["batch"] for t in one["timings"]} == {1, 4}
