"""How much each weight node's int8 version moves the output: the ranking mixed precision uses."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxkit.session import load_session
from onnxkit_tools.quantize.candidates import build_dynamic, weight_nodes
from onnxkit_tools.quantize.console import _Progress, _quiet
from onnxkit_tools.quantize.data import _head, _predictions, _rows, _run, _Task, divergence

if TYPE_CHECKING:  # gate.py imports this module at run time
    from onnxkit_tools.quantize.gate import GateOptions

LOG = logging.getLogger(__name__)

SWITCH_PREFIX = "onnxkit_probe_switch_"


def _measure_sensitivity(
    base: Path,
    work: Path,
    calibration: dict[str, np.ndarray],
    source: Path,
    task: _Task,
    options: GateOptions,
    large: bool,
) -> list[dict[str, Any]]:
    """Quantize one node (or group) at a time to dynamic int8 per-channel and measure how far the
    output moves from fp32 on calibration rows; most sensitive first.

    Probes run on calibration data, not validation data, so that the mixed candidates are
    chosen without looking at the rows they are then judged on. They run in one "switched"
    model (see :func:`build_switched_model`) when it reproduces fp32, else one quantized model
    per probe (a few times slower).
    """
    output = task.score_output or task.output
    feed = _head(calibration, options.probe_rows)
    reference = load_session(source, allow_spinning=False)
    expected = _run(reference, feed, [output], options.batch)[output]
    del reference
    groups = _probe_groups(weight_nodes(base), options.max_probes)
    folder = work / "probe"
    folder.mkdir(exist_ok=True)

    def score(actual: np.ndarray) -> float:
        if task.kind == "classification" and task.score_output is None:
            return float(np.mean(_predictions(task, actual) != _predictions(task, expected)))
        return divergence(actual, expected)

    probe = _switched_prober(base, work, folder, feed, output, options, large, score)
    progress = _Progress(options.progress, len(groups), "sensitivity probe")
    rows: list[dict[str, Any]] = []
    for names, kind, weight_bytes in groups:
        progress.step(names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1})")
        try:
            if probe is not None:
                value = probe(names)
            else:
                with _quiet(options.verbose):
                    build_dynamic(
                        base, folder / "model.onnx", per_channel=True, only=names, external=large
                    )
                session = load_session(folder / "model.onnx", allow_spinning=False)
                value = score(_run(session, feed, [output], options.batch)[output])
                del session
        except Exception as exc:  # a node the quantizer rejects is simply not a mixed option
            LOG.debug("probe %s failed: %s", names, exc)
            continue
        if value is None:  # not quantized by dynamic int8: nothing to keep back
            continue
        row = {"nodes": list(names), "op_type": kind, "weight_bytes": weight_bytes}
        rows.append({**row, "sensitivity": value})
    progress.close()
    rows.sort(key=lambda row: -row["sensitivity"])
    return rows


def _probe_groups(
    nodes: list[tuple[str, str, int]], max_probes: int
) -> list[tuple[tuple[str, ...], str, int]]:
    """Nodes to probe, one per probe, or in neighbouring groups when there are too many."""
    size = max(1, math.ceil(len(nodes) / max(1, max_probes)))
    groups = []
    for start in range(0, len(nodes), size):
        chunk = nodes[start : start + size]
        kinds = {kind for _, kind, _ in chunk}
        kind = kinds.pop() if len(kinds) == 1 else "mixed"
        groups.append((tuple(n for n, _, _ in chunk), kind, sum(b for _, _, b in chunk)))
    return groups


def build_switched_model(base: Path, quantized: Path, target: Path) -> dict[str, str]:
    """Merge the fp32 model with its dynamic-int8 version: every quantized node computes both
    paths and a boolean input per node selects one (``Where``).

    With one switch on, the model is the fp32 model with that one node quantized exactly as
    onnxruntime's quantizer does it; one session then serves every probe, instead of a
    quantizer run and a session per probe.

    Returns:
        Switch input name per quantized node of ``base``.

    Raises:
        ValueError: The merged graph has inputs no node produces (an unexpected quantizer
            rewrite).
    """
    import onnx
    from onnx import helper

    fp32 = onnx.load(str(base))
    int8 = onnx.load(str(quantized))

    def key(node: Any) -> tuple[Any, ...]:
        return (node.name, node.op_type, tuple(node.input), tuple(node.output))

    unchanged = {key(node) for node in fp32.graph.node}
    added = [node for node in int8.graph.node if key(node) not in unchanged]
    producer = {name: node for node in added for name in node.output}
    switches: dict[str, str] = {}
    selects = []
    for node in fp32.graph.node:
        if not node.name or not node.output or node.output[0] not in producer:
            continue
        value = node.output[0]
        switch = f"{SWITCH_PREFIX}{len(switches)}"
        quantized_output = producer[value]
        quantized_output.output[list(quantized_output.output).index(value)] = value + "__int8"
        node.output[0] = value + "__fp32"
        selects.append(
            helper.make_node(
                "Where",
                [switch, value + "__int8", value + "__fp32"],
                [value],
                name=f"{switch}_select",
            )
        )
        switches[node.name] = switch
    for node in added:
        node.name = node.name + "__int8" if node.name else ""
    known = {i.name for i in fp32.graph.initializer}
    initializers = [*fp32.graph.initializer]
    initializers += [i for i in int8.graph.initializer if i.name not in known]
    inputs = [*fp32.graph.input]
    inputs += [
        helper.make_tensor_value_info(s, onnx.TensorProto.BOOL, []) for s in switches.values()
    ]
    nodes = _topological([*fp32.graph.node, *added, *selects], inputs, initializers)
    graph = helper.make_graph(nodes, "switched", inputs, list(fp32.graph.output), initializers)
    model = helper.make_model(graph, opset_imports=list(int8.opset_import))
    model.ir_version = int8.ir_version
    onnx.save_model(model, str(target))
    return switches


def _topological(nodes: list[Any], inputs: list[Any], initializers: list[Any]) -> list[Any]:
    """Nodes in an order where every input is produced before use (Kahn's algorithm)."""
    available = {"", *(i.name for i in inputs), *(i.name for i in initializers)}
    pending = list(nodes)
    ordered: list[Any] = []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            missing = {name for n in pending for name in n.input} - available
            raise ValueError(f"merged graph has unproduced inputs: {sorted(missing)[:5]}")
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    return ordered


def _switched_prober(
    base: Path,
    work: Path,
    folder: Path,
    feed: dict[str, np.ndarray],
    output: str,
    options: GateOptions,
    large: bool,
    score: Callable[[np.ndarray], float],
) -> Callable[[Sequence[str]], float | None] | None:
    """A function scoring one probe in the switched model, or None to probe the slow way
    (a model too large to hold twice, or a merge that does not reproduce fp32)."""
    if large:
        return None
    quantized = work / "dynamic-qint8-channel" / "model.onnx"
    try:
        with _quiet(options.verbose):
            if not quantized.is_file():
                quantized = folder / "quantized.onnx"
                build_dynamic(base, quantized, per_channel=True)
            switches = build_switched_model(base, quantized, folder / "switched.onnx")
        session = load_session(folder / "switched.onnx", allow_spinning=False)
        off = dict.fromkeys(switches.values(), np.array(False))

        def run(names: Sequence[str]) -> np.ndarray:
            on = {switches[name]: np.array(True) for name in names if name in switches}
            flags = {**off, **on}
            parts = [
                session.run(
                    [output], {**{k: v[i : i + options.batch] for k, v in feed.items()}, **flags}
                )[0]
                for i in range(0, _rows(feed), options.batch)
            ]
            return np.concatenate(parts)

        baseline = score(run([]))
    except Exception as exc:  # fall back to one quantized model per probe
        LOG.debug("switched probe model unavailable: %s", exc)
        return None
    if baseline > 1e-5:
        LOG.debug("switched probe model drifts from fp32 (%.2e); probing one by one", baseline)
        return None

    def probe(names: Sequence[str]) -> float | None:
        if not any(name in switches for name in names):
            return None
        return score(run(names))

    return probe
