"""The v2 binary tensor extension and BYTES, checked against tritonclient, an independent codec.

Requests are built by tritonclient's own HTTP client code (``_get_inference_request``, what
``InferenceServerClient.infer`` sends) and binary replies are read back by its ``InferResult``;
hand-made bodies cover what a well-behaved client never sends.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
from tritonclient.http import InferInput, InferRequestedOutput, InferResult
from tritonclient.http._utils import _get_inference_request
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from onnxkit.codecs import (
    InferenceRequest,
    InferenceResponse,
    Reply,
    decode_request,
    encode_json,
    encode_reply,
    encode_response,
    parse_json,
    split_body,
)
from onnxkit.datatypes import BY_NAME, SUPPORTED_NAMES
from onnxkit.errors import (
    InvalidInputError,
    NotAcceptableError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from onnxkit.manifest import TensorSpec
from onnxkit.media import (
    BINARY_CONTENT_TYPE,
    HEADER_LENGTH,
    JSON_CONTENT_TYPE,
    REPLY_HEADER_LENGTH,
    binary_header_length,
    check_content_type,
)

MAX_BYTES = 1 << 20
X = TensorSpec("x", "FP32", (-1, 4))
TEXT = TensorSpec("text", "BYTES", (-1, 2))
SIGNATURE = (X, TEXT)

X_VALUES = np.array([[0.5, -1.25, 3.0, 1e-3], [2.0, 0.0, -0.0, 65504.0]], dtype=np.float32)
TEXT_VALUES = np.array([[b"a", "é ☃".encode()], [b"", b"\x00\xff raw"]], dtype=object)


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """Seeded values of one datatype, including each type's extremes where it has them."""
    rng = np.random.default_rng(7)
    dtype = BY_NAME[datatype].numpy
    count = int(np.prod(shape))
    if datatype == "BYTES":
        items = [bytes(rng.integers(0, 256, i % 5, dtype=np.uint8)) for i in range(count)]
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind == "f":
        values = rng.standard_normal(count).astype(dtype)
        values[0] = np.finfo(dtype).max
        values[-1] = np.finfo(dtype).tiny
        return values.reshape(shape)
    info = np.iinfo(dtype)
    values = rng.integers(info.min, info.max, count, dtype=dtype, endpoint=True)
    values[0], values[-1] = info.min, info.max
    return values.reshape(shape)


def triton_input(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> InferInput:
    """One input as tritonclient sends it (binary by default, as tritonclient does)."""
    return InferInput(name, list(array.shape), datatype).set_data_from_numpy(
        array, binary_data=binary
    )


def triton_request(
    *inputs: InferInput, outputs: list[InferRequestedOutput] | None = None, **extra: Any
) -> tuple[bytes, str | None]:
    """The body and Inference-Header-Content-Length tritonclient's HTTP client would send."""
    options: dict[str, Any] = {
        "request_id": "",
        "sequence_id": 0,
        "sequence_start": False,
        "sequence_end": False,
        "priority": 0,
        "timeout": None,
        "custom_parameters": None,
        **extra,
    }
    body, json_size = _get_inference_request(inputs=list(inputs), outputs=outputs, **options)
    return body, None if json_size is None else str(json_size)


def decode(
    body: bytes | str, header: str | None, signature: tuple[TensorSpec, ...] = SIGNATURE
) -> InferenceRequest:
    """split_body then decode_request, as an edge does."""
    data, binary = split_body(body, header, max_bytes=MAX_BYTES)
    return decode_request(data, signature, max_batch_size=16, binary=binary)


def refused(body: bytes | str, header: str | None, *phrases: str) -> InvalidInputError:
    """Decoding fails with 400 invalid_input, and the message says each phrase."""
    with pytest.raises(InvalidInputError) as caught:
        decode(body, header)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_input"
    for phrase in phrases:
        assert phrase in caught.value.message
    return caught.value


def read_reply(reply: Reply) -> InferResult:
    """The reply as tritonclient's HTTP client reads it."""
    header = reply.headers.get(REPLY_HEADER_LENGTH)
    return InferResult.from_response_body(
        reply.body, header_length=None if header is None else int(header)
    )


def handmade(inputs: list[dict[str, Any]], binary: bytes, **extra: Any) -> tuple[bytes, str]:
    """A binary request built by hand: the JSON part, then ``binary``."""
    head = json.dumps({"inputs": inputs, **extra}).encode()
    return head + binary, str(len(head))


def binary_tensor(name: str, datatype: str, shape: list[int], size: int) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": datatype,
        "shape": shape,
        "parameters": {"binary_data_size": size},
    }


