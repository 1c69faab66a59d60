"""Graph optimization pre-steps: encoder shape detection and exact activation smoothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxkit.session import load_session
from onnxkit_tools.quantize.gate import GateOptions, quantize_with_gate
from onnxkit_tools.quantize.optimize import smooth_activations, transformer_shape
from tests.unit.tools.quantize.helpers import LOOSE_LATENCY, quick_timing

RNG = np.random.default_rng(7)


def _norm_matmul_model(
    path: Path, hidden: int = 8, out: int = 4, seed: int = 3
) -> dict[str, np.ndarray]:
    """x -> LayerNorm -> two MatMuls sharing its output (one outlier channel), summed."""
    rng = np.random.default_rng(seed)
    gamma = np.ones(hidden, np.float32)
    gamma[3] = 40.0  # an outlier channel, as after a transformer's LayerNorm
    weights = {
        "gamma": gamma,
        "beta": np.zeros(hidden, np.float32),
        "w1": rng.normal(size=(hidden, out)).astype(np.float32),
        "w2": rng.normal(size=(hidden, out)).astype(np.float32),
    }
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], name="ln", axis=-1),
        helper.make_node("MatMul", ["n", "w1"], ["a"], name="m1"),
        helper.make_node("MatMul", ["n", "w2"], ["b"], name="m2"),
        helper.make_node("Add", ["a", "b"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return weights


def _numpy_reference(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    n = (x - mean) / np.sqrt(var + 1e-5) * w["gamma"] + w["beta"]
    return n @ w["w1"] + n @ w["w2"]


def test_smoothing_keeps_outputs_and_shrinks_the_outlier(tmp_path: Path) -> None:
    # GIVEN a LayerNorm whose output has one outlier channel, feeding two MatMuls
    weights = _norm_matmul_model(tmp_path / "m.onnx")
    x = RNG.normal(size=(16, 8)).astype(np.float32)
    # WHEN it is smoothed with ranges from the same kind of rows
    count = smooth_activations(tmp_path / "m.onnx", tmp_path / "s.onnx", {"x": x})
    # THEN one shared activation was smoothed, with one Mul before both MatMuls
    assert count == 1
    model = onnx.load(str(tmp_path / "s.onnx"))
    muls = [n for n in model.graph.node if n.op_type == "Mul"]
    assert len(muls) == 1
    assert {n.input[0] for n in model.graph.node if n.op_type == "MatMul"} == {muls[0].output[0]}
    # ... the output is what numpy computes from the original weights
    smoothed = load_session(tmp_path / "s.onnx").run(["y"], {"x": x})[0]
    np.testing.assert_allclose(smoothed, _numpy_reference(x, weights), rtol=1e-4, atol=1e-4)
    # ... and the outlier channel's range, as the int8 quantizer sees it, came down
    inverse = numpy_helper.to_array(
        next(i for i in model.graph.initializer if i.name == muls[0].input[1])
    )
    normed = np.abs(  # the LayerNorm output, by hand
        (x - x.mean(-1, keepdims=True))
        / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
        * weights["gamma"]
    )
    before = normed.max(0)
    after = (normed * inverse).max(0)
    assert after.max() / np.median(after) < before.max() / np.median(before)


def test_gate_builds_the_smoothed_candidate_and_it_is_closer(tmp_path: Path) -> None:
    # GIVEN the outlier LayerNorm model, with calibration and validation rows
    _norm_matmul_model(tmp_path / "m.onnx", hidden=64, out=64, seed=0)
    rng = np.random.default_rng(11)
    np.savez(tmp_path / "cal.npz", x=rng.normal(size=(48, 64)).astype(np.float32))
    np.savez(tmp_path / "val.npz", x=rng.normal(size=(40, 64)).astype(np.float32))
    # WHEN the gate builds dynamic int8 on the original graph and on the smoothed one
    report = quantize_with_gate(
        tmp_path / "m.onnx",
        tmp_path / "q.onnx",
        tmp_path / "cal.npz",
        tmp_path / "val.npz",
        LOOSE_LATENCY,
        GateOptions(candidates=("dynamic-qint8-channel", "smooth-*"), **quick_timing()),
    )
    # THEN both were measured against fp32, the smoothed one on its own graph
    by_name = {c.name: c for c in report.candidates}
    assert sorted(by_name) == ["dynamic-qint8-channel", "smooth-dynamic-qint8-channel"]
    plain, smoothed = by_name["dynamic-qint8-channel"], by_name["smooth-dynamic-qint8-channel"]
    assert smoothed.error is None
    assert plain.error is None
    assert smoothed.quantization["graph"] == "smoothed"
    assert report.settings["optimization"]["smoothed_original"].startswith("1 normalized")
    # ... and moving the outlier into the weights brought int8 closer to fp32
    # (its distance from cosine 1 came down 0.51-0.67x for weight seeds 1-5; 0.75 leaves room)
    distance = {c.name: 1 - c.quality["cosine_min"] for c in (plain, smoothed)}
    assert distance[smoothed.name] < distance[plain.name] * 0.75
    assert smoothed.quality["max_abs_error"] < plain.quality["max_abs_error"]


def test_no_norm_fed_matmul_means_nothing_written(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="m")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(np.ones((4, 2), np.float32), "w")],
    )
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx")
    x = np.ones((2, 4), np.float32)
    assert smooth_activations(tmp_path / "m.onnx", tmp_path / "s.onnx", {"x": x}) == 0
    assert not (tmp_path / "s.onnx").exists()


def _attention_reshape_model(heads: int, head_size: int, literal_heads: bool) -> onnx.ModelProto:
    hidden = heads * head_size
    shape = [0, 0, heads if literal_heads else -1, head_size]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g", "b"], ["n"], name="ln", axis=-1),
        helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.array(shape))),
        helper.make_node("Reshape", ["n", "s"], ["r"], name="reshape"),
        helper.make_node("Softmax", ["r"], ["y"], name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.ones(hidden, np.float32), "g"),
            numpy_helper.from_array(np.zeros(hidden, np.float32), "b"),
        ],
    )
    return helper.make_model(graph)


def test_transformer_shape_reads_heads_and_hidden_size() -> None:
    assert transformer_shape(_attention_reshape_model(12, 32, literal_heads=True)) == (12, 384)
    # transformers writes the heads as -1: the head size and the LayerNorm width give them
    assert transformer_shape(_attention_reshape_model(4, 16, literal_heads=False)) == (4, 64)


def test_transformer_shape_is_none_without_attention() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    assert transformer_shape(helper.make_model(graph)) is None
