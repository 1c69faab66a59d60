"""The v2 JSON codec: parsing, decoding against a signature, every datatype, every refusal."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from onnxkit.codecs import (
    InferenceResponse,
    decode_request,
    decode_tensor,
    encode_response,
    encode_tensor,
    parse_json,
)
from onnxkit.datatypes import BY_NAME, SUPPORTED_NAMES
from onnxkit.errors import (
    InvalidInputError,
    NotAcceptableError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from onnxkit.manifest import TensorSpec
from onnxkit.media import check_content_type

X = TensorSpec("x", "FP32", (-1, 4))
SIGNATURE = (X, TensorSpec("mask", "BOOL", (-1, 3)))


def tensor(name: str, datatype: str, shape: list[int], data: Any) -> dict[str, Any]:
    """One v2 input tensor."""
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def decode_x(raw: dict[str, Any], max_batch_size: int = 16) -> np.ndarray:
    """Decode against the FP32 [N, 4] spec."""
    return decode_tensor(raw, X, max_batch_size=max_batch_size)


def invalid(raw: dict[str, Any], spec: TensorSpec = X) -> InvalidInputError:
    """Decode, expecting a 400 invalid_input; return the error."""
    with pytest.raises(InvalidInputError) as caught:
        decode_tensor(raw, spec, max_batch_size=16)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_input"
    assert repr(spec.name) in caught.value.message
    return caught.value


# --- decode_tensor: layouts and shapes -------------------------------------------------------


def test_flat_data_is_reshaped_row_major() -> None:
    array = decode_x(tensor("x", "FP32", [2, 4], [1, 2, 3, 4, 5, 6, 7, 8]))

    assert array.dtype == np.float32
    assert array.shape == (2, 4)
    np.testing.assert_array_equal(array, [[1, 2, 3, 4], [5, 6, 7, 8]])


def test_nested_data_matching_the_shape_is_accepted() -> None:
    array = decode_x(tensor("x", "FP32", [2, 4], [[1, 2, 3, 4], [5.5, 6, 7, 8]]))

    assert array.dtype == np.float32
    assert array.shape == (2, 4)
    assert array[1, 0] == np.float32(5.5)


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_dynamic_dimension_accepts_any_batch_up_to_the_limit(batch: int) -> None:
    array = decode_x(tensor("x", "FP32", [batch, 4], [0.5] * (batch * 4)))

    assert array.shape == (batch, 4)


@pytest.mark.parametrize("shape", [[0, 4], [2, 0]])
def test_an_empty_tensor_is_refused_before_the_model(shape: list[int]) -> None:
    # onnxruntime kernels fail on empty tensors in their own ways: a client's 400, never a
    # 500 that counts against a canary.
    error = invalid(tensor("x", "FP32", shape, []), TensorSpec("x", "FP32", (-1, -1)))

    assert f"shape {shape} holds no elements" in error.message


def test_wrong_rank_is_refused() -> None:
    error = invalid(tensor("x", "FP32", [4], [1, 2, 3, 4]))

    assert "shape [4] does not match the model's ['N', 4]" in error.message


def test_wrong_fixed_dimension_is_refused() -> None:
    error = invalid(tensor("x", "FP32", [2, 3], [1, 2, 3, 4, 5, 6]))

    assert "shape [2, 3] does not match the model's ['N', 4]" in error.message


@pytest.mark.parametrize("shape", [[1, -4], [1, 4.0], [1, True], "1,4", None, [[1], 4]])
def test_shape_must_be_a_list_of_non_negative_integers(shape: Any) -> None:
    error = invalid(tensor("x", "FP32", shape, [1, 2, 3, 4]))

    assert "'shape' must be a list of non-negative integers" in error.message


def test_value_count_must_match_the_shape() -> None:
    error = invalid(tensor("x", "FP32", [2, 4], [1, 2, 3, 4, 5, 6, 7]))

    assert "shape [2, 4] needs 8 values, got 7" in error.message


def test_nested_data_must_have_the_declared_shape() -> None:
    # Eight values, as [1, 8] needs, but nested as [2, 4].
    spec = TensorSpec("x", "FP32", (-1, -1))

    error = invalid(tensor("x", "FP32", [1, 8], [[1, 2, 3, 4], [5, 6, 7, 8]]), spec)

    assert "nested data has shape [2, 4] but 'shape' says [1, 8]" in error.message


@pytest.mark.parametrize(
    "data", [[[1, 2, 3, 4], [5, 6, 7]], [[1, 2, 3, 4], 5], [[1, 2, 3, [4]], [5, 6, 7, 8]]]
)
def test_ragged_data_is_refused(data: Any) -> None:
    error = invalid(tensor("x", "FP32", [2, 4], data))

    assert "rectangular list of numbers" in error.message


def test_missing_data_is_refused() -> None:
    error = invalid({"name": "x", "datatype": "FP32", "shape": [1, 4]})

    assert "has no 'data'" in error.message


@pytest.mark.parametrize("data", ["1,2,3,4", {"values": [1, 2, 3, 4]}, 1.0, None])
def test_data_must_be_a_list(data: Any) -> None:
    error = invalid(tensor("x", "FP32", [1, 4], data))

    assert "'data' must be a list" in error.message


# --- decode_tensor: datatypes and values -----------------------------------------------------


def test_wrong_datatype_names_the_one_the_model_wants() -> None:
    error = invalid(tensor("x", "FP64", [1, 4], [1, 2, 3, 4]))

    assert "does not match the model's FP32" in error.message
    assert "send datatype 'FP32'" in error.message


@pytest.mark.parametrize("datatype", ["FLOAT", "fp32", "BF16", "STRING", None, 32])
def test_unsupported_datatype_lists_the_supported_ones(datatype: Any) -> None:
    error = invalid(tensor("x", datatype, [1, 4], [1, 2, 3, 4]))

    assert "is not supported" in error.message
    assert "FP32" in error.message
    assert "UINT64" in error.message
    assert "BYTES" in error.message


ROUND_TRIP = {
    "BOOL": [True, False, False, True],
    "UINT8": [0, 1, 128, 255],
    "UINT16": [0, 1, 40_000, 65_535],
    "UINT32": [0, 1, 3_000_000_000, 4_294_967_295],
    "UINT64": [0, 1, 2**63, 2**64 - 1],
    "INT8": [-128, -1, 0, 127],
    "INT16": [-32_768, -1, 0, 32_767],
    "INT32": [-(2**31), -1, 0, 2**31 - 1],
    "INT64": [-(2**63), -1, 0, 2**63 - 1],
    "FP16": [-65_504.0, -0.5, 0.0, 65_504.0],
    "FP32": [-(2.0**127), -0.25, 0.0, 1.5],
    "FP64": [-1.0e308, -0.1, 0.0, 1.0e308],
    "BYTES": ["", "plain", "é ☃ 🐍", "tab\tnul\u0000end"],
}


def held(datatype: str, values: list[Any]) -> np.ndarray:
    """The array a decoded tensor must equal: BYTES elements are UTF-8 ``bytes``."""
    if datatype == "BYTES":
        values = [text.encode() for text in values]
    return np.array(values, dtype=BY_NAME[datatype].numpy)


def test_round_trip_table_covers_every_supported_datatype() -> None:
    assert sorted(ROUND_TRIP) == sorted(SUPPORTED_NAMES)


@pytest.mark.parametrize("datatype", sorted(ROUND_TRIP))
def test_every_datatype_round_trips(datatype: str) -> None:
    # GIVEN extreme and ordinary values of one datatype, nested as [2, 2]
    values = ROUND_TRIP[datatype]
    spec = TensorSpec("t", datatype, (-1, 2))
    raw = tensor("t", datatype, [2, 2], [values[:2], values[2:]])

    # WHEN it is decoded, encoded, serialised as JSON and decoded again
    array = decode_tensor(raw, spec, max_batch_size=4)
    encoded = json.loads(json.dumps(encode_tensor("t", array)))
    again = decode_tensor(encoded, spec, max_batch_size=4)

    # THEN the dtype, shape and every value survive
    assert array.dtype == BY_NAME[datatype].numpy
    assert array.shape == (2, 2)
    np.testing.assert_array_equal(array.ravel(), held(datatype, values))
    assert encoded == {"name": "t", "datatype": datatype, "shape": [2, 2], "data": values}
    assert again.dtype == array.dtype
    np.testing.assert_array_equal(again, array)


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("FP32", ["1", "2"], "'data' must hold only numbers"),
        ("FP32", [1.0, "2"], "'data' must hold only numbers"),
        ("INT64", [1, None], "'data' must hold only numbers"),
        ("FP32", [None, None], "'data' must hold only numbers"),
        ("BOOL", ["true", "false"], "'data' must hold only booleans"),
        ("FP32", [True, False], "FP32 data must be numbers, not booleans"),
        ("INT32", [True, False], "INT32 data must be numbers, not booleans"),
        ("UINT8", [False, True], "UINT8 data must be numbers, not booleans"),
        ("BOOL", [1, 0], "BOOL data must be true/false"),
        ("BOOL", [True, 0], "BOOL data must be true/false"),
        ("BOOL", [0.0, 1.0], "BOOL data must be true/false"),
        ("INT32", [1.5, 2.0], "INT32 data must be integers"),
        ("INT64", [1, 2.0], "INT64 data must be integers"),
        ("UINT8", [1.0, 2.0], "UINT8 data must be integers"),
        ("UINT8", [300, 1], "values must lie in [0, 255] for UINT8"),
        ("UINT8", [-1, 1], "values must lie in [0, 255] for UINT8"),
        ("INT8", [128, 0], "values must lie in [-128, 127] for INT8"),
        ("INT32", [2**31, 0], "for INT32"),
        ("INT64", [2**63, 0], ""),  # numpy reads this mix as float64: any 400 will do
        ("UINT64", [2**64, 0], ""),  # too big for any integer dtype: any 400 will do
        ("FP32", [1e39, 0.0], "values must be finite and within FP32 range"),
        ("FP16", [70_000.0, 0.0], "values must be finite and within FP16 range"),
        ("FP64", [1e400, 0.0], "values must be finite and within FP64 range"),
    ],
)
def test_values_that_do_not_fit_the_datatype_are_refused(
    datatype: str, data: list[Any], message: str
) -> None:
    spec = TensorSpec("t", datatype, (2,))

    error = invalid(tensor("t", datatype, [2], data), spec)

    assert message in error.message


@pytest.mark.parametrize(
    ("datatype", "data"),
    [("INT32", [1, True]), ("INT64", [False, 7]), ("FP32", [1.5, True]), ("UINT8", [True, 2])],
)
def test_booleans_mixed_with_numbers_are_refused_for_numeric_types(
    datatype: str, data: list[Any]
) -> None:
    # JSON true is not a number: mixing it into numeric data must not turn it into 1.
    spec = TensorSpec("t", datatype, (2,))

    error = invalid(tensor("t", datatype, [2], data), spec)

    assert f"{datatype} data must be numbers, not booleans" in error.message


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        ("UINT64", [1, 2**64 - 1]),
        ("UINT64", [[0, 2**63], [5, 2**64 - 2]]),
        ("FP64", [1, 10**20]),
        ("FP32", [10**20, 0]),
    ],
)
def test_large_integer_literals_are_valid_where_the_datatype_holds_them(
    datatype: str, data: list[Any]
) -> None:
    # Valid data; numpy alone reads a mix of ints below and above 2**63 as float64 (losing
    # UINT64 precision) and ints above 2**64 as Python objects.
    dtype = BY_NAME[datatype].numpy
    shape = list(np.shape(data))
    spec = TensorSpec("t", datatype, tuple(-1 for _ in shape))

    array = decode_tensor(tensor("t", datatype, shape, data), spec, max_batch_size=4)

    assert array.dtype == dtype
    np.testing.assert_array_equal(array, np.array(data, dtype=dtype))


# --- decode_tensor: BYTES in JSON ----------------------------------------------------------


def test_bytes_strings_become_an_object_array_of_utf8_bytes() -> None:
    spec = TensorSpec("text", "BYTES", (-1, 2))

    array = decode_tensor(
        tensor("text", "BYTES", [2, 2], [["a", "é"], ["", "long " * 3]]), spec, max_batch_size=4
    )

    assert array.dtype == np.dtype(object)
    assert array.shape == (2, 2)
    assert [type(item) for item in array.ravel()] == [bytes] * 4
    assert array.tolist() == [[b"a", "é".encode()], [b"", b"long long long "]]


def test_bytes_flat_data_is_reshaped_and_counted_like_numbers() -> None:
    spec = TensorSpec("text", "BYTES", (-1, 2))

    array = decode_tensor(tensor("text", "BYTES", [2, 2], list("abcd")), spec, max_batch_size=4)
    error = invalid(tensor("text", "BYTES", [2, 2], list("abc")), spec)

    assert array.tolist() == [[b"a", b"b"], [b"c", b"d"]]
    assert "shape [2, 2] needs 4 values, got 3" in error.message


def test_bytes_elements_equal_to_each_other_stay_separate_objects_of_any_length() -> None:
    # numpy would read a list of equal-length bytes as one fixed-width |S array; it must not.
    spec = TensorSpec("text", "BYTES", (3,))

    array = decode_tensor(tensor("text", "BYTES", [3], ["ab", "ab", "ab"]), spec, max_batch_size=1)

    assert array.dtype == np.dtype(object)
    assert array.tolist() == [b"ab", b"ab", b"ab"]


@pytest.mark.parametrize(
    "data", [[1, 2], ["a", 2], ["a", None], [True, "b"], ["a", 1.5], [{"s": "a"}, "b"]]
)
def test_bytes_data_must_be_strings(data: list[Any]) -> None:
    spec = TensorSpec("text", "BYTES", (2,))

    error = invalid(tensor("text", "BYTES", [2], data), spec)

    assert "input 'text': BYTES data must be strings" in error.message


def test_strings_are_refused_for_a_numeric_input() -> None:
    error = invalid(tensor("x", "FP32", [1, 4], ["1", "2", "3", "4"]))

    assert "'data' must hold only numbers" in error.message


# --- decode_tensor: batch limit --------------------------------------------------------------


def test_batch_over_the_limit_is_413() -> None:
    with pytest.raises(PayloadTooLargeError) as caught:
        decode_x(tensor("x", "FP32", [3, 4], [0.0] * 12), max_batch_size=2)

    assert caught.value.status == 413
    assert caught.value.code == "payload_too_large"
    assert "batch of 3 is over the limit of 2" in caught.value.message


def test_batch_at_the_limit_is_accepted() -> None:
    array = decode_x(tensor("x", "FP32", [2, 4], [0.0] * 8), max_batch_size=2)

    assert array.shape == (2, 4)


def test_batch_limit_is_checked_before_the_data_is_read() -> None:
    # A huge declared batch is refused as too large without building an array for it.
    with pytest.raises(PayloadTooLargeError):
        decode_x(tensor("x", "FP32", [10**9, 4], [0.0] * 4), max_batch_size=16)


def test_a_fixed_first_dimension_is_not_a_batch() -> None:
    spec = TensorSpec("image", "UINT8", (3, 2))

    array = decode_tensor(tensor("image", "UINT8", [3, 2], [1] * 6), spec, max_batch_size=1)

    assert array.shape == (3, 2)
    assert array.dtype == np.uint8


# --- decode_request ---------------------------------------------------------------------------


def request(*inputs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A parsed v2 request body."""
    return {"inputs": list(inputs), **extra}


