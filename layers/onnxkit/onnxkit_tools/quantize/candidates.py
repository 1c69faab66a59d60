"""The candidates: what each one is, how it is built from the fp32 model, and model-file helpers."""

from __future__ import annotations

import contextlib
import fnmatch
import math
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxkit_tools.quantize.data import _rows

# Weight-only quantization: MatMulNBits with 8-bit symmetric blocks; accuracy level 4 computes
# with int8 activations per block, which measured ~0.75x fp32 latency on MiniLM, where level 0
# (fp32 compute) was 1.5x slower than fp32.
WEIGHT_ONLY_BITS = 8
WEIGHT_ONLY_BLOCK = 128
WEIGHT_ONLY_ACCURACY_LEVEL = 4
# Static QDQ quantizes the ops that carry weights; QDQ pairs around every Add and Mul cost more
# time than they save.
STATIC_OP_TYPES = ("MatMul", "Gemm", "Conv", "Gather")
# Mixed precision: candidates that keep back the most sensitive nodes until they account for
# these shares of the measured sensitivity: a frontier from "nearly all int8" to "mostly 8-bit".
# (Ranking by sensitivity per weight byte, to keep back cheaper nodes, lost quality on MiniLM:
# min cosine 0.9587 instead of 0.9746 at 5 nodes; the worst rows follow the big FFN MatMuls.)
MIXED_SHARES = (0.4, 0.5, 0.75, 0.9, 0.97)
# Gather tables up to this share of all weight bytes (position embeddings) stay fp32 in the
# weight-only and mixed candidates: int8 cost them quality on MiniLM (min cosine 0.9908 with,
# 0.9928 without) and saves little; a larger one (word embeddings) is most of the file: int8.
SMALL_TABLE_SHARE = 0.02

CANDIDATE_FAMILIES = (
    "dynamic-*",
    "static-*",
    "weight-only-*",
    "mixed-*",
    "opt-*",
    "smooth-*",
)
# Candidates built on the optimized graph (see optimize.py) carry this prefix.
OPTIMIZED_PREFIX = "opt-"
# Candidates built on the original graph with its normalized activations smoothed (no fusion).
SMOOTHED_PREFIX = "smooth-"
# Magnitude pruning: asked for by name (--candidates 'prune-*'), never by default; it changes
# neither the stored size nor the dense kernels' speed, only the compressed size.
PRUNE_SPARSITIES = (0.5, 0.75, 0.9)
# Above this a model is written with external data (protobuf's 2 GB limit, with margin).
EXTERNAL_DATA_BYTES = 1_500_000_000
# The ops that hold an embedding table: int8 in the weight-only candidates when large.
TABLE_OPS = ("Gather", "EmbedLayerNormalization")


