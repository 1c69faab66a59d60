"""Request and response encodings: the Open Inference Protocol v2 REST JSON and binary forms.

The v2 protocol (KServe, Triton, MLServer) sends tensors as ``{"name", "shape", "datatype",
"data"}`` with ``data`` flat in row-major order or nested. Decoding checks every input
against the model's signature and says exactly what is wrong, in our words.

The binary tensor extension (Triton's ``binary_tensor_data``) is read and written here too.
A request with the header ``Inference-Header-Content-Length: N`` has a JSON part (its first
N bytes) followed by raw tensor data: each input with ``parameters.binary_data_size`` takes
that many bytes, in input order, instead of ``data``. Raw data is little-endian and
row-major; a BYTES element is a 4-byte little-endian length followed by its bytes. Outputs
come back binary when the request asks (``parameters.binary_data_output``, or an output's
``parameters.binary_data``, which wins): the reply is then the JSON part (those outputs with
``parameters.binary_data_size`` instead of ``data``) followed by their bytes.

Edges call :func:`split_body` (or :func:`parse_json`), then :func:`decode_request`, and answer
with :func:`encode_reply`'s :class:`Reply`. What a body may be, by its media type, is
:mod:`onnxkit.media`'s.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import numpy as np
import orjson

from onnxkit.datatypes import BY_NAME, BY_NUMPY, SUPPORTED_NAMES, Datatype
from onnxkit.errors import InvalidInputError, NotAcceptableError, PayloadTooLargeError
from onnxkit.manifest import TensorSpec
from onnxkit.media import (
    BINARY_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    JSON_HEADER_SIZE,
    REPLY_HEADER_LENGTH,
    SAGEMAKER_BINARY_CONTENT_TYPE,
    media_type,
)

_LENGTH_PREFIX = struct.Struct("<I")  # a BYTES element's length in the binary form


@dataclass
class InferenceRequest:
    """A decoded, validated request: numpy arrays keyed by input name.

    Attributes:
        inputs: One array per model input (BYTES: an object array of ``bytes``).
        outputs: The output names asked for, in order; None for all.
        id: The request's ``id``, echoed in the response.
        parameters: The request's ``parameters`` as sent (unknown ones are ignored).
        binary_all: ``parameters.binary_data_output``: every output in binary form.
        output_binary: Each output's own ``parameters.binary_data`` where it set one; it
            overrides ``binary_all`` for that output, true or false.
    """

    inputs: dict[str, np.ndarray]
    outputs: list[str] | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    binary_all: bool = False
    output_binary: dict[str, bool] = field(default_factory=dict)

    def wants_binary(self, name: str) -> bool:
        """Whether output ``name`` goes back in the binary form rather than as JSON ``data``."""
        return self.output_binary.get(name, self.binary_all)


@dataclass
class InferenceResponse:
    """What a backend produced, ready to encode."""

    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


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


@overload
def parse_json(
    body: bytes | str | None, *, max_bytes: int, allow_list: Literal[False] = False
) -> dict[str, Any]: ...


@overload
def parse_json(
    body: bytes | str | None, *, max_bytes: int, allow_list: bool
) -> dict[str, Any] | list[Any]: ...


def parse_json(
    body: bytes | str | None, *, max_bytes: int, allow_list: bool = False
) -> dict[str, Any] | list[Any]:
    """Parse a JSON object body with a size limit and without NaN/Infinity.

    Args:
        body: The request body.
        max_bytes: The largest body accepted, in bytes (text counts in UTF-8).
        allow_list: Return a top-level JSON array as a list instead of refusing it.

    Returns:
        The parsed object (or, with ``allow_list``, array).

    Raises:
        InvalidInputError: Empty, malformed, or not an object (nor an array when allowed).
        PayloadTooLargeError: Larger than ``max_bytes``.
    """
    if body is None or (isinstance(body, bytes | str) and not body.strip()):
        raise InvalidInputError("the request body is empty; send a v2 inference request (JSON)")
    _check_size(len(body.encode() if isinstance(body, str) else body), max_bytes)
    return _parse_document(body, allow_list=allow_list, what="the body")


@overload
def split_body(
    body: bytes | str | None,
    header_length: str | None,
    *,
    max_bytes: int,
    allow_list: Literal[False] = False,
) -> tuple[dict[str, Any], bytes]: ...


@overload
def split_body(
    body: bytes | str | None, header_length: str | None, *, max_bytes: int, allow_list: bool
) -> tuple[dict[str, Any] | list[Any], bytes]: ...


def split_body(
    body: bytes | str | None,
    header_length: str | None,
    *,
    max_bytes: int,
    allow_list: bool = False,
) -> tuple[dict[str, Any] | list[Any], bytes]:
    """Split a request body into its JSON part and the binary tensor data after it.

    Without the ``Inference-Header-Content-Length`` header the whole body is JSON
    (:func:`parse_json`) and there is no binary data.

    Args:
        body: The request body.
        header_length: The ``Inference-Header-Content-Length`` header's value, or None when
            the request has none.
        max_bytes: The largest body accepted, in bytes, JSON and binary together.
        allow_list: As :func:`parse_json`.

    Returns:
        ``(json, binary)``: the parsed JSON part, and the bytes after it (``b""`` when none),
        to hand to :func:`decode_request`.

    Raises:
        InvalidInputError: The header is not a positive decimal integer within the body, or
            the JSON part is malformed or not an object.
        PayloadTooLargeError: The body is larger than ``max_bytes``.
    """
    if header_length is None:
        return parse_json(body, max_bytes=max_bytes, allow_list=allow_list), b""
    raw = body.encode() if isinstance(body, str) else (body or b"")
    _check_size(len(raw), max_bytes)
    length = _header_length(header_length, len(raw))
    head = raw[:length]
    if not head.strip():
        raise InvalidInputError(
            f"the first {length} bytes of the body ({REPLY_HEADER_LENGTH}) are blank; "
            "they must hold the v2 inference request (JSON)"
        )
    what = f"the body's first {length} bytes ({REPLY_HEADER_LENGTH})"
    return _parse_document(head, allow_list=allow_list, what=what), raw[length:]


def check_size(body: bytes | str | None, *, max_bytes: int) -> None:
    """Refuse a body over ``max_bytes`` (text counts in UTF-8).

    Raises:
        PayloadTooLargeError: The body is larger.
    """
    if body is not None:
        _check_size(len(body.encode() if isinstance(body, str) else body), max_bytes)


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise PayloadTooLargeError(
            f"the body is {size} bytes; the limit is {max_bytes} "
            "(for larger payloads split the batch)"
        )


_MAX_LENGTH_DIGITS = 30  # beyond any body's size; int() of a huge string is slow (and refused)


def _header_length(value: str, body_size: int) -> int:
    """The JSON part's length from the header's value, checked against the body's size."""
    text = value.strip()
    digits = text[1:] if text.startswith("-") else text
    if not (digits.isascii() and digits.isdigit()):
        raise InvalidInputError(
            f"{REPLY_HEADER_LENGTH} must be a decimal integer (the byte length of the JSON "
            f"part of the body), not {text[:40]!r}"
        )
    if text.startswith("-"):
        raise InvalidInputError(
            f"{REPLY_HEADER_LENGTH} is negative ({text[:40]}); it must be the byte length of "
            "the JSON part of the body"
        )
    length = int(digits) if len(digits) <= _MAX_LENGTH_DIGITS else body_size + 1
    if length == 0:
        raise InvalidInputError(
            f"{REPLY_HEADER_LENGTH} is 0; it must be the byte length of the JSON part of the "
            "body (the v2 inference request), which cannot be empty"
        )
    if length > body_size:
        raise InvalidInputError(
            f"{REPLY_HEADER_LENGTH} is {text[:40]}, past the end of the body, which has "
            f"{body_size} bytes"
        )
    return length