X_IN = tensor("x", "FP32", [1, 4], [1, 2, 3, 4])
MASK_IN = tensor("mask", "BOOL", [1, 3], [True, False, True])


def decode_invalid(data: dict[str, Any]) -> InvalidInputError:
    """decode_request, expecting a 400 invalid_input."""
    with pytest.raises(InvalidInputError) as caught:
        decode_request(data, SIGNATURE, max_batch_size=16)
    assert caught.value.code == "invalid_input"
    return caught.value


def test_decode_request_returns_arrays_by_name_and_the_request_fields() -> None:
    data = request(MASK_IN, X_IN, id=42, parameters={"trace": True}, outputs=[{"name": "y"}])

    decoded = decode_request(data, SIGNATURE, max_batch_size=16)

    assert sorted(decoded.inputs) == ["mask", "x"]
    assert decoded.inputs["x"].dtype == np.float32
    assert decoded.inputs["mask"].dtype == np.bool_
    np.testing.assert_array_equal(decoded.inputs["mask"], [[True, False, True]])
    assert decoded.id == "42"
    assert decoded.parameters == {"trace": True}
    assert decoded.outputs == ["y"]


def test_decode_request_defaults() -> None:
    decoded = decode_request(request(X_IN, MASK_IN), SIGNATURE, max_batch_size=16)

    assert decoded.outputs is None
    assert decoded.id is None
    assert decoded.parameters == {}