TEXT_JSON = {"name": "text", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]}
X_BYTES = np.arange(4, dtype="<f4").tobytes()


# --- requests tritonclient builds ---------------------------------------------------------------


@pytest.mark.parametrize("datatype", SUPPORTED_NAMES)
def test_every_datatype_sent_binary_by_tritonclient_decodes_to_the_same_array(
    datatype: str,
) -> None:
    # GIVEN one input of this datatype, sent as tritonclient sends it by default (binary)
    values = sample(datatype)
    spec = TensorSpec("t", datatype, (-1, 3))
    body, header = triton_request(triton_input("t", values, datatype))

    # WHEN the body is split and decoded
    decoded = decode(body, header, (spec,))

    # THEN the array is the one sent: dtype, shape and every value
    assert header is not None
    array = decoded.inputs["t"]
    assert array.dtype == BY_NAME[datatype].numpy
    assert array.shape == values.shape
    assert array.tolist() == values.tolist()
    assert array.flags.writeable
    assert array.flags.c_contiguous


def test_binary_and_json_inputs_mix_and_binary_bytes_follow_the_request_order() -> None:
    # GIVEN the model's inputs in the other order, each binary or JSON in turn
    for text_binary, x_binary in ((True, False), (False, True), (True, True)):
        text = TEXT_VALUES[:1] if not text_binary else TEXT_VALUES  # JSON needs UTF-8
        body, header = triton_request(
            triton_input("text", text, "BYTES", binary=text_binary),
            triton_input("x", X_VALUES, "FP32", binary=x_binary),
        )

        decoded = decode(body, header)

        assert decoded.inputs["text"].tolist() == text.tolist()
        np.testing.assert_array_equal(decoded.inputs["x"], X_VALUES)


def test_a_tritonclient_json_only_request_has_no_header_and_decodes() -> None:
    body, header = triton_request(
        triton_input("x", X_VALUES, "FP32", binary=False),
        triton_input("text", TEXT_VALUES[:1], "BYTES", binary=False),
    )

    decoded = decode(body, header)

    assert header is None
    np.testing.assert_array_equal(decoded.inputs["x"], X_VALUES)
    assert decoded.inputs["text"].tolist() == [[b"a", "é ☃".encode()]]


def test_bytes_as_serialize_byte_tensor_writes_them_decode_exactly() -> None:
    # Elements tritonclient's JSON form cannot carry: arbitrary bytes, NUL, empty.
    values = np.array([[b"\xff\xfe", b""], [b"\x00" * 3, b"x" * 300]], dtype=object)
    raw = serialize_byte_tensor(values).item()
    body, header = handmade(
        [binary_tensor("text", "BYTES", [2, 2], len(raw)), binary_tensor("x", "FP32", [1, 4], 16)],
        raw + X_BYTES,
    )

    decoded = decode(body, header)

    assert decoded.inputs["text"].tolist() == values.tolist()
    assert decoded.inputs["x"].tolist() == [[0.0, 1.0, 2.0, 3.0]]


def test_tritonclient_defaults_ask_for_every_output_in_binary() -> None:
    body, header = triton_request(
        triton_input("x", X_VALUES, "FP32"), triton_input("text", TEXT_VALUES, "BYTES")
    )

    decoded = decode(body, header)

    assert decoded.binary_all is True
    assert decoded.output_binary == {}
    assert decoded.wants_binary("y")
    assert decoded.wants_binary("anything")


