"""A 50 MiB input through the upload path of `onnxkit local start-api` (moto S3 server).

The client asks the function for a presigned PUT, uploads the tensor's raw bytes to moto, and
references the upload in a v2 request: the answer matches a bare onnxruntime session run in
this process. Sent inline, the same input gets a 413 that points to the upload path; references
outside the payload store's uploads/ are refused (403); an upload is presigned only for a size
given, and only for that size. Timings are printed (run with -s).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from onnxkit_tools.local.stack import LOCAL_PAYLOAD_BUCKET, LOCAL_PAYLOAD_STORE
from tests.integration.conftest import STORE, function_env, serve_api
from tests.sigv4 import s3_accepts

pytestmark = pytest.mark.integration

MODEL = "reduce"
WIDTH = 13_107_200  # FP32 [1, WIDTH]: 50 MiB
OPSET = 17


@pytest.fixture(scope="module")
def reduce_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """x FLOAT [N, WIDTH] -> (ReduceMax, ReduceSum over axis 1) -> max, sum FLOAT [N, 1]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["x"], ["max"], axes=[1], keepdims=1),
            helper.make_node("ReduceSum", ["x", "axes"], ["sum"], keepdims=1),
        ],
        "reduce",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
        [
            helper.make_tensor_value_info("max", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 1]),
        ],
        [numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("reduce") / "model.onnx"
    onnx.save_model(model, str(path))
    return path


@pytest.fixture(scope="module")
def api(
    rie: Path, local_s3: Any, reduce_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """start-api serving the reduce model from the local S3, its payload store created there."""
    from onnxkit_tools.registry import Registry, publish_model

    store = Registry.from_uri(
        STORE, cache_dir=tmp_path_factory.mktemp("pub-reduce"), s3_client=local_s3.client()
    )
    publish_model(store, reduce_model, name=MODEL, version="1", alias="prod", cpu_graph=False)
    folder = tmp_path_factory.mktemp("env-reduce")
    values = function_env(local_s3.endpoint, folder / "lambda-tmp", ONNXKIT_MODEL_NAME=MODEL)
    path = folder / "env.json"
    path.write_text(json.dumps(values))
    with serve_api(path) as base:
        yield base


def request_for(reference: str) -> dict[str, Any]:
    parameters = {"reference": reference}
    x = {"name": "x", "datatype": "FP32", "shape": [1, WIDTH], "parameters": parameters}
    return {"inputs": [x]}


def test_a_50_mib_input_through_the_upload_path_matches_an_in_process_run(
    api: str, local_s3: Any, reduce_model: Path
) -> None:
    import onnxruntime

    # GIVEN 50 MiB of float32 and the answer of a bare session in this process
    values = np.random.default_rng(7).standard_normal((1, WIDTH), dtype=np.float32)
    session = onnxruntime.InferenceSession(str(reduce_model), providers=["CPUExecutionProvider"])
    expected_max, expected_sum = session.run(["max", "sum"], {"x": values})
    raw = values.astype("<f4").tobytes()

    # WHEN the client presigns an upload, PUTs the bytes to it and references it
    with requests.Session() as http:
        answer = http.post(f"{api}/v2/models/{MODEL}/uploads", json={"bytes": len(raw)}, timeout=30)
        assert answer.status_code == 200, answer.text
        upload = answer.json()
        assert upload["reference"].startswith(f"{LOCAL_PAYLOAD_STORE}/uploads/")
        assert upload["method"] == "PUT"
        started = time.perf_counter()
        put = http.put(upload["url"], data=raw, headers=upload["headers"], timeout=60)
        put_s = time.perf_counter() - started
        assert put.status_code == 200, put.text[:500]

        started = time.perf_counter()
        reply = http.post(
            f"{api}/v2/models/{MODEL}/infer", json=request_for(upload["reference"]), timeout=60
        )
        infer_s = time.perf_counter() - started

    # THEN the outputs are the in-process run's
    assert reply.status_code == 200, reply.text
    outputs = {o["name"]: o for o in reply.json()["outputs"]}
    assert outputs["max"]["data"] == expected_max.ravel().tolist()
    np.testing.assert_allclose(outputs["sum"]["data"], expected_sum.ravel(), rtol=1e-4, atol=1e-2)

    # (and, for scale, a bare GET of the same object from moto)
    key = upload["reference"].removeprefix(f"s3://{LOCAL_PAYLOAD_BUCKET}/")
    started = time.perf_counter()
    fetched = local_s3.client().get_object(Bucket=LOCAL_PAYLOAD_BUCKET, Key=key)["Body"].read()
    get_s = time.perf_counter() - started
    assert fetched == raw
    print(
        f"\n50 MiB upload path: PUT {put_s * 1000:.0f} ms, infer by reference "
        f"{infer_s * 1000:.0f} ms, bare GET from moto {get_s * 1000:.0f} ms"
    )


def test_the_same_input_inline_is_413_pointing_to_the_upload_path(api: str) -> None:
    values = np.zeros((1, WIDTH), np.float32).tobytes()
    header = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, WIDTH],
                     "parameters": {"binary_data_size": len(values)}}]}
    ).encode()  # fmt: skip

    reply = requests.post(
        f"{api}/v2/models/{MODEL}/infer",
        data=header + values,
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        },
        timeout=60,
    )

    assert reply.status_code == 413
    assert f"use POST /v2/models/{MODEL}/uploads to send it through S3" in reply.text