def test_missing_input_is_named() -> None:
    error = decode_invalid(request(X_IN))

    assert "missing input(s) 'mask'" in error.message
    assert "'mask' (BOOL ['N', 3])" in error.message


def test_duplicate_input_is_refused() -> None:
    error = decode_invalid(request(X_IN, MASK_IN, X_IN))

    assert "input 'x' is given twice" in error.message


def test_unknown_input_lists_the_model_inputs() -> None:
    error = decode_invalid(request(X_IN, MASK_IN, tensor("z", "FP32", [1], [1.0])))

    assert "unknown input 'z'" in error.message
    assert "'x' (FP32 ['N', 4])" in error.message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "'inputs' must be a non-empty list"),
        ({"inputs": []}, "'inputs' must be a non-empty list"),
        ({"inputs": {"x": [1, 2, 3, 4]}}, "'inputs' must be a non-empty list"),
        ({"inputs": [[1, 2, 3, 4]]}, "inputs[0] must be an object"),
        ({"inputs": [{"datatype": "FP32", "shape": [1, 4], "data": []}]}, "inputs[0] has no"),
        (request(X_IN, MASK_IN, parameters=[1]), "'parameters' must be an object"),
    ],
)
def test_malformed_requests_are_refused(data: dict[str, Any], message: str) -> None:
    error = decode_invalid(data)

    assert message in error.message


