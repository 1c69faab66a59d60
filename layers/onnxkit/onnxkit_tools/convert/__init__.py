"""``onnxkit convert``: a framework model to ONNX, with parity against the framework."""

from __future__ import annotations

from onnxkit_tools.convert.convert import (
    DEFAULT_OPSET,
    FRAMEWORKS,
    ConversionReport,
    convert_model,
    report_path,
)
from onnxkit_tools.convert.errors import ConvertError, ParityError
from onnxkit_tools.convert.parity import ParityReport, Tolerance

__all__ = [
    "DEFAULT_OPSET",
    "FRAMEWORKS",
    "ConversionReport",
    "ConvertError",
    "ParityError",
    "ParityReport",
    "Tolerance",
    "convert_model",
    "report_path",
]
