"""Tensor datatypes: Open Inference Protocol v2 names, numpy dtypes, ONNX element types."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Datatype:
    """One tensor element type as each layer names it.

    Attributes:
        name: The v2 protocol name (``FP32``).
        numpy: The numpy dtype.
        onnx: The ``onnx.TensorProto`` element type number.
        ort: onnxruntime's type string (``tensor(float)``).
    """

    name: str
    numpy: np.dtype
    onnx: int
    ort: str

    @property
    def is_float(self) -> bool:
        """FP16/FP32/FP64."""
        return self.numpy.kind == "f"

    @property
    def is_integer(self) -> bool:
        """Signed or unsigned integers (not BOOL)."""
        return self.numpy.kind in "iu"


_TABLE = (
    Datatype("BOOL", np.dtype(np.bool_), 9, "tensor(bool)"),
    Datatype("UINT8", np.dtype(np.uint8), 2, "tensor(uint8)"),
    Datatype("UINT16", np.dtype(np.uint16), 4, "tensor(uint16)"),
    Datatype("UINT32", np.dtype(np.uint32), 12, "tensor(uint32)"),
    Datatype("UINT64", np.dtype(np.uint64), 13, "tensor(uint64)"),
    Datatype("INT8", np.dtype(np.int8), 3, "tensor(int8)"),
    Datatype("INT16", np.dtype(np.int16), 5, "tensor(int16)"),
    Datatype("INT32", np.dtype(np.int32), 6, "tensor(int32)"),
    Datatype("INT64", np.dtype(np.int64), 7, "tensor(int64)"),
    Datatype("FP16", np.dtype(np.float16), 10, "tensor(float16)"),
    Datatype("FP32", np.dtype(np.float32), 1, "tensor(float)"),
    Datatype("FP64", np.dtype(np.float64), 11, "tensor(double)"),
)

BY_NAME = {d.name: d for d in _TABLE}
BY_NUMPY = {d.numpy: d for d in _TABLE}
BY_ONNX = {d.onnx: d for d in _TABLE}
BY_ORT = {d.ort: d for d in _TABLE}

SUPPORTED_NAMES = tuple(BY_NAME)
