"""Timing a model at 1, 2, ... pinned vCPUs: one child process per share, pinned before its
session exists, so onnxruntime's thread pool inherits the affinity; the bare floor beside it.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxkit_tools.bench.cost import SharePoint
from onnxkit_tools.bench.errors import BenchError

DEFAULT_BATCH = 32
DEFAULT_SEQ_LEN = 128
DEFAULT_SECONDS = 2.0
DEFAULT_MIN_REPEATS = 5
DEFAULT_MAX_REPEATS = 100_000
WARM_UP_RUNS = 3
# bench and floor are timed in alternating blocks, so a slow patch of the machine hits both
FLOOR_ROUNDS = 4
# Inputs whose names say what they hold: masks are all ones, segment ids all zeros.
ONES_NAMES = ("attention_mask", "input_mask", "mask")
ZEROS_NAMES = ("token_type_ids", "segment_ids", "position_ids")
IDS_HIGH = 100  # int inputs: ids in [0, 100), small enough for any vocabulary or table
_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}


@dataclass(frozen=True)
class BenchOptions:
    """How to measure: rows per batch, sequence length, time budget and repeats per point."""

    batch: int = DEFAULT_BATCH
    seq_len: int = DEFAULT_SEQ_LEN
    seconds: float = DEFAULT_SECONDS
    min_repeats: int = DEFAULT_MIN_REPEATS
    max_repeats: int = DEFAULT_MAX_REPEATS
    max_vcpus: int | None = None  # default: every CPU this process may use
    sample: Path | None = None


@dataclass(frozen=True)
class Timing:
    """One point: a batch size on a vCPU share."""

    vcpus: int
    batch: int
    repeats: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    throughput_per_s: float  # rows per second over the timed loop


@dataclass(frozen=True)
class ShareResult:
    """What one child measured on its share."""

    vcpus: int
    cpus: list[int]
    pinned: bool
    timings: list[Timing]
    floor: Timing | None  # bare InferenceSession.run, 1-vCPU child only
    peak_rss_mb: float


@dataclass(frozen=True)
class Measurement:
    """Every share's results, the inputs used and the machine they ran on."""

    shares: list[ShareResult]
    inputs: list[dict[str, Any]]
    batch: int
    machine: dict[str, Any]
    options: BenchOptions

    def timing(self, vcpus: int, batch: int) -> Timing | None:
        """The point at ``vcpus`` and ``batch`` (None when not measured)."""
        for share in self.shares:
            if share.vcpus == vcpus:
                return next((t for t in share.timings if t.batch == batch), None)
        return None

    @property
    def floor(self) -> Timing:
        """The bare floor of the 1-vCPU child."""
        (floor,) = [s.floor for s in self.shares if s.floor is not None]
        return floor

    @property
    def floor_ratio(self) -> float:
        """Batch-1 p50 at 1 vCPU over the bare floor's p50."""
        bench = self.timing(1, 1)
        assert bench is not None
        return bench.p50_ms / self.floor.p50_ms

    def share_points(self) -> list[SharePoint]:
        """The batch-1 point of every share, what the cost model reads."""
        points = []
        for share in sorted(self.shares, key=lambda s: s.vcpus):
            t = self.timing(share.vcpus, 1)
            assert t is not None
            points.append(SharePoint(t.vcpus, t.p50_ms, t.p99_ms, t.mean_ms, t.throughput_per_s))
        return points

    @property
    def peak_rss_mb(self) -> float:
        """The largest resident memory of any measuring child."""
        return max(s.peak_rss_mb for s in self.shares)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for report.json."""
        options = asdict(self.options)
        options["sample"] = str(self.options.sample) if self.options.sample else None
        return {
            "machine": self.machine,
            "options": options,
            "batch": self.batch,
            "inputs": self.inputs,
            "shares": [asdict(s) for s in self.shares],
            "floor": asdict(self.floor),
            "floor_ratio": self.floor_ratio,
            "peak_rss_mb": self.peak_rss_mb,
        }


# --- inputs -------------------------------------------------------------------------------------


def input_plan(model: Path, options: BenchOptions) -> tuple[list[dict[str, Any]], int]:
    """Each input's name, type and shape at batch 1, and the batch the model allows.

    The first dimension, when symbolic, is the batch; any other symbolic dimension is
    ``seq_len``. A fixed first dimension caps the batch at its size.

    Raises:
        BenchError: onnxruntime cannot load the model, or an input type is not supported.
    """
    session = _session(model, threads=1)
    plan = []
    batch = options.batch
    for spec in session.get_inputs():
        if spec.type not in _NUMPY_TYPES:
            raise BenchError(f"input {spec.name!r} has type {spec.type}, which bench cannot fill")
        dims = list(spec.shape)
        if dims and isinstance(dims[0], int) and dims[0] > 0:
            batch = min(batch, dims[0])
        shape = [
            d if isinstance(d, int) and d > 0 else (1 if i == 0 else options.seq_len)
            for i, d in enumerate(dims)
        ]
        batched = bool(dims) and not (isinstance(dims[0], int) and dims[0] > 0)
        plan.append({"name": spec.name, "type": spec.type, "shape": shape, "batched": batched})
    return plan, batch


def make_feed(
    plan: list[dict[str, Any]], batch: int, sample: Path | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Inputs for ``batch`` rows: from ``sample`` (.npz, one array per input, rows first, rows
    repeated when fewer), else generated: floats normal, ids in [0, 100), masks ones.

    Raises:
        BenchError: The sample lacks an input or its rows have the wrong shape.
    """
    arrays = _read_sample(sample) if sample is not None else {}
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in plan:
        name, dtype = spec["name"], _NUMPY_TYPES[spec["type"]]
        shape = list(spec["shape"])
        if spec["batched"]:
            shape[0] = batch
        if sample is not None:
            feed[name] = _sample_rows(arrays, name, shape, dtype, spec["batched"], sample)
            continue
        lowered = name.lower()
        if spec["type"] == "tensor(string)":
            feed[name] = np.full(shape, "onnxkit bench", dtype=object)
        elif spec["type"] == "tensor(bool)" or lowered in ONES_NAMES:
            feed[name] = np.ones(shape, dtype)
        elif lowered in ZEROS_NAMES:
            feed[name] = np.zeros(shape, dtype)
        elif np.issubdtype(dtype, np.integer):
            feed[name] = rng.integers(0, IDS_HIGH, size=shape).astype(dtype)
        else:
            feed[name] = rng.standard_normal(shape).astype(dtype)
    return feed


