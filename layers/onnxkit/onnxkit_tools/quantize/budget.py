"""The budget a candidate must meet, and choosing among measured candidates (pure functions)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from onnxkit_tools.quantize.errors import QuantizeError

if TYPE_CHECKING:  # report.py imports this module at run time
    from onnxkit_tools.quantize.report import CandidateResult

PREFERENCES = ("quality", "speed")

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


# --- selection (pure functions of the measured results) ---------------------------------------


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
