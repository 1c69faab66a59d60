"""Manifests: describe_model on real ONNX files, the JSON form, and refusing malformed ones."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from onnxkit.errors import IntegrityError, InvalidInputError
from onnxkit.manifest import FileEntry, Manifest, TensorSpec, describe_model, sha256_file

from .conftest import OPSET, BuiltModel


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
        [helper.make_node("Identity", ["text"], ["same"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, [1])],
        [helper.make_tensor_value_info("same", TensorProto.STRING, [1])],
    )
    path = tmp_path / "strings.onnx"
    onnx.save_model(helper.make_model(graph), str(path))

    with pytest.raises(InvalidInputError) as caught:
        describe_model(path, name="strings", version="1")

    assert "tensor 'text' has ONNX element type 8" in caught.value.message


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


def test_sha256_file_matches_hashlib_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)) * 5000)  # 1.28 MB: more than one 1 MiB chunk

    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


# --- the JSON form ----------------------------------------------------------------------------


def test_json_round_trip_is_exact(tiny_external_model: BuiltModel) -> None:
    manifest = describe_model(
        tiny_external_model.path,
        name="tiny",
        version="2",
        quantization={"method": "dynamic", "weight_type": "QInt8"},
        backend="sagemaker",
        metadata={"accuracy": 0.97},
    )

    raw = manifest.to_json()
    again = Manifest.from_json(raw)

    assert again == manifest
    assert again.to_json() == raw
    assert raw.endswith(b"\n")
    data = json.loads(raw)
    assert list(data) == sorted(data)  # canonical: sorted keys
    assert data["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert data["schema_version"] == 1


def valid_manifest_dict() -> dict[str, Any]:
    """A minimal valid manifest in JSON form."""
    return {
        "name": "tiny",
        "version": "1",
        "files": [{"path": "model.onnx", "sha256": "a" * 64, "size": 10}],
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
        "opset": 17,
    }


def test_minimal_manifest_gets_defaults() -> None:
    manifest = Manifest.from_json(json.dumps(valid_manifest_dict()).encode())

    assert manifest.backend == "lambda"
    assert manifest.producer == {}
    assert manifest.metadata == {}
    assert manifest.quantization is None
    assert manifest.files == (FileEntry("model.onnx", "a" * 64, 10),)


@pytest.mark.parametrize("path", ["sub/dir/weights.bin", "./model.onnx.data", "a//b"])
def test_nested_relative_paths_are_kept_normalised(path: str) -> None:
    data = valid_manifest_dict()
    data["files"].append({"path": path, "sha256": "b" * 64, "size": 1})

    manifest = Manifest.from_json(json.dumps(data).encode())

    assert manifest.files[1].path == str(Path(path))


def changed(**fields: Any) -> bytes:
    """A valid manifest with some fields replaced (None deletes a field)."""
    data = valid_manifest_dict()
    for key, value in fields.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data).encode()


def with_file(**entry: Any) -> bytes:
    """A valid manifest whose only file entry has some fields replaced."""
    return changed(files=[{"path": "model.onnx", "sha256": "a" * 64, "size": 10, **entry}])


MALFORMED = {
    "not json": b"{not json",
    "not utf-8": b'{"name": "\xff"}',
    "a list": b"[]",
    "null": b"null",
    "a string": b'"manifest"',
    "no files key": changed(files=None),
    "no files": changed(files=[]),
    "files not a list": changed(files=5),
    "no name": changed(name=None),
    "no inputs": changed(inputs=None),
    "opset not a number": changed(opset="seventeen"),
    "newer schema": changed(schema_version=2),
    "schema not a number": changed(schema_version="1"),
    "unknown backend": changed(backend="gpu-farm"),
    "unsupported datatype": changed(inputs=[{"name": "x", "datatype": "STRING", "shape": [1]}]),
    "shape not numbers": changed(inputs=[{"name": "x", "datatype": "FP32", "shape": ["N"]}]),
    "producer not an object": changed(producer=["onnx"]),
    "metadata not an object": changed(metadata=5),
    "short sha256": with_file(sha256="abc"),
    "negative size": with_file(size=-1),
    "size not a number": with_file(size="big"),
    "file without sha256": changed(files=[{"path": "model.onnx", "size": 10}]),
    "parent traversal": with_file(path="../x"),
    "deep traversal": with_file(path="weights/../../x"),
    "absolute path": with_file(path="/abs"),
    "backslash path": with_file(path="..\\x"),
    "empty path": with_file(path=""),
    "dot path": with_file(path="."),
}


@pytest.mark.parametrize("raw", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_manifest_is_an_integrity_error(raw: bytes) -> None:
    with pytest.raises(IntegrityError) as caught:
        Manifest.from_json(raw)

    assert caught.value.status == 502
    assert caught.value.code == "artifact_integrity_error"
    assert caught.value.message.startswith("manifest is not valid: ")


@pytest.mark.parametrize("path", ["../x", "/abs", "a/../../etc/passwd", "C:\\weights.bin"])
def test_path_traversal_is_named_in_the_error(path: str) -> None:
    with pytest.raises(IntegrityError) as caught:
        Manifest.from_json(with_file(path=path))

    assert "must be relative and stay inside the version" in caught.value.message
