"""The registry's write side: describing models, publishing versions, moving aliases."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from onnxkit.errors import (
    AliasConflictError,
    IntegrityError,
    InvalidInputError,
    ModelNotFoundError,
    StoreUnavailableError,
    VersionConflictError,
)
from onnxkit.manifest import FileEntry, TensorSpec
from onnxkit_tools.registry import Registry, S3WritableBlobs, describe_model, publish_model
from tests.unit.conftest import BUCKET, OPSET, BuiltModel, StoreHarness
from tests.unit.test_store import MODEL_KEY, publish


def sha256_of(path: Path) -> str:
    """Reference digest, computed independently of the module under test."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_describe_model_reads_signature_opset_and_checksums(tiny_model: BuiltModel) -> None:
    manifest = describe_model(tiny_model.path, name="tiny", version="1", metadata={"task": "t"})

    assert manifest.name == "tiny"
    assert manifest.version == "1"
    assert manifest.inputs == (TensorSpec("x", "FP32", (-1, 4)),)
    assert manifest.outputs == (TensorSpec("y", "FP32", (-1, 2)),)
    assert manifest.opset == OPSET
    assert manifest.files == (
        FileEntry("model.onnx", sha256_of(tiny_model.path), tiny_model.path.stat().st_size),
    )
    assert manifest.model_file.path == "model.onnx"
    assert manifest.total_size == tiny_model.path.stat().st_size
    assert manifest.producer["name"] == "onnxkit-unit-tests"
    assert manifest.backend == "lambda"
    assert manifest.quantization is None
    assert manifest.metadata == {"task": "t"}
    assert datetime.fromisoformat(manifest.created_at).utcoffset() is not None


def test_describe_model_maps_int64_and_bool(typed_model: BuiltModel) -> None:
    manifest = describe_model(typed_model.path, name="typed", version="1")

    assert manifest.inputs == (
        TensorSpec("ids", "INT64", (-1, 3)),
        TensorSpec("mask", "BOOL", (-1, 3)),
    )
    assert manifest.outputs == (
        TensorSpec("masked", "INT64", (-1, 3)),
        TensorSpec("inverted", "BOOL", (-1, 3)),
    )


def test_describe_model_lists_external_data_files(tiny_external_model: BuiltModel) -> None:
    # GIVEN a model whose weights live in model.onnx.data beside it
    folder = tiny_external_model.folder
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "model.onnx.data"]

    # WHEN it is described
    manifest = describe_model(tiny_external_model.path, name="tiny", version="2")

    # THEN both files are listed, the graph first, with their own sizes and digests
    assert [f.path for f in manifest.files] == ["model.onnx", "model.onnx.data"]
    for entry in manifest.files:
        assert entry.size == (folder / entry.path).stat().st_size
        assert entry.sha256 == sha256_of(folder / entry.path)
    assert manifest.files[1].size == (4 * 2 + 2) * 4  # the float32 weights and bias
    assert manifest.total_size == sum(f.size for f in manifest.files)


def test_describe_model_adds_extra_files(tiny_model: BuiltModel) -> None:
    labels = tiny_model.folder / "labels.txt"
    labels.write_text("zero\none\n")

    manifest = describe_model(tiny_model.path, name="tiny", version="1", extra_files=[labels])

    assert [f.path for f in manifest.files] == ["model.onnx", "labels.txt"]
    assert manifest.files[1] == FileEntry("labels.txt", sha256_of(labels), 9)


def test_describe_model_refuses_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"\x00\xffthis is not a protobuf" * 10)

    with pytest.raises(InvalidInputError) as caught:
        describe_model(garbage, name="tiny", version="1")

    assert "is not a readable ONNX model" in caught.value.message


def test_describe_model_refuses_an_unknown_backend(tiny_model: BuiltModel) -> None:
    with pytest.raises(InvalidInputError) as caught:
        describe_model(tiny_model.path, name="tiny", version="1", backend="gpu-farm")

    assert "backend must be one of" in caught.value.message


def test_describe_model_refuses_element_types_v2_json_cannot_carry(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["z"], ["same"])],
        "complex",
        [helper.make_tensor_value_info("z", TensorProto.COMPLEX64, [1])],
        [helper.make_tensor_value_info("same", TensorProto.COMPLEX64, [1])],
    )
    path = tmp_path / "complex.onnx"
    onnx.save_model(helper.make_model(graph), str(path))

    with pytest.raises(InvalidInputError) as caught:
        describe_model(path, name="complex", version="1")

    assert "tensor 'z' has ONNX element type 14" in caught.value.message