def test_requested_outputs_carry_their_own_binary_flag() -> None:
    body, header = triton_request(
        triton_input("x", X_VALUES, "FP32"),
        triton_input("text", TEXT_VALUES, "BYTES"),
        outputs=[InferRequestedOutput("y"), InferRequestedOutput("z", binary_data=False)],
    )

    decoded = decode(body, header)

    assert decoded.outputs == ["y", "z"]
    assert decoded.binary_all is False  # tritonclient sets the global flag only with no outputs
    assert decoded.output_binary == {"y": True, "z": False}
    assert decoded.wants_binary("y")
    assert not decoded.wants_binary("z")


@pytest.mark.parametrize(
    ("binary_all", "flags", "expected"),
    [
        (False, {}, {"a": False, "b": False}),
        (True, {}, {"a": True, "b": True}),
        (True, {"a": False}, {"a": False, "b": True}),
        (False, {"a": True}, {"a": True, "b": False}),
    ],
)
def test_an_output_flag_overrides_binary_data_output_either_way(
    binary_all: bool, flags: dict[str, bool], expected: dict[str, bool]
) -> None:
    request = InferenceRequest({}, binary_all=binary_all, output_binary=flags)

    assert {name: request.wants_binary(name) for name in "ab"} == expected


def test_triton_request_parameters_we_do_not_use_are_ignored() -> None:
    body, header = triton_request(
        triton_input("x", X_VALUES, "FP32"),
        triton_input("text", TEXT_VALUES, "BYTES"),
        request_id="r-1",
        sequence_id=4,
        sequence_start=True,
        priority=2,
        timeout=1000,
        custom_parameters={"tenant": "blue"},
    )

    decoded = decode(body, header)

    assert decoded.id == "r-1"
    assert decoded.parameters["tenant"] == "blue"
    assert decoded.parameters["sequence_id"] == 4
    np.testing.assert_array_equal(decoded.inputs["x"], X_VALUES)


def test_classification_is_refused_as_not_supported() -> None:
    body, header = triton_request(
        triton_input("x", X_VALUES, "FP32"),
        triton_input("text", TEXT_VALUES, "BYTES"),
        outputs=[InferRequestedOutput("y", class_count=3)],
    )

    refused(body, header, "output 'y': the 'classification' parameter is not supported")


def test_shared_memory_is_refused_as_not_supported() -> None:
    output = InferRequestedOutput("y")
    output.set_shared_memory("region", 64)
    body, header = triton_request(
        triton_input("x", X_VALUES, "FP32"),
        triton_input("text", TEXT_VALUES, "BYTES"),
        outputs=[output],
    )

    refused(body, header, "output 'y': shared memory", "is not supported")


# --- split_body ----------------------------------------------------------------------------------


def test_split_body_returns_the_json_part_and_the_bytes_after_it() -> None:
    data, binary = split_body(b'{"inputs": []}\x01\x02', "14", max_bytes=100)

    assert data == {"inputs": []}
    assert binary == b"\x01\x02"


@pytest.mark.parametrize("body", [b'{"inputs": []}', '{"inputs": []}'])
def test_without_the_header_the_whole_body_is_json(body: bytes | str) -> None:
    assert split_body(body, None, max_bytes=100) == ({"inputs": []}, b"")


def test_a_header_equal_to_the_body_length_means_no_binary_data() -> None:
    assert split_body(b'{"id": 1}', "9", max_bytes=100) == ({"id": 1}, b"")