@dataclass(frozen=True)
class CandidateSpec:
    """How to build one candidate from the pre-processed fp32 model.

    Attributes:
        name: Unique, stable name (``dynamic-qint8-channel``); ``--candidates`` matches it.
        method: ``dynamic``, ``static``, ``weight-only`` or ``mixed``.
        weight_type: ``QInt8`` or ``QUInt8`` (int8 weights), or ``int8-block`` (weight-only).
        per_channel: One scale per output channel instead of per tensor.
        calibration: Static only: ``MinMax``, ``Entropy`` or ``Percentile``.
        keep: Mixed only: the nodes kept out of dynamic int8.
        keep_as: Mixed only: what the kept MatMul/Gemm nodes become: ``weight-only`` (8-bit
            MatMulNBits) or ``fp32``. Kept Gathers are always fp32.
        sparsity: Pruning only: the share of each MatMul/Gemm weight matrix set to zero
            (``prune``: then fp32; ``prune-dynamic``: then dynamic int8 per channel).
        graph: ``original`` (the pre-processed source), ``optimized`` (fused, smoothed) or
            ``smoothed`` (the original, smoothed, unfused): see
            :mod:`onnxkit_tools.quantize.optimize`.
    """

    name: str
    method: str
    weight_type: str = "QInt8"
    per_channel: bool = False
    calibration: str | None = None
    keep: tuple[str, ...] = ()
    keep_as: str | None = None
    graph: str = "original"
    sparsity: float | None = None

    def quantization(self) -> dict[str, Any]:
        """The ``quantization`` record of a report (and of a published manifest)."""
        record: dict[str, Any] = {
            "candidate": self.name,
            "method": self.method,
            "weight_type": self.weight_type,
            "per_channel": self.per_channel,
            "graph": self.graph,
        }
        if self.method == "static":
            record.update(format="QDQ", activation_type="QUInt8", calibration=self.calibration)
        if self.method in ("prune", "prune-dynamic"):
            record.update(sparsity=self.sparsity, pruning="magnitude, per weight matrix")
        if self.method in ("weight-only", "mixed"):
            record.update(
                weight_only={
                    "bits": WEIGHT_ONLY_BITS,
                    "block_size": WEIGHT_ONLY_BLOCK,
                    "accuracy_level": WEIGHT_ONLY_ACCURACY_LEVEL,
                },
                gather=f"int8 for tables over {SMALL_TABLE_SHARE:.0%} of the weights, else fp32",
            )
        if self.method == "mixed":
            record.update(kept_nodes=list(self.keep), kept_as=self.keep_as)
        return record


def default_candidates() -> list[CandidateSpec]:
    """The fixed candidates, simplest first (mixed ones are added after measuring sensitivity)."""
    specs = [
        CandidateSpec(
            f"dynamic-{weight.lower()}-{'channel' if per_channel else 'tensor'}",
            "dynamic",
            weight_type=weight,
            per_channel=per_channel,
        )
        for weight in ("QInt8", "QUInt8")
        for per_channel in (False, True)
    ]
    specs += [
        CandidateSpec(f"static-{method.lower()}", "static", per_channel=True, calibration=method)
        for method in ("MinMax", "Entropy", "Percentile")
    ]
    specs.append(CandidateSpec("weight-only-int8", "weight-only", weight_type="int8-block"))
    return specs


def optimized_candidates() -> list[CandidateSpec]:
    """The fixed candidates on the optimized graph: fp32 alone (what optimization buys), then
    the fastest int8 and the most accurate 8-bit; mixed ones follow their own sensitivity.
    Last, the fastest int8 on the smoothed original graph: fusion can cost more than it saves
    (onnxruntime's CPU MultiHeadAttention kernel ran slower than the unfused attention it
    replaced on MiniLM), while smoothing is free at run time."""
    graph = "optimized"
    return [
        CandidateSpec(f"{OPTIMIZED_PREFIX}fp32", "fp32", weight_type="float32", graph=graph),
        CandidateSpec(
            f"{OPTIMIZED_PREFIX}dynamic-qint8-channel", "dynamic", per_channel=True, graph=graph
        ),
        CandidateSpec(
            f"{OPTIMIZED_PREFIX}weight-only-int8",
            "weight-only",
            weight_type="int8-block",
            graph=graph,
        ),
        CandidateSpec(
            f"{SMOOTHED_PREFIX}dynamic-qint8-channel",
            "dynamic",
            per_channel=True,
            graph="smoothed",
        ),
    ]


def pruned_candidates() -> list[CandidateSpec]:
    """Magnitude pruning at each of :data:`PRUNE_SPARSITIES`, alone and then dynamic int8."""
    specs = []
    for sparsity in PRUNE_SPARSITIES:
        percent = round(sparsity * 100)
        specs.append(CandidateSpec(f"prune-{percent}", "prune", weight_type="float32",
                                   sparsity=sparsity))  # fmt: skip
        specs.append(CandidateSpec(f"prune-{percent}-dynamic", "prune-dynamic", per_channel=True,
                                   sparsity=sparsity))  # fmt: skip
    return specs


