"""Manifests: the JSON form, refusing malformed ones, and verifying files against them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from onnxkit.errors import IntegrityError
from onnxkit.manifest import (
    FileEntry,
    Manifest,
    sha256_file,
    verify_file,
    verify_folder,
)
from onnxkit_tools.registry import describe_model
from tests.unit.conftest import BuiltModel


def sha256_of(path: Path) -> str:
    """Reference digest, computed independently of the module under test."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


def _manifest_of(folder: Path, *names: str) -> Manifest:
    files = tuple(FileEntry(n, sha256_of(folder / n), (folder / n).stat().st_size) for n in names)
    return Manifest(
        name="m", version="1", files=files, inputs=(), outputs=(), opset=17, backend="lambda"
    )


def test_verify_folder_accepts_files_that_match(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"graph" * 1000)
    (tmp_path / "model.onnx.data").write_bytes(b"\x00" * 4096)
    manifest = _manifest_of(tmp_path, "model.onnx", "model.onnx.data")

    verify_folder(tmp_path, manifest, fix="repack it")  # no exception


@pytest.mark.parametrize(
    ("damage", "found"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-1]), "4095 bytes"),  # truncated
        (lambda p: p.write_bytes(p.read_bytes() + b"!"), "more than 4096 bytes"),  # grown
        (lambda p: p.write_bytes(b"\x01" + p.read_bytes()[1:]), "4096 bytes sha256 "),  # flipped
    ],
    ids=["truncated", "grown", "one-byte-changed"],
)
def test_verify_folder_names_the_file_the_sizes_and_the_fix(
    tmp_path: Path, damage: Any, found: str
) -> None:
    (tmp_path / "model.onnx").write_bytes(b"graph")
    (tmp_path / "model.onnx.data").write_bytes(b"\x00" * 4096)
    manifest = _manifest_of(tmp_path, "model.onnx", "model.onnx.data")
    damage(tmp_path / "model.onnx.data")

    with pytest.raises(IntegrityError) as caught:
        verify_folder(tmp_path, manifest, fix="repack it")

    message = caught.value.message
    assert message.startswith("model.onnx.data does not match its manifest (expected 4096 bytes")
    assert f"got {found}" in message
    assert message.endswith("; repack it")


def test_verify_folder_reports_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"graph")
    manifest = _manifest_of(tmp_path, "model.onnx")
    (tmp_path / "model.onnx").unlink()

    with pytest.raises(IntegrityError, match=r"model\.onnx is listed in the manifest but cannot"):
        verify_folder(tmp_path, manifest, fix="repack it")


def test_verify_file_needs_both_size_and_digest_to_match() -> None:
    entry = FileEntry("model.onnx", "ab" * 32, 10)

    verify_file(entry, size=10, sha256="ab" * 32, where="w", fix="f")
    with pytest.raises(IntegrityError):
        verify_file(entry, size=10, sha256="cd" * 32, where="w", fix="f")
    with pytest.raises(IntegrityError):
        verify_file(entry, size=9, sha256="ab" * 32, where="w", fix="f")
    with pytest.raises(IntegrityError, match="got more than 10 bytes"):
        verify_file(entry, size=11, sha256=None, where="w", fix="f")
