"""``onnxkit bench``'s outputs: report.json (every number), report.md (tables, recommendation,
break-even, assumptions, plots linked) and the short summary printed at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from onnxkit_tools.bench.cost import (
    HOURS_PER_MONTH,
    SECONDS_PER_MONTH,
    CostEstimate,
    Prices,
    async_s3_per_million,
)
from onnxkit_tools.bench.measure import Measurement

FLOOR_TOLERANCE = 0.15  # bench at 1 vCPU within 15% of the bare InferenceSession.run


def assumptions(prices: Prices, estimate: CostEstimate) -> list[str]:
    """What the estimates take for granted, in words (report.md and report.json)."""
    return [
        "Latency is the model's run alone (onnxruntime `session.run` on inputs already in "
        "memory, idle threads not spinning). The function adds decoding, encoding and the API "
        "on top (`make bench` measures that path); cold starts are not included.",
        "The cores measured are this machine's. Lambda's (and SageMaker's) may be faster or "
        "slower: the estimates scale this machine's timing, they do not measure AWS.",
        f"Lambda CPU: one vCPU per {prices.mb_per_vcpu:g} MB, at most {prices.max_vcpus:g}. "
        "Below one vCPU the function gets that fraction of one core (CFS quota), so a "
        "prediction takes t(1 vCPU) / share. Between whole vCPUs the measured shares are "
        "interpolated linearly; past the cores this machine has, the last measured figure is "
        "held and the point marked extrapolated (no speedup is assumed).",
        "Lambda cost per prediction: one request plus GB-seconds of the mean latency, billed "
        "rounded up to 1 ms; first price tier, no free tier, no Savings Plans. One request is "
        "one prediction (batch 1); the batch-N figures are for reference.",
        "arm64 was not measured: its column prices the x86 timing at arm64's GB-second rate.",
        "API Gateway: per request, first tier; data transfer is not included.",
        "SageMaker real-time: one instance serves one request at a time with its vCPUs as "
        "intra-op threads, at the throughput measured at that many vCPUs (held at the largest "
        "share measured when the instance has more: conservative; several workers may do "
        f"better on small models); busy {estimate.utilization:.0%} of the time on average; at "
        f"least one instance around the clock ({HOURS_PER_MONTH} hours a month). Storage "
        "volumes, data transfer and the public front door in front of the endpoint are not "
        "included.",
        "SageMaker asynchronous: instances run only while a backlog exists and are fully busy "
        "then; the endpoint scales to zero (instance start-up and scale-in cool-down, which "
        "bill, are ignored). Each prediction also pays 2 S3 PUTs and 2 S3 GETs "
        f"(${async_s3_per_million(prices):.2f} per million).",
        "Break-even: Lambda at the recommended MemorySize against one always-on real-time "
        "instance (the cheapest per million of those priced); past one instance's capacity "
        "more instances are needed, so when the crossing lies beyond it Lambda stays cheaper.",
        "MemorySizes smaller than the measuring process's peak memory are marked as not "
        "fitting and never recommended.",
    ]


def build_report(
    model: Path,
    measurement: Measurement,
    estimate: CostEstimate,
    prices: Prices,
    plots: dict[str, str],
) -> dict[str, Any]:
    """Every number of the run, as plain data."""
    return {
        "model": {"path": str(model), "size_bytes": model.stat().st_size},
        "measurement": measurement.to_dict(),
        "floor": {
            "ratio": measurement.floor_ratio,
            "bench_p50_ms": _b1(measurement, 1).p50_ms,
            "floor_p50_ms": measurement.floor.p50_ms,
            "tolerance": FLOOR_TOLERANCE,
            "within_tolerance": abs(measurement.floor_ratio - 1) <= FLOOR_TOLERANCE,
        },
        "prices": {
            "date": prices.date,
            "region": prices.region,
            "source": prices.source,
            "origin": prices.origin,
            "document": prices.raw,
        },
        **estimate.to_dict(),
        "assumptions": assumptions(prices, estimate),
        "plots": plots,
    }


def _b1(measurement: Measurement, vcpus: int) -> Any:
    timing = measurement.timing(vcpus, 1)
    assert timing is not None
    return timing


def write_report(out: Path, report: dict[str, Any], markdown: str) -> None:
    """report.json and report.md into ``out``."""
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown)


def _money(value: float) -> str:
    return f"${value:,.2f}" if value >= 1 else f"${value:.4f}"


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _count(value: float) -> str:
    return f"{value:,.0f}"


def render_markdown(
    model: Path, measurement: Measurement, estimate: CostEstimate, prices: Prices, plots: dict
) -> str:
    """report.md: what was measured where, the tables, the recommendation and the
    assumptions."""
    machine = measurement.machine
    options = measurement.options
    chosen, rec = estimate.recommended, estimate.recommendation
    realtime, asynchronous = estimate.best_realtime, estimate.best_async
    ratio = measurement.floor_ratio
    pinned = all(s.pinned for s in measurement.shares)
    lines = [
        f"# onnxkit bench: {model.name}",
        "",
        f"Model `{model}` ({model.stat().st_size / 1e6:.2f} MB), measured on {machine['cpu']} "
        f"({machine['cpus_available']} CPUs available), onnxruntime {machine['onnxruntime']}, "
        f"Python {machine['python']}, {machine['platform']}.",
        "",
        "Each vCPU share ran in its own process, "
        + (
            "pinned to that many cores before its session existed"
            if pinned
            else "NOT pinned (this OS has no sched_setaffinity: only the thread count differs)"
        )
        + f", with as many intra-op threads and idle threads not spinning: {options.seconds:g} s "
        f"per point, {options.min_repeats} to {options.max_repeats} runs, batch 1 and batch "
        f"{measurement.batch}. Inputs: "
        + ", ".join(f"`{i['name']}` {i['type']} {i['shape_at_batch']}" for i in measurement.inputs)
        + (f" from `{options.sample}`." if options.sample else " generated (seed 0)."),
        "",
        "## Recommendation",
        "",
        f"- **MemorySize {chosen.memory_mb} MB** ({rec.reason}): estimated p50 "
        f"{_ms(chosen.p50_ms)} ms, p99 {_ms(chosen.p99_ms)} ms, "
        f"**{_money(chosen.x86)} per million** on x86_64 "
        f"({_money(chosen.cost_per_million['x86_64+http'])} with an HTTP API, "
        f"{_money(chosen.cost_per_million['x86_64+rest'])} with a REST API).",
        f"- SageMaker real-time, {realtime.instance} at {estimate.utilization:.0%} busy: "
        f"**{_money(realtime.cost_per_million)} per million**, "
        f"{_money(realtime.monthly_fixed)} a month per instance.",
        f"- SageMaker asynchronous, {asynchronous.instance}: "
        f"{_money(asynchronous.cost_per_million)} per million (S3 requests included).",
    ]
    for even in estimate.break_even:
        lines.append(f"- Break-even, Lambda {even.lambda_option}: {even.note}.")
    lines += [
        "",
        "## Measured",
        "",
        "| vCPUs | batch | runs | p50 ms | p99 ms | mean ms | rows/s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for share in measurement.shares:
        for t in share.timings:
            lines.append(
                f"| {t.vcpus} | {t.batch} | {t.repeats} | {_ms(t.p50_ms)} | {_ms(t.p99_ms)} | "
                f"{_ms(t.mean_ms)} | {t.throughput_per_s:,.0f} |"
            )
    floor = measurement.floor
    verdict = "within" if abs(ratio - 1) <= FLOOR_TOLERANCE else "OUTSIDE"
    lines += [
        "",
        f"Floor: a bare `InferenceSession.run` loop on one pinned core, timed in the 1-vCPU "
        f"process in blocks alternating with the batch-1 point: p50 {_ms(floor.p50_ms)} ms "
        f"({floor.repeats} runs). Bench at 1 vCPU / floor = **{ratio:.3f}** ({verdict} "
        f"{FLOOR_TOLERANCE:.0%}). Peak memory of a measuring process: "
        f"{measurement.peak_rss_mb:.0f} MB.",
        "",
        "## Lambda by MemorySize",
        "",
        "| MB | vCPU | p50 ms | p99 ms | billed ms | x86_64 $/M | arm64 $/M* | + HTTP API | "
        "+ REST API | note |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in estimate.grid:
        notes = []
        if p.memory_mb == chosen.memory_mb:
            notes.append("**recommended**")
        if p.below_one_vcpu:
            notes.append("below 1 vCPU: scaled")
        if p.extrapolated:
            notes.append("extrapolated: time held")
        if not p.fits:
            notes.append("model does not fit")
        c = p.cost_per_million
        lines.append(
            f"| {p.memory_mb} | {p.vcpus:.2f} | {_ms(p.p50_ms)} | {_ms(p.p99_ms)} | "
            f"{p.billed_ms} | {_money(c['x86_64'])} | {_money(c['arm64'])} | "
            f"{_money(c['x86_64+http'])} | {_money(c['x86_64+rest'])} | {', '.join(notes)} |"
        )
    lines += [
        "",
        "\\* arm64 was not measured: the x86 timing at arm64's price.",
        "",
        f"![cost per million by MemorySize]({plots['cost']})",
        "",
        f"![latency by MemorySize]({plots['latency']})",
        "",
        "## SageMaker",
        "",
        "| mode | instance | vCPUs (measured) | $/hour | predictions/s | $/month fixed | "
        "capacity/month | $/M |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in [*estimate.realtime, *estimate.asynchronous]:
        measured = f"{s.vcpus} ({s.measured_vcpus}{', held' if s.capped else ''})"
        lines.append(
            f"| {s.mode} | {s.instance} | {measured} | {s.hourly:.4f} | "
            f"{s.throughput_per_s:,.0f} | {_money(s.monthly_fixed)} | "
            f"{_count(s.capacity_per_month)} | {_money(s.cost_per_million)} |"
        )
    lines += [
        "",
        f"Real-time capacity is at {estimate.utilization:.0%} utilization; asynchronous at "
        "full utilization while a backlog exists.",
        "",
        "## Break-even",
        "",
        "| Lambda | $/M | against | $/month fixed | break-even predictions/month | average/s |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for even in estimate.break_even:
        monthly = even.predictions_per_month
        lines.append(
            f"| {chosen.memory_mb} MB {even.lambda_option} | {_money(even.lambda_per_million)} | "
            f"{even.instance} | {_money(even.monthly_fixed)} | "
            + (
                f"{_count(monthly)} | {monthly / SECONDS_PER_MONTH:,.2f} |"
                if monthly is not None
                else "none: Lambda stays cheaper | - |"
            )
        )
    lines += [
        "",
        f"![monthly cost by traffic]({plots['monthly']})",
        "",
        "## Assumptions",
        "",
        *[f"- {a}" for a in assumptions(prices, estimate)],
        "",
        "## Prices",
        "",
        f"{prices.region}, dated {prices.date} ({prices.origin}); `--prices FILE` overrides "
        "them. Sources:",
        "",
        *[f"- {service}: {url}" for service, url in prices.source.items()],
        *[f"- note: {note}" for note in prices.raw.get("notes", [])],
        "",
    ]
    return "\n".join(lines)


def summary(out: Path, measurement: Measurement, estimate: CostEstimate) -> list[str]:
    """The few lines printed at the end of a run."""
    chosen, rec = estimate.recommended, estimate.recommendation
    realtime, asynchronous = estimate.best_realtime, estimate.best_async
    lines = [
        f"recommended Lambda MemorySize: {chosen.memory_mb} MB ({rec.reason}); "
        f"p99 {_ms(chosen.p99_ms)} ms",
        f"per million predictions: Lambda {_money(chosen.x86)} "
        f"(+ HTTP API {_money(chosen.cost_per_million['x86_64+http'])}, "
        f"+ REST API {_money(chosen.cost_per_million['x86_64+rest'])}); "
        f"SageMaker real-time {realtime.instance} {_money(realtime.cost_per_million)} "
        f"at {estimate.utilization:.0%} busy; async {asynchronous.instance} "
        f"{_money(asynchronous.cost_per_million)}",
    ]
    lines += [f"break-even (Lambda {b.lambda_option}): {b.note}" for b in estimate.break_even]
    lines.append(
        f"bench at 1 vCPU / bare InferenceSession.run floor: {measurement.floor_ratio:.3f}"
    )
    lines.append(f"report: {out / 'report.md'} (numbers in {out / 'report.json'})")
    return lines
