"""The conversion errors: a source ``onnxkit convert`` cannot read or convert, and a converted
model that does not answer like its source."""

from __future__ import annotations

from http import HTTPStatus

from onnxkit.errors import OnnxkitError


class ConvertError(OnnxkitError):
    """The source cannot be loaded or converted as asked (nothing was written)."""

    status = HTTPStatus.BAD_REQUEST
    code = "convert_error"


class ParityError(ConvertError):
    """The converted model's outputs differ from the source framework's beyond the tolerance
    (the report was written, the model was not)."""

    code = "parity_error"
