"""The function follows its alias: promote, corrupt, repair, roll back; no redeploy, no restart."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from onnxkit import sources
from onnxkit_tools.registry import Registry, publish_model
from tests.functional.conftest import BUCKET, STORE, body_of

INFER = json.loads(Path("events/predict_infer_200.json").read_text())
INTERVAL = 0.2


@pytest.fixture
def store(s3, tmp_path: Path) -> Registry:
    return Registry.from_uri(STORE, cache_dir=tmp_path / "publisher", s3_client=s3)


def served_version(handler) -> str:
    response = handler(INFER)
    assert response["statusCode"] == 200, response["body"]
    return body_of(response)["model_version"]


def after_interval() -> None:
    time.sleep(INTERVAL * 1.5)


@pytest.mark.parametrize("path", ["memory", "tmp"])
def test_alias_moves_are_served_without_a_restart(
    path: str, store, published, make_handler, digits_dir: Path, tmp_path: Path, s3, monkeypatch
) -> None:
    # GIVEN a function serving digits@prod = 1, re-reading the alias every 0.2 s, loading
    # models straight into memory (small ones) or through the /tmp cache (large ones)
    if path == "tmp":
        monkeypatch.setattr(sources, "IN_MEMORY_MAX_BYTES", 0)
    handler = make_handler(ONNXKIT_REFRESH_SECONDS=str(INTERVAL))
    assert served_version(handler) == "1"

    # WHEN version 2 (the fp32 model) is published and promoted
    publish_model(store, digits_dir / "fp32" / "model.onnx", name="digits", version="2")
    store.set_alias("digits", "prod", "2")
    # THEN it is served after the interval, by the same handler
    after_interval()
    assert served_version(handler) == "2"
    cached = {p.parent.parent.name for p in (tmp_path / "lambda-tmp").rglob("model.onnx")}
    if path == "tmp":
        assert cached == {"2"}, "the old version's files should be freed from /tmp"
    else:
        assert cached == set(), "a model read into memory leaves nothing in /tmp"

    # WHEN version 3 is published with one byte changed in S3, then promoted
    publish_model(store, digits_dir / "int8" / "model.onnx", name="digits", version="3")
    # (the file the function reads: the CPU twin into memory; every file through /tmp)
    key = f"onnxkit/models/digits/3/{'model.cpu.onnx' if path == 'memory' else 'model.onnx'}"
    good = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    bad = bytearray(good)
    bad[100] ^= 0x01
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(bad))
    store.set_alias("digits", "prod", "3")
    after_interval()
    # THEN the load is refused, version 2 keeps serving, and nothing of 3 is cached
    assert served_version(handler) == "2"
    assert handler.predictor.refresh_error.code == "artifact_integrity_error"
    assert not list((tmp_path / "lambda-tmp" / "digits" / "3").rglob("model.onnx"))

    # WHEN the artifact is repaired, THEN the next check loads and serves it
    s3.put_object(Bucket=BUCKET, Key=key, Body=good)
    after_interval()
    assert served_version(handler) == "3"

    # WHEN prod is rolled back, THEN the previous version serves again
    assert store.rollback_alias("digits", "prod").version == "2"
    after_interval()
    assert served_version(handler) == "2"
    assert store.rollback_alias("digits", "prod").version == "1"
    after_interval()
    assert served_version(handler) == "1"


def test_pinned_version_ignores_alias_moves(store, published, make_handler, digits_dir) -> None:
    handler = make_handler(ONNXKIT_MODEL_VERSION="1", ONNXKIT_REFRESH_SECONDS=str(INTERVAL))
    publish_model(store, digits_dir / "fp32" / "model.onnx", name="digits", alias="prod")
    after_interval()
    assert served_version(handler) == "1"
