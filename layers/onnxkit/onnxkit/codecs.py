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

import functools
import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, overload

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
        s3_all: ``parameters.outputs_to_s3``: every output is written to the payload store.
        output_s3: Each output's own ``parameters.to_s3`` where it set one (overrides
            ``s3_all``).
    """

    inputs: dict[str, np.ndarray]
    outputs: list[str] | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    binary_all: bool = False
    output_binary: dict[str, bool] = field(default_factory=dict)
    s3_all: bool = False
    output_s3: dict[str, bool] = field(default_factory=dict)

    def wants_binary(self, name: str) -> bool:
        """Whether output ``name`` goes back in the binary form rather than as JSON ``data``."""
        return self.output_binary.get(name, self.binary_all)

    def wants_s3(self, name: str) -> bool:
        """Whether output ``name`` is written to the payload store rather than sent back."""
        return self.output_s3.get(name, self.s3_all)

    @property
    def any_s3(self) -> bool:
        """Whether any output may go to the payload store."""
        return self.s3_all or any(self.output_s3.values())


class ReferenceReader(Protocol):
    """Reads the object an input references (``parameters.reference``): the payload store's
    (:mod:`onnxkit.payloads`)."""

    def __call__(
        self, reference: str, *, name: str, expected_bytes: int | None
    ) -> bytes | bytearray | memoryview:
        """The object's bytes; ``expected_bytes`` (None for BYTES) lets a wrong size be refused
        before the object is read."""
        ...


@dataclass
class InferenceResponse:
    """What a backend produced, ready to encode."""

    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Outputs written to the payload store: the JSON entry sent in place of their data."""


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
    body: bytes | str | None,
    *,
    max_bytes: int,
    allow_list: Literal[False] = False,
    model: str | None = None,
) -> dict[str, Any]: ...


@overload
def parse_json(
    body: bytes | str | None, *, max_bytes: int, allow_list: bool, model: str | None = None
) -> dict[str, Any] | list[Any]: ...


def parse_json(
    body: bytes | str | None,
    *,
    max_bytes: int,
    allow_list: bool = False,
    model: str | None = None,
) -> dict[str, Any] | list[Any]:
    """Parse a JSON object body with a size limit and without NaN/Infinity.

    Args:
        body: The request body.
        max_bytes: The largest body accepted, in bytes (text counts in UTF-8).
        allow_list: Return a top-level JSON array as a list instead of refusing it.
        model: The model the request is for: a 413 names its upload path.

    Returns:
        The parsed object (or, with ``allow_list``, array).

    Raises:
        InvalidInputError: Empty, malformed, or not an object (nor an array when allowed).
        PayloadTooLargeError: Larger than ``max_bytes``.
    """
    if body is None or (isinstance(body, bytes | str) and not body.strip()):
        raise InvalidInputError("the request body is empty; send a v2 inference request (JSON)")
    _check_size(len(body.encode() if isinstance(body, str) else body), max_bytes, model)
    return _parse_document(body, allow_list=allow_list, what="the body")


@overload
def split_body(
    body: bytes | str | None,
    header_length: str | None,
    *,
    max_bytes: int,
    allow_list: Literal[False] = False,
    model: str | None = None,
) -> tuple[dict[str, Any], bytes]: ...


@overload
def split_body(
    body: bytes | str | None,
    header_length: str | None,
    *,
    max_bytes: int,
    allow_list: bool,
    model: str | None = None,
) -> tuple[dict[str, Any] | list[Any], bytes]: ...


