"""Quantization with onnxruntime, measured against the fp32 original on held-out data."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxkit.session import load_session


@dataclass(frozen=True)
class Evaluation:
    """How a model did on labelled validation data."""

    accuracy: float
    agreement: float  # top-1 agreement with the reference model
    latency_b1_ms: float
    latency_batch_ms: float
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def quantize_dynamic_int8(source: Path, target: Path, *, per_channel: bool = False) -> None:
    """Dynamic int8 quantization (QInt8 weights): shape-infer first, then quantize.

    onnxruntime's pre-processing (symbolic shape inference + optimisation) is tried first and
    skipped, with a log line, if the graph defeats it.
    """
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    logging.getLogger("root").setLevel(logging.ERROR)  # onnxruntime's quantizer logs on root
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                quant_pre_process(str(source), str(prepared))
        except Exception as exc:  # symbolic shape inference fails on some exports
            logging.getLogger(__name__).warning("pre-processing skipped: %s", exc)
            prepared = source
        target.parent.mkdir(parents=True, exist_ok=True)
        quantize_dynamic(
            str(prepared),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
        )


def _median_ms(session: Any, feed: dict[str, np.ndarray], repeats: int) -> float:
    session.run(None, feed)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feed)
        samples.append((time.perf_counter() - started) * 1000)
    return float(np.median(samples))


def evaluate_classifier(
    model: Path,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    input_name: str,
    label_output: str,
    reference: np.ndarray | None = None,
    repeats: int = 50,
    batch: int = 64,
) -> tuple[Evaluation, np.ndarray]:
    """Accuracy, agreement with ``reference`` predictions, latency at batch 1 and ``batch``.

    Idle thread pools do not spin, so timing one session after another is fair.

    Returns:
        The evaluation and this model's predictions (to use as the next reference).
    """
    session = load_session(model, allow_spinning=False)
    predicted = session.run([label_output], {input_name: features})[0]
    accuracy = float(np.mean(predicted == labels))
    agreement = 1.0 if reference is None else float(np.mean(predicted == reference))
    evaluation = Evaluation(
        accuracy=accuracy,
        agreement=agreement,
        latency_b1_ms=_median_ms(session, {input_name: features[:1]}, repeats),
        latency_batch_ms=_median_ms(session, {input_name: features[:batch]}, repeats),
        size_bytes=model.stat().st_size,
    )
    return evaluation, predicted
