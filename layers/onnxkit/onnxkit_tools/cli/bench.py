"""``onnxkit bench``: latency per vCPU share and what serving the model costs on AWS."""

from __future__ import annotations

from pathlib import Path

import click

from onnxkit_tools.bench.cost import MEMORY_GRID_MB, estimate_costs, load_prices
from onnxkit_tools.bench.measure import (
    DEFAULT_BATCH,
    DEFAULT_MAX_REPEATS,
    DEFAULT_MIN_REPEATS,
    DEFAULT_SECONDS,
    DEFAULT_SEQ_LEN,
    BenchOptions,
    measure_model,
)
from onnxkit_tools.quantize.console import _Progress

_DETAILS = f"""\
Each vCPU share (1, 2, ... up to the CPUs this machine gives, or --max-vcpus) is measured in
a fresh process pinned to that many cores before its onnxruntime session exists, with as many
intra-op threads and idle threads not spinning: batch 1 and --batch rows, for --seconds per
point. The 1-vCPU process also times a bare InferenceSession.run loop on one core (the
floor), in blocks alternating with the batch-1 point; report.md gives the ratio.

Inputs come from the model's signature: a symbolic first dimension is the batch, other
symbolic dimensions --seq-len; floats are random normal, integer inputs ids in [0, 100),
attention_mask/input_mask ones, token_type_ids zeros; or --sample FILE.npz (one array per
input, rows first, repeated to fill a batch).

\b
From the batch-1 timing:
  Lambda, per MemorySize ({MEMORY_GRID_MB[0]} ... {MEMORY_GRID_MB[-1]:,} MB): one vCPU per
    1,769 MB (at most 6); below one vCPU the 1-vCPU time stretches by 1/share (CFS quota);
    between whole vCPUs interpolated; past this machine's cores held and marked extrapolated.
    Cost: requests + GB-seconds (mean latency rounded up to 1 ms), x86_64 and arm64 (arm64
    priced on the x86 timing), with API Gateway HTTP or REST on top.
  SageMaker real-time: one instance serving one request at a time, at --utilization.
  SageMaker asynchronous: instance time while a backlog exists + 2 S3 PUTs and 2 GETs per
    prediction; scales to zero.
  The recommended MemorySize (the cheapest, or the cheapest meeting --latency-target-ms) and
  the monthly traffic above which one always-on real-time instance is cheaper (break-even).

\b
Writes DIR/report.md (tables, recommendation, break-even, assumptions, price sources),
DIR/report.json (every number) and three plots: cost_per_million.png, latency.png,
monthly_cost.png. Prints a summary at the end.

\b
exit status: 0 the report was written; 1 bad input (model, sample, price file).

\b
examples:
  onnxkit bench build/digits/int8/model.onnx --out build/digits/bench
  onnxkit bench model.onnx --out bench --seq-len 64 --latency-target-ms 50
  onnxkit bench model.onnx --out bench --sample sample.npz --prices my-prices.json
"""

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command(epilog=_DETAILS)
@click.argument("model", type=_FILE)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="folder for report.md, report.json and the plots (created)",
)
@click.option(
    "--batch",
    type=click.IntRange(1),
    default=DEFAULT_BATCH,
    show_default=True,
    help="rows for the batched point (a fixed first dimension caps it)",
)
@click.option(
    "--seq-len",
    type=click.IntRange(1),
    default=DEFAULT_SEQ_LEN,
    show_default=True,
    help="size of every symbolic dimension after the first (tokens, for text models)",
)
@click.option(
    "--sample",
    type=_FILE,
    help="measure on these inputs: .npz with one array per model input, rows first",
)
@click.option(
    "--seconds",
    type=click.FloatRange(0, min_open=True),
    default=DEFAULT_SECONDS,
    show_default=True,
    help="time budget per point (share x batch size); the floor gets as long again",
)
@click.option(
    "--min-repeats",
    type=click.IntRange(1),
    default=DEFAULT_MIN_REPEATS,
    show_default=True,
    help="runs per point even past --seconds",
)
@click.option(
    "--max-repeats",
    type=click.IntRange(1),
    default=DEFAULT_MAX_REPEATS,
    show_default=True,
    help="runs per point at most, even within --seconds",
)
@click.option(
    "--max-vcpus",
    type=click.IntRange(1),
    help="measure shares 1..N (default: every CPU this machine gives the process)",
)
@click.option(
    "--utilization",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.5,
    show_default=True,
    help="average share of time an always-on SageMaker real-time instance is busy",
)
@click.option(
    "--latency-target-ms",
    type=click.FloatRange(0, min_open=True),
    help="recommend the cheapest MemorySize whose estimated p99 is at most this",
)
@click.option(
    "--instances",
    metavar="TYPES",
    help="comma-separated SageMaker instance types from the price file "
    "(default: its default_instances, ml.c7i.large and ml.c7i.xlarge)",
)
@click.option(
    "--prices",
    type=_FILE,
    help="a JSON price file in the layout of the packaged prices.json; merged over it, "
    "key by key (or --replace-prices)",
)
@click.option(
    "--replace-prices",
    is_flag=True,
    help="use --prices alone instead of merging it over the packaged prices",
)
@click.option("--quiet", is_flag=True, help="no progress on stderr")
def bench(
    model: Path,
    out: Path,
    batch: int,
    seq_len: int,
    sample: Path | None,
    seconds: float,
    min_repeats: int,
    max_repeats: int,
    max_vcpus: int | None,
    utilization: float,
    latency_target_ms: float | None,
    instances: str | None,
    prices: Path | None,
    replace_prices: bool,
    quiet: bool,
) -> int:
    """Measure MODEL (.onnx) at 1, 2, ... pinned vCPUs and estimate what serving it costs: Lambda
    per MemorySize, SageMaker real-time and asynchronous, per million predictions; recommend a
    MemorySize and find the traffic where an always-on instance gets cheaper."""
    if replace_prices and prices is None:
        raise click.UsageError("--replace-prices needs --prices FILE")
    if min_repeats > max_repeats:
        raise click.UsageError("--min-repeats is larger than --max-repeats")
    price_list = load_prices(prices, replace=replace_prices)  # a bad file fails before timing
    names = tuple(n.strip() for n in instances.split(",") if n.strip()) if instances else None
    options = BenchOptions(
        batch=batch,
        seq_len=seq_len,
        seconds=seconds,
        min_repeats=min_repeats,
        max_repeats=max_repeats,
        max_vcpus=max_vcpus,
        sample=sample,
    )
    from onnxkit.session import available_cpus

    progress = _Progress(not quiet, (max_vcpus or available_cpus()) + 1, "step", prefix="bench")
    try:
        measurement = measure_model(
            model, options, on_share=lambda n: progress.step(f"measuring on {n} vCPU")
        )
        progress.step("estimating costs, writing the report and plots")
        estimate = estimate_costs(
            measurement.share_points(),
            price_list,
            utilization=utilization,
            latency_target_ms=latency_target_ms,
            instances=names,
            peak_rss_mb=measurement.peak_rss_mb,
        )
        from onnxkit_tools.bench.plots import write_plots
        from onnxkit_tools.bench.report import (
            build_report,
            render_markdown,
            summary,
            write_report,
        )

        out.mkdir(parents=True, exist_ok=True)
        plots = write_plots(out, estimate)
        report = build_report(model, measurement, estimate, price_list, plots)
        markdown = render_markdown(model, measurement, estimate, price_list, plots)
        write_report(out, report, markdown)
    finally:
        progress.close()
    for line in summary(out, measurement, estimate):
        click.echo(line)
    return 0
