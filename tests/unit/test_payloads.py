"""The payload store on moto: presigned uploads, inputs by reference, outputs to S3, faults."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from onnxkit.backends.onnxruntime import OnnxruntimeBackend
from onnxkit.codecs import decode_request
from onnxkit.errors import (
    ForbiddenReferenceError,
    InvalidInputError,
    PayloadsNotConfiguredError,
    PayloadStoreUnavailableError,
    PayloadTooLargeError,
    UploadNotFoundError,
)
from onnxkit.manifest import TensorSpec
from onnxkit.payloads import PayloadStore
from onnxkit.predictor import Predictor
from onnxkit.routes import FUNCTION, RouteTable
from onnxkit.session import load_session
from onnxkit.settings import ApiSettings, PayloadSettings
from onnxkit_tools.registry import describe_model
from tests.sigv4 import s3_accepts
from tests.unit.conftest import BuiltModel

BUCKET = "onnxkit-payloads"
STORE = f"s3://{BUCKET}/team/payloads"
UPLOADS = f"{STORE}/uploads/"
SETTINGS = PayloadSettings(store=STORE, upload_max_bytes=10_000, url_seconds=300)


@pytest.fixture
def s3(aws_env: None) -> Iterator[Any]:
    """A SigV4-signing S3 client on moto, with the payload bucket and another one."""
    from moto import mock_aws

    with mock_aws():
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3", region_name="us-east-1", config=Config(signature_version="s3v4")
        )
        client.create_bucket(Bucket=BUCKET)
        client.create_bucket(Bucket="elsewhere")
        yield client


@pytest.fixture
def store(s3: Any) -> PayloadStore:
    return PayloadStore(SETTINGS, s3)


def upload(s3: Any, store: PayloadStore, data: bytes) -> str:
    """Upload ``data`` as a client would: presign, then PUT to the URL (moto intercepts it)."""
    import requests

    answer = store.presign_upload(json.dumps({"bytes": len(data)}))
    reply = requests.put(answer["url"], data=data, headers=answer["headers"], timeout=10)
    assert reply.status_code == 200, reply.text
    return str(answer["reference"])


# --- presigned uploads ------------------------------------------------------------------------


def test_an_upload_is_presigned_under_uploads_with_its_size_signed(store: PayloadStore) -> None:
    answer = store.presign_upload(
        json.dumps({"bytes": 4096, "content_type": "application/octet-stream"})
    )

    url = urlsplit(answer["url"])
    query = parse_qs(url.query)
    key = answer["reference"].removeprefix(f"s3://{BUCKET}/")
    assert answer["reference"].startswith(UPLOADS)
    assert len(key.rsplit("/", 1)[1]) == 32  # uuid4 hex: unguessable
    assert BUCKET in url.netloc + url.path
    assert url.path.endswith(key)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert set(query["X-Amz-SignedHeaders"][0].split(";")) >= {"content-length", "content-type"}
    assert query["X-Amz-Expires"] == ["300"]
    assert answer["method"] == "PUT"
    assert answer["headers"] == {
        "Content-Length": "4096",
        "Content-Type": "application/octet-stream",
    }
    assert (answer["expires_in"], answer["max_bytes"]) == (300, 10_000)


def test_each_upload_gets_its_own_id(store: PayloadStore) -> None:
    first, second = (store.presign_upload('{"bytes": 8}') for _ in range(2))

    assert first["reference"] != second["reference"]


@pytest.mark.parametrize(
    "body", [None, b"", "  ", "{}", '{"content_type": "image/png"}', '{"bytes": null}']
)
def test_an_upload_without_its_size_is_400_saying_to_send_it(
    store: PayloadStore, body: str | bytes | None
) -> None:
    # An unsized URL would let S3 store any size (ONNXKIT_UPLOAD_MAX_BYTES refused only at read)
    with pytest.raises(InvalidInputError, match=r'send \{"bytes": N\}') as caught:
        store.presign_upload(body)

    assert (caught.value.status, caught.value.code) == (400, "invalid_input")


def sent_headers(answer: dict[str, Any], body: bytes) -> dict[str, str]:
    """The headers a client (requests) sends with ``body`` to a presigned upload, its
    ``headers`` included: Content-Length is always the body's own size."""
    import requests

    prepared = requests.Request("PUT", answer["url"], data=body, headers=answer["headers"])
    return dict(prepared.prepare().headers)