def test_a_text_body_is_split_at_its_utf8_byte_length() -> None:
    head = '{"id": "é"}'  # 11 characters, 12 bytes

    data, binary = split_body(head + "rest", "12", max_bytes=100)

    assert data == {"id": "é"}
    assert binary == b"rest"


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        ("abc", "must be a decimal integer"),
        ("1.5", "must be a decimal integer"),
        ("0x10", "must be a decimal integer"),
        ("+9", "must be a decimal integer"),
        ("", "must be a decimal integer"),
        ("٣", "must be a decimal integer"),  # a digit to str.isdigit, not to HTTP
        ("-5", "is negative"),
        ("0", "is 0"),
        ("15", "past the end of the body, which has 14 bytes"),
        ("9" * 100, "past the end of the body, which has 14 bytes"),
    ],
)
def test_a_bad_header_length_is_400_naming_the_header(value: str, phrase: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        split_body(b'{"inputs": []}', value, max_bytes=100)

    assert caught.value.status == 400
    assert "Inference-Header-Content-Length" in caught.value.message
    assert phrase in caught.value.message


def test_the_size_limit_comes_before_the_header_is_read() -> None:
    with pytest.raises(PayloadTooLargeError) as caught:
        split_body(b'{"inputs": []}' + b"\x00" * 100, "not a number", max_bytes=50)

    assert caught.value.status == 413
    assert "the body is 114 bytes; the limit is 50" in caught.value.message


def test_a_header_that_cuts_the_json_short_is_invalid_json() -> None:
    body, header = triton_request(triton_input("x", X_VALUES, "FP32"))
    assert header is not None

    refused(body, str(int(header) - 1), "not valid JSON")


def test_a_header_that_reaches_into_the_binary_part_is_invalid_json() -> None:
    body, header = triton_request(triton_input("x", X_VALUES, "FP32"))
    assert header is not None

    refused(body, str(int(header) + 4), "not valid JSON")


@pytest.mark.parametrize(("head", "phrase"), [(b"   ", "are blank"), (b"[1]", "JSON object")])
def test_the_json_part_must_be_an_object(head: bytes, phrase: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        split_body(head + b"\x00\x00", str(len(head)), max_bytes=100)

    assert phrase in caught.value.message


def test_the_json_part_refuses_nan_like_the_whole_body_does() -> None:
    head = b'{"inputs": [{"name": "x", "data": [NaN]}]}'

    with pytest.raises(InvalidInputError, match="NaN is not valid JSON"):
        split_body(head + b"\x00", str(len(head)), max_bytes=100)


def test_header_length_constant_is_the_lower_case_header_name() -> None:
    assert HEADER_LENGTH == REPLY_HEADER_LENGTH.lower() == "inference-header-content-length"


# --- parse_json(allow_list) and check_content_type(binary) --------------------------------------


def test_parse_json_returns_a_top_level_array_only_when_allowed() -> None:
    assert parse_json(b'["a", "b"]', max_bytes=100, allow_list=True) == ["a", "b"]
    assert parse_json(b'{"a": 1}', max_bytes=100, allow_list=True) == {"a": 1}
    with pytest.raises(InvalidInputError, match="must be a JSON object with an 'inputs' list"):
        parse_json(b'["a", "b"]', max_bytes=100)


@pytest.mark.parametrize("body", ["1", '"text"', "null", "true"])
def test_parse_json_with_allow_list_still_refuses_scalars(body: str) -> None:
    with pytest.raises(InvalidInputError, match=r"a JSON object \(a v2 request\) or a JSON array"):
        parse_json(body, max_bytes=100, allow_list=True)


def test_split_body_passes_allow_list_on() -> None:
    assert split_body(b'["a"]', None, max_bytes=100, allow_list=True) == (["a"], b"")
    assert split_body(b'["a"]\x00', "5", max_bytes=100, allow_list=True) == (["a"], b"\x00")


def test_octet_stream_is_accepted_only_for_a_binary_request() -> None:
    assert check_content_type("application/octet-stream", binary=True) is None
    assert check_content_type("application/json", binary=True) is None
    with pytest.raises(UnsupportedMediaTypeError):
        check_content_type("application/octet-stream")
    with pytest.raises(UnsupportedMediaTypeError, match="or application/octet-stream"):
        check_content_type("text/plain", binary=True)


# --- malformed binary requests ------------------------------------------------------------------


def test_binary_data_size_past_the_end_is_400_with_the_numbers() -> None:
    body, header = handmade([binary_tensor("x", "FP32", [1, 4], 20), TEXT_JSON], X_BYTES)

    refused(
        body,
        header,
        "input 'x': binary_data_size 20 runs past the end",
        "bytes 0 to 20",
        "there are 16 after the JSON part",
    )


def test_the_second_binary_input_past_the_end_names_where_it_starts() -> None:
    text = serialize_byte_tensor(np.array([b"a", b"b"], dtype=object)).item()
    inputs = [binary_tensor("x", "FP32", [1, 4], 16), binary_tensor("text", "BYTES", [1, 2], 99)]
    body, header = handmade(inputs, X_BYTES + text)

    refused(
        body,
        header,
        "input 'text': binary_data_size 99",
        "bytes 16 to 115",
        f"there are {16 + len(text)} after",
    )


def test_binary_data_size_without_the_header_is_past_the_end_and_says_send_it() -> None:
    body = json.dumps({"inputs": [binary_tensor("x", "FP32", [1, 4], 16), TEXT_JSON]})

    refused(
        body,
        None,
        "runs past the end",
        "there are 0 after the JSON part",
        "send the Inference-Header-Content-Length header",
    )


def test_bytes_left_over_after_every_binary_input_is_400_with_the_numbers() -> None:
    body, header = handmade([binary_tensor("x", "FP32", [1, 4], 16), TEXT_JSON], X_BYTES + b"!!!")

    refused(
        body,
        header,
        "is 19 bytes but the inputs' binary_data_size add up to 16",
        "3 bytes are left over",
    )


def test_binary_bytes_no_input_claims_are_left_over() -> None:
    x_json = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    body, header = handmade([x_json, TEXT_JSON], b"\x00" * 8)

    refused(body, header, "8 bytes are left over")


@pytest.mark.parametrize(("shape", "size"), [([1, 4], 12), ([1, 4], 20), ([2, 4], 16)])
def test_binary_data_size_that_does_not_fit_the_shape_is_400(shape: list[int], size: int) -> None:
    body, header = handmade([binary_tensor("x", "FP32", shape, size), TEXT_JSON], b"\x00" * size)

    count = int(np.prod(shape))
    refused(
        body,
        header,
        f"binary_data_size is {size} but shape {shape} of FP32",
        f"needs {count} x 4 = {count * 4} bytes",
    )


@pytest.mark.parametrize("size", [-1, 1.5, "16", True, [16], {"n": 16}])
def test_binary_data_size_must_be_a_non_negative_integer(size: Any) -> None:
    inputs = [{**binary_tensor("x", "FP32", [1, 4], 0), "parameters": {"binary_data_size": size}}]
    body, header = handmade([*inputs, TEXT_JSON], X_BYTES)

    refused(body, header, "parameters.binary_data_size must be a non-negative integer")


def test_data_and_binary_data_size_together_are_400() -> None:
    both = {**binary_tensor("x", "FP32", [1, 4], 16), "data": [1, 2, 3, 4]}
    body, header = handmade([both, TEXT_JSON], X_BYTES)

    refused(body, header, "input 'x' has both 'data' and parameters.binary_data_size")


def test_input_parameters_must_be_an_object() -> None:
    x_json = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    body = json.dumps({"inputs": [{**x_json, "parameters": [16]}, TEXT_JSON]})

    refused(body, None, "input 'x': 'parameters' must be an object")


def bytes_request(raw: bytes, shape: list[int] | None = None) -> tuple[bytes, str]:
    """A request whose BYTES input is ``raw`` (and x a valid binary FP32 input)."""
    inputs = [
        binary_tensor("x", "FP32", [1, 4], 16),
        binary_tensor("text", "BYTES", shape or [1, 2], len(raw)),
    ]
    return handmade(inputs, X_BYTES + raw)


def test_a_bytes_length_prefix_past_the_end_is_400() -> None:
    raw = struct.pack("<I", 1) + b"a" + struct.pack("<I", 100) + b"bc"

    refused(
        *bytes_request(raw),
        "input 'text': BYTES element 1 says it is 100 bytes long",
        "past the end of the input's 11 binary bytes (at byte 9)",
    )


def test_a_bytes_length_prefix_cut_short_is_400() -> None:
    raw = struct.pack("<I", 1) + b"a" + b"\x01\x00"

    refused(
        *bytes_request(raw),
        "the 4-byte length of BYTES element 1 runs past the end",
        "input's 7 binary bytes (at byte 5)",
    )


def test_a_bytes_length_prefix_may_not_run_into_the_next_input() -> None:
    # The prefix claims more than this tensor has, though the body holds enough after it.
    raw = struct.pack("<I", 1) + b"a" + struct.pack("<I", 10) + b"b"
    inputs = [
        binary_tensor("text", "BYTES", [1, 2], len(raw)),
        binary_tensor("x", "FP32", [1, 4], 16),
    ]

    refused(*handmade(inputs, raw + X_BYTES), "BYTES element 1 says it is 10 bytes long")


@pytest.mark.parametrize("elements", [[b"a"], [b"a", b"b", b"c"], []])
def test_a_bytes_element_count_unlike_the_shape_is_400(elements: list[bytes]) -> None:
    raw = serialize_byte_tensor(np.array(elements, dtype=object)).item() if elements else b""

    refused(*bytes_request(raw), "shape [1, 2] needs 2 BYTES elements")


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("FP32", np.array([1.0, np.nan], "<f4")),
        ("FP32", np.array([np.inf, 1.0], "<f4")),
        ("FP16", np.array([-np.inf, 0.0], "<f2")),
        ("FP64", np.array([0.0, np.nan], "<f8")),
    ],
)
def test_binary_nan_and_infinity_are_refused_as_in_json(datatype: str, values: np.ndarray) -> None:
    spec = TensorSpec("t", datatype, (2,))
    body, header = handmade([binary_tensor("t", datatype, [2], values.nbytes)], values.tobytes())

    with pytest.raises(InvalidInputError, match="values must be finite"):
        decode(body, header, (spec,))