def build_pruned(
    base: Path, target: Path, *, sparsity: float, then_dynamic: bool, external: bool = False
) -> None:
    """Zero the smallest-magnitude ``sparsity`` of every MatMul/Gemm weight matrix (each on its
    own), then keep fp32 or quantize dynamic int8 per channel."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(base))
    weights = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        tensor = weights.get(node.input[1])
        if tensor is None:
            continue
        array = numpy_helper.to_array(tensor)
        if array.ndim != 2 or array.dtype != np.float32:
            continue
        cut = np.quantile(np.abs(array), sparsity)
        pruned = np.where(np.abs(array) <= cut, np.float32(0), array)
        tensor.CopyFrom(numpy_helper.from_array(pruned.astype(np.float32), tensor.name))
    if not then_dynamic:
        write_proto(model, target, external=external)
        return
    with tempfile.TemporaryDirectory(prefix="onnxkit-prune-", dir=target.parent) as scratch:
        pruned_path = Path(scratch) / "pruned.onnx"
        write_proto(model, pruned_path, external=external)
        build_dynamic(pruned_path, target, per_channel=True, external=external)


def write_proto(model: Any, target: Path, *, external: bool) -> None:
    """Save a ModelProto, its tensors in one external data file when ``external``."""
    import onnx

    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        model,
        str(target),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=target.name + ".data",
        size_threshold=0,  # every initializer: the graph file keeps no weights
    )


def compressed_size(path: Path) -> int:
    """Bytes of the model's files (graph and external data) after zlib level 6, as a zip or
    gzip would store them: what pruning's zeros can buy."""
    import zlib

    total = 0
    for file in model_files(path):
        compressor = zlib.compressobj(6)
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                total += len(compressor.compress(chunk))
        total += len(compressor.flush())
    return total


def _wanted(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def mixed_keep_sets(
    ranking: Sequence[tuple[Sequence[str], float]], shares: Sequence[float] = MIXED_SHARES
) -> list[tuple[str, ...]]:
    """The nodes to keep back for each share of the total measured sensitivity.

    Args:
        ranking: (nodes probed together, sensitivity) of the probes whose nodes may be kept
            back, most sensitive first.
        shares: Fractions of the summed sensitivity to take away.

    Returns:
        Distinct, non-empty node sets, smallest first.
    """
    positive = [(tuple(nodes), value) for nodes, value in ranking if value > 0]
    total = sum(value for _, value in positive)
    if total <= 0:
        return []
    sets: list[tuple[str, ...]] = []
    for share in shares:
        running, keep = 0.0, list[str]()
        for nodes, value in positive:
            keep.extend(nodes)
            running += value
            if running >= share * total * (1 - 1e-9):
                break
        if tuple(keep) not in sets:
            sets.append(tuple(keep))
    return sets


# --- model files ------------------------------------------------------------------------------


def model_size_bytes(path: Path) -> int:
    """Bytes of the ``.onnx`` file plus every external data file it references."""
    return sum(file.stat().st_size for file in model_files(path))


def model_files(path: Path) -> list[Path]:
    """The ``.onnx`` file and every external data file it references."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    locations = set()
    for tensor in _all_initializers(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                locations.add(entry.value)
    return [path, *(path.parent / loc for loc in sorted(locations))]


def _all_initializers(model: Any) -> Iterator[Any]:
    yield from model.graph.initializer
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t


def has_external_data(path: Path) -> bool:
    """Whether the model keeps tensors in files beside it."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(t.external_data for t in _all_initializers(model))


def write_model(source: Path, target: Path, *, external: bool) -> None:
    """Copy a model to ``target``, as one file or with its tensors in ``target.name + '.data'``."""
    import onnx

    target.parent.mkdir(parents=True, exist_ok=True)
    data_name = target.name + ".data"
    (target.parent / data_name).unlink(missing_ok=True)
    if not external and not has_external_data(source):
        shutil.copyfile(source, target)
        return
    model = onnx.load(str(source))
    onnx.save_model(
        model,
        str(target),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=data_name,
        size_threshold=1024,
    )


def prepare_model(source: Path, target: Path, *, external: bool = False) -> str:
    """onnxruntime's quantization pre-processing, with a fallback; returns what was done.

    Symbolic shape inference fails on some exports ("Incomplete symbolic shape inference" on
    MiniLM's TorchScript export); then it runs without it, and if that fails too the model is
    copied unchanged. It runs in ``target``'s folder because onnxruntime drops a
    ``sym_shape_infer_temp.onnx`` (and its data file) into the working directory when it fails.
    """
    from onnxruntime.quantization import quant_pre_process

    source, target = source.resolve(), target.resolve()
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("quant_pre_process", {}),
        ("quant_pre_process without symbolic shape inference", {"skip_symbolic_shape": True}),
    ]
    errors = []
    with contextlib.chdir(target.parent):
        for label, options in attempts:
            try:
                quant_pre_process(
                    str(source),
                    str(target),
                    save_as_external_data=external,
                    all_tensors_to_one_file=True,
                    external_data_location=target.name + ".data",
                    **options,
                )
            except Exception as exc:  # onnxruntime raises bare Exception here
                errors.append(f"{label}: {type(exc).__name__}: {exc}")
                continue
            untyped = _untyped_weight_outputs(target)
            if untyped:
                # The quantizers need each weight node's output type; without it they fail
                # ("Unable to find data type for weight_name=..."), e.g. after an ai.onnx.ml op.
                errors.append(f"{label}: leaves {len(untyped)} weight outputs untyped")
                continue
            return label + (f" (after {'; '.join(errors)})" if errors else "")
    write_model(source, target, external=external)
    return "pre-processing skipped (" + "; ".join(errors) + ")"