@pytest.mark.parametrize("content_type", [None, "image/png"])
def test_an_upload_url_stores_its_size_and_no_other(
    store: PayloadStore, content_type: str | None
) -> None:
    # GIVEN a URL presigned for N bytes; moto does not check presigned URLs (any size, any
    # signature is stored), so S3's own check (tests/sigv4.py) judges the requests
    size = 1000
    body = {"bytes": size} | ({"content_type": content_type} if content_type else {})
    answer = store.presign_upload(json.dumps(body))
    url = answer["url"]

    # THEN the size is one of the signed headers
    signed = parse_qs(urlsplit(url).query)["X-Amz-SignedHeaders"][0].split(";")
    assert "content-length" in signed
    # AND S3 takes the N bytes, and refuses one byte more or less, or the limit plus one
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]  # what the client signs with (mock_aws sets it)
    assert s3_accepts(url, "PUT", sent_headers(answer, b"\0" * size), secret_key=secret)
    for other in (size + 1, size - 1, store.max_bytes + 1):
        headers = sent_headers(answer, b"\0" * other)
        assert not s3_accepts(url, "PUT", headers, secret_key=secret), other


def test_an_upload_over_the_limit_is_413_naming_it(store: PayloadStore) -> None:
    with pytest.raises(PayloadTooLargeError, match="over the limit of 10000 bytes"):
        store.presign_upload(json.dumps({"bytes": 10_001}))


def test_the_functions_memory_bounds_the_limit() -> None:
    big = PayloadSettings(store=STORE)  # 1 GiB
    limited = PayloadStore(big, object(), memory_mb=2048)

    assert limited.max_bytes == 512 * 1024 * 1024  # a quarter of 2048 MB
    with pytest.raises(PayloadTooLargeError, match="quarter of the function's 2048 MB"):
        limited.presign_upload(json.dumps({"bytes": 600 * 1024 * 1024}))


@pytest.mark.parametrize(
    "body",
    [
        '{"bytes": -1}',
        '{"bytes": "10"}',
        '{"bytes": true}',
        '{"content_type": "not a type"}',
        '{"content_type": "text/plain; charset=utf-8"}',
        '{"bytes": 8, "content_type": "image/png\\n"}',  # `$` would match before the newline
        '{"size": 10}',
        "[1]",
        "{",
    ],
)
def test_a_malformed_upload_request_is_400(store: PayloadStore, body: str) -> None:
    with pytest.raises(InvalidInputError):
        store.presign_upload(body)


def test_without_a_store_uploads_say_how_to_enable_them() -> None:
    with pytest.raises(PayloadsNotConfiguredError, match="ONNXKIT_PAYLOAD_STORE") as caught:
        PayloadStore.disabled().presign_upload(None)

    assert (caught.value.status, caught.value.code) == (404, "payloads_not_configured")
    assert "PayloadBucket" in caught.value.message


# --- references -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reference",
    [
        "s3://elsewhere/team/payloads/uploads/0123abcd",  # another bucket
        f"s3://{BUCKET}/other/payloads/uploads/0123abcd",  # another prefix
        f"s3://{BUCKET}/uploads/0123abcd",  # no prefix
        f"{STORE}/results/0123abcd/y",  # results are ours to write, not to read back
        f"{STORE}/jobs/0123abcd",
        f"{STORE}/uploads/../results/0123abcd",
        f"{STORE}/uploads/..",
        f"{STORE}/uploads/a/b",  # nested
        f"{STORE}/uploads/",
        f"{STORE}/uploads/0123abcd?versionId=1",
        f"{STORE}/uploads/0123abcd#x",
        f"{STORE}/uploads/0123abcd\n",  # `$` matches before a final newline; fullmatch does not
        f"https://{BUCKET}.s3.amazonaws.com/team/payloads/uploads/0123abcd",
        f"s3://user@{BUCKET}/team/payloads/uploads/0123abcd",
        f"S3://{BUCKET}/team/payloads/uploads/0123abcd",
        "/team/payloads/uploads/0123abcd",
        "0123abcd",
    ],
)
def test_only_uploads_of_this_store_may_be_referenced(store: PayloadStore, reference: str) -> None:
    with pytest.raises(ForbiddenReferenceError, match="is not an upload of this server") as caught:
        store.read_reference(reference, name="x")

    assert (caught.value.status, caught.value.code) == (403, "forbidden_reference")


def test_an_upload_reads_back_as_the_array_it_was(s3: Any, store: PayloadStore) -> None:
    values = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    reference = upload(s3, store, values.astype("<f4").tobytes())
    spec = TensorSpec("x", "FP32", (-1, 4))
    raw = {"name": "x", "datatype": "FP32", "shape": [3, 4], "parameters": {"reference": reference}}

    request = decode_request(
        {"inputs": [raw]}, (spec,), max_batch_size=8, references=store.reader()
    )

    np.testing.assert_array_equal(request.inputs["x"], values)
    assert request.inputs["x"].flags.writeable