def _read_sample(sample: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(sample, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read --sample {sample}: {exc}") from exc


def _sample_rows(
    arrays: dict[str, np.ndarray],
    name: str,
    shape: list[int],
    dtype: Any,
    batched: bool,
    sample: Path,
) -> np.ndarray:
    if name not in arrays:
        raise BenchError(
            f"--sample {sample.name} has no array {name!r} (it holds {', '.join(arrays) or 'none'})"
        )
    array = arrays[name]
    if batched:
        if array.ndim != len(shape) or len(array) == 0:
            raise BenchError(
                f"--sample {sample.name}: {name!r} must have {len(shape)} dimensions with rows "
                f"first, not shape {list(array.shape)}"
            )
        repeats = -(-shape[0] // len(array))
        array = np.concatenate([array] * repeats)[: shape[0]]
    return array.astype(dtype)


# --- timing -------------------------------------------------------------------------------------


def _session(model: Path, threads: int) -> Any:
    from onnxkit.errors import ModelLoadError
    from onnxkit.session import load_session

    try:
        return load_session(model, intra_op_threads=threads, allow_spinning=False)
    except ModelLoadError as exc:
        raise BenchError(exc.message) from exc


def _time_calls(
    run: Callable[[], object], seconds: float, min_repeats: int, max_repeats: int
) -> list[float]:
    """Seconds per call: at least ``min_repeats``, then until ``seconds`` or ``max_repeats``."""
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_repeats and (
        len(times) < min_repeats or time.perf_counter() - started < seconds
    ):
        begin = time.perf_counter()
        run()
        times.append(time.perf_counter() - begin)
    return times


def _timing(vcpus: int, batch: int, times: list[float]) -> Timing:
    ordered = sorted(times)
    p99_index = min(len(ordered) - 1, max(0, int(np.ceil(0.99 * len(ordered))) - 1))
    return Timing(
        vcpus=vcpus,
        batch=batch,
        repeats=len(times),
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=ordered[p99_index] * 1000,
        mean_ms=statistics.fmean(ordered) * 1000,
        throughput_per_s=batch * len(times) / sum(times),
    )


def _pin(vcpus: int) -> tuple[list[int], bool]:
    """Pin this process to its first ``vcpus`` allowed CPUs (before any thread pool exists)."""
    if not hasattr(os, "sched_setaffinity"):
        return [], False
    cpus = sorted(os.sched_getaffinity(0))[:vcpus]
    os.sched_setaffinity(0, cpus)
    return cpus, True


def measure_share(
    model: str,
    vcpus: int,
    plan: list[dict[str, Any]],
    batches: list[int],
    options: BenchOptions,
    with_floor: bool,
) -> ShareResult:
    """Run in a fresh child process: pin, build the session with ``vcpus`` intra-op threads
    (not spinning), time each batch size; with ``with_floor`` also time a bare
    ``InferenceSession.run`` on one thread in alternating blocks with the batch-1 point."""
    cpus, pinned = _pin(vcpus)
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    session = _session(Path(model), vcpus)
    timings = []
    floor = None
    for batch in batches:
        feed = make_feed(plan, batch, options.sample)
        for _ in range(WARM_UP_RUNS):
            session.run(None, feed)

        def bench_run(feed: dict[str, np.ndarray] = feed) -> object:
            return session.run(None, feed)

        if batch == 1 and with_floor:
            bare_options = ort.SessionOptions()
            bare_options.intra_op_num_threads = 1
            bare = ort.InferenceSession(model, bare_options, providers=["CPUExecutionProvider"])
            for _ in range(WARM_UP_RUNS):
                bare.run(None, feed)
            bench_times: list[float] = []
            floor_times: list[float] = []
            block = options.seconds / FLOOR_ROUNDS
            repeats = max(1, -(-options.min_repeats // FLOOR_ROUNDS))
            for _ in range(FLOOR_ROUNDS):
                bench_times += _time_calls(bench_run, block, repeats, options.max_repeats)
                floor_times += _bare_loop(bare, feed, block, repeats, options.max_repeats)
            timings.append(_timing(vcpus, batch, bench_times))
            floor = _timing(vcpus, batch, floor_times)
        else:
            times = _time_calls(
                bench_run, options.seconds, options.min_repeats, options.max_repeats
            )
            timings.append(_timing(vcpus, batch, times))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ShareResult(vcpus, cpus, pinned, timings, floor, peak_kb / 1024)


def _bare_loop(
    session: Any, feed: dict[str, np.ndarray], seconds: float, min_repeats: int, max_repeats: int
) -> list[float]:
    """The floor: ``InferenceSession.run`` in a plain loop, nothing around it."""
    times: list[float] = []
    clock = time.perf_counter
    end = clock() + seconds
    while len(times) < max_repeats and (len(times) < min_repeats or clock() < end):
        begin = clock()
        session.run(None, feed)
        times.append(clock() - begin)
    return times


def machine_info() -> dict[str, Any]:
    """The CPU, its count, the OS and the onnxruntime that measured."""
    import onnxruntime as ort

    from onnxkit.session import available_cpus

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus_available": available_cpus(),
        "cpus_logical": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
    }


def measure_model(
    model: Path,
    options: BenchOptions,
    on_share: Callable[[int], None] | None = None,
) -> Measurement:
    """Time ``model`` at batch 1 and the batch it allows, at shares 1..N vCPUs, each share in a
    fresh spawned process, and the bare floor in the 1-vCPU one.

    Args:
        model: The .onnx file.
        options: What to measure and for how long.
        on_share: Called with each share before it is measured (progress).

    Raises:
        BenchError: The model cannot be loaded or filled, or --max-vcpus exceeds the machine.
    """
    from onnxkit.session import available_cpus

    machine = machine_info()
    cpus = available_cpus()
    top = options.max_vcpus or cpus
    if top > cpus:
        raise BenchError(f"--max-vcpus {top} is more than the {cpus} CPU(s) this machine gives")
    plan, batch = input_plan(model, options)
    make_feed(plan, batch, options.sample)  # a bad --sample fails here, not in a child
    batches = sorted({1, batch})
    shares = []
    context = multiprocessing.get_context("spawn")
    for vcpus in range(1, top + 1):
        if on_share is not None:
            on_share(vcpus)
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            future = pool.submit(
                measure_share, str(model), vcpus, plan, batches, options, vcpus == 1
            )
            try:
                shares.append(future.result())
            except concurrent.futures.process.BrokenProcessPool as exc:
                raise BenchError(
                    f"the process measuring {vcpus} vCPU(s) died (out of memory?)"
                ) from exc
    inputs = [{**spec, "shape_at_batch": _batched(spec, batch)} for spec in plan]
    return Measurement(shares, inputs, batch, machine, options)


def _batched(spec: dict[str, Any], batch: int) -> list[int]:
    shape = list(spec["shape"])
    if spec["batched"]:
        shape[0] = batch
    return shape