def test_binary_bool_bytes_must_be_0_or_1() -> None:
    spec = TensorSpec("m", "BOOL", (3,))
    body, header = handmade([binary_tensor("m", "BOOL", [3], 3)], b"\x01\x00\x02")

    with pytest.raises(InvalidInputError, match="BOOL binary data must be bytes 0 or 1"):
        decode(body, header, (spec,))


def test_binary_batch_over_the_limit_is_413() -> None:
    body, header = handmade(
        [binary_tensor("x", "FP32", [17, 4], 17 * 16), TEXT_JSON], b"\x00" * 17 * 16
    )

    with pytest.raises(PayloadTooLargeError, match="batch of 17 is over the limit of 16"):
        decode(body, header)


def test_binary_data_is_read_little_endian() -> None:
    spec = TensorSpec("t", "INT32", (2,))
    raw = b"\x01\x00\x00\x00\x00\x01\x00\x00"
    body, header = handmade([binary_tensor("t", "INT32", [2], 8)], raw)

    assert decode(body, header, (spec,)).inputs["t"].tolist() == [1, 256]


def test_an_empty_binary_tensor_is_refused_before_the_model() -> None:
    # Kernels fail on empty tensors in their own ways (a 500, counted against a canary).
    body, header = handmade([binary_tensor("x", "FP32", [0, 4], 0), TEXT_JSON], b"")

    with pytest.raises(InvalidInputError, match=r"shape \[0, 4\] holds no elements"):
        decode(body, header)


