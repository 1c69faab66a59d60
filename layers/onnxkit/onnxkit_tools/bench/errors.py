"""The benchmark's error: a model, sample or price file ``onnxkit bench`` cannot use."""

from __future__ import annotations

from http import HTTPStatus

from onnxkit.errors import OnnxkitError


class BenchError(OnnxkitError):
    """The model cannot be measured as asked, or a price file is not one the cost model reads."""

    status = HTTPStatus.BAD_REQUEST
    code = "bench_error"
