"""The gate: build every candidate, measure it against fp32 in the same run, write the best."""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxkit.session import available_cpus, load_session
from onnxkit_tools.quantize.budget import Budget, judge
from onnxkit_tools.quantize.candidates import (
    CANDIDATE_FAMILIES,
    EXTERNAL_DATA_BYTES,
    MIXED_SHARES,
    OPTIMIZED_PREFIX,
    SMALL_TABLE_SHARE,
    TABLE_OPS,
    CandidateSpec,
    _wanted,
    build_dynamic,
    build_mixed,
    build_pruned,
    build_static,
    build_weight_only,
    compressed_size,
    default_candidates,
    has_external_data,
    mixed_keep_sets,
    model_size_bytes,
    optimized_candidates,
    prepare_model,
    pruned_candidates,
    weight_nodes,
    write_model,
)
from onnxkit_tools.quantize.console import _Progress, _quiet
from onnxkit_tools.quantize.data import (
    LABEL_KEY,
    _head,
    _model_feed,
    _rows,
    _run,
    _Task,
    detect_task,
    measure_quality,
)
from onnxkit_tools.quantize.datasets import DataReader, model_inputs
from onnxkit_tools.quantize.errors import QuantizeError
from onnxkit_tools.quantize.optimize import OPTIMIZE_MODES, optimize_graph, smooth_activations
from onnxkit_tools.quantize.report import CandidateResult, Report
from onnxkit_tools.quantize.sensitivity import _measure_sensitivity

if TYPE_CHECKING:
    from onnxkit_tools.processing import ProcessingOptions

