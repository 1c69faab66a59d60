"""The cost model: measured latency per vCPU share -> Lambda per MemorySize, SageMaker real-time
and asynchronous inference per million predictions, the recommended memory and the break-even.

Everything here is arithmetic on numbers handed in (no timing, no files but the price file), so a
test can recompute any figure by hand from ``prices.json``.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from onnxkit_tools.bench.errors import BenchError

# Lambda's MemorySize grid: the powers of two, the 1/2/3/4/5/6-vCPU points (1,769 MB each) and
# the console's old 3,008 MB maximum, from 512 MB to the 10,240 MB maximum.
MEMORY_GRID_MB = (
    512, 768, 1024, 1536, 1769, 2048, 3008, 3538, 4096, 5307, 6144, 7076, 8192, 8845, 10240,
)  # fmt: skip
HOURS_PER_MONTH = 730
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600
ARCHITECTURES = ("x86_64", "arm64")
APIS = ("http", "rest")
# SageMaker asynchronous inference, per prediction: the client PUTs the input and the endpoint
# GETs it; the endpoint PUTs the output and the client GETs it.
ASYNC_S3_PUTS = 2
ASYNC_S3_GETS = 2
# MemorySizes whose billed GB-seconds per prediction are within this share of the cheapest
# count as equally cheap (the recommendation then takes the fastest of them).
GB_SECONDS_TIE = 0.02


# --- prices -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    """A SageMaker instance type: vCPUs and on-demand price per hour."""

    name: str
    vcpus: int
    hourly: float


@dataclass(frozen=True)
class Prices:
    """The price list the model uses (``prices.json``, or it merged with / replaced by a file).

    Attributes:
        raw: The whole document, as read (date, source, notes included), for the report.
    """

    date: str
    region: str
    source: dict[str, str]
    lambda_request_per_million: float
    lambda_gb_second: dict[str, float]
    mb_per_vcpu: float
    max_vcpus: float
    api_per_million: dict[str, float]
    s3_put_per_thousand: float
    s3_get_per_thousand: float
    instances: dict[str, Instance]
    default_instances: tuple[str, ...]
    raw: dict[str, Any] = field(repr=False, compare=False)
    origin: str = "packaged"


def packaged_prices() -> dict[str, Any]:
    """The price document shipped with onnxkit (``onnxkit_tools/bench/prices.json``)."""
    text = resources.files("onnxkit_tools.bench").joinpath("prices.json").read_text()
    document: dict[str, Any] = json.loads(text)
    return document


def load_prices(path: Path | None = None, *, replace: bool = False) -> Prices:
    """The packaged prices, with ``path`` merged over them (or replacing them).

    Merging is per key, recursively: a file with only ``{"lambda": {"gb_second": {"x86_64":
    0.00002}}}`` changes that one price; lists and numbers are replaced whole.

    Args:
        path: A JSON price file (the layout of the packaged ``prices.json``).
        replace: Use ``path`` alone; it must then hold every price.

    Raises:
        BenchError: The file cannot be read, is not JSON, or lacks or mistypes a price.
    """
    document = packaged_prices()
    origin = "packaged"
    if path is not None:
        try:
            override = json.loads(Path(path).read_text())
        except OSError as exc:
            raise BenchError(f"cannot read the price file {path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise BenchError(f"the price file {path} is not JSON: {exc}") from exc
        if not isinstance(override, dict):
            raise BenchError(f"the price file {path} must hold a JSON object")
        document = override if replace else _merge(document, override)
        origin = f"{path} ({'replacing' if replace else 'merged over'} the packaged prices)"
    try:
        return _parse(document, origin)
    except BenchError as exc:
        where = f"the price file {path}" if path is not None else "the packaged prices"
        raise BenchError(f"{where}: {exc.message}") from exc


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _number(document: dict[str, Any], *keys: str, positive: bool = True) -> float:
    value: Any = document
    for depth, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            raise BenchError(f"missing {'.'.join(keys[: depth + 1])}")
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BenchError(f"{'.'.join(keys)} must be a number, not {value!r}")
    if value < 0 or (positive and value == 0):
        raise BenchError(f"{'.'.join(keys)} must be {'above' if positive else 'at least'} 0")
    return float(value)


def _parse(document: dict[str, Any], origin: str) -> Prices:
    for key in ("date", "region"):
        if key not in document:
            raise BenchError(f"missing {key}")
        if not isinstance(document[key], str):
            raise BenchError(f"{key} must be a string")
    source = document.get("source")
    if not isinstance(source, dict) or not all(isinstance(v, str) for v in source.values()):
        raise BenchError("source must map each service to its pricing page's URL")
    table = document.get("sagemaker", {}).get("instances")
    if not isinstance(table, dict) or not table:
        raise BenchError("missing sagemaker.instances (name -> {vcpus, hourly})")
    instances = {}
    for name in table:
        vcpus = _number(document, "sagemaker", "instances", name, "vcpus")
        if vcpus != int(vcpus):
            raise BenchError(f"sagemaker.instances.{name}.vcpus must be a whole number")
        hourly = _number(document, "sagemaker", "instances", name, "hourly")
        instances[name] = Instance(name, int(vcpus), hourly)
    defaults = document["sagemaker"].get("default_instances", list(instances))
    if not isinstance(defaults, list) or not defaults:
        raise BenchError("sagemaker.default_instances must be a list of instance names")
    unknown = [name for name in defaults if name not in instances]
    if unknown:
        raise BenchError(f"sagemaker.default_instances names unknown instances: {unknown}")
    return Prices(
        date=document["date"],
        region=document["region"],
        source=dict(source),
        lambda_request_per_million=_number(
            document, "lambda", "request_per_million", positive=False
        ),
        lambda_gb_second={a: _number(document, "lambda", "gb_second", a) for a in ARCHITECTURES},
        mb_per_vcpu=_number(document, "lambda", "mb_per_vcpu"),
        max_vcpus=_number(document, "lambda", "max_vcpus"),
        api_per_million={a: _number(document, "api_gateway", f"{a}_per_million") for a in APIS},
        s3_put_per_thousand=_number(document, "s3", "put_per_thousand", positive=False),
        s3_get_per_thousand=_number(document, "s3", "get_per_thousand", positive=False),
        instances=instances,
        default_instances=tuple(defaults),
        raw=document,
        origin=origin,
    )


# --- measured points --------------------------------------------------------------------------


@dataclass(frozen=True)
class SharePoint:
    """Batch-1 timing of the model on ``vcpus`` pinned cores (intra-op threads = vcpus)."""

    vcpus: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    throughput_per_s: float


def _point_at(points: list[SharePoint], vcpus: float) -> tuple[dict[str, float], bool]:
    """Latency (p50, p99, mean) and throughput at ``vcpus`` (>= 1), and whether it is held.

    Between two measured shares the figures are interpolated linearly; past the largest measured
    share they are held at its value (flagged: no speedup is invented).
    """
    by_share = {p.vcpus: p for p in points}
    largest = max(by_share)
    names = ("p50_ms", "p99_ms", "mean_ms", "throughput_per_s")
    if vcpus >= largest:
        return {n: getattr(by_share[largest], n) for n in names}, vcpus > largest
    low = math.floor(vcpus)
    below, above = by_share[low], by_share.get(low + 1, by_share[low])
    share = vcpus - low
    values = {n: getattr(below, n) + share * (getattr(above, n) - getattr(below, n)) for n in names}
    return values, False


def _check_points(points: list[SharePoint]) -> None:
    shares = sorted(p.vcpus for p in points)
    if not shares or shares != list(range(1, shares[-1] + 1)):
        raise BenchError(f"the cost model needs shares 1..N measured, got {shares}")


# --- Lambda -------------------------------------------------------------------------------------


def lambda_vcpus(memory_mb: float, prices: Prices) -> float:
    """Lambda's CPU share at ``memory_mb``: one vCPU per 1,769 MB, at most 6."""
    return min(memory_mb / prices.mb_per_vcpu, prices.max_vcpus)


