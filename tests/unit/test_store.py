"""The model store's read side on file:// and on S3 (moto): resolve, verified cached fetches."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxkit import store as store_module
from onnxkit.errors import (
    CacheFullError,
    IntegrityError,
    ModelNotFoundError,
    StoreUnavailableError,
)
from onnxkit.manifest import Manifest
from onnxkit.store import FileBlobs, ModelStore, S3Blobs
from onnxkit_tools.registry import describe_model
from tests.unit.conftest import BuiltModel, StoreHarness

MODEL_KEY = "models/tiny/1/model.onnx"


def publish(harness: StoreHarness, model: BuiltModel, version: str, alias: str = "") -> Manifest:
    """Describe and publish a model folder as ``tiny/{version}``; optionally point an alias."""
    manifest = describe_model(model.path, name="tiny", version=version)
    harness.store.publish(manifest, model.folder)
    if alias:
        harness.store.set_alias("tiny", alias, version)
    return manifest


def digest(path: Path) -> str:
    """Reference sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- publish, resolve, fetch --------------------------------------------------------------------


def test_publish_resolve_and_fetch_a_verified_copy(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    # GIVEN version 1 published and aliased as prod
    published = publish(store, tiny_model, "1", alias="prod")

    # WHEN it is resolved by alias and by version, then fetched
    by_alias = store.store.resolve("tiny", alias="prod")
    by_version = store.store.resolve("tiny", version="1", alias="missing-alias-is-ignored")
    moved: list[int] = []
    folder = store.store.fetch(by_alias, progress=moved.append)

    # THEN both resolve to the published manifest and the copy is byte-identical
    assert by_alias == published
    assert by_version == published
    copy = folder / by_alias.model_file.path
    assert copy.read_bytes() == tiny_model.path.read_bytes()
    assert digest(copy) == published.model_file.sha256 == tiny_model.sha256
    assert folder == store.store.local_dir(published)
    assert folder.is_relative_to(store.cache_dir)
    assert sum(moved) == published.total_size
    assert store.streamed == [MODEL_KEY]
    assert store.get_raw("models/tiny/1/manifest.json") == published.to_json()


def test_second_fetch_reuses_the_copy_without_downloading(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    # GIVEN a fetched version whose source object is then deleted from the store
    manifest = publish(store, tiny_model, "1")
    first = store.store.fetch(manifest)
    store.delete_raw(MODEL_KEY)

    # WHEN it is fetched again, by this store and by a fresh one on the same cache (warm /tmp)
    second = store.store.fetch(manifest)
    fresh = ModelStore(store.store.blobs, store.cache_dir).fetch(manifest)

    # THEN the verified copy is reused: one download in all
    assert second == first == fresh
    assert store.streamed == [MODEL_KEY]
    assert digest(first / "model.onnx") == manifest.model_file.sha256


def test_publish_and_fetch_a_model_with_external_data(
    store: StoreHarness, tiny_external_model: BuiltModel
) -> None:
    import onnxruntime as ort

    # GIVEN a model whose weights are in model.onnx.data
    manifest = publish(store, tiny_external_model, "1", alias="prod")

    # WHEN it is fetched
    folder = store.store.fetch(store.store.resolve("tiny"))

    # THEN both files arrive verified and onnxruntime loads the graph with its weights
    assert sorted(store.streamed) == [MODEL_KEY, MODEL_KEY + ".data"]
    for entry in manifest.files:
        assert digest(folder / entry.path) == entry.sha256
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    np.testing.assert_allclose(
        session.run(None, {"x": x})[0], tiny_external_model.compute(x)["y"], rtol=1e-6
    )


# --- aliases and listings ------------------------------------------------------------------------


def test_list_models_and_versions_skip_half_published_versions(
    store: StoreHarness, tiny_model: BuiltModel, typed_model: BuiltModel
) -> None:
    publish(store, tiny_model, "1", alias="prod")
    publish(store, tiny_model, "2")
    store.store.publish(
        describe_model(typed_model.path, name="typed", version="1"), typed_model.folder
    )
    store.put_raw("models/tiny/3/model.onnx", b"uploaded, but no manifest yet")

    assert store.store.list_models() == ["tiny", "typed"]
    assert store.store.list_versions("tiny") == ["1", "2"]
    assert store.store.list_versions("nothing") == []


# --- not found -----------------------------------------------------------------------------------


def test_unknown_model_is_not_found_with_a_helpful_message(store: StoreHarness) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        store.store.resolve("nope")

    assert caught.value.status == 404
    assert caught.value.code == "model_not_found"
    assert "model 'nope' has no alias 'prod'" in caught.value.message
    # A 404 reaches clients (many models): it never names the bucket, the prefix or a path.
    assert store.store.uri not in caught.value.message
    assert "publish a version with --alias prod" in caught.value.message


def test_unknown_alias_and_version_of_a_known_model(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    publish(store, tiny_model, "1", alias="prod")

    with pytest.raises(ModelNotFoundError) as no_alias:
        store.store.resolve("tiny", alias="canary")
    with pytest.raises(ModelNotFoundError) as no_version:
        store.store.resolve("tiny", version="9")

    assert "model 'tiny' has no alias 'canary'" in no_alias.value.message
    assert "model 'tiny' has no version '9'" in no_version.value.message


# --- integrity -----------------------------------------------------------------------------------


def test_corrupt_object_is_refused_then_a_repaired_one_is_fetched(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    # GIVEN a published model with one byte of the stored object flipped (same size)
    manifest = publish(store, tiny_model, "1")
    good = store.get_raw(MODEL_KEY)
    middle = len(good) // 2
    store.put_raw(MODEL_KEY, good[:middle] + bytes([good[middle] ^ 0xFF]) + good[middle + 1 :])

    # WHEN it is fetched
    with pytest.raises(IntegrityError) as caught:
        store.store.fetch(manifest)

    # THEN the fetch fails with 502 and leaves neither a partial nor a final file
    assert caught.value.status == 502
    assert caught.value.code == "artifact_integrity_error"
    assert "tiny/1/model.onnx does not match its manifest" in caught.value.message
    assert store.cached_files() == []

    # AND once the object is repaired the next fetch succeeds, downloading again
    store.put_raw(MODEL_KEY, good)
    folder = store.store.fetch(manifest)
    assert digest(folder / "model.onnx") == manifest.model_file.sha256
    assert store.streamed == [MODEL_KEY, MODEL_KEY]


def test_truncated_object_is_an_integrity_error(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    manifest = publish(store, tiny_model, "1")
    good = store.get_raw(MODEL_KEY)
    store.put_raw(MODEL_KEY, good[:-7])

    with pytest.raises(IntegrityError) as caught:
        store.store.fetch(manifest)

    assert f"expected {len(good)} bytes" in caught.value.message
    assert f"got {len(good) - 7} bytes" in caught.value.message
    assert store.cached_files() == []


def test_oversized_object_is_an_integrity_error(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    manifest = publish(store, tiny_model, "1")
    store.put_raw(MODEL_KEY, store.get_raw(MODEL_KEY) + b"trailing junk")

    with pytest.raises(IntegrityError) as caught:
        store.store.fetch(manifest)

    assert "got more than" in caught.value.message
    assert store.cached_files() == []


def test_manifest_describing_another_version_is_an_integrity_error(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    manifest = publish(store, tiny_model, "1")
    store.put_raw("models/tiny/2/manifest.json", manifest.to_json())

    with pytest.raises(IntegrityError) as caught:
        store.store.get_manifest("tiny", "2")

    assert "manifest at tiny/2 describes tiny/1" in caught.value.message


def test_unreadable_stored_manifest_and_alias_are_integrity_errors(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    publish(store, tiny_model, "1", alias="prod")
    store.put_raw("models/tiny/1/manifest.json", b'{"name": "tiny", "version": "1"')
    store.put_raw("models/tiny/_aliases/canary.json", b'{"no_version": true}')

    with pytest.raises(IntegrityError):
        store.store.get_manifest("tiny", "1")
    with pytest.raises(IntegrityError) as alias_error:
        store.store.get_alias("tiny", "canary")

    assert "alias tiny@canary is not a valid alias document" in alias_error.value.message


# --- the cache's disk ---------------------------------------------------------------------------


class _FullFile:
    """A file handle whose every write fails as a full disk does."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._handle.close()

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _DiskFullOs:
    """Stands in for ``os`` inside onnxkit.store: files open, writes fail with ENOSPC."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def fdopen(fd: int, *args: Any, **kwargs: Any) -> _FullFile:
        return _FullFile(os.fdopen(fd, *args, **kwargs))


def test_enospc_while_writing_is_cache_full_and_leaves_nothing(
    store: StoreHarness, tiny_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a cache disk that fills up as soon as the download is written
    manifest = publish(store, tiny_model, "1")
    monkeypatch.setattr(store_module, "os", _DiskFullOs())

    # WHEN the model is fetched
    with pytest.raises(CacheFullError) as caught:
        store.store.fetch(manifest)

    # THEN it is a 507 cache_full, with no partial file left behind
    assert caught.value.status == 507
    assert caught.value.code == "cache_full"
    assert "ran out of space" in caught.value.message
    assert isinstance(caught.value.__cause__, OSError)
    assert store.cached_files() == []

    # AND with room again the fetch succeeds
    monkeypatch.setattr(store_module, "os", os)
    folder = store.store.fetch(manifest)
    assert digest(folder / "model.onnx") == manifest.model_file.sha256


def test_too_little_free_space_is_cache_full_before_downloading(
    store: StoreHarness, tiny_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = publish(store, tiny_model, "1")
    tiny_usage = shutil.disk_usage(store.cache_dir.parent)._replace(free=10)
    monkeypatch.setattr(store_module.shutil, "disk_usage", lambda path: tiny_usage)

    with pytest.raises(CacheFullError) as caught:
        store.store.fetch(manifest)

    assert f"needs {manifest.total_size} bytes but only 10 are free" in caught.value.message
    assert store.streamed == []
    assert store.cached_files() == []


def test_evict_keeps_only_the_given_copy(store: StoreHarness, tiny_model: BuiltModel) -> None:
    old = store.store.fetch(publish(store, tiny_model, "1"))
    new = store.store.fetch(publish(store, tiny_model, "2"))

    store.store.evict(keep=new)

    assert not old.exists()
    assert (new / "model.onnx").is_file()


# --- S3 specifics -------------------------------------------------------------------------------


def test_missing_bucket_is_store_bucket_missing(s3_client: Any, tmp_path: Path) -> None:
    missing = ModelStore(S3Blobs(s3_client, "no-such-bucket", "prefix"), tmp_path / "cache")

    with pytest.raises(StoreUnavailableError) as caught:
        missing.resolve("tiny")

    assert caught.value.status == 503
    assert caught.value.code == "store_bucket_missing"
    assert "bucket 'no-such-bucket' does not exist" in caught.value.message


# --- opening a store -----------------------------------------------------------------------------


def test_from_uri_opens_a_directory(tmp_path: Path) -> None:
    opened = ModelStore.from_uri(f"file://{tmp_path}/store", cache_dir=tmp_path / "cache")

    assert isinstance(opened.blobs, FileBlobs)
    assert opened.uri == f"file://{tmp_path}/store"
    assert opened.cache_dir == tmp_path / "cache"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://bucket/prefix", "needs an S3 client"),
        ("gs://bucket/prefix", "must be s3://bucket/prefix or file:///dir"),
        ("/plain/path", "must be s3://bucket/prefix or file:///dir"),
    ],
)
def test_from_uri_refuses_what_it_cannot_open(uri: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        ModelStore.from_uri(uri, cache_dir=tmp_path)


def test_a_parallel_download_that_gives_up_is_store_unavailable_then_recovers(
    s3_client: Any, tiny_model: BuiltModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a model on S3, fetched by ranged parallel GETs (from 1 byte on), and an S3 whose
    # parts time out on every retry
    from botocore.exceptions import ReadTimeoutError
    from s3transfer.exceptions import RetriesExceededError

    from onnxkit_tools.registry import Registry

    uri = "s3://onnxkit-unit/prefix"
    s3_client.create_bucket(Bucket="onnxkit-unit")
    registry = Registry.from_uri(uri, cache_dir=tmp_path / "pub", s3_client=s3_client)
    manifest = describe_model(tiny_model.path, name="tiny", version="1")
    registry.publish(manifest, tiny_model.folder)
    blobs = S3Blobs(s3_client, "onnxkit-unit", "prefix", parallel_from=1)
    reader = ModelStore(blobs, tmp_path / "cache")

    def timing_out(*args: Any, **kwargs: Any) -> None:
        raise RetriesExceededError(ReadTimeoutError(endpoint_url="http://s3"))

    monkeypatch.setattr(s3_client, "download_fileobj", timing_out)

    # WHEN it is fetched, THEN the fault is a 503 that names the cause and the setting
    with pytest.raises(StoreUnavailableError) as caught:
        reader.fetch(reader.resolve("tiny", version="1"))
    assert caught.value.status == 503
    assert "ReadTimeoutError on every retry" in caught.value.message
    assert "ONNXKIT_S3_READ_TIMEOUT" in caught.value.message
    # ... nothing partial is kept, and once S3 answers the next fetch is whole and verified
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    monkeypatch.undo()
    folder = reader.fetch(reader.resolve("tiny", version="1"))
    assert digest(folder / "model.onnx") == digest(tiny_model.path)