def _parse_document(body: bytes | str, *, allow_list: bool, what: str) -> Any:
    """Strict JSON (no NaN/Infinity): an object, or with ``allow_list`` an array too."""
    try:
        data = orjson.loads(body)  # strict JSON: no NaN or Infinity tokens
    except orjson.JSONDecodeError:
        data = _explain_invalid(body)  # the error path only: json says exactly what is wrong
    if isinstance(data, dict) or (allow_list and isinstance(data, list)):
        return data
    if allow_list:
        raise InvalidInputError(f"{what} must be a JSON object (a v2 request) or a JSON array")
    raise InvalidInputError(f"{what} must be a JSON object with an 'inputs' list")


def decode_request(
    data: dict[str, Any],
    signature: tuple[TensorSpec, ...],
    *,
    max_batch_size: int,
    binary: bytes = b"",
) -> InferenceRequest:
    """Turn a parsed v2 request into validated numpy arrays.

    Args:
        data: The parsed JSON object (the JSON part, for a binary request).
        signature: The model's inputs.
        max_batch_size: The largest first dimension accepted.
        binary: The bytes after the JSON part (:func:`split_body`): inputs with
            ``parameters.binary_data_size`` take theirs from here, in input order, and
            together they must use all of it.

    Returns:
        The request with one array per model input, in the model's dtypes and shapes, and
        which outputs go back in binary form.

    Raises:
        InvalidInputError: Anything that does not match the v2 form or the signature,
            including binary sizes that do not add up to ``binary``'s length.
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
    view = memoryview(binary)
    offset = 0  # where the next binary input starts in ``binary``
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
        size = _binary_size(name, raw)
        chunk = None
        if size is not None:
            end = offset + size
            if end > len(view):
                hint = "" if view else f" (send the {REPLY_HEADER_LENGTH} header)"
                raise InvalidInputError(
                    f"input {name!r}: binary_data_size {size} runs past the end of the binary "
                    f"data: it needs bytes {offset} to {end} but there are {len(view)} after "
                    f"the JSON part{hint}"
                )
            chunk = view[offset:end]
            offset = end
        arrays[name] = decode_tensor(raw, spec, max_batch_size=max_batch_size, binary=chunk)
    missing = [spec.name for spec in signature if spec.name not in arrays]
    if missing:
        raise InvalidInputError(
            f"missing input(s) {', '.join(map(repr, missing))}; this model takes "
            + ", ".join(map(_describe, signature))
        )
    if offset != len(view):
        raise InvalidInputError(
            f"the binary data after the JSON part is {len(view)} bytes but the inputs' "
            f"binary_data_size add up to {offset}: {len(view) - offset} bytes are left over"
        )

    outputs = None
    output_binary: dict[str, bool] = {}
    raw_outputs = data.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw_outputs
        ):
            raise InvalidInputError("'outputs' must be a list of objects with a 'name'")
        for raw_output in raw_outputs:
            flag = _output_binary(raw_output)
            if flag is not None:
                output_binary[raw_output["name"]] = flag
        outputs = [o["name"] for o in raw_outputs] or None  # [] asks for nothing special: all

    request_id = data.get("id")
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInputError("'parameters' must be an object")
    binary_all = parameters.get("binary_data_output", False)
    if not isinstance(binary_all, bool):
        raise InvalidInputError("'parameters.binary_data_output' must be true or false")
    return InferenceRequest(
        inputs=arrays,
        outputs=outputs,
        id=None if request_id is None else str(request_id),
        parameters=parameters,
        binary_all=binary_all,
        output_binary=output_binary,
    )


def _parameters(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """A tensor's ``parameters`` object ({} when absent); shared memory is refused."""
    parameters = raw.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InvalidInputError(f"{where}: 'parameters' must be an object")
    if "shared_memory_region" in parameters:
        raise InvalidInputError(
            f"{where}: shared memory (parameters.shared_memory_region) is not supported; "
            "send the data in the body, as JSON or binary"
        )
    return parameters