def billed_ms(duration_ms: float) -> int:
    """Lambda bills duration rounded up to the next millisecond (at least 1 ms)."""
    return max(1, math.ceil(duration_ms - 1e-9))


def lambda_cost_per_million(
    duration_ms: float, memory_mb: float, prices: Prices, arch: str = "x86_64"
) -> float:
    """Lambda's own charge per million invocations: requests plus GB-seconds.

    Args:
        duration_ms: One invocation's duration (rounded up to 1 ms here).
        memory_mb: The function's MemorySize.
        prices: The price list.
        arch: ``x86_64`` or ``arm64``.
    """
    gb_seconds = memory_mb / 1024 * billed_ms(duration_ms) / 1000
    return prices.lambda_request_per_million + 1e6 * gb_seconds * prices.lambda_gb_second[arch]


@dataclass(frozen=True)
class LambdaPoint:
    """One MemorySize: estimated latency and cost per million predictions (batch 1)."""

    memory_mb: int
    vcpus: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    billed_ms: int
    below_one_vcpu: bool
    extrapolated: bool
    fits: bool
    cost_per_million: dict[str, float]

    @property
    def x86(self) -> float:
        """Lambda alone, x86_64."""
        return self.cost_per_million["x86_64"]


def lambda_point(
    points: list[SharePoint], memory_mb: int, prices: Prices, *, peak_rss_mb: float = 0.0
) -> LambdaPoint:
    """The estimate at one MemorySize.

    Below one vCPU the function gets a CFS quota of ``vcpus`` of a core per period, so the
    1-vCPU time stretches by ``1 / vcpus``. From one vCPU up the measured shares are
    interpolated, and held (``extrapolated``) past the largest one measured.

    Args:
        points: Batch-1 measurements at shares 1..N.
        memory_mb: The MemorySize.
        prices: The price list.
        peak_rss_mb: The measuring process's peak memory: smaller MemorySizes do not ``fit``.
    """
    _check_points(points)
    vcpus = lambda_vcpus(memory_mb, prices)
    if vcpus < 1:
        one, _ = _point_at(points, 1)
        values = {n: one[n] / vcpus for n in ("p50_ms", "p99_ms", "mean_ms")}
        extrapolated = False
    else:
        values, extrapolated = _point_at(points, vcpus)
    cost = {
        a: lambda_cost_per_million(values["mean_ms"], memory_mb, prices, a) for a in ARCHITECTURES
    }
    for api in APIS:
        cost[f"x86_64+{api}"] = cost["x86_64"] + prices.api_per_million[api]
    return LambdaPoint(
        memory_mb=memory_mb,
        vcpus=vcpus,
        p50_ms=values["p50_ms"],
        p99_ms=values["p99_ms"],
        mean_ms=values["mean_ms"],
        billed_ms=billed_ms(values["mean_ms"]),
        below_one_vcpu=vcpus < 1,
        extrapolated=extrapolated,
        fits=memory_mb >= peak_rss_mb,
        cost_per_million=cost,
    )


