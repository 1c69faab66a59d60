"""What a gate run measured and chose: per-candidate results, the report and its JSON, the table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from onnxkit_tools.quantize.budget import Budget, explain_rejection, judge
from onnxkit_tools.quantize.candidates import OPTIMIZED_PREFIX, SMOOTHED_PREFIX
from onnxkit_tools.quantize.errors import QuantizeError

REPORT_SCHEMA = "onnxkit.quantize/1"


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
    compressed_bytes: int | None = None  # zlib level 6, when the run measured it (pruning)
    compressed_ratio: float | None = None
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
        data: Row counts, what the data held, and (``validation_source``,
            ``calibration_source``) what was read and how it was processed, with the declared
            processing applied (``processing``: the manifest's JSON form) when any was.
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
    width = max([24, *(len(c.name) for c in report.candidates)])
    # The compressed size, when the run measured it (pruning candidates were asked for).
    zipped = any(c.compressed_ratio is not None for c in report.candidates)
    head = (
        f"{'candidate':<{width}} {'size MB':>8} {'size×':>6} "
        + (f"{'zip×':>5} " if zipped else "")
        + f"{'b1 ms':>8} {'b1×':>5} "
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
        *(
            report.data[key]
            for key in ("validation_source", "calibration_source")
            if report.data.get(key)
        ),
        f"budget: {report.budget.describe(report.task)}",
        head,
        f"{'fp32':<{width}} {fp32['size_bytes'] / 1e6:8.2f} {1:6.2f} "
        + (f"{_fmt(fp32.get('compressed_ratio'), '5.2f')} " if zipped else "")
        + f"{_fmt(fp32['latency_b1_ms'], '8.3f')} {1:5.2f} "
        f"{_fmt(fp32['latency_batch_ms'], '9.3f')} {1:5.2f} {quality_cells(fp32['quality'])}  "
        "reference",
    ]
    optimization = report.settings.get("optimization")
    if optimization:
        lines.insert(-2, f"optimized graph (opt-*): {optimization.get('detail', 'none')}")
        if optimization.get("smoothed_original"):
            lines.insert(-2, f"smoothed graph (smooth-*): {optimization['smoothed_original']}")
    for c in _side_by_side(report.candidates):
        if c.error is not None:
            result = "error: " + c.error[:80]
        elif c.passed:
            result = "PASS" + (" <- chosen" if c.name == report.chosen else "")
        else:
            result = "fail: " + "; ".join(c.failures)
        size_mb = None if c.size_bytes is None else c.size_bytes / 1e6
        lines.append(
            f"{c.name:<{width}} {_fmt(size_mb, '8.2f')} {_fmt(c.size_ratio, '6.2f')} "
            + (f"{_fmt(c.compressed_ratio, '5.2f')} " if zipped else "")
            + f"{_fmt(c.latency_b1_ms, '8.3f')} {_fmt(c.latency_b1_ratio, '5.2f')} "
            f"{_fmt(c.latency_batch_ms, '9.3f')} {_fmt(c.latency_batch_ratio, '5.2f')} "
            f"{quality_cells(c.quality)}  {result}"
        )
    return "\n".join(lines)


def _side_by_side(candidates: list[CandidateResult]) -> list[CandidateResult]:
    """Each ``opt-`` and ``smooth-`` candidate right after its namesake on the original graph
    (``opt-fp32`` first); those without a namesake (``opt-mixed-<n>``) last, in build order."""
    prefixes = (OPTIMIZED_PREFIX, SMOOTHED_PREFIX)
    variants = {c.name: c for c in candidates if c.name.startswith(prefixes)}
    first = f"{OPTIMIZED_PREFIX}fp32"
    ordered = [variants.pop(first)] if first in variants else []
    for candidate in candidates:
        if candidate.name.startswith(prefixes):
            continue
        ordered.append(candidate)
        for prefix in prefixes:
            twin = variants.pop(prefix + candidate.name, None)
            if twin is not None:
                ordered.append(twin)
    return ordered + [c for c in candidates if c.name in variants]
