"""The in-process backend with string tensors: BYTES in and out, as onnxruntime wants them."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.http import InferInput, InferResult
from tritonclient.http._utils import _get_inference_request

from onnxkit.backends.onnxruntime import OnnxruntimeBackend
from onnxkit.codecs import InferenceResponse, decode_request, encode_reply, split_body
from onnxkit.errors import InvalidInputError
from onnxkit.media import REPLY_HEADER_LENGTH
from onnxkit.session import load_session, warm_up
from onnxkit.sources import manifest_from_session
from tests.unit.conftest import BuiltModel


def strings(*rows: list[bytes]) -> np.ndarray:
    """An object array of bytes, one row per argument."""
    array = np.empty((len(rows), len(rows[0])), dtype=object)
    for index, row in enumerate(rows):
        array[index, :] = row
    return array


@pytest.fixture
def backend(strings_model: BuiltModel) -> OnnxruntimeBackend:
    session = load_session(strings_model.path, intra_op_threads=1)
    return OnnxruntimeBackend(manifest_from_session(session, strings_model.path, name="s"), session)


def test_a_string_model_is_described_as_bytes(backend: OnnxruntimeBackend) -> None:
    assert [(s.name, s.datatype, s.shape) for s in backend.manifest.inputs] == [
        ("text", "BYTES", (-1, 2))
    ]
    assert [s.datatype for s in backend.manifest.outputs] == ["BYTES", "INT64"]


def test_bytes_go_in_as_text_and_come_back_as_bytes(backend: OnnxruntimeBackend) -> None:
    text = strings([b"a", "é ☃".encode()], [b"", b"nul\x00inside"])

    out = backend.run({"text": text})

    assert out["same"].dtype == np.dtype(object)
    assert [type(item) for item in out["same"].ravel()] == [bytes] * 4
    assert out["same"].tolist() == text.tolist()  # not "b'a'": bytes were decoded, not str()ed
    assert out["shape"].tolist() == [2, 2]


def test_bytes_that_are_not_utf8_are_a_400_naming_the_element(
    backend: OnnxruntimeBackend,
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        backend.run({"text": strings([b"ok", b"\xff"])})

    assert caught.value.status == 400
    assert "input 'text': BYTES element 1 is not UTF-8 text" in caught.value.message


def test_warm_up_runs_a_real_string_model(strings_model: BuiltModel) -> None:
    session = load_session(strings_model.path, intra_op_threads=1)
    manifest = manifest_from_session(session, strings_model.path, name="s")

    assert warm_up(session, manifest.inputs) is None


def test_tritonclient_bytes_through_the_model_and_back(backend: OnnxruntimeBackend) -> None:
    # GIVEN a BYTES tensor sent as tritonclient sends it (binary, all outputs binary)
    sent = strings([b"first", "ünïcode".encode()])
    tensor = InferInput("text", [1, 2], "BYTES").set_data_from_numpy(sent)
    body, json_size = _get_inference_request(
        inputs=[tensor], request_id="", outputs=None, sequence_id=0, sequence_start=False,
        sequence_end=False, priority=0, timeout=None, custom_parameters=None,
    )  # fmt: skip

    # WHEN it is decoded, run and encoded
    data, binary = split_body(body, str(json_size), max_bytes=1 << 20)
    request = decode_request(data, backend.manifest.inputs, max_batch_size=4, binary=binary)
    outputs = backend.run(request.inputs, request.outputs)
    reply = encode_reply(InferenceResponse("s", "1", outputs), request)

    # THEN tritonclient reads back the same strings and the shape
    result = InferResult.from_response_body(
        reply.body, header_length=int(reply.headers[REPLY_HEADER_LENGTH])
    )
    assert result.as_numpy("same").tolist() == sent.tolist()
    assert result.as_numpy("shape").tolist() == [1, 2]