@dataclass(frozen=True)
class Recommendation:
    """The MemorySize to deploy with, and why."""

    memory_mb: int
    reason: str
    target_met: bool | None  # None: no latency target was given


def recommend_memory(
    grid: list[LambdaPoint], latency_target_ms: float | None = None
) -> Recommendation:
    """The cheapest MemorySize (x86_64, Lambda alone) whose model fits; with a target, the
    cheapest whose estimated p99 meets it, or, when none does, the fastest (and says so).

    Durations within :data:`GB_SECONDS_TIE` of the cheapest in GB-seconds count as equal
    (the request fee is the same at every size), and ties go to the lower p99, then the
    smaller memory. Below one vCPU the estimate scales time by the share, so GB-seconds hardly
    move and differ by rounding to the billed millisecond: without the band, run-to-run noise
    swung the MiniLM pick between 768 and 1,769 MB, which cost within 1.3% of each other and
    differ 2.3x in latency.

    Raises:
        BenchError: No MemorySize on the grid holds the model.
    """
    fitting = [p for p in grid if p.fits]
    if not fitting:
        raise BenchError(
            f"the model needs more memory than the largest MemorySize ({grid[-1].memory_mb} MB)"
        )
    cheapest = _cheapest(fitting)
    if latency_target_ms is None:
        return Recommendation(cheapest.memory_mb, "the lowest cost per million", None)
    meeting = [p for p in fitting if p.p99_ms <= latency_target_ms]
    if meeting:
        best = _cheapest(meeting)
        return Recommendation(
            best.memory_mb,
            f"the cheapest whose estimated p99 ({best.p99_ms:.2f} ms) meets the "
            f"{latency_target_ms:g} ms target",
            True,
        )
    fastest = min(fitting, key=lambda p: (p.p99_ms, round(p.x86, 9), p.memory_mb))
    return Recommendation(
        fastest.memory_mb,
        f"no MemorySize meets the {latency_target_ms:g} ms p99 target; this is the fastest "
        f"(estimated p99 {fastest.p99_ms:.2f} ms)",
        False,
    )


def _cheapest(points: list[LambdaPoint]) -> LambdaPoint:
    floor = min(p.memory_mb * p.billed_ms for p in points)
    tied = [p for p in points if p.memory_mb * p.billed_ms <= floor * (1 + GB_SECONDS_TIE)]
    return min(tied, key=lambda p: (p.p99_ms, p.memory_mb))