@pytest.mark.parametrize(
    "outputs", ["y", [{"nom": "y"}], ["y"], [{"name": 3}], {"name": "y"}, [None]]
)
def test_outputs_must_be_a_list_of_named_objects(outputs: Any) -> None:
    error = decode_invalid(request(X_IN, MASK_IN, outputs=outputs))

    assert "'outputs' must be a list of objects with a 'name'" in error.message


def test_outputs_keep_their_order() -> None:
    data = request(X_IN, MASK_IN, outputs=[{"name": "b"}, {"name": "a", "parameters": {}}])

    assert decode_request(data, SIGNATURE, max_batch_size=16).outputs == ["b", "a"]


# --- parse_json --------------------------------------------------------------------------------


def test_parse_json_accepts_bytes_and_text() -> None:
    assert parse_json(b'{"inputs": []}', max_bytes=100) == {"inputs": []}
    assert parse_json('{"id": "é"}', max_bytes=100) == {"id": "é"}


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_tokens_are_refused(token: str) -> None:
    body = '{"inputs": [{"name": "x", "data": [1.0, ' + token + "]}]}"

    with pytest.raises(InvalidInputError) as caught:
        parse_json(body, max_bytes=1000)

    assert caught.value.status == 400
    assert f"{token} is not valid JSON" in caught.value.message