def test_describe_model_reads_string_tensors_as_bytes(strings_model: BuiltModel) -> None:
    manifest = describe_model(strings_model.path, name="strings", version="1")

    assert [(s.name, s.datatype) for s in manifest.inputs] == [("text", "BYTES")]
    assert [(s.name, s.datatype) for s in manifest.outputs] == [
        ("same", "BYTES"),
        ("shape", "INT64"),
    ]


def test_describe_model_refuses_external_data_outside_the_model_folder(tmp_path: Path) -> None:
    # A graph that points its weights at ../outside.bin must be refused in our words
    # (InvalidInputError), like any other unusable model, not with a bare ValueError.
    import onnx
    from onnx import TensorProto, helper

    weights = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    weights.ClearField("float_data")
    weights.data_location = TensorProto.EXTERNAL
    weights.external_data.add(key="location", value="../outside.bin")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "escape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [weights],
    )
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\x00\x00\x80\x3f")
    onnx.save_model(helper.make_model(graph), str(folder / "model.onnx"))

    with pytest.raises(InvalidInputError):
        describe_model(folder / "model.onnx", name="escape", version="1")


# --- publishing ---------------------------------------------------------------------------------


def test_publishing_the_same_version_twice_is_a_conflict(
    store: StoreHarness, tiny_model: BuiltModel, typed_model: BuiltModel
) -> None:
    original = publish(store, tiny_model, "1")
    other = describe_model(typed_model.path, name="tiny", version="1")

    with pytest.raises(VersionConflictError) as caught:
        store.store.publish(other, typed_model.folder)

    assert caught.value.status == 409
    assert caught.value.code == "version_exists"
    assert "versions are immutable" in caught.value.message
    assert store.store.get_manifest("tiny", "1") == original
    assert store.get_raw(MODEL_KEY) == tiny_model.path.read_bytes()


def test_conditional_write_refuses_an_existing_key(store: StoreHarness) -> None:
    # The race-proof half of publish: IfNoneMatch on S3, O_EXCL on disk.
    blobs = store.store.blobs
    blobs.write("models/tiny/9/manifest.json", b"first", if_absent=True)

    with pytest.raises(VersionConflictError) as caught:
        blobs.write("models/tiny/9/manifest.json", b"second", if_absent=True)

    assert caught.value.code == "version_exists"
    assert blobs.read("models/tiny/9/manifest.json") == b"first"


def test_publish_refuses_files_changed_since_their_manifest(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    manifest = describe_model(tiny_model.path, name="tiny", version="1")
    tiny_model.path.write_bytes(tiny_model.path.read_bytes() + b"\x00")

    with pytest.raises(IntegrityError) as caught:
        store.store.publish(manifest, tiny_model.folder)

    assert "model.onnx does not match its manifest" in caught.value.message
    assert store.store.list_versions("tiny") == []
    assert not store.store.blobs.exists(MODEL_KEY)


def test_alias_moves_and_keeps_its_history(store: StoreHarness, tiny_model: BuiltModel) -> None:
    # GIVEN three versions, with prod pointed at each in turn
    for version in ("1", "2", "3"):
        publish(store, tiny_model, version, alias="prod")

    # WHEN the alias is read
    record = store.store.get_alias("tiny", "prod")

    # THEN it points at 3 and remembers 2 then 1; every version still resolves
    assert record.version == "3"
    assert [entry["version"] for entry in record.history] == ["2", "1"]
    assert all(entry["updated_at"] for entry in record.history)
    assert record.updated_at
    assert store.store.resolve("tiny").version == "3"
    assert store.store.resolve("tiny", version="1").version == "1"
    stored = json.loads(store.get_raw("models/tiny/_aliases/prod.json"))
    assert stored["version"] == "3"
    assert [entry["version"] for entry in stored["history"]] == ["2", "1"]


def test_alias_cannot_point_at_an_unpublished_version(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    publish(store, tiny_model, "1")

    with pytest.raises(ModelNotFoundError) as caught:
        store.store.set_alias("tiny", "prod", "2")

    assert caught.value.status == 404
    assert "has no version '2'" in caught.value.message
    assert not store.store.blobs.exists("models/tiny/_aliases/prod.json")


def test_upload_to_a_missing_bucket_is_store_bucket_missing(
    s3_client: Any, tiny_model: BuiltModel
) -> None:
    # boto3's upload_file wraps S3 errors in S3UploadFailedError; it must still be mapped.
    blobs = S3WritableBlobs(s3_client, "no-such-bucket", "prefix")

    with pytest.raises(StoreUnavailableError) as caught:
        blobs.upload(tiny_model.path, "models/tiny/1/model.onnx")

    assert caught.value.code == "store_bucket_missing"


def test_s3_keys_live_under_the_prefix(
    s3_client: Any, tiny_model: BuiltModel, tmp_path: Path
) -> None:
    deep_store = Registry.from_uri(
        f"s3://{BUCKET}/deep/prefix/", cache_dir=tmp_path / "cache", s3_client=s3_client
    )

    deep_store.publish(describe_model(tiny_model.path, name="tiny", version="1"), tiny_model.folder)

    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=BUCKET)["Contents"])
    assert keys == [
        "deep/prefix/models/tiny/1/manifest.json",
        "deep/prefix/models/tiny/1/model.onnx",
    ]
    assert deep_store.uri == f"s3://{BUCKET}/deep/prefix"


