"""Shared by the quantize tests: made-up measured candidates, a tiny embedding model, its data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxkit_tools.quantize.budget import Budget
from onnxkit_tools.quantize.gate import GateOptions
from onnxkit_tools.quantize.report import CandidateResult

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


def embedding_model(path: Path, *, external: bool = False, seed: int = 0) -> None:
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


def token_ids(rows: int, seed: int) -> dict[str, np.ndarray]:
    return {"ids": np.random.default_rng(seed).integers(0, 200, (rows, 8), dtype=np.int64)}


# Tiny models run in microseconds, where int8's extra ops can cost more than they save; these
# tests check the gate's mechanics, so the latency limit is opened up.
LOOSE_LATENCY = Budget.for_preference("quality", max_latency_ratio=10.0)
QUICK = GateOptions(b1_repeats=(5, 20), batch_repeats=(3, 5), time_budget_s=0.2)


def quick_timing() -> dict[str, Any]:
    return {"b1_repeats": (3, 10), "batch_repeats": (2, 4), "time_budget_s": 0.1}