# --- SageMaker ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SageMakerPoint:
    """One instance type on the real-time or asynchronous path."""

    instance: str
    mode: str  # "realtime" or "async"
    vcpus: int
    measured_vcpus: int
    capped: bool  # the instance has more vCPUs than were measured: throughput held
    hourly: float
    monthly_fixed: float  # realtime: one instance around the clock; async: 0 (scales to zero)
    throughput_per_s: float
    utilization: float
    capacity_per_month: float  # predictions one instance serves a month at that utilization
    cost_per_million: float


def realtime_point(
    points: list[SharePoint], instance: Instance, utilization: float
) -> SageMakerPoint:
    """An always-on real-time instance serving one request at a time, with its vCPUs as
    intra-op threads, busy ``utilization`` of the time.

    Raises:
        BenchError: utilization is not in (0, 1].
    """
    if not 0 < utilization <= 1:
        raise BenchError(f"utilization must be in (0, 1], not {utilization:g}")
    point = _instance_point(points, instance, utilization)
    monthly = instance.hourly * HOURS_PER_MONTH
    return replace(
        point,
        mode="realtime",
        monthly_fixed=monthly,
        cost_per_million=monthly / point.capacity_per_month * 1e6,
    )


def _instance_point(
    points: list[SharePoint], instance: Instance, utilization: float
) -> SageMakerPoint:
    """``instance`` at the throughput measured for its vCPUs, busy ``utilization`` of the time:
    capacity filled in, mode and costs left for the caller."""
    _check_points(points)
    values, capped = _point_at(points, instance.vcpus)
    throughput = values["throughput_per_s"]
    return SageMakerPoint(
        instance=instance.name,
        mode="",
        vcpus=instance.vcpus,
        measured_vcpus=min(instance.vcpus, max(p.vcpus for p in points)),
        capped=capped,
        hourly=instance.hourly,
        monthly_fixed=0.0,
        throughput_per_s=throughput,
        utilization=utilization,
        capacity_per_month=throughput * utilization * SECONDS_PER_MONTH,
        cost_per_million=0.0,
    )


def async_s3_per_million(prices: Prices) -> float:
    """S3 request charges per million asynchronous predictions (2 PUTs, 2 GETs each)."""
    return 1000 * (
        ASYNC_S3_PUTS * prices.s3_put_per_thousand + ASYNC_S3_GETS * prices.s3_get_per_thousand
    )


def async_point(points: list[SharePoint], instance: Instance, prices: Prices) -> SageMakerPoint:
    """Asynchronous inference: instances run only while a backlog exists, fully busy then, and
    scale to zero; each prediction also pays its S3 requests."""
    point = _instance_point(points, instance, 1.0)
    instance_seconds = 1e6 / point.throughput_per_s
    return replace(
        point,
        mode="async",
        cost_per_million=instance.hourly / 3600 * instance_seconds + async_s3_per_million(prices),
    )


# --- break-even -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BreakEven:
    """Monthly traffic above which one always-on real-time instance is cheaper than Lambda."""

    lambda_option: str  # "x86_64", "x86_64+http" or "x86_64+rest"
    lambda_per_million: float
    instance: str
    monthly_fixed: float
    capacity_per_month: float
    predictions_per_month: float | None  # None: Lambda stays cheaper at any traffic
    note: str


def break_even(lambda_per_million: float, realtime: SageMakerPoint, option: str) -> BreakEven:
    """Where Lambda's linear cost meets one instance's fixed monthly cost.

    Past one instance's capacity a second one is needed, so if the crossing lies beyond that
    capacity, Lambda costs less per prediction than a fully used instance and never loses.
    """
    crossing = realtime.monthly_fixed / (lambda_per_million / 1e6)
    if crossing <= realtime.capacity_per_month:
        note = (
            f"above {_count(crossing)} predictions a month ({crossing / SECONDS_PER_MONTH:.2f}/s "
            f"on average) one {realtime.instance} is cheaper"
        )
        return BreakEven(
            option,
            lambda_per_million,
            realtime.instance,
            realtime.monthly_fixed,
            realtime.capacity_per_month,
            crossing,
            note,
        )
    note = (
        f"Lambda stays cheaper: one {realtime.instance} at {realtime.utilization:.0%} serves "
        f"{_count(realtime.capacity_per_month)} a month, and at that traffic Lambda costs "
        f"${realtime.capacity_per_month * lambda_per_million / 1e6:,.2f} < "
        f"${realtime.monthly_fixed:,.2f}"
    )
    return BreakEven(
        option,
        lambda_per_million,
        realtime.instance,
        realtime.monthly_fixed,
        realtime.capacity_per_month,
        None,
        note,
    )