def test_a_bytes_input_by_reference_is_the_objects_bytes(s3: Any, store: PayloadStore) -> None:
    image = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    reference = upload(s3, store, image)
    spec = TensorSpec("image", "BYTES", (-1,))
    raw = {"name": "image", "datatype": "BYTES", "shape": [1]}
    raw["parameters"] = {"reference": reference}

    request = decode_request(
        {"inputs": [raw]}, (spec,), max_batch_size=8, references=store.reader()
    )

    assert request.inputs["image"].tolist() == [image]
    with pytest.raises(InvalidInputError, match="holds one element"):
        decode_request(
            {"inputs": [{**raw, "shape": [2]}]}, (spec,), max_batch_size=8,
            references=store.reader(),
        )  # fmt: skip


def test_a_size_that_does_not_fit_the_shape_is_400(s3: Any, store: PayloadStore) -> None:
    reference = upload(s3, store, b"\x00" * 12)

    with pytest.raises(InvalidInputError, match="size is 12 but its shape and datatype need 16"):
        store.read_reference(reference, name="x", expected_bytes=16)


def test_a_missing_upload_is_404_saying_it_may_have_expired(store: PayloadStore) -> None:
    with pytest.raises(UploadNotFoundError, match="may have") as caught:
        store.read_reference(f"{UPLOADS}0123456789abcdef", name="x")

    assert (caught.value.status, caught.value.code) == (404, "upload_not_found")


def test_an_upload_over_the_limit_is_413_before_it_is_read(s3: Any, store: PayloadStore) -> None:
    key = "team/payloads/uploads/big"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"\x00" * 10_004)

    with pytest.raises(PayloadTooLargeError, match="ONNXKIT_UPLOAD_MAX_BYTES is 10000"):
        store.read_reference(f"s3://{BUCKET}/{key}", name="x")


def test_the_references_of_one_request_share_the_limit(s3: Any, store: PayloadStore) -> None:
    first = upload(s3, store, b"\x00" * 6000)
    second = upload(s3, store, b"\x00" * 6000)
    read = store.reader()

    read(first, name="a", expected_bytes=None)
    with pytest.raises(PayloadTooLargeError, match="4000 bytes left to this request"):
        read(second, name="b", expected_bytes=None)
    assert len(store.reader()(second, name="b", expected_bytes=None)) == 6000  # a new request


def test_s3_down_is_503_payload_store_unavailable(aws_env: None) -> None:
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 1}, connect_timeout=0.5, signature_version="s3v4")
    dead = boto3.client(
        "s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1", config=config
    )
    store = PayloadStore(SETTINGS, dead)

    with pytest.raises(PayloadStoreUnavailableError) as caught:
        store.read_reference(f"{UPLOADS}0123abcd", name="x")
    assert (caught.value.status, caught.value.code) == (503, "payload_store_unavailable")
    with pytest.raises(PayloadStoreUnavailableError):
        store.write_result("0123abcd", "y", np.zeros(2, np.float32))


def test_a_missing_bucket_is_503_naming_the_setting(s3: Any) -> None:
    store = PayloadStore(PayloadSettings(store="s3://no-such-bucket/p"), s3)

    with pytest.raises(PayloadStoreUnavailableError, match="ONNXKIT_PAYLOAD_STORE"):
        store.read_reference("s3://no-such-bucket/p/uploads/0123abcd", name="x")


def test_a_stream_that_breaks_off_is_503(store: PayloadStore) -> None:
    class Short:
        def readinto(self, view: memoryview) -> int:
            return 0

    from onnxkit.payloads import _read_into

    with pytest.raises(PayloadStoreUnavailableError, match="broke off after 0 of 8 bytes"):
        _read_into(Short(), 8, "s3://b/k")


# --- through the predictor and the route table ------------------------------------------------


@pytest.fixture
def tiny(tiny_model: BuiltModel, store: PayloadStore) -> Predictor:
    manifest = describe_model(tiny_model.path, name="tiny", version="1")
    session = load_session(tiny_model.path, intra_op_threads=1)
    return Predictor(
        "tiny",
        lambda: OnnxruntimeBackend(manifest, session),
        ApiSettings(max_request_bytes=2_000, max_batch_size=64),
        payloads=store,
    )


