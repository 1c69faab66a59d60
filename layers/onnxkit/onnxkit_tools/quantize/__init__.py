"""Quantization behind a quality gate: every candidate is measured against the fp32 original."""

from onnxkit_tools.quantize.budget import Budget, explain_rejection, judge
from onnxkit_tools.quantize.candidates import has_external_data, mixed_keep_sets, model_size_bytes
from onnxkit_tools.quantize.data import detect_task
from onnxkit_tools.quantize.datasets import DataReader, Dataset, data_kind
from onnxkit_tools.quantize.errors import QuantizeError
from onnxkit_tools.quantize.gate import GateOptions, quantize_with_gate
from onnxkit_tools.quantize.report import REPORT_SCHEMA, CandidateResult, Report, format_table

__all__ = [
    "REPORT_SCHEMA",
    "Budget",
    "CandidateResult",
    "DataReader",
    "Dataset",
    "GateOptions",
    "QuantizeError",
    "Report",
    "data_kind",
    "detect_task",
    "explain_rejection",
    "format_table",
    "has_external_data",
    "judge",
    "mixed_keep_sets",
    "model_size_bytes",
    "quantize_with_gate",
]
