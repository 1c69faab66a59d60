"""The report's three PNGs (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onnxkit_tools.bench.cost import CostEstimate, realtime_monthly_cost

PLOTS = {
    "cost": "cost_per_million.png",
    "latency": "latency.png",
    "monthly": "monthly_cost.png",
}
TRAFFIC_RANGE = (1e3, 1e10)  # predictions a month on the monthly plot's x axis


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(out: Path, estimate: CostEstimate) -> dict[str, str]:
    """Write the plots into ``out``; returns their file names by kind."""
    plt = _pyplot()
    for kind, draw in (("cost", _cost), ("latency", _latency), ("monthly", _monthly)):
        figure, axes = plt.subplots(figsize=(8, 4.8), dpi=100)
        draw(axes, estimate)
        axes.grid(True, which="major", alpha=0.3)
        axes.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(out / PLOTS[kind])
        plt.close(figure)
    return dict(PLOTS)


def _memory_axis(axes: Any, estimate: CostEstimate) -> np.ndarray:
    memory = np.array([p.memory_mb for p in estimate.grid])
    axes.set_xlabel("Lambda MemorySize (MB); hollow markers: CPU beyond this machine, time held")
    return memory


def _mark_extrapolated(axes: Any, estimate: CostEstimate, values: list[float], color: str) -> None:
    held = [(p.memory_mb, v) for p, v in zip(estimate.grid, values, strict=True) if p.extrapolated]
    if held:
        xs, ys = zip(*held, strict=True)
        axes.plot(xs, ys, "o", markerfacecolor="white", markeredgecolor=color, zorder=3)


def _cost(axes: Any, estimate: CostEstimate) -> None:
    memory = _memory_axis(axes, estimate)
    lines = (
        ("x86_64", "Lambda x86_64", "C0"),
        ("arm64", "Lambda arm64 (x86 timing)", "C1"),
        ("x86_64+http", "Lambda x86_64 + HTTP API", "C2"),
        ("x86_64+rest", "Lambda x86_64 + REST API", "C3"),
    )
    for key, label, color in lines:
        values = [p.cost_per_million[key] for p in estimate.grid]
        axes.plot(memory, values, "-o", color=color, label=label, markersize=3)
        _mark_extrapolated(axes, estimate, values, color)
    realtime, asynchronous = estimate.best_realtime, estimate.best_async
    axes.axhline(
        realtime.cost_per_million,
        color="C4",
        linestyle="--",
        label=f"SageMaker real-time {realtime.instance} at {estimate.utilization:.0%}",
    )
    axes.axhline(
        asynchronous.cost_per_million,
        color="C5",
        linestyle=":",
        label=f"SageMaker async {asynchronous.instance}",
    )
    chosen = estimate.recommended
    axes.plot(
        [chosen.memory_mb], [chosen.x86], "*", color="black", markersize=12, label="recommended"
    )
    axes.set_yscale("log")
    axes.set_ylabel("$ per million predictions (batch 1, log)")
    axes.set_title("Cost per million predictions by MemorySize")


def _latency(axes: Any, estimate: CostEstimate) -> None:
    memory = _memory_axis(axes, estimate)
    for key, label, color in (("p50_ms", "p50", "C0"), ("p99_ms", "p99", "C3")):
        values = [getattr(p, key) for p in estimate.grid]
        axes.plot(memory, values, "-o", color=color, label=f"estimated {label}", markersize=3)
        _mark_extrapolated(axes, estimate, values, color)
    billed = [p.billed_ms for p in estimate.grid]
    axes.step(memory, billed, where="mid", color="grey", alpha=0.6, label="billed ms (mean)")
    if estimate.latency_target_ms is not None:
        axes.axhline(
            estimate.latency_target_ms,
            color="black",
            linestyle="--",
            label=f"p99 target {estimate.latency_target_ms:g} ms",
        )
    chosen = estimate.recommended
    axes.axvline(chosen.memory_mb, color="black", alpha=0.4, linestyle=":", label="recommended")
    axes.set_yscale("log")
    axes.set_ylabel("latency per prediction, ms (log)")
    axes.set_title("Estimated Lambda latency by MemorySize (batch 1, model run only)")


def _monthly(axes: Any, estimate: CostEstimate) -> None:
    traffic = np.logspace(np.log10(TRAFFIC_RANGE[0]), np.log10(TRAFFIC_RANGE[1]), 400)
    chosen = estimate.recommended
    lines = (
        ("x86_64", f"Lambda {chosen.memory_mb} MB", "C0"),
        ("x86_64+http", f"Lambda {chosen.memory_mb} MB + HTTP API", "C2"),
        ("x86_64+rest", f"Lambda {chosen.memory_mb} MB + REST API", "C3"),
    )
    for key, label, color in lines:
        axes.plot(traffic, traffic * chosen.cost_per_million[key] / 1e6, color=color, label=label)
    realtime = estimate.best_realtime
    axes.plot(
        traffic,
        [realtime_monthly_cost(realtime, t) for t in traffic],
        color="C4",
        label=f"SageMaker real-time {realtime.instance} ({estimate.utilization:.0%} busy)",
    )
    asynchronous = estimate.best_async
    axes.plot(
        traffic,
        traffic * asynchronous.cost_per_million / 1e6,
        color="C5",
        linestyle=":",
        label=f"SageMaker async {asynchronous.instance} (scales to zero)",
    )
    colors = {"x86_64": "C0", "x86_64+http": "C2", "x86_64+rest": "C3"}
    for even in estimate.break_even:
        if even.predictions_per_month is not None:
            axes.axvline(
                even.predictions_per_month,
                color=colors[even.lambda_option],
                alpha=0.5,
                linestyle="--",
            )
            axes.plot(
                [even.predictions_per_month], [even.monthly_fixed], "D", color="black", markersize=5
            )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("predictions per month (log); dashed verticals: break-even")
    axes.set_ylabel("$ per month (log)")
    axes.set_title("Monthly cost by traffic")