# --- aliases ------------------------------------------------------------------------------------


def test_concurrent_promotions_cannot_overwrite_each_other(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    # GIVEN prod -> 1, and two operators who both read it before either writes
    for version in ("1", "2", "3"):
        publish(store, tiny_model, version)
    store.store.set_alias("tiny", "prod", "1")
    stale, etag = store.store._read_alias("tiny", "prod")

    # WHEN one promotes 2, and the other then writes 3 based on its stale read
    store.store.set_alias("tiny", "prod", "2")
    with pytest.raises(AliasConflictError) as raised:
        store.store._write_alias(replace(stale, version="3"), etag)

    # THEN the second write is refused and prod still points at 2
    assert raised.value.status == 409
    assert store.store.get_alias("tiny", "prod").version == "2"


def test_first_write_of_an_alias_is_create_only(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    publish(store, tiny_model, "1")
    store.store.set_alias("tiny", "prod", "1")
    record = store.store.get_alias("tiny", "prod")
    with pytest.raises(AliasConflictError):
        store.store._write_alias(record, None)  # "create" when it already exists


def test_rollback_walks_back_and_then_runs_out(store: StoreHarness, tiny_model: BuiltModel) -> None:
    for version in ("1", "2", "3"):
        publish(store, tiny_model, version, alias="prod")

    assert store.store.rollback_alias("tiny", "prod").version == "2"
    record = store.store.rollback_alias("tiny", "prod")
    assert record.version == "1"
    assert record.history == ()
    with pytest.raises(ModelNotFoundError) as raised:
        store.store.rollback_alias("tiny", "prod")
    assert "no earlier version" in raised.value.message
    with pytest.raises(ModelNotFoundError):
        store.store.rollback_alias("tiny", "staging")


def test_list_aliases(store: StoreHarness, tiny_model: BuiltModel) -> None:
    publish(store, tiny_model, "1", alias="prod")
    publish(store, tiny_model, "2", alias="canary")
    assert store.store.list_aliases("tiny") == {"prod": "1", "canary": "2"}


def test_kms_key_is_applied_to_every_write(
    s3_client: Any, tmp_path: Path, tiny_model: BuiltModel
) -> None:
    import boto3

    key_id = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["KeyId"]
    store = Registry.from_uri(
        f"s3://{BUCKET}/enc", cache_dir=tmp_path / "c", s3_client=s3_client, kms_key_id=key_id
    )
    publish_model(store, tiny_model.path, name="tiny", version="1", alias="prod")
    for key in ("model.onnx", "manifest.json"):
        head = s3_client.head_object(Bucket=BUCKET, Key=f"enc/models/tiny/1/{key}")
        assert head["ServerSideEncryption"] == "aws:kms", key
        assert head["SSEKMSKeyId"].endswith(key_id), key
    head = s3_client.head_object(Bucket=BUCKET, Key="enc/models/tiny/_aliases/prod.json")
    assert head["ServerSideEncryption"] == "aws:kms"