def _untyped_weight_outputs(path: Path) -> list[str]:
    """Outputs of weight nodes whose element type the model does not record."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    typed = {
        value.name
        for value in [*model.graph.value_info, *model.graph.output, *model.graph.input]
        if value.type.tensor_type.elem_type
    }
    names = {name for name, _, _ in _weight_nodes(model)}
    return [
        node.output[0]
        for node in model.graph.node
        if node.name in names and node.output[0] not in typed
    ]


def weight_nodes(model_path: Path) -> list[tuple[str, str, int]]:
    """(name, op type, weight bytes) of the nodes int8 quantization would change: MatMul, Gemm
    and Conv with a constant weight, Gather from a constant table; in graph order."""
    import onnx

    return _weight_nodes(onnx.load(str(model_path), load_external_data=False))


def _weight_nodes(model: Any) -> list[tuple[str, str, int]]:
    import onnx

    sizes = {}
    for tensor in model.graph.initializer:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        sizes[tensor.name] = math.prod(tensor.dims) * itemsize
    weight_input = {"MatMul": 1, "Gemm": 1, "Conv": 1, "Gather": 0, "EmbedLayerNormalization": 2}
    nodes = []
    for node in model.graph.node:
        index = weight_input.get(node.op_type)
        if index is None or len(node.input) <= index or node.input[index] not in sizes:
            continue
        if node.name:  # the quantizers select nodes by name
            nodes.append((node.name, node.op_type, int(sizes[node.input[index]])))
    return nodes


# --- building candidates ----------------------------------------------------------------------


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return {"QInt8": QuantType.QInt8, "QUInt8": QuantType.QUInt8}[name]


class _NpzReader:
    """Calibration batches for ``quantize_static`` (onnxruntime duck-types the reader)."""

    def __init__(self, feed: dict[str, np.ndarray], batch: int) -> None:
        self._next = iter(
            [
                {k: v[start : start + batch] for k, v in feed.items()}
                for start in range(0, _rows(feed), batch)
            ]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch, or None at the end."""
        return next(self._next, None)


