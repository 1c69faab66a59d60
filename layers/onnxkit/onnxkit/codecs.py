"""Request and response encodings: the Open Inference Protocol v2 REST JSON form.

The v2 protocol (KServe, Triton, MLServer) sends tensors as ``{"name", "shape", "datatype",
"data"}`` with ``data`` flat in row-major order or nested. Decoding checks every input
against the model's signature and says exactly what is wrong, in our words.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from typing import Any

import mimeparse
import numpy as np
import orjson

from onnxkit.datatypes import BY_NAME, BY_NUMPY, SUPPORTED_NAMES, Datatype
from onnxkit.errors import InvalidInputError, PayloadTooLargeError, UnsupportedMediaTypeError
from onnxkit.manifest import TensorSpec

JSON_CONTENT_TYPES = ("application/json", "application/x-json", "text/json")


@dataclass
class InferenceRequest:
    """A decoded, validated request: numpy arrays keyed by input name."""

    inputs: dict[str, np.ndarray]
    outputs: list[str] | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferenceResponse:
    """What a backend produced, ready to encode."""

    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def check_content_type(content_type: str | None) -> None:
    """Accept JSON media types; no Content-Type, or curl's default form type, is read as JSON.

    Raises:
        UnsupportedMediaTypeError: Any other media type.
    """
    if not content_type or not content_type.strip():
        return
    media = _media_type(content_type)
    if media in JSON_CONTENT_TYPES or media == "application/x-www-form-urlencoded":
        # curl -d without -H sends form-urlencoded; its body is still our JSON.
        return
    raise UnsupportedMediaTypeError(
        f"Content-Type {media!r} is not supported; send application/json "
        "(the Open Inference Protocol v2 JSON form)"
    )


@functools.lru_cache(maxsize=256)  # clients repeat their headers: parse each value once
def _media_type(content_type: str) -> str:
    """``type/subtype`` of a Content-Type value, lower-case (the value itself if unparsable)."""
    try:
        kind, subtype, _ = mimeparse.parse_mime_type(content_type)
        return f"{kind}/{subtype}".strip().lower()
    except (mimeparse.MimeTypeParseException, ValueError):
        return content_type.strip()


def _reject_constant(token: str) -> Any:
    raise InvalidInputError(f"{token} is not valid JSON; send finite numbers only")


def _explain_invalid(body: bytes | str) -> Any:
    """Why a body orjson refused is not valid JSON, in the standard library's words.

    Raises:
        InvalidInputError: Always, naming a NaN/Infinity token, deep nesting or the position.
    """
    try:
        json.loads(body, parse_constant=_reject_constant)
    except InvalidInputError:
        raise
    except RecursionError as exc:
        raise InvalidInputError("the body is nested too deeply to be a v2 request") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"the body is not valid JSON: {exc}") from exc
    raise InvalidInputError("the body is not valid JSON (it is nested too deeply to be read)")


def parse_json(body: bytes | str | None, *, max_bytes: int) -> dict[str, Any]:
    """Parse a JSON object body with a size limit and without NaN/Infinity.

    Raises:
        InvalidInputError: Empty, malformed, or not an object.
        PayloadTooLargeError: Larger than ``max_bytes``.
    """
    if body is None or (isinstance(body, bytes | str) and not body.strip()):
        raise InvalidInputError("the request body is empty; send a v2 inference request (JSON)")
    size = len(body.encode() if isinstance(body, str) else body)
    if size > max_bytes:
        raise PayloadTooLargeError(
            f"the body is {size} bytes; the limit is {max_bytes} "
            "(for larger payloads split the batch)"
        )
    try:
        data = orjson.loads(body)  # strict JSON: no NaN or Infinity tokens
    except orjson.JSONDecodeError:
        data = _explain_invalid(body)  # the error path only: json says exactly what is wrong
    if not isinstance(data, dict):
        raise InvalidInputError("the body must be a JSON object with an 'inputs' list")
    return data


def decode_request(
    data: dict[str, Any], signature: tuple[TensorSpec, ...], *, max_batch_size: int
) -> InferenceRequest:
    """Turn a parsed v2 request into validated numpy arrays.

    Args:
        data: The parsed JSON object.
        signature: The model's inputs.
        max_batch_size: The largest first dimension accepted.

    Returns:
        The request with one array per model input, in the model's dtypes and shapes.

    Raises:
        InvalidInputError: Anything that does not match the v2 form or the signature.
        PayloadTooLargeError: A batch larger than ``max_batch_size``.
    """
    raw_inputs = data.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInputError(
            "'inputs' must be a non-empty list; this model takes "
            + ", ".join(_describe(s) for s in signature)
        )
    expected = {spec.name: spec for spec in signature}
    arrays: dict[str, np.ndarray] = {}
    for position, raw in enumerate(raw_inputs):
        if not isinstance(raw, dict):
            raise InvalidInputError(f"inputs[{position}] must be an object")
        name = raw.get("name")
        if not isinstance(name, str):
            raise InvalidInputError(f"inputs[{position}] has no 'name'")
        spec = expected.get(name)
        if spec is None:
            raise InvalidInputError(
                f"unknown input {name!r}; this model takes " + ", ".join(map(_describe, signature))
            )
        if name in arrays:
            raise InvalidInputError(f"input {name!r} is given twice")
        arrays[name] = decode_tensor(raw, spec, max_batch_size=max_batch_size)
    missing = [spec.name for spec in signature if spec.name not in arrays]
    if missing:
        raise InvalidInputError(
            f"missing input(s) {', '.join(map(repr, missing))}; this model takes "
            + ", ".join(map(_describe, signature))
        )

    outputs = None
    raw_outputs = data.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw_outputs
        ):
            raise InvalidInputError("'outputs' must be a list of objects with a 'name'")
        outputs = [o["name"] for o in raw_outputs] or None  # [] asks for nothing special: all

    request_id = data.get("id")
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInputError("'parameters' must be an object")
    return InferenceRequest(
        inputs=arrays,
        outputs=outputs,
        id=None if request_id is None else str(request_id),
        parameters=parameters,
    )


def decode_tensor(raw: dict[str, Any], spec: TensorSpec, *, max_batch_size: int) -> np.ndarray:
    """Decode one v2 input tensor and check it against its spec.

    Raises:
        InvalidInputError: Wrong datatype, shape, values, or a malformed tensor.
        PayloadTooLargeError: A batch over the limit.
    """
    name = spec.name
    datatype = raw.get("datatype")
    if datatype not in BY_NAME:
        supported = ", ".join(SUPPORTED_NAMES)
        raise InvalidInputError(
            f"input {name!r}: datatype {datatype!r} is not supported (supported: {supported})"
        )
    if datatype != spec.datatype:
        raise InvalidInputError(
            f"input {name!r}: datatype {datatype} does not match the model's {spec.datatype}; "
            f"send datatype {spec.datatype!r}"
        )
    dtype = BY_NAME[datatype]
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInputError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    _check_shape(name, tuple(shape), spec.shape)
    if shape and shape[0] > max_batch_size and spec.shape and spec.shape[0] == -1:
        raise PayloadTooLargeError(
            f"input {name!r}: batch of {shape[0]} is over the limit of {max_batch_size}; "
            "split it into smaller requests"
        )
    if "data" not in raw:
        raise InvalidInputError(f"input {name!r} has no 'data'")
    values = _to_array(name, raw["data"], dtype)
    expected_count = math.prod(shape)
    if values.size != expected_count:
        raise InvalidInputError(
            f"input {name!r}: shape {shape} needs {expected_count} values, got {values.size}"
        )
    if values.ndim > 1 and list(values.shape) != shape:
        raise InvalidInputError(
            f"input {name!r}: nested data has shape {list(values.shape)} but 'shape' says {shape}"
        )
    return values.reshape(shape)


def _check_shape(name: str, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if len(shape) != len(expected) or any(
        want != -1 and got != want for got, want in zip(shape, expected, strict=True)
    ):
        readable = [("N" if d == -1 else d) for d in expected]
        raise InvalidInputError(
            f"input {name!r}: shape {list(shape)} does not match the model's {readable}"
        )


def _flatten(name: str, data: list[Any]) -> tuple[list[int], list[Any]]:
    """Shape and row-major leaves of nested lists, refusing ragged nesting."""
    shape: list[int] = []
    level: list[Any] = [data]
    while level and isinstance(level[0], list):
        width = len(level[0])
        # map() keeps these per-item checks in C: a request may hold thousands of values
        if set(map(type, level)) != {list} or set(map(len, level)) != {width}:
            raise InvalidInputError(f"input {name!r}: 'data' must be a rectangular list of numbers")
        shape.append(width)
        level = [leaf for item in level for leaf in item]
    if list in set(map(type, level)):
        raise InvalidInputError(f"input {name!r}: 'data' must be a rectangular list of numbers")
    return shape, level


def _to_array(name: str, data: Any, dtype: Datatype) -> np.ndarray:
    """Check each value's JSON type for the datatype, then build the array in that dtype.

    Types are checked per value (not left to numpy's inference, which turns ``true`` into 1
    and mixed large integers into floats); ranges are checked before any narrowing cast.
    """
    if not isinstance(data, list):
        raise InvalidInputError(f"input {name!r}: 'data' must be a list")
    shape, leaves = _flatten(name, data)
    kinds = set(map(type, leaves))
    if dtype.name == "BOOL":
        if not kinds <= {int, float, bool}:
            raise InvalidInputError(f"input {name!r}: 'data' must hold only booleans")
        if kinds - {bool}:
            raise InvalidInputError(f"input {name!r}: BOOL data must be true/false")
        return np.array(leaves, dtype=np.bool_).reshape(shape)
    if not kinds <= {int, float, bool}:
        raise InvalidInputError(f"input {name!r}: 'data' must hold only numbers")
    if bool in kinds:
        raise InvalidInputError(f"input {name!r}: {dtype.name} data must be numbers, not booleans")
    if dtype.is_integer:
        if float in kinds:
            raise InvalidInputError(f"input {name!r}: {dtype.name} data must be integers")
        info = np.iinfo(dtype.numpy)
        if leaves and (min(leaves) < info.min or max(leaves) > info.max):
            raise InvalidInputError(
                f"input {name!r}: values must lie in [{info.min}, {info.max}] for {dtype.name}"
            )
        return np.array(leaves, dtype=dtype.numpy).reshape(shape)
    try:
        wide = np.array(leaves, dtype=np.float64)
    except OverflowError as exc:  # an integer literal beyond float64
        raise InvalidInputError(
            f"input {name!r}: values must be finite and within {dtype.name} range"
        ) from exc
    with np.errstate(over="ignore", invalid="ignore"):
        values = wide.astype(dtype.numpy)
    if not np.isfinite(values).all():
        raise InvalidInputError(
            f"input {name!r}: values must be finite and within {dtype.name} range"
        )
    return values.reshape(shape)


def _describe(spec: TensorSpec) -> str:
    return f"{spec.name!r} ({spec.datatype} {[('N' if d == -1 else d) for d in spec.shape]})"


def encode_json(document: Any) -> bytes:
    """Compact JSON bytes (orjson: an embedding's floats encode about 20x faster than json's).

    Non-finite floats, which a model can output, become ``null``.
    """
    return orjson.dumps(document)


def encode_response(response: InferenceResponse) -> dict[str, Any]:
    """The v2 response object (JSON-able)."""
    body: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": [encode_tensor(name, array) for name, array in response.outputs.items()],
    }
    if response.id is not None:
        body["id"] = response.id
    if response.parameters:
        body["parameters"] = response.parameters
    return body


def encode_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    """One output tensor in v2 JSON form (flat row-major data)."""
    datatype = BY_NUMPY.get(array.dtype)
    if datatype is None:
        raise TypeError(f"output {name!r} has dtype {array.dtype}, which v2 JSON cannot carry")
    return {
        "name": name,
        "datatype": datatype.name,
        "shape": list(array.shape),
        "data": array.ravel().tolist(),
    }