@pytest.mark.parametrize(
    ("parameters", "phrase"),
    [
        ({"binary_data_output": "yes"}, "'parameters.binary_data_output' must be true or false"),
        ({"binary_data_output": 1}, "'parameters.binary_data_output' must be true or false"),
    ],
)
def test_binary_data_output_must_be_a_boolean(parameters: dict[str, Any], phrase: str) -> None:
    body, header = handmade(
        [binary_tensor("x", "FP32", [1, 4], 16), TEXT_JSON], X_BYTES, parameters=parameters
    )

    refused(body, header, phrase)


@pytest.mark.parametrize(
    ("output", "phrase"),
    [
        ({"name": "y", "parameters": {"binary_data": "true"}}, "binary_data must be true or false"),
        ({"name": "y", "parameters": [1]}, "output 'y': 'parameters' must be an object"),
    ],
)
def test_output_parameters_are_checked(output: dict[str, Any], phrase: str) -> None:
    body, header = handmade(
        [binary_tensor("x", "FP32", [1, 4], 16), TEXT_JSON], X_BYTES, outputs=[output]
    )

    refused(body, header, phrase)


# --- replies -------------------------------------------------------------------------------------


def response(**outputs: np.ndarray) -> InferenceResponse:
    return InferenceResponse("m", "2", outputs, id="r-9")


