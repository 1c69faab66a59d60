"""The CPU twin of a graph: onnxruntime's extended optimizations done once, at publish.

Every onnxruntime session optimizes its graph when it is created (fusions such as
SkipLayerNormalization, Gelu or DynamicQuantizeMatMul). A Lambda function pays that on each
cold start. Publishing writes the optimized graph beside the original, once, checks that it
answers as the original does, and lists it in the manifest (``cpu_graph``); a CPU function
loads the twin and skips that work. Extended optimizations stop short of the layout ones
(NCHWc), which depend on the machine; the twin is made for the CPU execution provider only, so
GPU sessions keep loading the original.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from onnxkit.datatypes import BY_NAME
from onnxkit.manifest import TensorSpec
from onnxkit.settings import CPU_PROVIDER

logger = logging.getLogger(__name__)

SUFFIX = ".cpu.onnx"
LEVEL = "extended"
TOLERANCE = 1e-4
"""Largest difference allowed between the twin's and the original's outputs, relative to the
outputs' scale (fusions may round differently in the last bits)."""


def twin_path(model_path: Path) -> Path:
    """Where a graph's twin is written: ``model.onnx`` -> ``model.cpu.onnx``."""
    return model_path.with_name(model_path.name.removesuffix(".onnx") + SUFFIX)


def build_cpu_graph(
    model_path: Path, out_path: Path, inputs: tuple[TensorSpec, ...]
) -> dict[str, Any] | None:
    """Write the CPU twin of ``model_path`` and check it against the original.

    The check runs both on zeros and on seeded random values shaped by the signature
    (dynamic dimensions 1, then 3); outputs must agree within :data:`TOLERANCE`.

    Args:
        model_path: The original single-file graph.
        out_path: Where to write the twin.
        inputs: The graph's inputs (the manifest's signature).

    Returns:
        The manifest's ``cpu_graph`` record, or None when the twin differs or cannot be
        checked (the warning says why; the original alone is published then).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out_path)
    original = ort.InferenceSession(str(model_path), options, providers=[CPU_PROVIDER])
    twin = ort.InferenceSession(str(out_path), providers=[CPU_PROVIDER])
    worst = 0.0
    checked = 0
    for feed in _samples(inputs):
        try:
            expected = original.run(None, feed)
        except Exception as exc:  # e.g. random values out of a Gather's range: next sample
            logger.debug("sample skipped: the original refuses it (%s)", exc)
            continue
        got = twin.run(None, feed)
        for want, have in zip(expected, got, strict=True):
            want, have = np.asarray(want), np.asarray(have)
            if want.shape != have.shape or want.dtype != have.dtype:
                logger.warning("CPU twin of %s changes an output's shape or type", model_path)
                return None
            if want.dtype.kind == "O":  # strings: the twin must give exactly the same
                worst = max(worst, 0.0 if np.array_equal(want, have) else math.inf)
            elif want.size:
                scale = max(1.0, float(np.abs(want.astype(np.float64)).max()))
                diff = float(np.abs(want.astype(np.float64) - have.astype(np.float64)).max())
                worst = max(worst, diff / scale)
        checked += 1
    if checked == 0:
        logger.warning("CPU twin of %s not checked (no sample ran): not published", model_path)
        return None
    if worst > TOLERANCE:
        logger.warning(
            "CPU twin of %s differs from it by %.2g (over %.0g): not published",
            model_path,
            worst,
            TOLERANCE,
        )
        return None
    return {
        "path": out_path.name,
        "onnxruntime": ort.__version__,
        "level": LEVEL,
        "max_abs_diff": worst,
    }


def _samples(inputs: tuple[TensorSpec, ...]) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    samples = []
    for dynamic, random in ((1, False), (3, True)):
        feed = {}
        for spec in inputs:
            shape = [d if d > 0 else dynamic for d in spec.shape]
            dtype = BY_NAME[spec.datatype].numpy
            if dtype.kind == "O":  # BYTES: onnxruntime's string tensors take str elements
                values = rng.integers(0, 2, shape) if random else np.zeros(shape, np.int64)
                feed[spec.name] = values.astype(str).astype(object)
            elif not random:
                feed[spec.name] = np.zeros(shape, dtype)
            elif dtype.kind == "f":
                feed[spec.name] = rng.standard_normal(shape).astype(dtype)
            else:  # booleans, or small non-negative integers: token ids, masks, indices
                feed[spec.name] = rng.integers(0, 2, shape).astype(dtype)
        samples.append(feed)
    return samples
