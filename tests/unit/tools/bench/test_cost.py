"""The cost model, recomputed by hand from prices.json (read here with json, not through the
code under test): one grid point, the sub-1-vCPU scaling, extrapolation, SageMaker, the
break-even, --prices and the recommended MemorySize."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from onnxkit_tools.bench.cost import (
    LambdaPoint,
    SharePoint,
    break_even,
    estimate_costs,
    lambda_point,
    load_prices,
    realtime_point,
    recommend_memory,
)
from onnxkit_tools.bench.errors import BenchError
from tests.conftest import REPO

PRICES_FILE = REPO / "layers" / "onnxkit" / "onnxkit_tools" / "bench" / "prices.json"
RAW = json.loads(PRICES_FILE.read_text())
# Two measured shares: 1 vCPU and 2 vCPUs (this machine's cores), batch 1.
POINTS = [
    SharePoint(vcpus=1, p50_ms=20.0, p99_ms=30.0, mean_ms=21.3, throughput_per_s=47.0),
    SharePoint(vcpus=2, p50_ms=12.0, p99_ms=18.0, mean_ms=12.4, throughput_per_s=80.0),
]


def test_one_grid_point_recomputed_by_hand_from_the_price_file() -> None:
    # GIVEN 3,538 MB: exactly 2 vCPUs, measured, mean 12.4 ms -> 13 ms billed
    memory = 3538
    gb_seconds = memory / 1024 * 13 / 1000
    by_hand = (
        RAW["lambda"]["request_per_million"]
        + 1e6 * gb_seconds * (RAW["lambda"]["gb_second"]["x86_64"])
    )
    arm = (
        RAW["lambda"]["request_per_million"]
        + 1e6 * gb_seconds * (RAW["lambda"]["gb_second"]["arm64"])
    )

    # WHEN the cost model estimates it
    point = lambda_point(POINTS, memory, load_prices())

    # THEN it agrees, API Gateway on top of it too
    assert point.billed_ms == 13
    assert point.cost_per_million["x86_64"] == pytest.approx(by_hand, rel=1e-12)
    assert point.cost_per_million["arm64"] == pytest.approx(arm, rel=1e-12)
    assert point.cost_per_million["x86_64+http"] == pytest.approx(
        by_hand + RAW["api_gateway"]["http_per_million"], rel=1e-12
    )
    assert point.cost_per_million["x86_64+rest"] == pytest.approx(
        by_hand + RAW["api_gateway"]["rest_per_million"], rel=1e-12
    )
    assert (point.p50_ms, point.p99_ms, point.extrapolated) == (12.0, 18.0, False)


def test_between_whole_vcpus_the_measured_shares_are_interpolated() -> None:
    point = lambda_point(POINTS, 2048, load_prices())

    share = 2048 / RAW["lambda"]["mb_per_vcpu"] - 1
    mean = 21.3 + share * (12.4 - 21.3)
    assert point.mean_ms == pytest.approx(mean)
    assert point.billed_ms == math.ceil(mean)
    assert not point.extrapolated


def test_below_one_vcpu_time_stretches_by_the_cpu_share() -> None:
    # 512 MB is 512/1769 of a core: CFS lets it run that fraction of each period
    point = lambda_point(POINTS, 512, load_prices())

    share = 512 / RAW["lambda"]["mb_per_vcpu"]
    assert point.below_one_vcpu
    assert point.p50_ms == pytest.approx(20.0 / share)
    assert point.p99_ms == pytest.approx(30.0 / share)
    assert point.billed_ms == math.ceil(21.3 / share)


@pytest.mark.parametrize(("memory", "held"), [(3538, False), (4096, True), (10240, True)])
def test_past_the_measured_cores_the_time_is_held_and_flagged(memory: int, held: bool) -> None:
    point = lambda_point(POINTS, memory, load_prices())

    assert point.extrapolated is held
    if held:  # never a speedup the machine did not show
        assert (point.p50_ms, point.p99_ms, point.mean_ms) == (12.0, 18.0, 12.4)
        assert point.vcpus == min(memory / 1769, 6)


def test_sagemaker_realtime_and_async_by_hand() -> None:
    prices = load_prices()
    large = RAW["sagemaker"]["instances"]["ml.c7i.large"]  # 2 vCPUs: the 2-vCPU point
    xlarge = RAW["sagemaker"]["instances"]["ml.c7i.xlarge"]  # 4 vCPUs: held at 2

    estimate = estimate_costs(POINTS, prices, utilization=0.25)

    realtime = {p.instance: p for p in estimate.realtime}
    per_prediction = large["hourly"] / 3600 / (80.0 * 0.25)
    assert realtime["ml.c7i.large"].cost_per_million == pytest.approx(per_prediction * 1e6)
    assert realtime["ml.c7i.large"].monthly_fixed == pytest.approx(large["hourly"] * 730)
    assert realtime["ml.c7i.xlarge"].capped
    assert realtime["ml.c7i.xlarge"].throughput_per_s == 80.0
    assert realtime["ml.c7i.xlarge"].cost_per_million == pytest.approx(
        xlarge["hourly"] / 3600 / (80.0 * 0.25) * 1e6
    )
    s3 = 1e6 * (2 * RAW["s3"]["put_per_thousand"] + 2 * RAW["s3"]["get_per_thousand"]) / 1000
    (async_large,) = [p for p in estimate.asynchronous if p.instance == "ml.c7i.large"]
    assert async_large.cost_per_million == pytest.approx(large["hourly"] / 3600 / 80.0 * 1e6 + s3)
    assert async_large.monthly_fixed == 0


def test_break_even_worked_by_hand() -> None:
    # GIVEN Lambda at $2.00 per million and one ml.c7i.large, 100 predictions/s, half busy
    hourly = RAW["sagemaker"]["instances"]["ml.c7i.large"]["hourly"]
    points = [SharePoint(1, 10, 10, 10, 50.0), SharePoint(2, 5, 5, 5, 100.0)]
    instance = load_prices().instances["ml.c7i.large"]
    realtime = realtime_point(points, instance, 0.5)

    even = break_even(2.0, realtime, "x86_64")

    # THEN Lambda's 2e-6 $ a prediction reaches the instance's 730 hours at hourly*730/2e-6
    assert even.predictions_per_month == pytest.approx(hourly * 730 / 2e-6)
    assert even.capacity_per_month == pytest.approx(100.0 * 0.5 * 730 * 3600)


def test_no_break_even_when_one_instance_cannot_reach_it() -> None:
    # an instance doing 1 prediction/s at 50% serves 1.3 million a month: at $2/M that is
    # $2.63 of Lambda, far below the instance's month, so Lambda never loses
    points = [SharePoint(1, 1000, 1000, 1000, 1.0)]
    instance = load_prices().instances["ml.c7i.large"]
    realtime = realtime_point(points, instance, 0.5)

    even = break_even(2.0, realtime, "x86_64")

    assert even.predictions_per_month is None
    assert "Lambda stays cheaper" in even.note


def test_recommended_memory_is_the_cheapest_without_a_target() -> None:
    prices = load_prices()
    grid = [lambda_point(POINTS, m, prices) for m in (512, 1024, 1769, 3538, 4096)]

    chosen = recommend_memory(grid)

    # below one vCPU GB-seconds do not change (twice the memory, half the time): 512 and
    # 1,024 MB cost the same to the cent, and the faster of the two wins the tie
    costs = {p.memory_mb: p.cost_per_million["x86_64"] for p in grid}
    assert costs[512] == pytest.approx(costs[1024], rel=1e-9)
    assert min(costs.values()) == pytest.approx(costs[1024], rel=1e-9)
    assert chosen.memory_mb == 1024
    assert chosen.target_met is None


def test_recommended_memory_meets_a_latency_target_or_says_none_does() -> None:
    prices = load_prices()
    grid = [lambda_point(POINTS, m, prices) for m in (512, 1024, 1769, 3538, 4096)]

    met = recommend_memory(grid, latency_target_ms=25.0)
    missed = recommend_memory(grid, latency_target_ms=5.0)

    # p99 at 1,769 MB is 30 ms, at 3,538 MB 18 ms: the cheapest under 25 ms is 3,538 MB
    # (4,096 MB has the same held time at more GB-s)
    assert (met.memory_mb, met.target_met) == (3538, True)
    assert missed.target_met is False
    assert "no MemorySize meets" in missed.reason
    assert missed.memory_mb == 3538  # the fastest; the cheaper of the two equally fast


def _point(memory_mb: int, billed_ms: int, p99_ms: float) -> LambdaPoint:
    gb_seconds = memory_mb / 1024 * billed_ms / 1000
    cost = 0.2 + gb_seconds * 0.0000166667 * 1e6  # request fee + duration, per million
    return LambdaPoint(
        memory_mb, memory_mb / 1769, p99_ms, p99_ms, p99_ms, billed_ms,
        memory_mb < 1769, False, True, {"x86_64": cost},
    )  # fmt: skip


def test_sizes_within_two_percent_of_gb_seconds_tie_and_the_faster_wins() -> None:
    # 768 MB x 69 ms = 52,992 MB-ms; 1,536 MB x 35 ms = 53,760 (+1.4%: a tie, and 2.3x faster);
    # 3,008 MB x 20 ms = 60,160 (+13.5%: dearer)
    grid = [_point(768, 69, 80.0), _point(1536, 35, 35.0), _point(3008, 20, 20.0)]

    assert recommend_memory(grid).memory_mb == 1536
    assert recommend_memory(grid, latency_target_ms=100.0).memory_mb == 1536


def test_the_request_fee_does_not_hide_a_dearer_duration() -> None:
    # a 1 ms model: 768 MB costs 50% more GB-seconds than 512 MB, though the request fee makes
    # the totals only 2% apart
    grid = [_point(512, 1, 0.09), _point(768, 1, 0.06)]

    assert grid[1].x86 / grid[0].x86 == pytest.approx(1.02, abs=0.001)
    assert recommend_memory(grid).memory_mb == 512


def test_memory_below_the_measured_footprint_is_never_recommended() -> None:
    estimate = estimate_costs(POINTS, load_prices(), peak_rss_mb=900)

    assert not next(p for p in estimate.grid if p.memory_mb == 768).fits
    assert estimate.recommendation.memory_mb >= 900


def test_a_prices_file_is_merged_key_by_key(tmp_path: Path) -> None:
    override = tmp_path / "prices.json"
    override.write_text(json.dumps({"lambda": {"gb_second": {"x86_64": 0.00002}}, "date": "x"}))

    prices = load_prices(override)

    assert prices.lambda_gb_second["x86_64"] == 0.00002
    assert prices.lambda_gb_second["arm64"] == RAW["lambda"]["gb_second"]["arm64"]
    assert prices.date == "x"
    point = lambda_point(POINTS, 3538, prices)
    assert point.cost_per_million["x86_64"] == pytest.approx(
        RAW["lambda"]["request_per_million"] + 1e6 * 3538 / 1024 * 0.013 * 0.00002
    )


def test_a_replacing_prices_file_must_hold_every_price(tmp_path: Path) -> None:
    partial = tmp_path / "prices.json"
    partial.write_text(json.dumps({"lambda": {"gb_second": {"x86_64": 0.00002}}}))
    full = tmp_path / "full.json"
    full.write_text(json.dumps({**RAW, "region": "eu-west-1"}))

    with pytest.raises(BenchError, match="missing"):
        load_prices(partial, replace=True)
    assert load_prices(full, replace=True).region == "eu-west-1"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not JSON"),
        ("[1, 2]", "must hold a JSON object"),
        (json.dumps({"lambda": {"gb_second": {"arm64": "cheap"}}}), "must be a number"),
        (json.dumps({"api_gateway": {"rest_per_million": -1}}), "must be above 0"),
        (json.dumps({"sagemaker": {"default_instances": ["ml.nope"]}}), "unknown instances"),
    ],
)
def test_a_bad_prices_file_is_refused_clearly(tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)

    with pytest.raises(BenchError, match=message) as caught:
        load_prices(bad)
    assert str(bad) in caught.value.message


def test_the_packaged_prices_are_dated_and_sourced() -> None:
    prices = load_prices()

    assert prices.date == RAW["date"]
    assert prices.region == "us-east-1"
    assert all(url.startswith("https://aws.amazon.com/") for url in prices.source.values())


def test_the_price_file_ships_as_package_data() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()

    assert '"bench/prices.json"' in pyproject