def wanting(binary_all: bool = False, **flags: bool) -> InferenceRequest:
    return InferenceRequest({}, binary_all=binary_all, output_binary=flags)


def test_a_reply_with_no_binary_output_is_the_json_response() -> None:
    answer = response(y=X_VALUES, text=TEXT_VALUES[:1])

    for request in (None, wanting(), wanting(True, y=False, text=False)):
        reply = encode_reply(answer, request)

        assert reply.content_type == JSON_CONTENT_TYPE
        assert reply.headers == {}
        assert reply.body == encode_json(encode_response(answer))


@pytest.mark.parametrize("datatype", SUPPORTED_NAMES)
def test_every_datatype_in_a_binary_reply_reads_back_in_tritonclient(datatype: str) -> None:
    # GIVEN an output of this datatype, asked for in binary
    values = sample(datatype, (3, 2))

    # WHEN it is encoded and tritonclient reads the reply
    reply = encode_reply(response(out=values), wanting(True))
    result = read_reply(reply)

    # THEN it has the binary form's headers and tritonclient gets the very same array
    assert reply.content_type == BINARY_CONTENT_TYPE
    header = json.loads(reply.body[: int(reply.headers[REPLY_HEADER_LENGTH])])
    (described,) = header["outputs"]
    assert "data" not in described
    assert described["datatype"] == datatype
    assert described["shape"] == [3, 2]
    got = result.as_numpy("out")
    assert got.shape == values.shape
    if datatype == "BYTES":
        assert got.tolist() == values.tolist()
    else:
        assert got.dtype == values.dtype
        np.testing.assert_array_equal(got, values)


@pytest.mark.parametrize(("datatype", "itemsize"), [("FP16", 2), ("BOOL", 1), ("INT64", 8)])
def test_binary_sizes_are_itemsize_per_element(datatype: str, itemsize: int) -> None:
    reply = encode_reply(response(out=sample(datatype, (4, 5))), wanting(True))

    header = json.loads(reply.body[: int(reply.headers[REPLY_HEADER_LENGTH])])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 20 * itemsize}
    assert len(reply.body) == int(reply.headers[REPLY_HEADER_LENGTH]) + 20 * itemsize


@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
def test_an_empty_output_in_binary_has_size_0_and_reads_back_empty(datatype: str) -> None:
    empty = np.empty((0, 2), dtype=BY_NAME[datatype].numpy)

    reply = encode_reply(response(out=empty, y=X_VALUES), wanting(True))
    result = read_reply(reply)

    header = result.get_response()
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 0}
    assert result.as_numpy("out").shape == (0, 2)
    np.testing.assert_array_equal(result.as_numpy("y"), X_VALUES)


def test_bytes_in_a_binary_reply_are_length_prefixed_as_tritonclient_reads_them() -> None:
    values = np.array([b"\xff", b"", b"abc"], dtype=object)

    reply = encode_reply(response(blob=values), wanting(blob=True))

    tail = reply.body[int(reply.headers[REPLY_HEADER_LENGTH]) :]
    assert tail == b"\x01\x00\x00\x00\xff\x00\x00\x00\x00\x03\x00\x00\x00abc"
    assert deserialize_bytes_tensor(tail).tolist() == values.tolist()