def test_an_input_by_reference_and_an_output_to_s3_round_trip(
    s3: Any, store: PayloadStore, tiny: Predictor, tiny_model: BuiltModel
) -> None:
    # GIVEN 40 rows uploaded as raw little-endian float32
    rows = np.linspace(-3, 3, 160, dtype=np.float32).reshape(40, 4)
    reference = upload(s3, store, rows.astype("<f4").tobytes())
    body = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [40, 4],
                "parameters": {"reference": reference},
            }
        ],
        "outputs": [{"name": "y", "parameters": {"to_s3": True}}],
    }

    # WHEN it is inferred with its output sent to S3
    reply = json.loads(tiny.infer("tiny", None, json.dumps(body)).body)

    # THEN the output is a reference and a presigned GET to the values numpy computes
    (y,) = reply["outputs"]
    assert "data" not in y
    assert (y["datatype"], y["shape"]) == ("FP32", [40, 2])
    parameters = y["parameters"]
    assert parameters["reference"].startswith(f"{STORE}/results/")
    assert parameters["reference"].endswith("/y")
    assert (parameters["bytes"], parameters["expires_in"]) == (40 * 2 * 4, 300)
    import requests

    fetched = requests.get(parameters["url"], timeout=10).content
    values = np.frombuffer(fetched, "<f4").reshape(40, 2)
    np.testing.assert_allclose(values, tiny_model.compute(rows)["y"], rtol=1e-6)


def test_outputs_to_s3_at_request_level_and_binary_outputs_together(
    s3: Any, tiny: Predictor, tiny_model: BuiltModel
) -> None:
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [[1, 2, 3, 4]]}],
        "parameters": {"outputs_to_s3": True, "binary_data_output": True},
    }

    reply = tiny.infer("tiny", None, json.dumps(body))

    assert reply.content_type == "application/json"  # nothing left to send as binary
    (y,) = json.loads(reply.body)["outputs"]
    key = y["parameters"]["reference"].removeprefix(f"s3://{BUCKET}/")
    stored = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    expected = tiny_model.compute(np.array([[1, 2, 3, 4]], np.float32))["y"]
    np.testing.assert_array_equal(np.frombuffer(stored, "<f4"), expected.ravel())


def test_a_body_over_the_limit_points_to_the_upload_path(tiny: Predictor) -> None:
    rows = [[1.0, 2.0, 3.0, 4.0]] * 200
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [200, 4], "data": rows}]}
    )

    with pytest.raises(PayloadTooLargeError, match="use POST /v2/models/tiny/uploads to send it"):
        tiny.infer("tiny", None, body)


def test_outputs_to_s3_without_a_store_are_refused_before_the_run(
    tiny_model: BuiltModel,
) -> None:
    manifest = describe_model(tiny_model.path, name="tiny", version="1")
    session = load_session(tiny_model.path, intra_op_threads=1)
    predictor = Predictor("tiny", lambda: OnnxruntimeBackend(manifest, session), ApiSettings())
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [[1, 2, 3, 4]]}],
        "outputs": [{"name": "y", "parameters": {"to_s3": True}}],
    }
    referenced = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [1, 4],
                "parameters": {"reference": "s3://b/k"},
            }
        ]
    }

    for request in (body, referenced):
        with pytest.raises(PayloadsNotConfiguredError):
            predictor.infer("tiny", None, json.dumps(request))


def test_the_upload_route_needs_a_served_model(tiny: Predictor) -> None:
    from onnxkit.errors import ModelNotFoundError

    table = RouteTable(FUNCTION)
    route, params = table.match("POST", "/v2/models/tiny/uploads")
    answer = table.perform(tiny, route, params, b'{"bytes": 16}', {})
    assert answer["reference"].startswith(UPLOADS)

    route, params = table.match("POST", "/v2/models/other/uploads")
    with pytest.raises(ModelNotFoundError):
        table.perform(tiny, route, params, None, {})


def test_a_job_checks_its_uploads_with_a_head_and_never_reads_them(
    s3: Any, store: PayloadStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an upload of the right size, one of the wrong size, and a client that records calls
    values = np.full((3, 4), 7.0, np.float32)
    good = upload(s3, store, values.astype("<f4").tobytes())
    short = upload(s3, store, b"\0" * 8)
    calls: list[str] = []
    original_get, original_head = s3.get_object, s3.head_object
    monkeypatch.setattr(s3, "get_object", lambda **k: calls.append("get") or original_get(**k))
    monkeypatch.setattr(s3, "head_object", lambda **k: calls.append("head") or original_head(**k))
    spec = TensorSpec("x", "FP32", (-1, 4))

    def raw(reference: str) -> dict[str, Any]:
        return {"name": "x", "datatype": "FP32", "shape": [3, 4],
                "parameters": {"reference": reference}}  # fmt: skip

    # WHEN the requests are checked as a job's are
    checked = decode_request(
        {"inputs": [raw(good)]}, (spec,), max_batch_size=8, references=store.checker()
    )
    with pytest.raises(InvalidInputError, match="size is 8 but its shape"):
        decode_request(
            {"inputs": [raw(short)]}, (spec,), max_batch_size=8, references=store.checker()
        )

    # THEN each object was only HEADed: the input holds zeros of its shape in its place
    assert calls == ["head", "head"]
    assert checked.inputs["x"].shape == (3, 4)
    assert not checked.inputs["x"].any()