def split_body(
    body: bytes | str | None,
    header_length: str | None,
    *,
    max_bytes: int,
    allow_list: bool = False,
    model: str | None = None,
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
        model: As :func:`parse_json`.

    Returns:
        ``(json, binary)``: the parsed JSON part, and the bytes after it (``b""`` when none),
        to hand to :func:`decode_request`.

    Raises:
        InvalidInputError: The header is not a positive decimal integer within the body, or
            the JSON part is malformed or not an object.
        PayloadTooLargeError: The body is larger than ``max_bytes``.
    """
    if header_length is None:
        return parse_json(body, max_bytes=max_bytes, allow_list=allow_list, model=model), b""
    raw = body.encode() if isinstance(body, str) else (body or b"")
    _check_size(len(raw), max_bytes, model)
    length = _header_length(header_length, len(raw))
    head = raw[:length]
    if not head.strip():
        raise InvalidInputError(
            f"the first {length} bytes of the body ({REPLY_HEADER_LENGTH}) are blank; "
            "they must hold the v2 inference request (JSON)"
        )
    what = f"the body's first {length} bytes ({REPLY_HEADER_LENGTH})"
    return _parse_document(head, allow_list=allow_list, what=what), raw[length:]


def check_size(body: bytes | str | None, *, max_bytes: int, model: str | None = None) -> None:
    """Refuse a body over ``max_bytes`` (text counts in UTF-8); the 413 names ``model``'s
    upload path.

    Raises:
        PayloadTooLargeError: The body is larger.
    """
    if body is not None:
        _check_size(len(body.encode() if isinstance(body, str) else body), max_bytes, model)


def _check_size(size: int, max_bytes: int, model: str | None = None) -> None:
    if size > max_bytes:
        raise PayloadTooLargeError.body(size, max_bytes, model=model)


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
    references: ReferenceReader | None = None,
) -> InferenceRequest:
    """Turn a parsed v2 request into validated numpy arrays.

    Args:
        data: The parsed JSON object (the JSON part, for a binary request).
        signature: The model's inputs.
        max_batch_size: The largest first dimension accepted.
        binary: The bytes after the JSON part (:func:`split_body`): inputs with
            ``parameters.binary_data_size`` take theirs from here, in input order, and
            together they must use all of it.
        references: Reads inputs with ``parameters.reference`` (an upload in the payload
            store), laid out as the binary form lays out an input; a BYTES input by reference
            is one element, the object's bytes (None: references are refused).

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
        reference = _reference(name, raw, binary=size is not None)
        chunk = None
        fetch = None
        if reference is not None:
            if references is None:
                raise InvalidInputError(
                    f"input {name!r}: parameters.reference is not accepted here; send the data "
                    "in the body"
                )
            fetch = functools.partial(references, reference, name=name)
        elif size is not None:
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
        arrays[name] = decode_tensor(
            raw, spec, max_batch_size=max_batch_size, binary=chunk, fetch=fetch
        )
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
    output_s3: dict[str, bool] = {}
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
            to_s3 = _output_flag(raw_output, "to_s3")
            if to_s3 is not None:
                output_s3[raw_output["name"]] = to_s3
        outputs = [o["name"] for o in raw_outputs] or None  # [] asks for nothing special: all

    request_id = data.get("id")
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInputError("'parameters' must be an object")
    binary_all = parameters.get("binary_data_output", False)
    if not isinstance(binary_all, bool):
        raise InvalidInputError("'parameters.binary_data_output' must be true or false")
    s3_all = parameters.get("outputs_to_s3", False)
    if not isinstance(s3_all, bool):
        raise InvalidInputError("'parameters.outputs_to_s3' must be true or false")
    return InferenceRequest(
        inputs=arrays,
        outputs=outputs,
        id=None if request_id is None else str(request_id),
        parameters=parameters,
        binary_all=binary_all,
        output_binary=output_binary,
        s3_all=s3_all,
        output_s3=output_s3,
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


def _reference(name: str, raw: dict[str, Any], *, binary: bool) -> str | None:
    """An input's ``parameters.reference`` (None: its data is in the body)."""
    reference = _parameters(raw, f"input {name!r}").get("reference")
    if reference is None:
        return None
    if not isinstance(reference, str) or not reference:
        raise InvalidInputError(
            f"input {name!r}: parameters.reference must be a string (the s3:// reference "
            "that POST /v2/models/{name}/uploads answered)"
        )
    if "data" in raw or binary:
        raise InvalidInputError(
            f"input {name!r} has both a reference and "
            f"{'binary_data_size' if binary else 'data'}; send its values one way only"
        )
    return reference


def _output_flag(raw: dict[str, Any], flag: str) -> bool | None:
    """A requested output's boolean ``parameters.<flag>`` (None: not set)."""
    value = _parameters(raw, f"output {raw['name']!r}").get(flag)
    if value is not None and not isinstance(value, bool):
        raise InvalidInputError(f"output {raw['name']!r}: parameters.{flag} must be true or false")
    return value


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
    fetch: Callable[..., bytes | bytearray | memoryview] | None = None,
) -> np.ndarray:
    """Decode one v2 input tensor and check it against its spec.

    Args:
        raw: The input's JSON object.
        spec: What the model takes for this input.
        max_batch_size: The largest first dimension accepted.
        binary: The input's own binary data (its ``binary_data_size`` bytes), or None to
            read its JSON ``data``.
        fetch: Reads the input's data by reference once the tensor is checked, called with
            ``expected_bytes`` (its size in the binary form; None for BYTES, whose one element
            is the whole object). A ``bytearray`` it returns becomes the array's buffer.

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
    if 0 in shape:  # kernels fail on empty tensors in their own ways: a client's 4xx, here
        raise InvalidInputError(
            f"input {name!r}: shape {shape} holds no elements; send at least one row"
        )
    if shape and shape[0] > max_batch_size and spec.shape and spec.shape[0] == -1:
        raise PayloadTooLargeError(
            f"input {name!r}: batch of {shape[0]} is over the limit of {max_batch_size}; "
            "split it into smaller requests"
        )
    if fetch is not None:
        count = math.prod(shape)
        if dtype.is_bytes:
            if count != 1:
                raise InvalidInputError(
                    f"input {name!r}: a BYTES input sent by reference holds one element (the "
                    f"object's bytes), so its shape must hold 1 element, not {shape}"
                )
            return _object_array([bytes(fetch(expected_bytes=None))]).reshape(shape)
        data = fetch(expected_bytes=count * dtype.numpy.itemsize)
        return _from_binary(
            name, data, dtype, shape, what="the referenced object's size",
            owned=isinstance(data, bytearray | memoryview),  # handed over, never shared
        )  # fmt: skip
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
    name: str,
    data: bytes | bytearray | memoryview,
    dtype: Datatype,
    shape: list[int],
    *,
    what: str = "binary_data_size",
    owned: bool = False,
) -> np.ndarray:
    """An input from the binary form: little-endian, row-major, checked like JSON values.

    ``owned``: ``data`` is a buffer handed over (an upload read from S3), used in place where
    its byte order is native instead of copied (a 50 MB input stays one buffer).
    """
    count = math.prod(shape)
    if dtype.is_bytes:
        return _bytes_from_binary(name, bytes(data), count, shape).reshape(shape)
    itemsize = dtype.numpy.itemsize
    if len(data) != count * itemsize:
        raise InvalidInputError(
            f"input {name!r}: {what} is {len(data)} but shape {shape} of "
            f"{dtype.name} needs {count} x {itemsize} = {count * itemsize} bytes"
        )
    wire = np.frombuffer(data, dtype=dtype.numpy.newbyteorder("<"))
    if dtype.name == "BOOL" and count and wire.view(np.uint8).max() > 1:
        raise InvalidInputError(f"input {name!r}: BOOL binary data must be bytes 0 or 1")
    # A native-order array the model may own and write to: a copy, unless handed over.
    values = wire.astype(dtype.numpy, copy=not owned)
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
        response,
        [
            response.stored.get(name) or encode_tensor(name, array)
            for name, array in response.outputs.items()
        ],
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
    inline = [name for name in response.outputs if name not in response.stored]
    if request is None or not any(map(request.wants_binary, inline)):
        return Reply(encode_json(encode_response(response)), JSON_CONTENT_TYPE, {})
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in response.outputs.items():
        if name in response.stored:
            outputs.append(response.stored[name])
            continue
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


def tensor_bytes(name: str, array: np.ndarray) -> tuple[Datatype, bytes]:
    """A tensor in the binary form (little-endian, row-major; BYTES length-prefixed), and its
    datatype: how an output written to the payload store is laid out.

    Raises:
        TypeError: The array's dtype is not one v2 can carry.
    """
    datatype = _datatype_of(name, array)
    return datatype, _to_binary(name, array, datatype)


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