def build_dynamic(
    base: Path,
    target: Path,
    *,
    weight_type: str = "QInt8",
    per_channel: bool = False,
    exclude: Sequence[str] = (),
    only: Sequence[str] = (),
    external: bool = False,
) -> None:
    """Dynamic int8: weights quantized ahead of time, activations at run time (uint8).

    Args:
        base: The (pre-processed) fp32 model.
        target: Where to write the quantized model.
        weight_type: ``QInt8`` or ``QUInt8``.
        per_channel: One scale per output channel.
        exclude: Node names left as they are.
        only: When given, quantize these nodes only (sensitivity probes).
        external: Write tensors to an external data file.
    """
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(
        str(base),
        str(target),
        weight_type=_quant_type(weight_type),
        per_channel=per_channel,
        nodes_to_exclude=list(exclude),
        nodes_to_quantize=list(only),
        use_external_data_format=external,
        # ONNX shape inference cannot type the outputs of onnxruntime's fused operators
        # (MultiHeadAttention, SkipLayerNormalization) on an optimized graph; the quantizer then
        # fails ("Unable to find data type for weight_name") unless told they are float.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def build_static(
    base: Path,
    target: Path,
    calibration: dict[str, np.ndarray],
    *,
    method: str,
    batch: int = 8,
    external: bool = False,
) -> None:
    """Static QDQ: activation ranges calibrated on ``calibration`` (uint8 activations, per-channel
    int8 weights) for the weight-carrying ops in :data:`STATIC_OP_TYPES`."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    # onnxruntime writes its augmented calibration model into a temporary folder of its own.
    quantize_static(
        str(base),
        str(target),
        _NpzReader(calibration, batch),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(STATIC_OP_TYPES),
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, method),
        use_external_data_format=external,
    )


def build_weight_only(
    base: Path,
    target: Path,
    *,
    nodes: Sequence[str] | None = None,
    tables: Sequence[str] = (),
    external: bool = False,
) -> None:
    """Weight-only 8-bit MatMul (MatMulNBits) for ``nodes`` (default every MatMul with constant
    weights), then int8 ``tables`` (Gather): without them an embedding table stays fp32 and the
    model keeps two thirds of its size."""
    import onnx
    from onnxruntime.quantization import quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(base)),
        bits=WEIGHT_ONLY_BITS,
        block_size=WEIGHT_ONLY_BLOCK,
        is_symmetric=True,
        accuracy_level=WEIGHT_ONLY_ACCURACY_LEVEL,
        nodes_to_include=list(nodes) if nodes else None,
    )
    quantizer.process()
    if not tables:  # nodes_to_quantize=[] would mean every node
        quantizer.model.save_model_to_file(str(target), external)
        return
    quantize_dynamic(
        quantizer.model.model,
        str(target),
        op_types_to_quantize=list(TABLE_OPS),
        nodes_to_quantize=list(tables),
        weight_type=_quant_type("QInt8"),
        use_external_data_format=external,
    )


def build_mixed(
    base: Path,
    target: Path,
    *,
    keep: Sequence[str],
    keep_as: str,
    matmuls: set[str],
    external: bool = False,
) -> None:
    """Dynamic int8 per-channel everywhere except ``keep``; kept MatMuls become weight-only
    8-bit (``keep_as="weight-only"``) or stay fp32, kept Gathers stay fp32."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    kept_matmuls = [name for name in keep if name in matmuls]
    if keep_as != "weight-only" or not kept_matmuls:
        build_dynamic(base, target, per_channel=True, exclude=keep, external=external)
        return
    with tempfile.TemporaryDirectory(prefix="onnxkit-mixed-", dir=target.parent) as scratch:
        partial = Path(scratch) / "dynamic.onnx"
        build_dynamic(base, partial, per_channel=True, exclude=keep, external=external)
        quantizer = MatMulNBitsQuantizer(
            onnx.load(str(partial)),
            bits=WEIGHT_ONLY_BITS,
            block_size=WEIGHT_ONLY_BLOCK,
            is_symmetric=True,
            accuracy_level=WEIGHT_ONLY_ACCURACY_LEVEL,
            nodes_to_include=kept_matmuls,
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(target), external)