LOG = logging.getLogger(__name__)


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
        optimize: ``auto``: also build the ``opt-*`` candidates on an optimized graph
            (transformer fusion or onnxruntime's extended rewrites, then activation smoothing),
            with mixed precision selected again on it, and ``smooth-*`` on the original graph
            with the same smoothing; ``none``: the original graph only.
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
    optimize: str = "auto"


def quantize_with_gate(
    source: Path,
    target: Path,
    calibration: Path | dict[str, np.ndarray],
    validation: Path | dict[str, np.ndarray],
    budget: Budget | None = None,
    options: GateOptions | None = None,
    *,
    processing: ProcessingOptions | None = None,
) -> Report:
    """Build every candidate, measure it against ``source``, write the one the budget chooses.

    Args:
        source: The fp32 ``.onnx`` model (external data beside it is read too).
        target: Where the chosen model goes; with external data (``target.name + '.data'``) when
            the source has it.
        calibration: Data for static calibration and the sensitivity probes: an ``.npz`` (or
            its arrays) named after the model inputs, a text file (one sentence per line) or a
            folder of images (see :mod:`onnxkit_tools.quantize.datasets`).
        validation: Data every candidate is judged on, as ``calibration``, with labels for
            classification accuracy: an ``.npz``'s ``label`` array, or the images' class
            subfolders or ``-label-<class>`` file names.
        budget: Limits and preference (default: quality first).
        options: How much to build and time (default: everything, as :class:`GateOptions`).
        processing: The tokenizer (text files), image preprocessing (image folders) and labels
            (class subfolder names), as ``onnxkit publish`` declares them from the same
            options; the report's ``data`` records what was applied.

    Returns:
        The report; ``chosen`` is None (and nothing is written) when no candidate passed.

    Raises:
        QuantizeError: The data does not fit the model or cannot be read, or an option is
            invalid.
        ProcessingOptionError: ``processing`` does not fit the model, or a file it names is not
            what it should be.
        ModelLoadError: onnxruntime cannot load the source model.
    """
    started = time.perf_counter()
    budget = budget or Budget()
    options = options or GateOptions()
    specs, plan_mixed, plan_opt_mixed = _plan_candidates(options)
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise QuantizeError(f"no model at {source}")
    data = _load_data(source, calibration, validation, options, processing)
    external = has_external_data(source)
    large = model_size_bytes(source) > EXTERNAL_DATA_BYTES
    measurer = _measure_baseline(source, data, options)
    measurer.compressed = any(s.sparsity is not None for s in specs)
    task = measurer.task
    planned = len(specs) + len(MIXED_SHARES) * (int(plan_mixed) + int(plan_opt_mixed))
    progress = _Progress(options.progress, planned, "candidate")
    sensitivity: list[dict[str, Any]] = []
    optimization: dict[str, Any] = {"method": "none", "detail": "not asked for (optimize=none)"}
    with tempfile.TemporaryDirectory(prefix="onnxkit-quantize-") as scratch:
        runner = _CandidateRunner(
            Path(scratch), measurer, options, progress, external=external, large=large
        )
        prepared = runner.prepare(source)
        weights = _sort_weights(runner.base)
        cal_rows = _head(data.calibration, options.calibration_rows)
        optimized = [s for s in specs if s.graph == "optimized"]
        smoothed = [s for s in specs if s.graph == "smoothed"]
        if optimized or plan_opt_mixed:
            optimization = runner.prepare_optimized(source, cal_rows)
            if runner.opt_base is None:
                runner.progress.total -= len(optimized) + len(MIXED_SHARES) * plan_opt_mixed
                optimized, plan_opt_mixed = [], False
        if smoothed:
            optimization = {**optimization, **runner.prepare_smoothed(cal_rows)}
            if runner.smooth_base is None:
                runner.progress.total -= len(smoothed)
                smoothed = []
        specs = [s for s in specs if s.graph == "original"]
        _run_fixed_candidates(runner, specs, cal_rows, weights, runner.base)
        if runner.opt_base is not None:
            opt_weights = _sort_weights(runner.opt_base)
            _run_fixed_candidates(runner, optimized, cal_rows, opt_weights, runner.opt_base)
        if runner.smooth_base is not None:
            _run_fixed_candidates(runner, smoothed, cal_rows, weights, runner.smooth_base)
        if plan_mixed:
            sensitivity = _run_mixed_candidates(runner, source, data.calibration, task, weights)
        if plan_opt_mixed and runner.opt_base is not None:
            sensitivity += _run_mixed_candidates(
                runner, source, data.calibration, task, opt_weights, optimized=True
            )
        fp32, chosen = _choose_and_write(runner, budget, task, target)
    progress.close()
    return Report(
        source=str(source),
        target=str(target) if chosen is not None else None,
        task=task.kind,
        output=task.output,
        budget=budget,
        fp32=fp32,
        candidates=runner.results,
        chosen=chosen.name if chosen else None,
        sensitivity=sensitivity,
        data={
            "validation_rows": _rows(data.validation),
            "calibration_rows": _rows(data.calibration),
            "calibration_rows_used": _rows(cal_rows),
            "labels": data.labels is not None,
            **data.sources,
        },
        settings={**_settings(measurer, options, prepared, external), "optimization": optimization},
        seconds=time.perf_counter() - started,
    )


# --- the steps of a gate run ------------------------------------------------------------------


def _plan_candidates(options: GateOptions) -> tuple[list[CandidateSpec], bool, bool]:
    """The fixed candidates ``options`` asks for, and whether it asks for mixed ones on the
    original graph and on the optimized one.

    Raises:
        QuantizeError: An option is invalid, or no candidate name matches the patterns.
    """
    if options.keep_as not in ("weight-only", "fp32"):
        raise QuantizeError(f"keep_as must be weight-only or fp32, not {options.keep_as!r}")
    if options.optimize not in OPTIMIZE_MODES:
        raise QuantizeError(
            f"optimize must be one of {', '.join(OPTIMIZE_MODES)}, not {options.optimize!r}"
        )
    counts = {
        "batch": options.batch,
        "calibration rows": options.calibration_rows,
        "probe rows": options.probe_rows,
        "max probes": options.max_probes,
    }
    bad = [f"{name} {value}" for name, value in counts.items() if value < 1]
    if bad:
        raise QuantizeError(f"these must be at least 1: {', '.join(bad)}")
    every = default_candidates()
    if options.optimize == "auto":
        every += optimized_candidates()
    every += pruned_candidates()  # only when a pattern names them
    specs = [s for s in every if _wanted(s.name, options.candidates)]
    plan_mixed = _wanted("mixed-1", options.candidates)
    plan_opt_mixed = options.optimize == "auto" and _wanted(
        f"{OPTIMIZED_PREFIX}mixed-1", options.candidates
    )
    if not specs and not plan_mixed and not plan_opt_mixed:
        raise QuantizeError(
            f"no candidate matches {','.join(options.candidates)}; names: "
            + ", ".join(s.name for s in every)
            + ", mixed-<n>"
            + (f", {OPTIMIZED_PREFIX}mixed-<n>" if options.optimize == "auto" else "")
        )
    return specs, plan_mixed, plan_opt_mixed


@dataclass(frozen=True)
class _GateData:
    """The data of a gate run, as feeds for the model's inputs, and what to compare."""

    validation: dict[str, np.ndarray]
    calibration: dict[str, np.ndarray]
    task: _Task
    labels: np.ndarray | None
    sources: dict[str, Any]  # the report's record of what was read and the processing applied


def _load_data(
    source: Path,
    calibration: Path | dict[str, np.ndarray],
    validation: Path | dict[str, np.ndarray],
    options: GateOptions,
    processing: ProcessingOptions | None,
) -> _GateData:
    """Read the data, fit it to the model's inputs and find the output to compare for the task.

    Raises:
        QuantizeError: The data does not fit the model, or no output fits the task.
        ProcessingOptionError: ``processing`` does not fit the model.
        ModelLoadError: onnxruntime cannot load the source model.
    """
    session = load_session(source, allow_spinning=False)
    reader = DataReader(model_inputs(session), processing, progress=options.progress)
    sources: dict[str, Any] = {}
    read = {}
    for what, data in (("validation", validation), ("calibration", calibration)):
        dataset = reader.read(data, what)
        if options.progress:
            print(f"[quantize] {dataset.description}", file=sys.stderr, flush=True)
        sources[f"{what}_source"] = dataset.description
        read[what] = dataset.arrays
    applied = reader.applied.to_dict()
    if applied:
        sources["processing"] = applied
    validation_arrays = read["validation"]
    validation_feed = _model_feed(session, validation_arrays, "validation")
    calibration_feed = _model_feed(session, read["calibration"], "calibration")
    detected = detect_task([(o.name, o.type) for o in session.get_outputs()], options.task)
    del session
    labels = validation_arrays.get(LABEL_KEY) if detected.kind == "classification" else None
    if labels is not None and len(labels) != _rows(validation_feed):
        raise QuantizeError(
            f"{LABEL_KEY!r} has {len(labels)} rows, the inputs {_rows(validation_feed)}"
        )
    return _GateData(validation_feed, calibration_feed, detected, labels, sources)


def _measure_baseline(source: Path, data: _GateData, options: GateOptions) -> _Measurer:
    """Run fp32 on the validation rows once: the outputs every candidate is compared with.

    Under ``auto``, a float output is an embedding until it has run: one value per row makes it
    a regression, and the measurer's task says so from here on.
    """
    measurer = _Measurer(source, data.validation, data.labels, data.task, options)
    if options.task == "auto" and data.task.kind == "embedding" and measurer.expected[0].size == 1:
        measurer.task = replace(data.task, kind="regression")
    return measurer


class _CandidateRunner:
    """Builds candidates in one scratch folder and measures each; keeps results in build order.

    Each candidate is written to ``<work>/<name>/model.onnx``; the sensitivity probes reuse
    ``dynamic-qint8-channel`` from there when it was built.
    """

    def __init__(
        self,
        work: Path,
        measurer: _Measurer,
        options: GateOptions,
        progress: _Progress,
        *,
        external: bool,
        large: bool,
    ) -> None:
        self.work = work
        self.base = work / "prepared.onnx"
        self.measurer = measurer
        self.options = options
        self.progress = progress
        self.external = external  # the source has external data: so do written models
        self.large = large  # too large for one protobuf: the quantizers write external data
        self.results: list[CandidateResult] = []
        self.opt_base: Path | None = None  # the optimized, pre-processed graph, once built
        self.smooth_base: Path | None = None  # the smoothed original graph, once built

    def path(self, name: str) -> Path:
        """Where candidate ``name`` is built."""
        return self.work / name / "model.onnx"

    def prepare(self, source: Path) -> str:
        """Pre-process the fp32 model into :attr:`base`; returns what was done."""
        with _quiet(self.options.verbose):
            return prepare_model(source, self.base, external=self.large)

    def prepare_optimized(self, source: Path, calibration: dict[str, np.ndarray]) -> dict[str, Any]:
        """Optimize the fp32 graph, smooth its normalized activations and pre-process it into
        :attr:`opt_base` (left None when no optimization applies); returns the report's record.
        """
        if self.large or self.external:
            # The transformers optimizer and an offline session write one protobuf file.
            return {"method": "none", "detail": "skipped: the model keeps external data"}
        folder = self.work / "optimized"
        folder.mkdir()
        fused = folder / "fused.onnx"
        try:
            with _quiet(self.options.verbose):
                optimization = optimize_graph(source, fused)
        except Exception as exc:  # an optimizer that cannot handle this graph
            LOG.debug("graph optimization failed", exc_info=True)
            return {"method": "none", "detail": f"failed: {type(exc).__name__}: {exc}"[:300]}
        if optimization is None:
            return {"method": "none", "detail": "no transformer fusion or rewrite applies"}
        record = optimization.to_dict()
        smoothed = folder / "smoothed.onnx"
        count = smooth_activations(fused, smoothed, calibration)
        record["smoothed_activations"] = count
        if count:
            record["detail"] += f"; {count} normalized activations smoothed into their MatMuls"
        if self.options.progress:
            print(f"[quantize] optimized graph: {record['detail']}", file=sys.stderr, flush=True)
        self.opt_base = folder / "prepared.onnx"
        with _quiet(self.options.verbose):
            record["preprocessing"] = prepare_model(smoothed if count else fused, self.opt_base)
        return record

    def prepare_smoothed(self, calibration: dict[str, np.ndarray]) -> dict[str, Any]:
        """Smooth the normalized activations of the pre-processed original graph into
        :attr:`smooth_base` (left None when none feeds a MatMul); returns the report's record."""
        if self.large or self.external:
            return {"smoothed_original": "skipped: the model keeps external data"}
        folder = self.work / "smoothed"
        folder.mkdir()
        target = folder / "prepared.onnx"
        count = smooth_activations(self.base, target, calibration)
        if count:
            self.smooth_base = target
            detail = f"{count} normalized activations smoothed into their MatMuls, not fused"
        else:
            detail = "no normalized activation feeds a MatMul"
        if self.options.progress:
            print(f"[quantize] smoothed graph: {detail}", file=sys.stderr, flush=True)
        return {"smoothed_original": detail}

    def run(self, spec: CandidateSpec, build: Callable[[Path], None]) -> None:
        """Build one candidate and measure it; a build or run that fails is recorded as such."""
        self.progress.step(spec.name)
        path = self.path(spec.name)
        path.parent.mkdir()
        begin = time.perf_counter()
        built = 0.0
        try:
            with _quiet(self.options.verbose):
                build(path)
            built = time.perf_counter() - begin
            result = self.measurer.measure(spec.name, spec.quantization(), path)
        except Exception as exc:  # a quantizer or kernel that cannot handle this graph
            LOG.debug("candidate %s failed", spec.name, exc_info=True)
            result = CandidateResult(
                spec.name, spec.quantization(), error=f"{type(exc).__name__}: {exc}"[:300]
            )
        result.build_seconds = round(built or time.perf_counter() - begin, 2)
        self.results.append(result)
        if self.options.keep_dir is not None and result.error is None:
            keep = self.options.keep_dir / spec.name / "model.onnx"
            write_model(path, keep, external=self.external)


@dataclass(frozen=True)
class _Weights:
    """The prepared model's weight nodes, sorted by what the candidate families do with them."""

    matmuls: set[str]  # MatMul and Gemm: what mixed candidates may keep weight-only 8-bit
    tables: tuple[str, ...]  # every Gather: kept back by size, never by measured sensitivity
    large_tables: tuple[str, ...]  # int8 in every candidate
    small_tables: tuple[str, ...]  # fp32 in weight-only and mixed candidates


def _sort_weights(base: Path) -> _Weights:
    """Sort ``base``'s weight nodes: a table over :data:`SMALL_TABLE_SHARE` of them is large."""
    nodes = weight_nodes(base)
    total_bytes = sum(size for _, _, size in nodes) or 1
    tables = [(name, size) for name, kind, size in nodes if kind in TABLE_OPS]
    large_tables = [name for name, size in tables if size / total_bytes > SMALL_TABLE_SHARE]
    return _Weights(
        matmuls={name for name, kind, _ in nodes if kind in ("MatMul", "Gemm")},
        tables=tuple(name for name, _ in tables),
        large_tables=tuple(large_tables),
        small_tables=tuple(name for name, _ in tables if name not in large_tables),
    )


def _run_fixed_candidates(
    runner: _CandidateRunner,
    specs: Sequence[CandidateSpec],
    calibration: dict[str, np.ndarray],
    weights: _Weights,
    base: Path,
) -> None:
    """Build and measure the fixed candidates of ``specs`` on ``base`` (the original, optimized
    or smoothed graph)."""
    for spec in specs:
        if spec.method == "fp32":
            build = partial(write_model, base, external=runner.large)
        elif spec.method == "dynamic":
            build = partial(
                build_dynamic,
                base,
                weight_type=spec.weight_type,
                per_channel=spec.per_channel,
                external=runner.large,
            )
        elif spec.method in ("prune", "prune-dynamic"):
            build = partial(
                build_pruned,
                base,
                sparsity=spec.sparsity or 0.0,
                then_dynamic=spec.method == "prune-dynamic",
                external=runner.large,
            )
        elif spec.method == "static":
            build = partial(
                build_static,
                base,
                calibration=calibration,
                method=spec.calibration or "MinMax",
                external=runner.large,
            )
        else:
            build = partial(
                build_weight_only, base, tables=weights.large_tables, external=runner.large
            )
        runner.run(spec, build)


def _run_mixed_candidates(
    runner: _CandidateRunner,
    source: Path,
    calibration: dict[str, np.ndarray],
    task: _Task,
    weights: _Weights,
    *,
    optimized: bool = False,
) -> list[dict[str, Any]]:
    """Measure each weight node's sensitivity, then build and measure the mixed candidates (on
    the optimized graph, named ``opt-mixed-<n>``, when ``optimized``).

    Returns:
        The sensitivity rows, most sensitive first (each with its ``graph``).
    """
    options = runner.options
    base, work, prefix = runner.base, runner.work, ""
    if optimized and runner.opt_base is not None:
        base, work, prefix = runner.opt_base, runner.opt_base.parent, OPTIMIZED_PREFIX
    sensitivity = _measure_sensitivity(base, work, calibration, source, task, options, runner.large)
    graph = "optimized" if prefix else "original"
    sensitivity = [{**row, "graph": graph} for row in sensitivity]
    keepable = [row for row in sensitivity if not set(row["nodes"]).intersection(weights.tables)]
    keep_sets = mixed_keep_sets([(row["nodes"], row["sensitivity"]) for row in keepable])
    # The plan counted one candidate per share; shares that keep the same nodes make one.
    runner.progress.total += len(keep_sets) - len(MIXED_SHARES)
    for measured in keep_sets:
        keep = (*measured, *weights.small_tables)
        spec = CandidateSpec(
            f"{prefix}mixed-{len(measured)}",
            "mixed",
            per_channel=True,
            keep=keep,
            keep_as=options.keep_as,
            graph=graph,
        )
        build = partial(
            build_mixed,
            base,
            keep=keep,
            keep_as=options.keep_as,
            matmuls=weights.matmuls,
            external=runner.large,
        )
        runner.run(spec, build)
    return sensitivity


def _choose_and_write(
    runner: _CandidateRunner, budget: Budget, task: _Task, target: Path
) -> tuple[dict[str, Any], CandidateResult | None]:
    """Judge every candidate by ``budget`` and write the chosen one to ``target``.

    Returns:
        The report's fp32 row, and the chosen candidate (None: none passed, nothing written).
    """
    fp32 = runner.measurer.fp32_row()
    chosen = judge(runner.results, budget, task.kind, fp32)
    if chosen is not None:
        write_model(runner.path(chosen.name), target, external=runner.external)
    return fp32, chosen


def _settings(
    measurer: _Measurer, options: GateOptions, prepared: str, external: bool
) -> dict[str, Any]:
    """The report's ``settings``: how the candidates were timed and the model prepared."""
    return {
        "threads": available_cpus(),
        "batch": measurer.batch,
        "b1_repeats": list(options.b1_repeats),
        "batch_repeats": list(options.batch_repeats),
        "time_budget_s": options.time_budget_s,
        "preprocessing": prepared,
        "external_data": external,
        "latency_note": "medians of interleaved fp32/candidate runs; ratios per candidate",
    }


# --- measuring against fp32 -------------------------------------------------------------------


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
    sessions spin during a run, as the function serves them, but park as soon as a run returns
    (``spin_between_runs=False``): a pool left spinning (50-80 ms after each run on onnxruntime
    1.32) steals the cores from the other session. Timing without spinning instead penalizes
    the model with more, smaller operators: a dynamic int8 MiniLM read a median 0.52x fp32 that
    way and 0.48x with spinning (six runs each, alternating blocks of 40 calls, same 2 CPUs).

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
        self.reference = load_session(source, spin_between_runs=False)
        self.validation = validation
        self.labels = labels
        self.task = task
        self.options = options
        self.batch = max(1, min(options.batch, _rows(validation)))
        self.expected = _run(self.reference, validation, [task.output], self.batch)[task.output]
        self.b1_feed = _head(validation, 1)
        self.batch_feed = _head(validation, self.batch)
        self.fp32_size = model_size_bytes(source)
        self.source = source
        # Compressed sizes (zlib) cost a pass over every file: the run sets this when it builds
        # pruning candidates (all they change is the compressed size).
        self.compressed = False
        self.fp32_b1: list[float] = []
        self.fp32_batch: list[float] = []

    def measure(self, name: str, quantization: dict[str, Any], path: Path) -> CandidateResult:
        options = self.options
        session = load_session(path, spin_between_runs=False)
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
        compressed = compressed_size(path) if self.compressed else None
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
            compressed_bytes=compressed,
            compressed_ratio=None if compressed is None else compressed / self.fp32_size,
        )

    def fp32_row(self) -> dict[str, Any]:
        quality = measure_quality(self.task, self.expected, self.expected, self.labels)
        compressed = compressed_size(self.source) if self.compressed else None
        return {
            "size_bytes": self.fp32_size,
            **(
                {"compressed_bytes": compressed, "compressed_ratio": compressed / self.fp32_size}
                if compressed is not None
                else {}
            ),
            "latency_b1_ms": float(np.median(self.fp32_b1)) if self.fp32_b1 else None,
            "latency_batch_ms": float(np.median(self.fp32_batch)) if self.fp32_batch else None,
            "quality": quality,
        }
