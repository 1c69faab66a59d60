"""Graph optimization before quantization: onnxruntime's transformer fusion where it applies,
else its generic extended-level rewrites. The gate builds candidates on both graphs.

ONNX Runtime's own BERT recipe fuses first, then quantizes: fused LayerNorm, GELU and attention
kernels run faster in fp32 and leave fewer, larger ops for int8. The fused graph keeps the
projections of attention as plain MatMuls (``MultiHeadAttention``, not ``Attention``): the
quantizers can then treat each one like any other MatMul, weight-only 8-bit included. With the
packed ``Attention`` op the quantizer makes ``QAttention`` with 7-bit weights and no weight-only
choice; on MiniLM that capped min cosine at 0.986 where ``MultiHeadAttention`` reached 0.9925
with the same treatment of the other MatMuls.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LOG = logging.getLogger(__name__)

OPTIMIZE_MODES = ("auto", "none")
# The weight-carrying ops the quantizers see; a rewrite that hides them in fused ops leaves
# nothing for int8.
_WEIGHT_OPS = ("MatMul", "Gemm", "Conv", "Gather", "EmbedLayerNormalization")


@dataclass(frozen=True)
class Optimization:
    """What the optimization pre-step did.

    Attributes:
        method: ``transformer-fusion`` (onnxruntime.transformers' BERT fusions) or
            ``ort-extended`` (an onnxruntime session's extended-level rewrites, saved).
        fused: Fused operators by type and count (transformer fusion), or node counts
            before and after (``nodes_before``/``nodes_after``).
        detail: One line for the report and the progress log.
    """

    method: str
    fused: dict[str, int] = field(default_factory=dict)
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The report's and manifest's record of it."""
        return {"method": self.method, "fused": dict(self.fused), "detail": self.detail}


def transformer_shape(model: Any) -> tuple[int, int] | None:
    """(num_heads, hidden_size) of a BERT-like encoder, read from its graph, or None.

    The hidden size is the most common LayerNormalization width (its scale's length); the head
    count comes from an attention Reshape's target shape ``[batch, seq, heads, head_size]``
    whose last two elements multiply to the hidden size (or whose heads are ``-1`` and whose
    head size divides it). Exporters write that shape
    as an initializer, a Constant, or a Concat of one-element constants (torch's legacy export).
    """
    from onnx import numpy_helper

    constants: dict[str, np.ndarray] = {
        init.name: numpy_helper.to_array(init) for init in model.graph.initializer
    }
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    widths = Counter(
        int(constants[node.input[1]].size)
        for node in model.graph.node
        if node.op_type == "LayerNormalization"
        and len(node.input) > 1
        and node.input[1] in constants
    )
    if not widths or not any(node.op_type == "Softmax" for node in model.graph.node):
        return None
    hidden = widths.most_common(1)[0][0]
    concats = {node.output[0]: node for node in model.graph.node if node.op_type == "Concat"}
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        shape = _shape_values(node.input[1], constants, concats)
        if shape is None or len(shape) != 4:
            continue
        heads, size = shape[2], shape[3]
        if heads < 1 and size > 0 and hidden % size == 0:
            heads = hidden // size  # transformers writes (batch, seq, -1, head_size)
        if heads > 1 and size > 0 and heads * size == hidden:
            return heads, hidden
    return None


def _shape_values(
    name: str, constants: dict[str, np.ndarray], concats: dict[str, Any]
) -> list[int] | None:
    if name in constants:
        return [int(v) for v in constants[name].reshape(-1)]
    concat = concats.get(name)
    if concat is None:
        return None
    values: list[int] = []
    for part in concat.input:
        if part in constants and constants[part].size == 1:
            values.append(int(constants[part].reshape(-1)[0]))
        else:
            values.append(-1)  # a dynamic dimension (batch, sequence)
    return values


def optimize_graph(source: Path, target: Path) -> Optimization | None:
    """Write an optimized fp32 copy of ``source`` to ``target``; None when nothing applies.

    Transformer fusion runs when :func:`transformer_shape` recognizes an encoder; otherwise (or
    when it fuses nothing) onnxruntime's extended-level graph rewrites are saved, and kept only
    when they change the graph without hiding its weights from the quantizers.
    """
    import onnx

    model = onnx.load(str(source))
    shape = transformer_shape(model)
    if shape is not None:
        fused = _fuse_transformer(source, target, *shape)
        if fused:
            heads, hidden = shape
            counts = ", ".join(f"{count} {op}" for op, count in sorted(fused.items()))
            return Optimization(
                "transformer-fusion",
                fused,
                f"transformer fusion (BERT, {heads} heads, hidden {hidden}): {counts}",
            )
    return _ort_extended(source, target, model)


def _fuse_transformer(source: Path, target: Path, heads: int, hidden: int) -> dict[str, int]:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.use_multi_head_attention = True
    try:
        optimized = optimize_model(
            str(source),
            model_type="bert",
            num_heads=heads,
            hidden_size=hidden,
            opt_level=0,  # the fusions only; the session applies its own rewrites at load
            optimization_options=options,
        )
    except Exception as exc:  # the fusion scripts assume a BERT-shaped graph
        LOG.debug("transformer fusion failed: %s", exc)
        return {}
    fused = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    if fused:
        optimized.save_model_to_file(str(target))
    return fused


def _ort_extended(source: Path, target: Path, model: Any) -> Optimization | None:
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    try:
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(str(target))
    except Exception as exc:
        LOG.debug("onnxruntime graph optimization failed: %s", exc)
        return None
    before, after = len(model.graph.node), len(optimized.graph.node)
    weights_before = sum(n.op_type in _WEIGHT_OPS for n in model.graph.node)
    weights_after = sum(n.op_type in _WEIGHT_OPS for n in optimized.graph.node)
    if after >= before or weights_after < weights_before:
        target.unlink(missing_ok=True)
        return None
    return Optimization(
        "ort-extended",
        {"nodes_before": before, "nodes_after": after},
        f"onnxruntime extended graph optimization: {before} -> {after} nodes",
    )


# --- activation smoothing ---------------------------------------------------------------------

# SmoothQuant's migration strength: the share of an activation channel's range moved into the
# weights. 0.5 measured best of 0.3/0.5/0.7 on MiniLM.
SMOOTH_ALPHA = 0.5
_NORMS = ("LayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization")


def smooth_activations(
    base: Path,
    target: Path,
    calibration: dict[str, np.ndarray],
    *,
    alpha: float = SMOOTH_ALPHA,
    batch: int = 16,
) -> int:
    """Move outlier channels of normalized activations into the weights (SmoothQuant).

    Dynamic int8 quantizes an activation with one scale per tensor, so a few outlier channels
    (large in every token, as after a transformer's LayerNorm) squeeze the rest into a few
    levels. For each MatMul with a constant weight fed by a LayerNormalization output, a ``Mul``
    by ``1/s`` goes before it and the weight's rows are scaled by ``s``, with
    ``s = max|x|^alpha / max|w|^(1 - alpha)`` per input channel: exact in real arithmetic, and
    per-channel weight quantization absorbs the larger rows. MatMuls sharing an input share one
    ``Mul`` (their largest weight rows set ``s``). The LayerNorm's own scale cannot take ``1/s``:
    its output also feeds the residual path.

    Args:
        base: The fp32 model.
        target: Where the smoothed model goes (written only when something was smoothed).
        calibration: Rows for the activation ranges (the gate's calibration feed).
        alpha: Migration strength.
        batch: Rows per run while collecting ranges.

    Returns:
        How many activations were smoothed (0: nothing written).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(base))
    weights = {init.name: init for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    groups: dict[str, list[Any]] = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights:
            continue
        producer = producers.get(node.input[0])
        if (
            producer is not None
            and producer.op_type in _NORMS
            and producer.output[0] == node.input[0]
        ):
            groups.setdefault(node.input[0], []).append(node)
    if not groups:
        return 0
    ranges = _channel_ranges(base, list(groups), calibration, batch)
    for activation, nodes in groups.items():
        arrays = [numpy_helper.to_array(weights[n.input[1]]) for n in nodes]
        weight_max = np.max([np.abs(w).max(axis=1) for w in arrays], axis=0)
        scale = (
            np.maximum(ranges[activation], 1e-5) ** alpha
            / np.maximum(weight_max, 1e-5) ** (1 - alpha)
        ).astype(np.float32)
        inverse = numpy_helper.from_array(1 / scale, f"{activation}_smooth_inv")
        model.graph.initializer.append(inverse)
        smoothed = f"{activation}_smoothed"
        first = min(list(model.graph.node).index(n) for n in nodes)
        model.graph.node.insert(
            first,
            helper.make_node(
                "Mul", [activation, inverse.name], [smoothed], name=f"{activation}_Smooth"
            ),
        )
        for node, array in zip(nodes, arrays, strict=True):
            node.input[0] = smoothed
            weights[node.input[1]].CopyFrom(
                numpy_helper.from_array((array * scale[:, None]).astype(np.float32), node.input[1])
            )
    onnx.save(model, str(target))
    return len(groups)


def _channel_ranges(
    base: Path, names: list[str], calibration: dict[str, np.ndarray], batch: int
) -> dict[str, np.ndarray]:
    """Largest magnitude per last-axis channel of each named tensor over the calibration rows."""
    import onnx
    import onnxruntime as ort

    probe = onnx.load(str(base))
    known = {out.name for out in probe.graph.output}
    probe.graph.output.extend(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        for name in names
        if name not in known
    )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    rows = len(next(iter(calibration.values())))
    ranges: dict[str, np.ndarray] = {}
    for start in range(0, rows, batch):
        feed = {k: v[start : start + batch] for k, v in calibration.items()}
        for name, value in zip(names, session.run(names, feed), strict=True):
            channel = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            ranges[name] = np.maximum(ranges[name], channel) if name in ranges else channel
    return ranges
