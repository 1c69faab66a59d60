"""Tensor datatypes: Open Inference Protocol v2 names, numpy dtypes, ONNX element types.

``BYTES`` (ONNX ``STRING``) is held in memory as a numpy array of dtype ``object`` whose
elements are :class:`bytes`, everywhere: codecs decode to it and encode from it, and the
onnxruntime backend converts to and from the ``str`` elements onnxruntime wants.

numpy is imported on first use of a dtype, not with this module: the manifest (and so the
model store) needs only the names, and the function's cold start reads the store before
numpy is imported (:mod:`onnxkit.coldstart`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Datatype:
    """One tensor element type as each layer names it.

    Attributes:
        name: The v2 protocol name (``FP32``).
        numpy_name: The numpy dtype's name (``float32``).
        onnx: The ``onnx.TensorProto`` element type number.
        ort: onnxruntime's type string (``tensor(float)``).
    """

    name: str
    numpy_name: str
    onnx: int
    ort: str

    @cached_property
    def numpy(self) -> np.dtype:
        """The numpy dtype."""
        import numpy as np

        return np.dtype(self.numpy_name)

    @property
    def is_float(self) -> bool:
        """FP16/FP32/FP64."""
        return self.numpy.kind == "f"

    @property
    def is_integer(self) -> bool:
        """Signed or unsigned integers (not BOOL)."""
        return self.numpy.kind in "iu"

    @property
    def is_bytes(self) -> bool:
        """BYTES: variable-length byte strings, an object array of ``bytes``."""
        return self.numpy_name == "object"


_TABLE = (
    Datatype("BOOL", "bool", 9, "tensor(bool)"),
    Datatype("UINT8", "uint8", 2, "tensor(uint8)"),
    Datatype("UINT16", "uint16", 4, "tensor(uint16)"),
    Datatype("UINT32", "uint32", 12, "tensor(uint32)"),
    Datatype("UINT64", "uint64", 13, "tensor(uint64)"),
    Datatype("INT8", "int8", 3, "tensor(int8)"),
    Datatype("INT16", "int16", 5, "tensor(int16)"),
    Datatype("INT32", "int32", 6, "tensor(int32)"),
    Datatype("INT64", "int64", 7, "tensor(int64)"),
    Datatype("FP16", "float16", 10, "tensor(float16)"),
    Datatype("FP32", "float32", 1, "tensor(float)"),
    Datatype("FP64", "float64", 11, "tensor(double)"),
    Datatype("BYTES", "object", 8, "tensor(string)"),
)

BY_NAME = {d.name: d for d in _TABLE}
BY_ONNX = {d.onnx: d for d in _TABLE}
BY_ORT = {d.ort: d for d in _TABLE}

SUPPORTED_NAMES = tuple(BY_NAME)


def __getattr__(name: str) -> Any:
    # BY_NUMPY is keyed by numpy dtypes: built (and numpy imported) on first use.
    if name == "BY_NUMPY":
        by_numpy = {d.numpy: d for d in _TABLE}
        globals()["BY_NUMPY"] = by_numpy
        return by_numpy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