def test_a_mixed_reply_keeps_json_outputs_as_data_and_binary_ones_in_order() -> None:
    # GIVEN three outputs: two binary (in between them one asked for as JSON)
    ids = np.array([[1, -2, 3]], dtype=np.int64)
    answer = response(y=X_VALUES, ids=ids, text=TEXT_VALUES)

    # WHEN the global flag is on but ids opts out
    reply = encode_reply(answer, wanting(True, ids=False))
    result = read_reply(reply)

    # THEN ids is JSON data, the others binary, each read back as sent, in the response order
    header = result.get_response()
    assert header["model_name"] == "m"
    assert header["model_version"] == "2"
    assert header["id"] == "r-9"
    assert [o["name"] for o in header["outputs"]] == ["y", "ids", "text"]
    assert header["outputs"][1]["data"] == [1, -2, 3]
    np.testing.assert_array_equal(result.as_numpy("y"), X_VALUES)
    np.testing.assert_array_equal(result.as_numpy("ids"), ids)
    assert result.as_numpy("text").tolist() == TEXT_VALUES.tolist()
    assert reply.headers == {REPLY_HEADER_LENGTH: str(len(encode_json(header)))}


def test_a_non_utf8_bytes_output_is_406_as_json_and_fine_in_binary() -> None:
    answer = response(text=TEXT_VALUES)  # holds b"\x00\xff raw"

    with pytest.raises(NotAcceptableError) as caught:
        encode_reply(answer, wanting(text=False))
    result = read_reply(encode_reply(answer, wanting(text=True)))

    assert caught.value.status == 406
    assert "binary_data" in caught.value.message
    assert result.as_numpy("text").tolist() == TEXT_VALUES.tolist()


@pytest.mark.parametrize("datatype", ["FP16", "INT64", "BOOL", "BYTES"])
def test_a_tritonclient_request_round_trips_through_our_codec_and_back(datatype: str) -> None:
    # GIVEN an input tritonclient sends binary, with its default reply settings
    values = sample(datatype, (2, 3))
    spec = TensorSpec("t", datatype, (-1, 3))
    body, header = triton_request(triton_input("t", values, datatype))

    # WHEN we decode it and answer with the same array (an identity model)
    request = decode(body, header, (spec,))
    reply = encode_reply(response(t=request.inputs["t"]), request)

    # THEN the reply is binary and tritonclient reads back exactly what it sent
    assert reply.content_type == BINARY_CONTENT_TYPE
    got = read_reply(reply).as_numpy("t")
    assert got.tolist() == values.tolist()
    if datatype != "BYTES":
        assert got.dtype == values.dtype


def test_an_image_sent_binary_is_four_bytes_per_value_and_decodes_exactly() -> None:
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    spec = TensorSpec("image", "FP32", (-1, 3, 224, 224))
    body, header = triton_request(triton_input("image", image, "FP32"))

    array = decode(body, header, (spec,)).inputs["image"]

    assert header is not None
    assert len(body) - int(header) == image.nbytes
    assert array.dtype == np.dtype("float32")
    np.testing.assert_array_equal(array, image)


def test_sagemaker_s_binary_media_type_and_bare_bodies_are_accepted_where_asked_for() -> None:
    sagemaker = "application/vnd.sagemaker-triton.binary+json;json-header-size=12"
    assert check_content_type(sagemaker, binary=True) is None
    assert check_content_type("image/png", bare=("image/png",)) is None
    with pytest.raises(UnsupportedMediaTypeError, match="or to a model published with processing"):
        check_content_type("image/gif", binary=True, bare=("image/png", "image/jpeg"))


@pytest.mark.parametrize(
    ("content_type", "header", "expected"),
    [
        (None, None, None),
        ("application/json", None, None),
        ("application/octet-stream", "17", "17"),  # the header wins
        ("application/vnd.sagemaker-triton.binary+json;json-header-size=42", None, "42"),
        ("application/vnd.sagemaker-triton.binary+json", None, None),  # no size: all JSON
        ("application/json;json-header-size=42", None, None),  # only SageMaker's media type
    ],
)
def test_the_json_part_s_length_comes_from_the_header_or_sagemaker_s_media_type(
    content_type: str | None, header: str | None, expected: str | None
) -> None:
    assert binary_header_length(content_type, header) == expected