@pytest.mark.parametrize("body", [None, b"", "", b"  \n\t", "   "])
def test_empty_body_is_refused(body: Any) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_json(body, max_bytes=100)

    assert "the request body is empty" in caught.value.message


def test_body_over_max_bytes_is_413_and_at_the_limit_is_fine() -> None:
    body = b'{"id": "' + b"a" * 10 + b'"}'  # 20 bytes

    assert parse_json(body, max_bytes=len(body)) == {"id": "a" * 10}
    with pytest.raises(PayloadTooLargeError) as caught:
        parse_json(body, max_bytes=len(body) - 1)

    assert caught.value.status == 413
    assert caught.value.code == "payload_too_large"
    assert "the body is 20 bytes; the limit is 19" in caught.value.message


def test_text_body_size_is_counted_in_utf8_bytes() -> None:
    body = '{"id": "ééééé"}'  # 15 characters, 20 bytes

    with pytest.raises(PayloadTooLargeError):
        parse_json(body, max_bytes=19)


@pytest.mark.parametrize("body", ["[]", "1", '"inputs"', "null", "true", "[{}]"])
def test_non_object_body_is_refused(body: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_json(body, max_bytes=100)

    assert "must be a JSON object" in caught.value.message


@pytest.mark.parametrize("body", [b"{", b"{'a': 1}", b'{"a": 1,}', b'{"a": "\xff"}', b"\x00"])
def test_malformed_json_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_json(body, max_bytes=100)

    assert caught.value.code == "invalid_input"
    assert "not valid JSON" in caught.value.message


def test_deeply_nested_json_is_a_client_error_not_a_crash() -> None:
    # 200 kB, well under the body limit, but deeper than Python's recursion limit.
    body = '{"inputs": ' + "[" * 100_000 + "]" * 100_000 + "}"

    with pytest.raises(InvalidInputError) as caught:
        parse_json(body, max_bytes=1_000_000)

    assert caught.value.status == 400


# --- check_content_type -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON ; charset=UTF-8",
        "text/json",
        "application/x-www-form-urlencoded",
    ],
)
def test_json_content_types_are_accepted(content_type: str | None) -> None:
    assert check_content_type(content_type) is None


