"""Model sources: a folder (verified against its manifest when it has one) and the store."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from onnxkit import sources
from onnxkit.errors import ConfigurationError, IntegrityError, ModelLoadError, ModelNotFoundError
from onnxkit.manifest import Manifest, TensorSpec
from onnxkit.phases import Phases
from onnxkit.session import load_session
from onnxkit.settings import ModelSettings
from onnxkit.sources import (
    MANIFEST_NAME,
    FolderSource,
    StoreSource,
    find_model_file,
    read_manifest,
    signature_from_session,
)
from onnxkit_tools.registry import describe_model
from tests.unit.conftest import BuiltModel, StoreHarness


def write_manifest(model: BuiltModel, name: str = "tiny") -> Manifest:
    """What `onnxkit models pull` leaves beside the files: manifest.json."""
    manifest = describe_model(model.path, name=name, version="3")
    (model.folder / MANIFEST_NAME).write_bytes(manifest.to_json())
    return manifest


def test_a_folder_with_a_manifest_is_verified_and_served_as_described(
    tiny_external_model: BuiltModel,
) -> None:
    # GIVEN a pulled folder: graph, external data and manifest
    manifest = write_manifest(tiny_external_model, name="digits")
    assert len(manifest.files) == 2

    # WHEN a source with no configured name opens it
    source = FolderSource(tiny_external_model.folder)

    # THEN it serves the manifest's name and version, and fetches the verified graph
    assert source.name == "digits"
    assert source.resolve() == manifest
    assert source.fetch(manifest) == tiny_external_model.path
    assert source.follows_alias is False


def test_a_configured_name_wins_over_the_manifest_with_a_warning(
    tiny_model: BuiltModel, caplog: pytest.LogCaptureFixture
) -> None:
    write_manifest(tiny_model, name="digits")

    with caplog.at_level(logging.WARNING):
        source = FolderSource(tiny_model.folder, name="other")

    assert source.name == "other"
    assert "names model 'digits' but this server is configured as 'other'" in caplog.text


@pytest.mark.parametrize("target", ["model.onnx", "model.onnx.data"])
def test_a_tampered_file_is_refused_before_loading(
    tiny_external_model: BuiltModel, target: str
) -> None:
    # GIVEN a verified folder in which one byte of one file then changed (same size)
    manifest = write_manifest(tiny_external_model)
    path = tiny_external_model.folder / target
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))

    # WHEN it is fetched, THEN integrity fails, naming the file and what to do
    with pytest.raises(IntegrityError, match=f"{target} does not match its manifest") as caught:
        FolderSource(tiny_external_model.folder).fetch(manifest)
    assert "the model folder is incomplete or was modified" in caught.value.message


def test_missing_or_resized_files_are_refused(tiny_external_model: BuiltModel) -> None:
    manifest = write_manifest(tiny_external_model)
    source = FolderSource(tiny_external_model.folder)
    data = tiny_external_model.folder / "model.onnx.data"
    data.write_bytes(data.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="got more than"):
        source.fetch(manifest)
    data.unlink()
    with pytest.raises(IntegrityError, match="cannot be read"):
        source.fetch(manifest)


def test_an_invalid_manifest_is_an_integrity_error(tiny_model: BuiltModel) -> None:
    (tiny_model.folder / MANIFEST_NAME).write_text("{not json")

    with pytest.raises(IntegrityError):
        read_manifest(tiny_model.folder)
    with pytest.raises(IntegrityError):
        FolderSource(tiny_model.folder)


def test_a_folder_that_does_not_exist_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        FolderSource(tmp_path / "typo")

    assert caught.value.problems == [
        f"ONNXKIT_MODEL_DIR={tmp_path / 'typo'} is not a folder; point it at a folder holding "
        "model.onnx (and, from `onnxkit models pull`, manifest.json)"
    ]


def test_without_a_manifest_the_signature_comes_from_the_session(
    typed_model: BuiltModel, caplog: pytest.LogCaptureFixture
) -> None:
    source = FolderSource(typed_model.folder)
    assert source.name == "typed-src"  # no manifest, no configured name: the folder's

    with caplog.at_level(logging.WARNING):
        model_file = source.fetch(source.resolve())
    manifest = source.describe(load_session(model_file, intra_op_threads=1), model_file)

    assert "not verified" in caplog.text
    assert manifest.inputs == (
        TensorSpec("ids", "INT64", (-1, 3)),
        TensorSpec("mask", "BOOL", (-1, 3)),
    )
    assert manifest.outputs == (
        TensorSpec("masked", "INT64", (-1, 3)),
        TensorSpec("inverted", "BOOL", (-1, 3)),
    )
    assert manifest.version == "local"
    assert manifest.metadata["verified"] is False


def test_signature_from_session_maps_dimensions_and_refuses_other_types() -> None:
    class Arg:
        def __init__(self, name: str, type_: str, shape: list[Any]) -> None:
            self.name, self.type, self.shape = name, type_, shape

    class Session:
        def get_inputs(self) -> list[Arg]:
            return [Arg("a", "tensor(float16)", ["batch", None, 7])]

        def get_outputs(self) -> list[Arg]:
            return [Arg("b", "tensor(uint8)", [])]

    inputs, outputs = signature_from_session(Session())
    assert inputs == (TensorSpec("a", "FP16", (-1, -1, 7)),)
    assert outputs == (TensorSpec("b", "UINT8", ()),)

    Session.get_outputs = lambda self: [Arg("m", "seq(map(int64,tensor(float)))", [])]  # type: ignore[method-assign]
    with pytest.raises(ModelLoadError, match="zipmap"):
        signature_from_session(Session())


def test_a_folder_without_a_single_model_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="found none"):
        find_model_file(tmp_path)
    (tmp_path / "a.onnx").write_bytes(b"")
    (tmp_path / "b.onnx").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match=r"a\.onnx, b\.onnx"):
        find_model_file(tmp_path)


def test_the_only_onnx_file_is_used_when_model_onnx_is_absent(tiny_model: BuiltModel) -> None:
    tiny_model.path.rename(tiny_model.folder / "whatever.onnx")

    assert FolderSource(tiny_model.folder).fetch(None) == tiny_model.folder / "whatever.onnx"


# --- the store ------------------------------------------------------------------------------


def test_a_store_source_follows_its_alias_unless_a_version_is_pinned(
    store: StoreHarness, tiny_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN versions 1 and 2, prod on 2
    for version in ("1", "2"):
        store.store.publish(
            describe_model(tiny_model.path, name="tiny", version=version), tiny_model.folder
        )
    store.store.set_alias("tiny", "prod", "2")

    by_alias = StoreSource(store.store, ModelSettings(name="tiny"))
    pinned = StoreSource(store.store, ModelSettings(name="tiny", version="1"))

    assert (by_alias.follows_alias, pinned.follows_alias) == (True, False)
    assert by_alias.resolve().version == "2"
    assert pinned.resolve().version == "1"

    # WHEN both are fetched through the /tmp cache (as a large model is)
    monkeypatch.setattr(sources, "IN_MEMORY_MAX_BYTES", 0)
    alias_file = by_alias.open(by_alias.resolve(), Phases())
    pinned_file = pinned.open(pinned.resolve(), Phases())
    assert isinstance(alias_file, Path)
    assert isinstance(pinned_file, Path)

    # THEN each got its verified graph
    assert alias_file.read_bytes() == pinned_file.read_bytes() == tiny_model.path.read_bytes()
    assert alias_file != pinned_file

    # AND releasing all but the alias's version frees the other's cached files
    by_alias.release(keep=by_alias.resolve())
    assert alias_file.exists()
    assert not pinned_file.exists()


def test_a_store_source_needs_a_model_name(store: StoreHarness) -> None:
    with pytest.raises(ConfigurationError, match="ONNXKIT_MODEL_NAME"):
        StoreSource(store.store, ModelSettings(name=None))
