"""Faults on the model path: a clear 5xx code, no poisoned cache, recovery without a restart."""

from __future__ import annotations

import json
from collections import namedtuple
from pathlib import Path

from tests.functional.conftest import BUCKET, body_of

INFER = json.loads(Path("events/predict_infer_200.json").read_text())
READY = json.loads(Path("events/predict_health_ready_200.json").read_text())
# The graph the function reads: publish added the CPU twin, which a CPU function loads.
MODEL_KEY = "onnxkit/models/digits/1/model.cpu.onnx"


def cached_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_corrupt_artifact_is_refused_then_recovers_once_repaired(
    s3, published, make_handler, tmp_path: Path
) -> None:
    # GIVEN one byte of the published model changed in S3
    original = s3.get_object(Bucket=BUCKET, Key=MODEL_KEY)["Body"].read()
    corrupt = bytearray(original)
    corrupt[len(corrupt) // 2] ^= 0xFF
    s3.put_object(Bucket=BUCKET, Key=MODEL_KEY, Body=bytes(corrupt))

    # WHEN the function starts and a request arrives (no backoff: the repair is seen at once)
    handler = make_handler(ONNXKIT_LOAD_RETRY_SECONDS="0")
    response = handler(INFER)

    # THEN the load is refused with a clear 5xx code and nothing is cached
    assert response["statusCode"] == 502
    assert body_of(response)["error"]["code"] == "artifact_integrity_error"
    assert not [p for p in cached_files(tmp_path / "lambda-tmp") if p.name == "model.onnx"]
    assert handler(READY)["statusCode"] == 502

    # WHEN the object is repaired, THEN the very next request is served by the same handler
    s3.put_object(Bucket=BUCKET, Key=MODEL_KEY, Body=original)
    response = handler(INFER)
    assert response["statusCode"] == 200, response["body"]
    assert body_of(response)["outputs"][0]["data"] == [0]


def test_a_broken_artifact_is_not_fetched_again_on_every_request(
    s3, published, make_handler, monkeypatch
) -> None:
    # GIVEN a corrupted graph in the store, and the function counting its downloads
    from onnxkit.store import S3Blobs

    original = s3.get_object(Bucket=BUCKET, Key=MODEL_KEY)["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=MODEL_KEY, Body=original[:-1] + b"!")
    downloads: list[str] = []
    real = S3Blobs.download
    monkeypatch.setattr(
        S3Blobs, "download", lambda self, key, sink: downloads.append(key) or real(self, key, sink)
    )
    handler = make_handler(ONNXKIT_LOAD_RETRY_SECONDS="5")

    # WHEN ten requests arrive at once (within the backoff)
    responses = [handler(INFER) for _ in range(10)]

    # THEN every one gets the fault with a Retry-After, and the graph came down once
    assert {r["statusCode"] for r in responses} == {502}
    assert all(int(r["multiValueHeaders"]["Retry-After"][0]) >= 1 for r in responses[1:])
    assert downloads == [MODEL_KEY.removeprefix("onnxkit/")]  # keys under the store prefix


def test_truncated_artifact_is_refused(s3, published, make_handler) -> None:
    original = s3.get_object(Bucket=BUCKET, Key=MODEL_KEY)["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=MODEL_KEY, Body=original[: len(original) // 3])
    response = make_handler()(INFER)
    assert response["statusCode"] == 502
    assert "does not match its manifest" in body_of(response)["error"]["message"]


def test_missing_model_is_a_503_not_a_client_404(s3, make_handler) -> None:
    # GIVEN nothing is published yet
    handler = make_handler()
    response = handler(INFER)
    assert response["statusCode"] == 503
    assert body_of(response)["error"]["code"] == "model_not_ready"


def test_model_published_after_init_is_picked_up(s3, make_handler, digits_dir, tmp_path) -> None:
    from onnxkit_tools.registry import Registry, publish_model

    handler = make_handler(ONNXKIT_LOAD_RETRY_SECONDS="0")
    assert handler(READY)["statusCode"] == 503
    store = Registry.from_uri(f"s3://{BUCKET}/onnxkit", cache_dir=tmp_path / "pub", s3_client=s3)
    publish_model(store, digits_dir / "int8" / "model.onnx", name="digits", alias="prod")
    assert handler(READY)["statusCode"] == 200


def test_full_tmp_is_507_and_recovers(published, make_handler, monkeypatch) -> None:
    import shutil

    from onnxkit import sources

    # GIVEN a model loaded through the /tmp cache (as one over the in-memory limit is) and
    # /tmp reports no free space
    monkeypatch.setattr(sources, "IN_MEMORY_MAX_BYTES", 0)
    usage = namedtuple("usage", "total used free")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(1, 1, 0))
    handler = make_handler(ONNXKIT_LOAD_RETRY_SECONDS="0")
    response = handler(INFER)
    assert response["statusCode"] == 507
    assert body_of(response)["error"]["code"] == "cache_full"

    # WHEN space comes back, THEN the next request loads and serves
    monkeypatch.setattr(shutil, "disk_usage", real)
    assert handler(INFER)["statusCode"] == 200


def test_unexpected_error_is_a_generic_500_without_internals(published, make_handler) -> None:
    handler = make_handler()
    backend = handler.predictor.load()

    def explode(*_: object, **__: object) -> None:
        raise RuntimeError("secret internal detail /var/task/app.py")

    backend.run = explode
    response = handler(INFER)
    assert response["statusCode"] == 500
    error = body_of(response)["error"]
    assert error["code"] == "internal_error"
    assert "secret" not in error["message"]


def test_request_body_over_the_limit_is_413(published, make_handler) -> None:
    handler = make_handler(ONNXKIT_MAX_REQUEST_BYTES="100")  # the event's body is ~300 bytes
    response = handler(INFER)
    assert response["statusCode"] == 413
    assert body_of(response)["error"]["code"] == "payload_too_large"