@pytest.mark.parametrize(
    ("content_type", "media"),
    [
        ("text/plain", "text/plain"),
        ("text/plain; charset=utf-8", "text/plain"),
        ("application/octet-stream", "application/octet-stream"),
        ("multipart/form-data; boundary=x", "multipart/form-data"),
    ],
)
def test_other_content_types_are_415(content_type: str, media: str) -> None:
    with pytest.raises(UnsupportedMediaTypeError) as caught:
        check_content_type(content_type)

    assert caught.value.status == 415
    assert caught.value.code == "unsupported_media_type"
    assert f"Content-Type {media!r} is not supported" in caught.value.message


# --- encoding ---------------------------------------------------------------------------------


def test_encode_response_flattens_outputs_in_order() -> None:
    response = InferenceResponse(
        model_name="tiny",
        model_version="3",
        outputs={
            "y": np.array([[1.5, 2.0], [3.0, -4.25]], dtype=np.float32),
            "label": np.array([1, 0], dtype=np.int64),
        },
        id="req-1",
        parameters={"cached": True},
    )

    body = encode_response(response)

    assert body == {
        "model_name": "tiny",
        "model_version": "3",
        "id": "req-1",
        "parameters": {"cached": True},
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [2, 2], "data": [1.5, 2.0, 3.0, -4.25]},
            {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]},
        ],
    }
    assert json.loads(json.dumps(body)) == body


def test_encode_response_leaves_out_empty_id_and_parameters() -> None:
    body = encode_response(InferenceResponse("tiny", "1", {"y": np.zeros((0, 2), np.float32)}))

    assert body == {
        "model_name": "tiny",
        "model_version": "1",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [0, 2], "data": []}],
    }


@pytest.mark.parametrize("array", [np.array([1 + 2j]), np.array(["a", "b"]), np.array([b"a"])])
def test_encode_tensor_refuses_dtypes_v2_json_cannot_carry(array: np.ndarray) -> None:
    with pytest.raises(TypeError, match="v2 JSON cannot carry"):
        encode_tensor("z", array)


def test_encode_tensor_writes_bytes_as_utf8_strings() -> None:
    array = np.array([[b"a", "é".encode()], [b"", b"\x00"]], dtype=object)

    assert encode_tensor("text", array) == {
        "name": "text",
        "datatype": "BYTES",
        "shape": [2, 2],
        "data": ["a", "é", "", "\x00"],
    }


def test_a_bytes_output_that_is_not_utf8_is_406_and_names_binary_data() -> None:
    array = np.array([b"ok", b"\xff\xfe"], dtype=object)

    with pytest.raises(NotAcceptableError) as caught:
        encode_response(InferenceResponse("m", "1", {"blob": array}))

    assert caught.value.status == 406
    assert "output 'blob' holds bytes that are not UTF-8 text" in caught.value.message
    assert '"outputs": [{"name":"blob","parameters":{"binary_data":true}}]' in (
        caught.value.message
    )


@pytest.mark.parametrize("item", ["text", 1, None])
def test_a_bytes_output_must_hold_bytes_objects(item: Any) -> None:
    # A backend that hands back str (as onnxruntime does) is our bug: a 500, not client text.
    array = np.array([b"ok", item], dtype=object)

    with pytest.raises(TypeError, match="a BYTES tensor must hold bytes"):
        encode_tensor("text", array)
