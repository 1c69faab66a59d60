"""The budget and candidate selection: pure functions, judged on made-up measured results."""

from __future__ import annotations

import pytest

from onnxkit_tools.quantize.budget import Budget, explain_rejection, judge
from onnxkit_tools.quantize.errors import QuantizeError
from onnxkit_tools.quantize.report import CandidateResult
from tests.unit.tools.quantize.helpers import FP32_EMBEDDING, made_up


def chosen(candidates: list[CandidateResult], budget: Budget, task: str = "embedding") -> str:
    winner = judge(candidates, budget, task, FP32_EMBEDDING)
    return winner.name if winner else ""


def test_quality_first_takes_the_smallest_then_the_fastest() -> None:
    # GIVEN two passing candidates of nearly equal size and a larger, faster one
    candidates = [
        made_up("small-slow", size=0.25, b1=0.8),
        made_up("small-fast", size=0.26, b1=0.5),  # within 5% of the smallest: ties on size
        made_up("large-fastest", size=0.5, b1=0.3),
    ]
    # THEN size decides first, and speed among the equally small
    assert chosen(candidates, Budget()) == "small-fast"


def test_a_clearly_smaller_candidate_beats_a_faster_one_under_quality() -> None:
    candidates = [made_up("fast", size=0.30, b1=0.5), made_up("small", size=0.25, b1=0.9)]
    assert chosen(candidates, Budget()) == "small"


def test_quality_limit_comes_before_size() -> None:
    candidates = [made_up("tiny-bad", size=0.1, cosine=0.95), made_up("ok", size=0.3)]
    assert chosen(candidates, Budget()) == "ok"
    assert candidates[0].failures == ["min cosine 0.9500 < 0.99"]


def test_never_slower_than_fp32_within_the_documented_tolerance() -> None:
    slower = made_up("slower", b1=1.10)
    noise = made_up("noise", b1=1.04)
    judge([slower, noise], Budget(), "embedding", FP32_EMBEDDING)
    assert slower.failures == ["b1 latency 1.10x fp32 > 1.05x"]
    assert noise.passed


def test_equally_small_and_nearly_equally_fast_go_to_the_faster_batch() -> None:
    # Batch-1 ratios 0.02 apart are timing noise under quality: the batch ratio decides.
    candidates = [made_up("a", b1=0.50, batch=0.9), made_up("b", b1=0.52, batch=0.6)]
    assert chosen(candidates, Budget()) == "b"


def test_prefer_speed_takes_the_literally_fastest() -> None:
    candidates = [made_up("a", b1=0.50, batch=0.9), made_up("b", b1=0.52, batch=0.6)]
    assert chosen(candidates, Budget.for_preference("speed")) == "a"


def test_prefer_speed_trades_quality_down_to_its_floor() -> None:
    candidates = [
        made_up("faithful", b1=0.7, cosine=0.995),
        made_up("fast", b1=0.5, cosine=0.98),
        made_up("fastest-broken", b1=0.4, cosine=0.95),
    ]
    assert chosen(candidates, Budget.for_preference("quality")) == "faithful"
    assert chosen(candidates, Budget.for_preference("speed")) == "fast"
    assert chosen(candidates, Budget.for_preference("speed", min_cosine=0.99)) == "faithful"


def test_budget_defaults_and_overrides() -> None:
    assert Budget.for_preference("quality").min_cosine == 0.99
    assert Budget.for_preference("speed").min_cosine == 0.97
    assert Budget.for_preference("speed", max_accuracy_drop=None).max_accuracy_drop == 0.02
    assert Budget.for_preference("quality", max_size_ratio=0.3).max_size_ratio == 0.3
    with pytest.raises(QuantizeError, match="prefer"):
        Budget.for_preference("smallest")
    with pytest.raises(QuantizeError, match="unknown"):
        Budget.for_preference("quality", min_cosin=0.9)


def test_classifier_limits_use_accuracy_or_agreement() -> None:
    fp32 = {"quality": {"accuracy": 0.98, "agreement": 1.0}}
    dropped = made_up("dropped", accuracy=0.965, agreement=0.97)
    kept = made_up("kept", accuracy=0.975, agreement=0.99)
    judge([dropped, kept], Budget(), "classification", fp32)
    assert dropped.failures == ["accuracy drop 1.50 points > 1 point"]
    assert kept.passed
    # Without labels, the share of changed predictions is held to the same limit.
    unlabelled = made_up("unlabelled", agreement=0.97)
    judge([unlabelled], Budget(), "classification", {"quality": {"agreement": 1.0}})
    assert unlabelled.failures == ["top-1 disagreement 3.00% > 1%"]


def test_none_passing_names_the_failed_limits_and_what_to_try() -> None:
    candidates = [
        made_up("dynamic-qint8-channel", cosine=0.983),
        made_up("weight-only-int8", b1=1.2, cosine=0.998),
        made_up("huge", size=1.3),
        CandidateResult("broken", {"candidate": "broken"}, error="RuntimeError: no kernel"),
    ]
    assert judge(candidates, Budget(), "embedding", FP32_EMBEDDING) is None
    message = explain_rejection(candidates, Budget(), "embedding")
    assert "dynamic-qint8-channel: min cosine 0.9830 < 0.99" in message
    assert "weight-only-int8: b1 latency 1.20x fp32 > 1.05x" in message
    assert "huge: size 1.30x fp32 > 1x" in message
    assert "--prefer speed (quality floor min cosine 0.97" in message
    assert "which would choose dynamic-qint8-channel" in message
    assert "--min-cosine" in message
    assert "--max-latency-ratio" in message
    assert candidates[3].failures == ["build failed: RuntimeError: no kernel"]
    # Asking what --prefer speed would pick leaves the real verdicts alone.
    assert candidates[0].failures == ["min cosine 0.9830 < 0.99"]


def test_the_per_channel_hint_appears_when_no_candidate_was_per_channel() -> None:
    candidate = made_up("dynamic-qint8-tensor", cosine=0.86)
    candidate.quantization["per_channel"] = False
    judge([candidate], Budget(), "embedding", FP32_EMBEDDING)
    assert "per-channel" in explain_rejection([candidate], Budget(), "embedding")
