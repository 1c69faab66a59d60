"""Quantization behind a quality gate: every candidate is measured against the fp32 original.

``quantize_with_gate`` builds a set of candidates from one fp32 model (dynamic int8, static QDQ,
weight-only 8-bit MatMul and measured mixed precision), measures each one against the fp32 model
in the same run (quality on held-out data, file size, latency at batch 1 and at a larger batch),
and keeps the one the budget prefers. ``add_quantize_arguments`` / ``run_quantize`` are the
``onnxkit quantize`` command.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import io
import json
import logging
import math
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np

from onnxkit.errors import OnnxkitError
from onnxkit.session import available_cpus, load_session

LOG = logging.getLogger(__name__)

REPORT_SCHEMA = "onnxkit.quantize/1"
TASKS = ("auto", "classification", "embedding", "regression")
PREFERENCES = ("quality", "speed")
LABEL_KEY = "label"

# The budget's quality limits. "quality" is the default; "speed" is the stated floor that
# --prefer speed may trade quality down to.
QUALITY_LIMITS = {"min_cosine": 0.99, "max_accuracy_drop": 0.01, "max_error": 0.01}
SPEED_LIMITS = {"min_cosine": 0.97, "max_accuracy_drop": 0.02, "max_error": 0.02}
# "Never slower than fp32" at batch 1, with room for timing noise: medians of interleaved runs on
# shared CPUs still wander by a few percent, and a microsecond-sized model (digits: ~12 µs) moves
# by about a microsecond from one session to the next whatever its kernels.
MAX_LATENCY_RATIO = 1.05
LATENCY_SLACK_MS = 0.001
MAX_SIZE_RATIO = 1.0
# Sizes within 5% of the smallest passing candidate count as equally small (a few kB of scales
# must not beat a real speed difference), and batch-1 ratios within 0.03 as equally fast.
SIZE_TOLERANCE = 0.05
LATENCY_TIE = 0.03

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
# Above this the quantizers must write external data (protobuf's 2 GB limit, with margin).
EXTERNAL_DATA_BYTES = 1_500_000_000

CANDIDATE_FAMILIES = ("dynamic-*", "static-*", "weight-only-*", "mixed-*")


class QuantizeError(OnnxkitError):
    """The model or the data cannot be quantized as asked (a wrong name, shape or option)."""

    status = HTTPStatus.BAD_REQUEST
    code = "quantize_error"


# --- budget, candidates, results --------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """The limits a candidate must meet and how to choose among those that do.

    Attributes:
        prefer: ``quality``: among candidates within the limits, the smallest (sizes within
            ``size_tolerance`` are equal), then the fastest. ``speed``: the fastest within the
            limits, then the smallest.
        min_cosine: Lowest per-row cosine similarity with fp32 (embeddings).
        max_accuracy_drop: Largest accuracy drop (fraction, 0.01 = one point) against fp32;
            without labels, the largest share of rows whose top-1 differs from fp32
            (classification).
        max_error: Largest max-abs error relative to the fp32 output's largest magnitude
            (regression).
        max_latency_ratio: Batch-1 median latency at most this times fp32's ...
        latency_slack_ms: ... plus this many milliseconds.
        max_size_ratio: File size (external data included) at most this times fp32's.
        size_tolerance: Relative size difference that still counts as equally small.
    """

    prefer: str = "quality"
    min_cosine: float = QUALITY_LIMITS["min_cosine"]
    max_accuracy_drop: float = QUALITY_LIMITS["max_accuracy_drop"]
    max_error: float = QUALITY_LIMITS["max_error"]
    max_latency_ratio: float = MAX_LATENCY_RATIO
    latency_slack_ms: float = LATENCY_SLACK_MS
    max_size_ratio: float = MAX_SIZE_RATIO
    size_tolerance: float = SIZE_TOLERANCE

    @classmethod
    def for_preference(cls, prefer: str = "quality", **overrides: float | None) -> Budget:
        """The default budget for ``prefer``, with any limit given (not None) overriding it.

        Raises:
            QuantizeError: ``prefer`` is neither ``quality`` nor ``speed``, or a limit is unknown.
        """
        if prefer not in PREFERENCES:
            raise QuantizeError(f"prefer must be one of {', '.join(PREFERENCES)}, not {prefer!r}")
        known = {f for f in cls.__dataclass_fields__ if f != "prefer"}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise QuantizeError(f"unknown budget limits: {', '.join(unknown)}")
        limits = dict(SPEED_LIMITS if prefer == "speed" else QUALITY_LIMITS)
        limits.update({name: float(v) for name, v in overrides.items() if v is not None})
        return cls(prefer=prefer, **limits)

    def describe(self, task: str) -> str:
        """The limits that apply to ``task``, in words."""
        quality = {
            "classification": f"accuracy drop <= {_points(self.max_accuracy_drop)}",
            "embedding": f"min cosine >= {self.min_cosine:g}",
            "regression": f"relative max-abs error <= {self.max_error:g}",
        }[task]
        order = (
            f"then the smallest (sizes within {self.size_tolerance:.0%} tie), then the fastest"
            if self.prefer == "quality"
            else "then the fastest at batch 1"
        )
        return (
            f"prefer {self.prefer}: {quality}, batch-1 latency <= {self.max_latency_ratio:g}x "
            f"fp32 (+{self.latency_slack_ms:g} ms), size <= {self.max_size_ratio:g}x fp32; {order}"
        )


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
    """

    name: str
    method: str
    weight_type: str = "QInt8"
    per_channel: bool = False
    calibration: str | None = None
    keep: tuple[str, ...] = ()
    keep_as: str | None = None

    def quantization(self) -> dict[str, Any]:
        """The ``quantization`` record of a report (and of a published manifest)."""
        record: dict[str, Any] = {
            "candidate": self.name,
            "method": self.method,
            "weight_type": self.weight_type,
            "per_channel": self.per_channel,
        }
        if self.method == "static":
            record.update(format="QDQ", activation_type="QUInt8", calibration=self.calibration)
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