def _binary_size(name: str, raw: dict[str, Any]) -> int | None:
    """An input's ``parameters.binary_data_size`` (None: its data is JSON)."""
    size = _parameters(raw, f"input {name!r}").get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInputError(
            f"input {name!r}: parameters.binary_data_size must be a non-negative integer "
            "(the byte length of its binary data)"
        )
    if "data" in raw:
        raise InvalidInputError(
            f"input {name!r} has both 'data' and parameters.binary_data_size; send its values "
            "one way only"
        )
    return size


def _output_binary(raw: dict[str, Any]) -> bool | None:
    """A requested output's ``parameters.binary_data`` (None: not set)."""
    where = f"output {raw['name']!r}"
    parameters = _parameters(raw, where)
    if parameters.get("classification") not in (None, 0):
        raise InvalidInputError(
            f"{where}: the 'classification' parameter is not supported; request the output "
            "itself and rank its values on the client"
        )
    flag = parameters.get("binary_data")
    if flag is not None and not isinstance(flag, bool):
        raise InvalidInputError(f"{where}: parameters.binary_data must be true or false")
    return flag


def decode_tensor(
    raw: dict[str, Any],
    spec: TensorSpec,
    *,
    max_batch_size: int,
    binary: bytes | memoryview | None = None,
) -> np.ndarray:
    """Decode one v2 input tensor and check it against its spec.

    Args:
        raw: The input's JSON object.
        spec: What the model takes for this input.
        max_batch_size: The largest first dimension accepted.
        binary: The input's own binary data (its ``binary_data_size`` bytes), or None to
            read its JSON ``data``.

    Returns:
        The array, in the model's dtype and the request's shape (BYTES: ``bytes`` objects).

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
    if binary is not None:
        return _from_binary(name, binary, dtype, shape)
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


def _from_binary(
    name: str, data: bytes | memoryview, dtype: Datatype, shape: list[int]
) -> np.ndarray:
    """An input from the binary form: little-endian, row-major, checked like JSON values."""
    count = math.prod(shape)
    if dtype.is_bytes:
        return _bytes_from_binary(name, bytes(data), count, shape).reshape(shape)
    itemsize = dtype.numpy.itemsize
    if len(data) != count * itemsize:
        raise InvalidInputError(
            f"input {name!r}: binary_data_size is {len(data)} but shape {shape} of "
            f"{dtype.name} needs {count} x {itemsize} = {count * itemsize} bytes"
        )
    wire = np.frombuffer(data, dtype=dtype.numpy.newbyteorder("<"))
    if dtype.name == "BOOL" and count and wire.view(np.uint8).max() > 1:
        raise InvalidInputError(f"input {name!r}: BOOL binary data must be bytes 0 or 1")
    values = wire.astype(dtype.numpy)  # a native-order copy the model may own and write to
    if dtype.is_float and not np.isfinite(values).all():
        raise InvalidInputError(f"input {name!r}: values must be finite (no NaN or Infinity)")
    return values.reshape(shape)


def _bytes_from_binary(name: str, data: bytes, count: int, shape: list[int]) -> np.ndarray:
    """BYTES elements from ``<u4 length><bytes>`` runs, every length checked against the end."""
    items: list[bytes] = []
    offset, end = 0, len(data)
    while offset < end:
        if len(items) == count:
            raise InvalidInputError(
                f"input {name!r}: shape {shape} needs {count} BYTES elements, but "
                f"{end - offset} of its {end} binary bytes are left after them"
            )
        if offset + _LENGTH_PREFIX.size > end:
            raise InvalidInputError(
                f"input {name!r}: the 4-byte length of BYTES element {len(items)} runs past "
                f"the end of the input's {end} binary bytes (at byte {offset})"
            )
        (length,) = _LENGTH_PREFIX.unpack_from(data, offset)
        offset += _LENGTH_PREFIX.size
        if offset + length > end:
            raise InvalidInputError(
                f"input {name!r}: BYTES element {len(items)} says it is {length} bytes long, "
                f"past the end of the input's {end} binary bytes (at byte {offset})"
            )
        items.append(data[offset : offset + length])
        offset += length
    if len(items) != count:
        raise InvalidInputError(
            f"input {name!r}: shape {shape} needs {count} BYTES elements, the binary data "
            f"holds {len(items)}"
        )
    return _object_array(items)


def _object_array(items: list[bytes]) -> np.ndarray:
    """A 1-D object array holding ``items`` as they are (numpy would read bytes as a type)."""
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


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
    if dtype.is_bytes:
        if kinds - {str}:
            raise InvalidInputError(f"input {name!r}: BYTES data must be strings")
        try:
            encoded = [text.encode() for text in leaves]
        except UnicodeEncodeError as exc:  # a lone surrogate: not text UTF-8 can carry
            raise InvalidInputError(f"input {name!r}: BYTES data must be valid text") from exc
        return _object_array(encoded).reshape(shape)
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
    """The v2 response object (JSON-able), every output as JSON ``data``.

    Raises:
        NotAcceptableError: A BYTES output is not UTF-8 text (only the binary form carries it).
    """
    return _response_document(
        response, [encode_tensor(name, array) for name, array in response.outputs.items()]
    )


def _response_document(response: InferenceResponse, outputs: list[Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id is not None:
        body["id"] = response.id
    if response.parameters:
        body["parameters"] = response.parameters
    return body


def encode_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    """One output tensor in v2 JSON form (flat row-major data; BYTES as UTF-8 strings).

    Raises:
        NotAcceptableError: A BYTES tensor holds bytes that are not UTF-8 text.
        TypeError: The array's dtype (or a BYTES element) is not one v2 can carry.
    """
    datatype = _datatype_of(name, array)
    data = _texts(name, array) if datatype.is_bytes else array.ravel().tolist()
    return {"name": name, "datatype": datatype.name, "shape": list(array.shape), "data": data}


@dataclass(frozen=True)
class Reply:
    """An encoded inference response, ready for any edge to send.

    Attributes:
        body: The response body.
        content_type: ``application/json``, or ``application/octet-stream`` for the binary
            form.
        headers: Headers to add: ``Inference-Header-Content-Length`` for the binary form.
    """

    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


def encode_reply(
    response: InferenceResponse,
    request: InferenceRequest | None = None,
    *,
    content_type: str | None = None,
) -> Reply:
    """The response as JSON, or in the binary form if the request asked for any output so.

    The binary form is the JSON document, with each binary output's ``data`` replaced by
    ``parameters.binary_data_size``, followed by those outputs' bytes in output order.

    Args:
        response: What the backend produced.
        request: The decoded request, which says which outputs go back binary (None: JSON).
        content_type: The request's Content-Type: a SageMaker binary request gets its answer's
            JSON size in the same media type (InvokeEndpoint returns no custom header).

    Returns:
        The body, its Content-Type and any headers to send.

    Raises:
        NotAcceptableError: A BYTES output that is not UTF-8 text was asked for as JSON.
        TypeError: An output's dtype is not one v2 can carry.
    """
    if request is None or not any(map(request.wants_binary, response.outputs)):
        return Reply(encode_json(encode_response(response)), JSON_CONTENT_TYPE, {})
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in response.outputs.items():
        if not request.wants_binary(name):
            outputs.append(encode_tensor(name, array))
            continue
        datatype = _datatype_of(name, array)
        chunk = _to_binary(name, array, datatype)
        outputs.append(
            {
                "name": name,
                "datatype": datatype.name,
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(chunk)},
            }
        )
        chunks.append(chunk)
    header = encode_json(_response_document(response, outputs))
    media = BINARY_CONTENT_TYPE
    if content_type and media_type(content_type) == SAGEMAKER_BINARY_CONTENT_TYPE:
        media = f"{SAGEMAKER_BINARY_CONTENT_TYPE};{JSON_HEADER_SIZE}={len(header)}"
    return Reply(b"".join([header, *chunks]), media, {REPLY_HEADER_LENGTH: str(len(header))})


def _datatype_of(name: str, array: np.ndarray) -> Datatype:
    datatype = BY_NUMPY.get(array.dtype)
    if datatype is None:
        raise TypeError(f"output {name!r} has dtype {array.dtype}, which v2 JSON cannot carry")
    return datatype


def _bytes_items(name: str, array: np.ndarray) -> list[bytes]:
    """A BYTES tensor's elements, row-major, each checked to be ``bytes``."""
    items = array.ravel().tolist()
    for item in items:
        if type(item) is not bytes:
            raise TypeError(
                f"output {name!r}: a BYTES tensor must hold bytes, found {type(item).__name__}"
            )
    return items


def _texts(name: str, array: np.ndarray) -> list[str]:
    """A BYTES tensor as JSON strings.

    Raises:
        NotAcceptableError: An element is not UTF-8 text.
    """
    try:
        return [item.decode() for item in _bytes_items(name, array)]
    except UnicodeDecodeError as exc:
        wanted = encode_json({"name": name, "parameters": {"binary_data": True}}).decode()
        raise NotAcceptableError(
            f"output {name!r} holds bytes that are not UTF-8 text, which JSON cannot carry; "
            f'ask for it in binary form: "outputs": [{wanted}]'
        ) from exc


def _to_binary(name: str, array: np.ndarray, datatype: Datatype) -> bytes:
    """A tensor in the binary form: little-endian, row-major; BYTES length-prefixed."""
    if datatype.is_bytes:
        parts: list[bytes] = []
        for item in _bytes_items(name, array):
            parts.append(_LENGTH_PREFIX.pack(len(item)))
            parts.append(item)
        return b"".join(parts)
    return array.astype(datatype.numpy.newbyteorder("<"), copy=False).tobytes()