def realtime_monthly_cost(point: SageMakerPoint, predictions: float) -> float:
    """Monthly cost of the real-time path: whole instances, at least one, each serving up to
    its capacity."""
    return max(1, math.ceil(predictions / point.capacity_per_month - 1e-9)) * point.monthly_fixed


def _count(value: float) -> str:
    for size, suffix in ((1e9, " billion"), (1e6, " million"), (1e3, " thousand")):
        if value >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


# --- everything together ----------------------------------------------------------------------


@dataclass(frozen=True)
class CostEstimate:
    """The grid, the SageMaker options, the recommendation and the break-evens."""

    grid: list[LambdaPoint]
    recommendation: Recommendation
    realtime: list[SageMakerPoint]
    asynchronous: list[SageMakerPoint]
    break_even: list[BreakEven]
    utilization: float
    latency_target_ms: float | None

    @property
    def recommended(self) -> LambdaPoint:
        """The grid point of the recommended MemorySize."""
        return next(p for p in self.grid if p.memory_mb == self.recommendation.memory_mb)

    @property
    def best_realtime(self) -> SageMakerPoint:
        """The real-time instance with the lowest cost per million."""
        return min(self.realtime, key=lambda p: (p.cost_per_million, p.hourly))

    @property
    def best_async(self) -> SageMakerPoint:
        """The asynchronous instance with the lowest cost per million."""
        return min(self.asynchronous, key=lambda p: (p.cost_per_million, p.hourly))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for report.json."""
        return {
            "lambda": {
                "grid": [asdict(p) for p in self.grid],
                "recommended": asdict(self.recommendation) | asdict(self.recommended),
            },
            "sagemaker": {
                "realtime": [asdict(p) for p in self.realtime],
                "async": [asdict(p) for p in self.asynchronous],
                "best_realtime": self.best_realtime.instance,
                "best_async": self.best_async.instance,
            },
            "break_even": [asdict(b) for b in self.break_even],
            "utilization": self.utilization,
            "latency_target_ms": self.latency_target_ms,
        }


def estimate_costs(
    points: list[SharePoint],
    prices: Prices,
    *,
    utilization: float = 0.5,
    latency_target_ms: float | None = None,
    instances: tuple[str, ...] | None = None,
    memory_grid: tuple[int, ...] = MEMORY_GRID_MB,
    peak_rss_mb: float = 0.0,
) -> CostEstimate:
    """Every estimate from the batch-1 measurements at shares 1..N.

    Args:
        points: Batch-1 measurements, one per vCPU share, 1..N.
        prices: The price list.
        utilization: How busy an always-on real-time instance is on average.
        latency_target_ms: The p99 the recommended MemorySize must meet.
        instances: SageMaker instance types (default: the price file's ``default_instances``).
        memory_grid: The MemorySizes to estimate.
        peak_rss_mb: Memory the model needed while measured (smaller MemorySizes are skipped).

    Raises:
        BenchError: An unknown instance type, a bad utilization, or no MemorySize fits.
    """
    names = instances or prices.default_instances
    unknown = [n for n in names if n not in prices.instances]
    if unknown:
        raise BenchError(
            f"unknown SageMaker instance type(s) {', '.join(unknown)}; the price file lists "
            f"{', '.join(prices.instances)}"
        )
    grid = [lambda_point(points, m, prices, peak_rss_mb=peak_rss_mb) for m in memory_grid]
    recommendation = recommend_memory(grid, latency_target_ms)
    realtime = [realtime_point(points, prices.instances[n], utilization) for n in names]
    asynchronous = [async_point(points, prices.instances[n], prices) for n in names]
    estimate = CostEstimate(
        grid, recommendation, realtime, asynchronous, [], utilization, latency_target_ms
    )
    chosen = estimate.recommended
    best = estimate.best_realtime
    evens = [
        break_even(chosen.cost_per_million[option], best, option)
        for option in ("x86_64", "x86_64+http", "x86_64+rest")
    ]
    return CostEstimate(
        grid, recommendation, realtime, asynchronous, evens, utilization, latency_target_ms
    )