@dataclass
class CandidateResult:
    """One measured candidate (or one that failed to build), as the report stores it.

    Ratios are against the fp32 model timed in the same interleaved loop as this candidate.
    """

    name: str
    quantization: dict[str, Any]
    size_bytes: int | None = None
    size_ratio: float | None = None
    latency_b1_ms: float | None = None
    latency_batch_ms: float | None = None
    latency_b1_ratio: float | None = None
    latency_batch_ratio: float | None = None
    fp32_latency_b1_ms: float | None = None
    fp32_latency_batch_ms: float | None = None
    quality: dict[str, float] = field(default_factory=dict)
    build_seconds: float = 0.0
    error: str | None = None
    failures: list[str] = field(default_factory=list)
    passed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateResult:
        """Inverse of :meth:`to_dict` (ignores keys it does not know)."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class Report:
    """Everything a gate run measured, and the candidate it chose (``chosen`` None: none passed).

    Attributes:
        source: The fp32 model.
        target: Where the chosen model was written (None when nothing was written).
        task: ``classification``, ``embedding`` or ``regression``.
        output: The output compared with fp32 (for classification, the one holding the class).
        budget: The budget the candidates were judged by.
        fp32: The fp32 model's size, latency and quality (accuracy when labels were given).
        candidates: Every candidate, in the order they were built.
        chosen: Name of the chosen candidate.
        sensitivity: Measured sensitivity per probed node, most sensitive first.
        data: Row counts and what the data held.
        settings: Threads, batch size and repeats used for timing; notes on pre-processing.
        seconds: Wall time of the whole run.
    """

    source: str
    target: str | None
    task: str
    output: str
    budget: Budget
    fp32: dict[str, Any]
    candidates: list[CandidateResult]
    chosen: str | None
    sensitivity: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def chosen_candidate(self) -> CandidateResult | None:
        """The chosen candidate's result."""
        return next((c for c in self.candidates if c.name == self.chosen), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON form; ``quantization`` (the chosen method) is what ``onnxkit publish`` records."""
        chosen = self.chosen_candidate
        return {
            "schema": REPORT_SCHEMA,
            "source": self.source,
            "target": self.target,
            "task": self.task,
            "output": self.output,
            "budget": asdict(self.budget),
            "chosen": self.chosen,
            "quantization": chosen.quantization if chosen else None,
            "fp32": self.fp32,
            "candidates": [c.to_dict() for c in self.candidates],
            "sensitivity": self.sensitivity,
            "data": self.data,
            "settings": self.settings,
            "seconds": round(self.seconds, 2),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """Read a report written by :meth:`to_dict`.

        Raises:
            QuantizeError: The document is not a quantization report.
        """
        if data.get("schema") != REPORT_SCHEMA:
            raise QuantizeError(f"not a quantization report (schema {data.get('schema')!r})")
        return cls(
            source=data["source"],
            target=data.get("target"),
            task=data["task"],
            output=data["output"],
            budget=Budget(**data["budget"]),
            fp32=data["fp32"],
            candidates=[CandidateResult.from_dict(c) for c in data["candidates"]],
            chosen=data.get("chosen"),
            sensitivity=data.get("sensitivity", []),
            data=data.get("data", {}),
            settings=data.get("settings", {}),
            seconds=data.get("seconds", 0.0),
        )

    def reselect(self, budget: Budget) -> Report:
        """Judge the same measurements by another budget (no model is rebuilt or written).

        Returns:
            A new report whose ``target`` is None: this run wrote only its own choice (and,
            with ``GateOptions.keep_dir``, every candidate into that folder).
        """
        candidates = [replace(c, failures=[], passed=False) for c in self.candidates]
        chosen = judge(candidates, budget, self.task, self.fp32)
        return replace(
            self,
            budget=budget,
            candidates=candidates,
            chosen=chosen.name if chosen else None,
            target=None,
        )

    def failure_message(self) -> str:
        """Why no candidate passed and what to try (empty when one did)."""
        if self.chosen is not None:
            return ""
        return explain_rejection(self.candidates, self.budget, self.task, self.fp32)


# --- selection (pure functions of the measured results) --------------------------------------


def check_limits(
    candidate: CandidateResult, budget: Budget, task: str, fp32: dict[str, Any]
) -> list[str]:
    """The limits ``candidate`` breaks, each in words with its measured value (empty: passes).

    Args:
        candidate: A measured candidate.
        budget: The limits.
        task: ``classification``, ``embedding`` or ``regression``.
        fp32: The fp32 row of the report (its accuracy, when labels were given).
    """
    if candidate.error is not None:
        return [f"build failed: {candidate.error}"]
    failures = []
    quality = candidate.quality
    if task == "classification":
        if "accuracy" in quality and "accuracy" in fp32.get("quality", {}):
            drop = fp32["quality"]["accuracy"] - quality["accuracy"]
            if drop > budget.max_accuracy_drop + 1e-12:
                failures.append(
                    f"accuracy drop {drop * 100:.2f} points > {_points(budget.max_accuracy_drop)}"
                )
        else:
            changed = 1.0 - quality["agreement"]
            if changed > budget.max_accuracy_drop + 1e-12:
                failures.append(
                    f"top-1 disagreement {changed * 100:.2f}% > {budget.max_accuracy_drop * 100:g}%"
                )
    elif task == "embedding":
        if quality["cosine_min"] < budget.min_cosine:
            failures.append(f"min cosine {quality['cosine_min']:.4f} < {budget.min_cosine:g}")
    elif quality["relative_error"] > budget.max_error:
        failures.append(f"relative error {quality['relative_error']:.4g} > {budget.max_error:g}")
    if candidate.latency_b1_ms is None or candidate.fp32_latency_b1_ms is None:
        return [*failures, "not measured"]
    # The slack, in ms, counts against the fp32 time this candidate was measured alongside.
    slack = budget.latency_slack_ms / candidate.fp32_latency_b1_ms
    if (candidate.latency_b1_ratio or math.inf) > budget.max_latency_ratio + slack:
        failures.append(
            f"b1 latency {candidate.latency_b1_ratio:.2f}x fp32 > {budget.max_latency_ratio:g}x"
        )
    if candidate.size_ratio is not None and candidate.size_ratio > budget.max_size_ratio:
        failures.append(f"size {candidate.size_ratio:.2f}x fp32 > {budget.max_size_ratio:g}x")
    return failures


def _points(fraction: float) -> str:
    """An accuracy difference in percentage points: 0.01 -> "1 point"."""
    value = fraction * 100
    return f"{value:g} point" + ("" if value == 1 else "s")


def _fastest(candidates: list[CandidateResult]) -> CandidateResult:
    """Lowest batch-1 ratio; ratios within LATENCY_TIE tie and the batch ratio decides."""
    best = min(c.latency_b1_ratio or math.inf for c in candidates)
    near = [c for c in candidates if (c.latency_b1_ratio or math.inf) <= best + LATENCY_TIE]
    return min(near, key=lambda c: c.latency_batch_ratio or math.inf)


def select_candidate(
    candidates: Sequence[CandidateResult], budget: Budget
) -> CandidateResult | None:
    """Choose among candidates already judged (``passed`` set); None when none passed.

    ``quality``: the smallest, sizes within ``budget.size_tolerance`` of the smallest counting as
    equal, then the fastest (batch-1 ratios within LATENCY_TIE count as equal and the batch
    ratio decides). ``speed``: the lowest batch-1 ratio, then the smallest. Remaining ties go to
    the earlier candidate (simpler methods come first).
    """
    passing = [c for c in candidates if c.passed]
    if not passing:
        return None
    if budget.prefer == "speed":
        # Literally the fastest at batch 1: a tie band here could hand back a slower model.
        return min(passing, key=lambda c: (c.latency_b1_ratio or math.inf, c.size_ratio))
    smallest = min(c.size_ratio or math.inf for c in passing)
    small = [
        c
        for c in passing
        if (c.size_ratio or math.inf) <= smallest * (1 + budget.size_tolerance) + 1e-12
    ]
    return _fastest(small)


def judge(
    candidates: Sequence[CandidateResult], budget: Budget, task: str, fp32: dict[str, Any]
) -> CandidateResult | None:
    """Set ``failures``/``passed`` on every candidate, then choose one (None: none passed)."""
    for candidate in candidates:
        candidate.failures = check_limits(candidate, budget, task, fp32)
        candidate.passed = not candidate.failures
    return select_candidate(candidates, budget)


def _closeness(candidate: CandidateResult, task: str) -> tuple[float, ...]:
    """Sort key: fewest broken limits, then best quality (for naming the nearest misses)."""
    if candidate.error is not None:
        return (math.inf,)
    quality = candidate.quality
    score = {
        "classification": -quality.get("accuracy", quality.get("agreement", 0.0)),
        "embedding": -quality.get("cosine_min", -1.0),
        "regression": quality.get("relative_error", math.inf),
    }[task]
    return (len(candidate.failures), score)


def explain_rejection(
    candidates: Sequence[CandidateResult],
    budget: Budget,
    task: str,
    fp32: dict[str, Any] | None = None,
    show: int = 3,
) -> str:
    """Say which limit each of the nearest misses broke and what to try next.

    Args:
        candidates: Judged candidates (``failures`` set).
        budget: The budget they were judged by.
        task: ``classification``, ``embedding`` or ``regression``.
        fp32: The report's fp32 row (its accuracy), to say what ``--prefer speed`` would pick.
        show: How many nearest misses to name.
    """
    ranked = sorted(candidates, key=lambda c: _closeness(c, task))[:show]
    lines = [f"no candidate meets the budget ({budget.describe(task)}). Nearest misses:"]
    lines += [f"  {c.name}: {'; '.join(c.failures) or 'not judged'}" for c in ranked]
    broken = " ".join(f for c in ranked for f in c.failures)
    hints = []
    quality_words = ("cosine", "accuracy", "disagreement", "relative error")
    if any(word in broken for word in quality_words):
        if budget.prefer == "quality":
            floor = {
                "classification": f"accuracy drop {_points(SPEED_LIMITS['max_accuracy_drop'])}",
                "embedding": f"min cosine {SPEED_LIMITS['min_cosine']:g}",
                "regression": f"relative error {SPEED_LIMITS['max_error']:g}",
            }[task]
            # Judge copies by the speed floor: the real results keep their verdicts.
            speed = replace(budget, prefer="speed", **SPEED_LIMITS)
            copies = [replace(c, failures=[], passed=False) for c in candidates]
            pick = judge(copies, speed, task, fp32 or {})
            would = f", which would choose {pick.name}" if pick is not None else ""
            hints.append(f"--prefer speed (quality floor {floor}{would})")
        option = {
            "classification": "--max-accuracy-drop",
            "embedding": "--min-cosine",
            "regression": "--max-error",
        }[task]
        hints.append(f"a looser {option}")
        built = [c for c in candidates if c.error is None]
        if not any(c.quantization.get("per_channel") for c in built):
            hints.append("per-channel candidates (--candidates 'dynamic-*-channel,mixed-*')")
        elif any(c.quantization.get("method") == "mixed" for c in built):
            hints.append("--keep-as fp32 (mixed precision keeps its most sensitive MatMuls fp32)")
        else:
            hints.append("mixed precision (--candidates 'mixed-*')")
    if "latency" in broken:
        hints.append("--max-latency-ratio above 1 if size matters more than speed")
    if "size" in broken:
        hints.append("a larger --max-size-ratio")
    if "build failed" in broken:
        hints.append("the build errors above (run with --verbose)")
    if hints:
        lines.append("Try: " + "; or ".join(hints) + ".")
    return "\n".join(lines)


# --- data and task ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Task:
    kind: str  # classification | embedding | regression
    output: str  # compared output: class labels (classification) or the float output
    score_output: str | None  # float output whose divergence ranks node sensitivity
    argmax: bool  # classification read from a float output by argmax


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file.

    Raises:
        QuantizeError: The file is missing or not an npz archive.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        raise QuantizeError(f"cannot read {path} as .npz: {exc}") from exc


def _model_feed(session: Any, arrays: dict[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    """The arrays named after the model's inputs, cast to their element types, same row count.

    Raises:
        QuantizeError: An input is missing, has another kind of type, or the row counts differ.
    """
    feed = {}
    for spec in session.get_inputs():
        if spec.name not in arrays:
            raise QuantizeError(
                f"{what} data has no array named {spec.name!r} (the model's inputs are "
                f"{[i.name for i in session.get_inputs()]}; arrays: {sorted(arrays)})"
            )
        array = arrays[spec.name]
        dtype = _ORT_TYPES.get(spec.type)
        if dtype is not None and array.dtype != dtype:
            if np.dtype(dtype).kind != array.dtype.kind and not (
                np.dtype(dtype).kind in "iu" and array.dtype.kind in "iu"
            ):
                raise QuantizeError(
                    f"{what} array {spec.name!r} is {array.dtype}, the model wants {spec.type}"
                )
            array = array.astype(dtype)
        feed[spec.name] = np.ascontiguousarray(array)
    rows = {len(a) for a in feed.values()}
    if len(rows) != 1 or 0 in rows:
        raise QuantizeError(f"{what} arrays need the same, non-zero number of rows: {rows}")
    return feed


def _rows(feed: dict[str, np.ndarray]) -> int:
    return len(next(iter(feed.values())))


def _head(feed: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    return {name: array[:rows] for name, array in feed.items()}


def detect_task(outputs: Sequence[tuple[str, str]], requested: str = "auto") -> _Task:
    """Which output to compare and how.

    ``auto``: an integer output makes a classifier judged on that output; otherwise the first
    float output is compared, as an embedding when rows hold more than one value, else as a
    regression. ``classification`` without an integer output takes the argmax of the first
    float output.

    Args:
        outputs: (name, onnxruntime type string) per model output, in graph order.
        requested: One of :data:`TASKS`.

    Raises:
        QuantizeError: No output fits the task.
    """
    if requested not in TASKS:
        raise QuantizeError(f"task must be one of {', '.join(TASKS)}, not {requested!r}")
    integers = [name for name, kind in outputs if kind.startswith("tensor(int")]
    floats = [name for name, kind in outputs if kind.startswith(("tensor(float", "tensor(double"))]
    score = floats[0] if floats else None
    if requested in ("auto", "classification") and integers:
        return _Task("classification", integers[0], score, argmax=False)
    if requested == "classification":
        if not floats:
            raise QuantizeError("classification needs an integer output or a float score output")
        return _Task("classification", floats[0], score, argmax=True)
    if not floats:
        raise QuantizeError(f"no float output to compare for {requested}: outputs {outputs}")
    # auto: embedding or regression is decided from the output width once it has run.
    return _Task(
        "embedding" if requested != "regression" else "regression", floats[0], score, False
    )


def _run(
    session: Any, feed: dict[str, np.ndarray], names: list[str], batch: int
) -> dict[str, np.ndarray]:
    """Run ``names`` over all rows, ``batch`` rows at a time."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, _rows(feed), batch):
        outputs = session.run(names, {k: v[start : start + batch] for k, v in feed.items()})
        for name, value in zip(names, outputs, strict=True):
            parts[name].append(np.asarray(value))
    return {name: np.concatenate(values) for name, values in parts.items()}


def _flat_rows(array: np.ndarray) -> np.ndarray:
    return array.reshape(len(array), -1).astype(np.float64)


def _row_cosines(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    a, b = _flat_rows(actual), _flat_rows(expected)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosines = (a * b).sum(axis=1) / np.maximum(norms, 1e-30)
    # Two all-zero rows are identical, not orthogonal.
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    return np.where(both_zero, 1.0, cosines)


def _predictions(task: _Task, value: np.ndarray) -> np.ndarray:
    if task.argmax:
        return np.asarray(value.reshape(len(value), -1).argmax(axis=1))
    return np.asarray(value).reshape(len(value), -1)[:, 0]


def measure_quality(
    task: _Task, actual: np.ndarray, expected: np.ndarray, labels: np.ndarray | None
) -> dict[str, float]:
    """Quality of ``actual`` against the fp32 ``expected`` (and against labels when given).

    Classification: top-1 ``agreement`` with fp32 and ``accuracy``. Embedding and regression:
    per-row cosine (``cosine_min``, ``cosine_mean``), ``max_abs_error`` and ``relative_error``
    (max-abs error over fp32's largest magnitude).
    """
    if task.kind == "classification":
        predicted, reference = _predictions(task, actual), _predictions(task, expected)
        quality = {"agreement": float(np.mean(predicted == reference))}
        if labels is not None:
            quality["accuracy"] = float(np.mean(predicted == labels.reshape(-1)))
        return quality
    error = np.abs(_flat_rows(actual) - _flat_rows(expected))
    cosines = _row_cosines(actual, expected)
    scale = float(np.abs(expected).max()) or 1.0
    return {
        "cosine_min": float(cosines.min()),
        "cosine_mean": float(cosines.mean()),
        "max_abs_error": float(error.max()),
        "relative_error": float(error.max() / scale),
    }


def divergence(actual: np.ndarray, expected: np.ndarray) -> float:
    """How far a probe's output moved from fp32: mean per-row ``1 - cosine``, or for one value
    per row the mean relative error. Small moves add up roughly linearly, so nodes rank by it."""
    if _flat_rows(expected).shape[1] > 1:
        return float(np.mean(1.0 - _row_cosines(actual, expected)))
    a, b = _flat_rows(actual)[:, 0], _flat_rows(expected)[:, 0]
    return float(np.mean(np.abs(a - b)) / (np.mean(np.abs(b)) or 1.0))


# --- files ------------------------------------------------------------------------------------


def model_size_bytes(path: Path) -> int:
    """Bytes of the ``.onnx`` file plus every external data file it references."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    locations = set()
    for tensor in _all_initializers(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                locations.add(entry.value)
    return path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in locations)


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


@contextlib.contextmanager
def _quiet(verbose: bool = False) -> Iterator[None]:
    """Silence onnxruntime's quantizers: they print to stdout and log warnings on the root logger
    (e.g. "Please consider to run pre-processing"), which would mix into the report table."""
    if verbose:
        yield
        return
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


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


# --- building candidates ----------------------------------------------------------------------


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return {"QInt8": QuantType.QInt8, "QUInt8": QuantType.QUInt8}[name]


class _NpzReader:
    """Calibration batches for ``quantize_static`` (onnxruntime duck-types the reader)."""

    def __init__(self, feed: dict[str, np.ndarray], batch: int) -> None:
        self._batches = [
            {k: v[start : start + batch] for k, v in feed.items()}
            for start in range(0, _rows(feed), batch)
        ]
        self._next = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch, or None at the end."""
        return next(self._next, None)

    def rewind(self) -> None:
        """Start over (entropy and percentile calibration read the data twice)."""
        self._next = iter(self._batches)


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
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(
        str(base),
        str(target),
        weight_type=_quant_type(weight_type),
        per_channel=per_channel,
        nodes_to_exclude=list(exclude),
        nodes_to_quantize=list(only),
        use_external_data_format=external,
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
    weight_input = {"MatMul": 1, "Gemm": 1, "Conv": 1, "Gather": 0}
    nodes = []
    for node in model.graph.node:
        index = weight_input.get(node.op_type)
        if index is None or len(node.input) <= index or node.input[index] not in sizes:
            continue
        if node.name:  # the quantizers select nodes by name
            nodes.append((node.name, node.op_type, int(sizes[node.input[index]])))
    return nodes


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
        op_types_to_quantize=["Gather"],
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


# --- timing -----------------------------------------------------------------------------------


def paired_latency_ms(
    reference: Any,
    candidate: Any,
    feed: dict[str, np.ndarray],
    *,
    min_repeats: int,
    max_repeats: int,
    budget_s: float,
    warmup: int = 1,
) -> tuple[float, float, float]:
    """Median latency of ``reference`` and ``candidate`` timed alternately on the same feed.

    Interleaving puts both under the same background load (other jobs on shared CPUs move a
    one-after-the-other comparison by tens of percent); the order flips every round so neither
    always runs on a just-warmed cache. The ratio is the median of per-round ratios, which
    follows the load as it changes during the measurement better than a ratio of medians. Both
    sessions must not spin (``allow_spinning=False``), or the idle one steals the cores from the
    one being timed.

    Returns:
        (reference median ms, candidate median ms, median of candidate/reference per round).
    """
    for _ in range(warmup):  # first runs at a new shape allocate and pick kernels
        reference.run(None, feed)
        candidate.run(None, feed)
    samples: tuple[list[float], list[float]] = ([], [])
    started = time.perf_counter()
    for round_ in range(max_repeats):
        order = (
            ((0, reference), (1, candidate))
            if round_ % 2 == 0
            else ((1, candidate), (0, reference))
        )
        for slot, session in order:
            begin = time.perf_counter()
            session.run(None, feed)
            samples[slot].append((time.perf_counter() - begin) * 1000)
        if round_ + 1 >= min_repeats and time.perf_counter() - started > budget_s:
            break
    ratios = np.asarray(samples[1]) / np.asarray(samples[0])
    return float(np.median(samples[0])), float(np.median(samples[1])), float(np.median(ratios))


# --- progress ---------------------------------------------------------------------------------


class _Progress:
    """Steps on stderr: a tqdm bar on a terminal, one line per step otherwise (logs, CI)."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self._label = label
        self._bar: Any = None
        self._count = 0
        self.total = total
        self._enabled = enabled
        self._started = time.perf_counter()
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, file=sys.stderr, leave=False)

    def step(self, name: str) -> None:
        """Announce the next step."""
        self._count += 1
        if not self._enabled:
            return
        text = f"{self._label} {self._count}/{self.total}: {name}"
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.set_description_str(text)
            self._bar.update(1)
        else:
            elapsed = time.perf_counter() - self._started
            print(f"[quantize {elapsed:6.1f}s] {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()


# --- the gate ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateOptions:
    """How much work a gate run does (the defaults finish MiniLM in a few minutes on 2 CPUs).

    Attributes:
        task: One of :data:`TASKS`.
        candidates: Shell patterns over candidate names to build (default all).
        batch: Rows per run for the batched latency and for the quality pass (the validation
            size if smaller). Dynamic int8 scales activations per run, so a row's result
            depends on its batch: quality is judged as served in batches of this size.
        calibration_rows: Calibration rows for static quantization.
        probe_rows: Calibration rows each sensitivity probe runs on.
        max_probes: At most this many probes; above it, neighbouring nodes are probed in groups.
        keep_as: What mixed candidates make of their most sensitive MatMuls:
            ``weight-only`` (8-bit) or ``fp32``.
        b1_repeats: (min, max) timed rounds at batch 1.
        batch_repeats: (min, max) timed rounds at ``batch``.
        time_budget_s: Seconds of batch-1 timing per candidate once the minimum rounds ran (the
            selection rests on it); the batched timing gets two thirds of it.
        progress: Steps on stderr.
        verbose: Let onnxruntime's quantizer logs through.
        keep_dir: Also keep every candidate model here (for inspection or reselection).
    """

    task: str = "auto"
    candidates: tuple[str, ...] = CANDIDATE_FAMILIES
    batch: int = 32
    calibration_rows: int = 64
    probe_rows: int = 32
    max_probes: int = 48
    keep_as: str = "weight-only"
    b1_repeats: tuple[int, int] = (15, 200)
    batch_repeats: tuple[int, int] = (2, 50)
    time_budget_s: float = 3.0
    progress: bool = False
    verbose: bool = False
    keep_dir: Path | None = None


class _Measurer:
    """Measures models against the fp32 reference: quality on validation, size, paired latency."""

    def __init__(
        self,
        source: Path,
        validation: dict[str, np.ndarray],
        labels: np.ndarray | None,
        task: _Task,
        options: GateOptions,
    ) -> None:
        self.reference = load_session(source, allow_spinning=False)
        self.validation = validation
        self.labels = labels
        self.task = task
        self.options = options
        self.batch = max(1, min(options.batch, _rows(validation)))
        self.expected = _run(self.reference, validation, [task.output], self.batch)[task.output]
        self.b1_feed = _head(validation, 1)
        self.batch_feed = _head(validation, self.batch)
        self.fp32_size = model_size_bytes(source)
        self.fp32_b1: list[float] = []
        self.fp32_batch: list[float] = []

    def measure(self, name: str, quantization: dict[str, Any], path: Path) -> CandidateResult:
        options = self.options
        session = load_session(path, allow_spinning=False)
        actual = _run(session, self.validation, [self.task.output], self.batch)[self.task.output]
        quality = measure_quality(self.task, actual, self.expected, self.labels)
        ref_b1, b1, b1_ratio = paired_latency_ms(
            self.reference,
            session,
            self.b1_feed,
            min_repeats=options.b1_repeats[0],
            max_repeats=options.b1_repeats[1],
            budget_s=options.time_budget_s,
        )
        ref_batch, batch, batch_ratio = paired_latency_ms(
            self.reference,
            session,
            self.batch_feed,
            min_repeats=options.batch_repeats[0],
            max_repeats=options.batch_repeats[1],
            budget_s=options.time_budget_s * 2 / 3,
            warmup=0,  # both sessions just ran this batch size (reference at start-up)
        )
        del session
        self.fp32_b1.append(ref_b1)
        self.fp32_batch.append(ref_batch)
        size = model_size_bytes(path)
        return CandidateResult(
            name=name,
            quantization=quantization,
            size_bytes=size,
            size_ratio=size / self.fp32_size,
            latency_b1_ms=b1,
            latency_batch_ms=batch,
            latency_b1_ratio=b1_ratio,
            latency_batch_ratio=batch_ratio,
            fp32_latency_b1_ms=ref_b1,
            fp32_latency_batch_ms=ref_batch,
            quality=quality,
        )

    def fp32_row(self) -> dict[str, Any]:
        quality = measure_quality(self.task, self.expected, self.expected, self.labels)
        return {
            "size_bytes": self.fp32_size,
            "latency_b1_ms": float(np.median(self.fp32_b1)) if self.fp32_b1 else None,
            "latency_batch_ms": float(np.median(self.fp32_batch)) if self.fp32_batch else None,
            "quality": quality,
        }


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


def quantize_with_gate(
    source: Path,
    target: Path,
    calibration: Path | dict[str, np.ndarray],
    validation: Path | dict[str, np.ndarray],
    budget: Budget | None = None,
    options: GateOptions | None = None,
) -> Report:
    """Build every candidate, measure it against ``source``, write the one the budget chooses.

    Args:
        source: The fp32 ``.onnx`` model (external data beside it is read too).
        target: Where the chosen model goes; with external data (``target.name + '.data'``) when
            the source has it.
        calibration: ``.npz`` (or its arrays) named after the model inputs: static calibration
            and sensitivity probes run on it.
        validation: ``.npz`` (or its arrays) named after the model inputs, plus optional
            ``label``: every candidate is judged on it.
        budget: Limits and preference (default: quality first).
        options: How much to build and time (default: everything, as :class:`GateOptions`).

    Returns:
        The report; ``chosen`` is None (and nothing is written) when no candidate passed.

    Raises:
        QuantizeError: The data does not fit the model, or an option is invalid.
        ModelLoadError: onnxruntime cannot load the source model.
    """
    started = time.perf_counter()
    budget = budget or Budget()
    options = options or GateOptions()
    if options.keep_as not in ("weight-only", "fp32"):
        raise QuantizeError(f"keep_as must be weight-only or fp32, not {options.keep_as!r}")
    counts = {
        "batch": options.batch,
        "calibration rows": options.calibration_rows,
        "probe rows": options.probe_rows,
        "max probes": options.max_probes,
    }
    bad = [f"{name} {value}" for name, value in counts.items() if value < 1]
    if bad:
        raise QuantizeError(f"these must be at least 1: {', '.join(bad)}")
    specs = [s for s in default_candidates() if _wanted(s.name, options.candidates)]
    plan_mixed = _wanted("mixed-1", options.candidates)
    if not specs and not plan_mixed:
        raise QuantizeError(
            f"no candidate matches {','.join(options.candidates)}; names: "
            + ", ".join(s.name for s in default_candidates())
            + ", mixed-<n>"
        )
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise QuantizeError(f"no model at {source}")
    validation_arrays = validation if isinstance(validation, dict) else load_npz(validation)
    calibration_arrays = calibration if isinstance(calibration, dict) else load_npz(calibration)

    probe_session = load_session(source, allow_spinning=False)
    validation_feed = _model_feed(probe_session, validation_arrays, "validation")
    calibration_feed = _model_feed(probe_session, calibration_arrays, "calibration")
    outputs = [(o.name, o.type) for o in probe_session.get_outputs()]
    task = detect_task(outputs, options.task)
    del probe_session
    labels = validation_arrays.get(LABEL_KEY) if task.kind == "classification" else None
    if labels is not None and len(labels) != _rows(validation_feed):
        raise QuantizeError(
            f"{LABEL_KEY!r} has {len(labels)} rows, the inputs {_rows(validation_feed)}"
        )

    external = has_external_data(source)
    large = model_size_bytes(source) > EXTERNAL_DATA_BYTES
    measurer = _Measurer(source, validation_feed, labels, task, options)
    if options.task == "auto" and task.kind == "embedding" and measurer.expected[0].size == 1:
        task = replace(task, kind="regression")
        measurer.task = task

    progress = _Progress(
        options.progress, len(specs) + (len(MIXED_SHARES) if plan_mixed else 0), "candidate"
    )
    results: list[CandidateResult] = []
    sensitivity: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="onnxkit-quantize-") as scratch:
        work = Path(scratch)
        base = work / "prepared.onnx"
        with _quiet(options.verbose):
            prepared = prepare_model(source, base, external=large)

        def run_candidate(spec: CandidateSpec, build: Callable[[Path], None]) -> None:
            progress.step(spec.name)
            path = work / spec.name / "model.onnx"
            path.parent.mkdir()
            begin = time.perf_counter()
            built = 0.0
            try:
                with _quiet(options.verbose):
                    build(path)
                built = time.perf_counter() - begin
                result = measurer.measure(spec.name, spec.quantization(), path)
            except Exception as exc:  # a quantizer or kernel that cannot handle this graph
                LOG.debug("candidate %s failed", spec.name, exc_info=True)
                result = CandidateResult(
                    spec.name, spec.quantization(), error=f"{type(exc).__name__}: {exc}"[:300]
                )
            result.build_seconds = round(built or time.perf_counter() - begin, 2)
            results.append(result)
            if options.keep_dir is not None and result.error is None:
                write_model(path, options.keep_dir / spec.name / "model.onnx", external=external)

        cal_rows = _head(calibration_feed, options.calibration_rows)
        nodes = weight_nodes(base)
        total_bytes = sum(size for _, _, size in nodes) or 1
        # Small Gather tables stay fp32 in weight-only and mixed candidates (SMALL_TABLE_SHARE).
        tables = [(name, size) for name, kind, size in nodes if kind == "Gather"]
        large_tables = [name for name, size in tables if size / total_bytes > SMALL_TABLE_SHARE]
        small_tables = tuple(name for name, _ in tables if name not in large_tables)
        for spec in specs:
            if spec.method == "dynamic":
                build = partial(
                    build_dynamic,
                    base,
                    weight_type=spec.weight_type,
                    per_channel=spec.per_channel,
                    external=large,
                )
            elif spec.method == "static":
                build = partial(
                    build_static,
                    base,
                    calibration=cal_rows,
                    method=spec.calibration or "MinMax",
                    external=large,
                )
            else:
                build = partial(build_weight_only, base, tables=large_tables, external=large)
            run_candidate(spec, build)

        if plan_mixed:
            sensitivity = _measure_sensitivity(
                base, work, calibration_feed, source, task, options, large
            )
            matmuls = {name for name, kind, _ in nodes if kind in ("MatMul", "Gemm")}
            keepable = [
                row
                for row in sensitivity
                if not set(row["nodes"]).intersection(name for name, _ in tables)
            ]
            keep_sets = mixed_keep_sets([(row["nodes"], row["sensitivity"]) for row in keepable])
            progress.total = len(specs) + len(keep_sets)
            for measured in keep_sets:
                keep = (*measured, *small_tables)
                spec = CandidateSpec(
                    f"mixed-{len(measured)}",
                    "mixed",
                    per_channel=True,
                    keep=keep,
                    keep_as=options.keep_as,
                )
                build = partial(
                    build_mixed,
                    base,
                    keep=keep,
                    keep_as=options.keep_as,
                    matmuls=matmuls,
                    external=large,
                )
                run_candidate(spec, build)

        fp32 = measurer.fp32_row()
        chosen = judge(results, budget, task.kind, fp32)
        if chosen is not None:
            write_model(work / chosen.name / "model.onnx", target, external=external)
    progress.close()
    return Report(
        source=str(source),
        target=str(target) if chosen is not None else None,
        task=task.kind,
        output=task.output,
        budget=budget,
        fp32=fp32,
        candidates=results,
        chosen=chosen.name if chosen else None,
        sensitivity=sensitivity,
        data={
            "validation_rows": _rows(validation_feed),
            "calibration_rows": _rows(calibration_feed),
            "calibration_rows_used": _rows(cal_rows),
            "labels": labels is not None,
        },
        settings={
            "threads": available_cpus(),
            "batch": measurer.batch,
            "b1_repeats": list(options.b1_repeats),
            "batch_repeats": list(options.batch_repeats),
            "time_budget_s": options.time_budget_s,
            "preprocessing": prepared,
            "external_data": external,
            "latency_note": "medians of interleaved fp32/candidate runs; ratios per candidate",
        },
        seconds=time.perf_counter() - started,
    )


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


SWITCH_PREFIX = "onnxkit_probe_switch_"


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


# --- the table --------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    if value is None:
        return "-".rjust(int(spec.split(".")[0] or 0))
    return format(value, spec)


def format_table(report: Report) -> str:
    """Every candidate with size, latency and quality against fp32, and which limit it broke."""
    fp32 = report.fp32
    batch = report.settings.get("batch", "")
    classification = report.task == "classification"
    if classification:
        has_accuracy = "accuracy" in fp32.get("quality", {})
        quality_head = f"{'accuracy':>8} {'agree':>7}" if has_accuracy else f"{'agree':>7}"
    else:
        quality_head = f"{'cos min':>8} {'cos mean':>8} {'max|err|':>9}"
    head = (
        f"{'candidate':<24} {'size MB':>8} {'size×':>6} {'b1 ms':>8} {'b1×':>5} "
        f"{'b' + str(batch) + ' ms':>9} {'b' + str(batch) + '×':>5} {quality_head}  result"
    )

    def quality_cells(quality: dict[str, float]) -> str:
        if classification:
            cells = [f"{quality['agreement']:7.4f}"] if quality else ["      -"]
            if has_accuracy:
                cells.insert(0, f"{quality['accuracy']:8.4f}" if quality else "       -")
            return " ".join(cells)
        if not quality:
            return f"{'-':>8} {'-':>8} {'-':>9}"
        return (
            f"{quality['cosine_min']:8.4f} {quality['cosine_mean']:8.4f} "
            f"{quality['max_abs_error']:9.2e}"
        )

    lines = [
        f"{Path(report.source).name}: {report.task} on output {report.output!r}, "
        f"{report.data.get('validation_rows')} validation rows, "
        f"{report.settings.get('threads')} threads",
        f"budget: {report.budget.describe(report.task)}",
        head,
        f"{'fp32':<24} {fp32['size_bytes'] / 1e6:8.2f} {1:6.2f} "
        f"{_fmt(fp32['latency_b1_ms'], '8.3f')} {1:5.2f} "
        f"{_fmt(fp32['latency_batch_ms'], '9.3f')} {1:5.2f} {quality_cells(fp32['quality'])}  "
        "reference",
    ]
    for c in report.candidates:
        if c.error is not None:
            result = "error: " + c.error[:80]
        elif c.passed:
            result = "PASS" + (" <- chosen" if c.name == report.chosen else "")
        else:
            result = "fail: " + "; ".join(c.failures)
        size_mb = None if c.size_bytes is None else c.size_bytes / 1e6
        lines.append(
            f"{c.name:<24} {_fmt(size_mb, '8.2f')} {_fmt(c.size_ratio, '6.2f')} "
            f"{_fmt(c.latency_b1_ms, '8.3f')} {_fmt(c.latency_b1_ratio, '5.2f')} "
            f"{_fmt(c.latency_batch_ms, '9.3f')} {_fmt(c.latency_batch_ratio, '5.2f')} "
            f"{quality_cells(c.quality)}  {result}"
        )
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------------------

_SUMMARY = "Quantize an fp32 ONNX model behind a quality gate."

_DETAILS = """\
Every candidate is built from the same model and measured against it in this run, on the
validation data: quality (classifiers: top-1 agreement with fp32, and accuracy when the data
has a 'label' array; embeddings and regressions: per-row cosine min/mean and max-abs error),
file size (external data included) and median latency at batch 1 and at --batch rows (fp32
and candidate timed alternately, idle threads not spinning). The candidate the budget prefers
is written to --out; the table (stdout) and --report (JSON) show every candidate: the
size/latency/quality frontier.

Candidates: dynamic int8 (QInt8/QUInt8 weights, per-tensor/per-channel); static QDQ
calibrated on --calibration (MinMax, Entropy, Percentile); weight-only 8-bit MatMul
(MatMulNBits) with an int8 embedding table; and mixed precision: each weight node is
quantized alone to dynamic int8 and the change of the output on --probe-rows calibration
rows is measured; the nodes with the most change, until they account for 40/50/75/90/97% of
the total change, stay weight-only 8-bit (or fp32, --keep-as) while the rest are dynamic
int8 per-channel. Small Gather tables (<= 2% of the weights) stay fp32 in weight-only and
mixed candidates.

Data: .npz files with one array per model input (same name, rows first) and optionally
'label'. Models with external data (.onnx.data) are read, and written the same way."""

_BUDGET = f"""\
budget:
  --prefer quality (default): accuracy drop <= {_points(QUALITY_LIMITS["max_accuracy_drop"])} \
(classifiers), min cosine >= {QUALITY_LIMITS["min_cosine"]:g}
    (embeddings), relative max-abs error <= {QUALITY_LIMITS["max_error"]:g} (regressions); \
never slower than fp32 at batch 1
    (at most {MAX_LATENCY_RATIO:g}x + {LATENCY_SLACK_MS:g} ms, for timing noise); \
size <= {MAX_SIZE_RATIO:g}x fp32; then the smallest (sizes within
    {SIZE_TOLERANCE:.0%} tie), then the fastest.
  --prefer speed: the floor is accuracy drop <= {_points(SPEED_LIMITS["max_accuracy_drop"])}, \
min cosine >= {SPEED_LIMITS["min_cosine"]:g}, relative error
    <= {SPEED_LIMITS["max_error"]:g}; same latency and size limits; then the fastest at batch 1.
  --min-cosine, --max-accuracy-drop, --max-error, --max-latency-ratio and --max-size-ratio
    override any of these.

exit status: 0 a candidate was written; 3 none passed (the message names the limits that the
nearest candidates broke and what to try); 1 bad input.

examples:
  onnxkit quantize model.onnx --out int8/model.onnx --calibration cal.npz \\
      --validation val.npz --report report.json
  onnxkit quantize model.onnx --out fast/model.onnx --calibration cal.npz \\
      --validation val.npz --prefer speed --min-cosine 0.98
  onnxkit quantize model.onnx --out q/model.onnx --calibration cal.npz \\
      --validation val.npz --candidates 'dynamic-*,mixed-*'
"""

EXIT_NONE_PASSED = 3


def add_quantize_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``quantize`` command's arguments to ``parser``, and its help: the method, the
    budget defaults, exit statuses and examples go into the epilog (a description the caller set
    is kept)."""
    parser.description = parser.description or _SUMMARY
    parser.epilog = _DETAILS + "\n\n" + _BUDGET
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("model", type=Path, help="fp32 .onnx model (external data beside it)")
    parser.add_argument(
        "--out", type=Path, required=True, help="where to write the chosen model (.onnx)"
    )
    parser.add_argument(
        "--calibration",
        type=Path,
        required=True,
        help=".npz with one array per model input: static calibration and sensitivity probes",
    )
    parser.add_argument(
        "--validation",
        type=Path,
        required=True,
        help=".npz with one array per model input (+ optional 'label'): candidates are judged "
        "on it; use rows that are not in --calibration",
    )
    parser.add_argument("--report", type=Path, help="write the full report (JSON) here")
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="auto",
        help="how to compare outputs (default auto: an integer output makes a classifier, "
        "otherwise the first float output is compared: embedding, or regression when rows "
        "hold one value)",
    )
    budget = parser.add_argument_group("budget")
    budget.add_argument(
        "--prefer",
        choices=PREFERENCES,
        default="quality",
        help="quality: the tighter quality limits, then the smallest, then the fastest; speed: "
        "the looser floor below, then the fastest (default quality)",
    )
    budget.add_argument(
        "--min-cosine",
        type=float,
        help=f"embeddings: lowest per-row cosine with fp32 (default "
        f"{QUALITY_LIMITS['min_cosine']:g}; {SPEED_LIMITS['min_cosine']:g} with --prefer speed)",
    )
    budget.add_argument(
        "--max-accuracy-drop",
        type=float,
        help="classifiers: largest accuracy drop as a fraction (0.01 = one point), or top-1 "
        f"disagreement without labels (default {QUALITY_LIMITS['max_accuracy_drop']:g}; "
        f"{SPEED_LIMITS['max_accuracy_drop']:g} with --prefer speed)",
    )
    budget.add_argument(
        "--max-error",
        type=float,
        help="regressions: largest max-abs error over the fp32 output's largest magnitude "
        f"(default {QUALITY_LIMITS['max_error']:g}; {SPEED_LIMITS['max_error']:g} with "
        "--prefer speed)",
    )
    budget.add_argument(
        "--max-latency-ratio",
        type=float,
        help=f"batch-1 median latency limit relative to fp32 (default {MAX_LATENCY_RATIO:g}: "
        f"never slower, with {(MAX_LATENCY_RATIO - 1) * 100:.0f}%% + {LATENCY_SLACK_MS:g} ms "
        "for timing noise)",
    )
    budget.add_argument(
        "--max-size-ratio",
        type=float,
        help=f"size limit relative to fp32, external data included (default {MAX_SIZE_RATIO:g})",
    )
    work = parser.add_argument_group("search")
    work.add_argument(
        "--candidates",
        default=",".join(CANDIDATE_FAMILIES),
        help="comma-separated name patterns of candidates to build (default all: "
        "'dynamic-*,static-*,weight-only-*,mixed-*'; e.g. 'dynamic-qint8-*')",
    )
    work.add_argument(
        "--keep-as",
        choices=("weight-only", "fp32"),
        default="weight-only",
        help="mixed precision: what the most sensitive MatMuls become (default weight-only 8-bit)",
    )
    work.add_argument(
        "--batch", type=int, default=32, help="rows for the batched latency (default 32)"
    )
    work.add_argument(
        "--calibration-rows",
        type=int,
        default=64,
        help="calibration rows for static quantization (default 64)",
    )
    work.add_argument(
        "--probe-rows",
        type=int,
        default=32,
        help="calibration rows per sensitivity probe (default 32)",
    )
    work.add_argument(
        "--max-probes",
        type=int,
        default=48,
        help="at most this many sensitivity probes; more weight nodes are probed in "
        "neighbouring groups (default 48)",
    )
    work.add_argument(
        "--keep-candidates",
        type=Path,
        metavar="DIR",
        help="also write every candidate model to DIR/<candidate>/model.onnx",
    )
    work.add_argument("--verbose", action="store_true", help="show onnxruntime's quantizer output")


def run_quantize(args: argparse.Namespace) -> int:
    """Run the gate from parsed ``add_quantize_arguments`` arguments; print the table.

    Returns:
        0 when a candidate was written, :data:`EXIT_NONE_PASSED` when none passed.

    Raises:
        QuantizeError: Bad data or options.
    """
    import onnxruntime as ort

    # Quantized graphs make onnxruntime warn about unused initializers on every session; the
    # command's output is the table. (Process-wide, so only here, never in the library calls.)
    ort.set_default_logger_severity(3)
    budget = Budget.for_preference(
        args.prefer,
        min_cosine=args.min_cosine,
        max_accuracy_drop=args.max_accuracy_drop,
        max_error=args.max_error,
        max_latency_ratio=args.max_latency_ratio,
        max_size_ratio=args.max_size_ratio,
    )
    options = GateOptions(
        task=args.task,
        candidates=tuple(p.strip() for p in args.candidates.split(",") if p.strip()),
        batch=args.batch,
        calibration_rows=args.calibration_rows,
        probe_rows=args.probe_rows,
        max_probes=args.max_probes,
        keep_as=args.keep_as,
        progress=True,
        verbose=args.verbose,
        keep_dir=args.keep_candidates,
    )
    report = quantize_with_gate(
        args.model, args.out, args.calibration, args.validation, budget, options
    )
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    print(format_table(report))
    chosen = report.chosen_candidate
    if chosen is None:
        print(report.failure_message(), file=sys.stderr)
        return EXIT_NONE_PASSED
    print(
        f"wrote {args.out} ({chosen.name}: {chosen.size_ratio:.2f}x size, "
        f"{chosen.latency_b1_ratio:.2f}x batch-1 latency) in {report.seconds:.0f} s"
    )
    return 0


# --- single-method helpers (the digits example and older callers) -----------------------------
