"""The quantization gate's error: raised by the budget, the data checks, the report and the gate."""

from __future__ import annotations

from http import HTTPStatus

from onnxkit.errors import OnnxkitError


class QuantizeError(OnnxkitError):
    """The model or the data cannot be quantized as asked (a wrong name, shape or option)."""

    status = HTTPStatus.BAD_REQUEST
    code = "quantize_error"