@pytest.mark.parametrize(
    "reference",
    [
        f"{STORE}/uploads/0123456789abcdef0123456789abcdef",  # the model bucket
        f"s3://{LOCAL_PAYLOAD_BUCKET}/other/uploads/0123456789abcdef0123456789abcdef",
        f"{LOCAL_PAYLOAD_STORE}/uploads/0123456789abcdef0123456789abcdef\n",  # not `$`
    ],
)
def test_a_reference_outside_the_uploads_is_403(api: str, reference: str) -> None:
    reply = requests.post(f"{api}/v2/models/{MODEL}/infer", json=request_for(reference), timeout=30)

    assert reply.status_code == 403, reply.text
    assert reply.json()["error"]["code"] == "forbidden_reference"


@pytest.mark.parametrize("body", [None, {}, {"content_type": "application/octet-stream"}])
def test_an_upload_without_its_size_is_400(api: str, body: dict | None) -> None:
    # An unsized URL would let anyone store any size in the bucket (refused only when read)
    reply = requests.post(f"{api}/v2/models/{MODEL}/uploads", json=body, timeout=30)

    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["code"] == "invalid_input"
    assert '{"bytes": N}' in reply.json()["error"]["message"]


def test_an_upload_url_stores_its_size_and_not_one_byte_more(api: str, local_s3: Any) -> None:
    # GIVEN a URL the function presigned for N bytes
    size = 4096
    answer = requests.post(f"{api}/v2/models/{MODEL}/uploads", json={"bytes": size}, timeout=30)
    assert answer.status_code == 200, answer.text
    upload = answer.json()

    def sent(count: int) -> dict[str, str]:
        request = requests.Request("PUT", upload["url"], data=b"\0" * count)
        return dict(request.prepare().headers)  # Content-Length: the body's own size

    # THEN S3 would store N bytes and refuse N + 1: moto checks no presigned signature (it
    # stores any size), so S3's own check of the URL, tests/sigv4.py, is the judge; the local
    # stack's credentials are "testing"
    assert "content-length" in upload["url"].split("X-Amz-SignedHeaders=", 1)[1].split("&")[0]
    assert s3_accepts(upload["url"], "PUT", sent(size), secret_key="testing")
    assert not s3_accepts(upload["url"], "PUT", sent(size + 1), secret_key="testing")
    # AND the honest PUT lands in moto as N bytes
    put = requests.put(upload["url"], data=b"\0" * size, headers=upload["headers"], timeout=30)
    assert put.status_code == 200, put.text[:500]
    key = upload["reference"].removeprefix(f"s3://{LOCAL_PAYLOAD_BUCKET}/")
    head = local_s3.client().head_object(Bucket=LOCAL_PAYLOAD_BUCKET, Key=key)
    assert head["ContentLength"] == size
