"""The store and the cache as an attacker who can write to them would use them.

Someone with write access to the model bucket (a leaked CI key, a careless publisher) or to
the cache folder must not be able to read the server's files through a graph, write outside
the cache, or have a tampered copy served. Each test here failed on the code before the
hardening (issue 20); each says how.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxkit import sources as sources_module
from onnxkit.errors import CacheError, IntegrityError, ModelLoadError, ModelNotFoundError
from onnxkit.manifest import FileEntry, Manifest, TensorSpec
from onnxkit.names import check_name, inside, is_name
from onnxkit.phases import Phases
from onnxkit.session import load_session
from onnxkit.settings import ModelSettings
from onnxkit.sources import FolderSource, StoreSource
from onnxkit.store import ModelStore
from onnxkit_tools.registry import describe_model
from tests.unit.conftest import BuiltModel, StoreHarness

SECRET = b"TOP-SECRET-BYTES"  # 16 bytes: the graph's weight W is uint8[16]


def peeking_graph(location: str) -> bytes:
    """A graph whose one weight is external data at ``location``: ``y = W + x``, so whatever
    file it reads comes back in its output (x = 0)."""
    weight = TensorProto()
    weight.name = "W"
    weight.data_type = TensorProto.UINT8
    weight.dims.extend([16])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["W", "x"], ["y"])],
        "peek",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [16])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [16])],
        initializer=[weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def publish_tiny(store: StoreHarness, model: BuiltModel) -> Manifest:
    """Publish a model honestly, as ``tiny`` version 1."""
    manifest = describe_model(model.path, name="tiny", version="1")
    store.store.publish(manifest, model.folder)
    return manifest


def run_peek(session: Any) -> bytes:
    return bytes(session.run(None, {"x": np.zeros(16, np.uint8)})[0])


def manifest_for(name: str, version: str, files: dict[str, bytes]) -> Manifest:
    """A manifest listing exactly ``files`` (the graph first), as an attacker would write it."""
    return Manifest(
        name=name,
        version=version,
        files=tuple(
            FileEntry(path, hashlib.sha256(data).hexdigest(), len(data))
            for path, data in files.items()
        ),
        inputs=(TensorSpec("x", "UINT8", (16,)),),
        outputs=(TensorSpec("y", "UINT8", (16,)),),
        opset=17,
    )


def plant(harness: StoreHarness, manifest: Manifest, files: dict[str, bytes]) -> None:
    """Write a version straight into the store, as someone with write access to it would."""
    prefix = f"models/{manifest.name}/{manifest.version}"
    for path, data in files.items():
        harness.put_raw(f"{prefix}/{path}", data)
    harness.put_raw(f"{prefix}/manifest.json", manifest.to_json())


# --- 1. a graph reads no file its manifest does not list ------------------------------------


def test_onnxruntime_alone_reads_an_in_memory_graphs_external_data_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The vector itself, as onnxruntime behaves without onnxkit's option: this is what the
    # tests below guard against (if it ever stops reading, they still pass, for a better reason).
    import onnxruntime as ort

    (tmp_path / "planted.bin").write_bytes(SECRET)
    monkeypatch.chdir(tmp_path)

    session = ort.InferenceSession(peeking_graph("planted.bin"), providers=["CPUExecutionProvider"])

    assert run_peek(session) == SECRET


@pytest.mark.parametrize("location", ["planted.bin", "sub/planted.bin"])
def test_an_in_memory_graph_cannot_read_a_planted_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, location: str
) -> None:
    # GIVEN a working directory holding the file the graph names (/, in the endpoint image)
    (tmp_path / "sub").mkdir()
    (tmp_path / location).write_bytes(SECRET)
    monkeypatch.chdir(tmp_path)

    # WHEN the graph is loaded from memory, as the cold start loads single-file models
    # THEN onnxruntime refuses it: its external data is resolved in an empty private folder
    with pytest.raises(ModelLoadError):
        load_session(peeking_graph(location), intra_op_threads=1)


def test_the_empty_folder_is_made_again_when_it_is_gone_or_holds_a_file() -> None:
    from onnxkit.session import empty_folder

    first = Path(empty_folder())
    assert list(first.iterdir()) == []
    assert stat.S_IMODE(first.stat().st_mode) == 0o700
    (first / "planted.bin").write_bytes(SECRET)  # someone got a file into it
    second = Path(empty_folder())
    assert second != first
    assert list(second.iterdir()) == []
    second.rmdir()  # a restored SnapStart snapshot, a cleaned /tmp
    third = Path(empty_folder())
    assert third.is_dir()
    assert list(third.iterdir()) == []


@pytest.mark.parametrize("through_cache", [False, True], ids=["in-memory", "cached-folder"])
def test_a_published_graph_with_unlisted_external_data_never_loads(
    store: StoreHarness,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    through_cache: bool,
) -> None:
    # GIVEN a version whose manifest lists model.onnx alone, while the graph names
    # planted.bin, a file sitting in the server's working directory
    graph = peeking_graph("planted.bin")
    manifest = manifest_for("peek", "1", {"model.onnx": graph})
    plant(store, manifest, {"model.onnx": graph})
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    (workdir / "planted.bin").write_bytes(SECRET)
    monkeypatch.chdir(workdir)
    if through_cache:  # a model over the in-memory limit loads from the verified folder
        monkeypatch.setattr(sources_module, "IN_MEMORY_MAX_BYTES", 0)

    # WHEN the function opens and loads it
    pinned = ModelSettings(store=store.store.uri, name="peek", version="1")
    source = StoreSource(store.store, pinned)
    model = source.open(source.resolve(), Phases())

    # THEN onnxruntime never gets to read the planted file
    assert isinstance(model, Path) is through_cache
    with pytest.raises(ModelLoadError):
        load_session(model, intra_op_threads=1)


def test_a_graph_with_its_listed_external_data_still_loads(
    store: StoreHarness, tiny_external_model: BuiltModel, tmp_path: Path
) -> None:
    manifest = describe_model(tiny_external_model.path, name="tiny", version="1")
    store.store.publish(manifest, tiny_external_model.folder)
    pinned = ModelSettings(store=store.store.uri, name="tiny", version="1")
    source = StoreSource(store.store, pinned)

    model = source.open(source.resolve(), Phases())
    session = load_session(model, intra_op_threads=1)

    x = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    np.testing.assert_allclose(
        session.run(None, {"x": x})[0], tiny_external_model.compute(x)["y"], rtol=1e-6
    )


def test_a_model_folder_with_a_symlink_is_refused(tmp_path: Path) -> None:
    # GIVEN a SageMaker model folder (a tarball's contents) with weights -> a server file
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    folder = tmp_path / "model"
    folder.mkdir()
    graph = peeking_graph("weights")
    (folder / "model.onnx").write_bytes(graph)
    (folder / "weights").symlink_to(secret)

    # WHEN the endpoint opens it, with or without a manifest
    # THEN it is refused before onnxruntime sees it
    with pytest.raises(IntegrityError, match="holds symlinks"):
        FolderSource(folder).open(None, Phases())
    listed = manifest_for("peek", "1", {"model.onnx": graph})  # the graph alone
    (folder / "manifest.json").write_bytes(listed.to_json())
    source = FolderSource(folder)
    with pytest.raises(IntegrityError, match="holds symlinks"):
        source.open(source.resolve(), Phases())


def test_a_model_folder_with_files_its_manifest_does_not_list_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    graph = peeking_graph("weights.bin")
    (folder / "model.onnx").write_bytes(graph)
    (folder / "weights.bin").write_bytes(SECRET)  # verified by nobody
    listed = manifest_for("peek", "1", {"model.onnx": graph})  # the graph alone
    (folder / "manifest.json").write_bytes(listed.to_json())
    source = FolderSource(folder)

    with pytest.raises(IntegrityError, match=r"does not list \(weights.bin\)"):
        source.open(source.resolve(), Phases())


# --- 2. names, versions and aliases: one rule, everywhere ----------------------------------


@pytest.mark.parametrize(
    "value",
    ["..", ".", ".hidden", "a/b", "a\\b", "/abs", "UPPER", "x\n", "", "a" * 65, "a b", "é"],
)
def test_the_name_rule_refuses_what_could_become_a_path(value: str) -> None:
    assert not is_name(value)
    with pytest.raises(ValueError, match="is not valid"):
        check_name(value)


@pytest.mark.parametrize("value", ["digits", "1", "2026-12-07", "v1.2.3", "a_b", "a" * 64, "a..b"])
def test_the_name_rule_takes_ordinary_names(value: str) -> None:
    assert is_name(value)


@pytest.mark.parametrize("version", ["../..", "../../../tmp/x", "/etc", "1\n"])
def test_an_alias_naming_a_traversal_version_is_refused_before_any_read(
    store: StoreHarness, version: str
) -> None:
    # GIVEN an alias document written by someone with store access
    store.put_raw(
        "models/tiny/_aliases/prod.json", json.dumps({"name": "tiny", "version": version}).encode()
    )
    reads: list[str] = []
    original = store.store.blobs.read
    store.store.blobs.read = lambda key, *a, **k: reads.append(key) or original(key, *a, **k)

    # WHEN the function resolves the alias THEN the document is refused and nothing else read
    with pytest.raises(IntegrityError, match="not a valid alias document"):
        store.store.resolve("tiny")
    assert [key for key in reads if "_aliases" not in key] == []  # no manifest, no other file


@pytest.mark.parametrize("field", ["canary", "history", "aborted"])
def test_every_version_an_alias_names_is_checked(store: StoreHarness, field: str) -> None:
    document: dict[str, Any] = {"name": "tiny", "version": "1"}
    document[field] = (
        [{"version": "../x", "updated_at": ""}]
        if field == "history"
        else {"version": "../x", "weight": 10, "reason": "r", "at": ""}
    )
    store.put_raw("models/tiny/_aliases/prod.json", json.dumps(document).encode())

    with pytest.raises(IntegrityError):
        store.store.get_alias("tiny", "prod")


@pytest.mark.parametrize(("name", "version"), [("..", "1"), ("tiny", ".."), ("tiny", "1/../2")])
def test_a_traversal_name_or_version_is_not_found_and_never_a_key(
    store: StoreHarness, name: str, version: str
) -> None:
    reads: list[str] = []
    store.store.blobs.read = lambda key, *a, **k: reads.append(key)  # would record any read

    with pytest.raises(ModelNotFoundError, match="is not valid"):
        store.store.get_manifest(name, version)
    assert reads == []


def test_a_manifest_naming_a_traversal_version_is_refused() -> None:
    good = manifest_for("peek", "1", {"model.onnx": b"graph"})
    for field, value in (("version", "../../x"), ("name", ".."), ("version", "1\n")):
        data = {**good.to_dict(), field: value}
        with pytest.raises(IntegrityError, match="is not valid"):
            Manifest.from_json(json.dumps(data).encode())


def test_a_bucket_key_that_lists_as_dot_dot_is_skipped(s3_client: Any, tmp_path: Path) -> None:
    # GIVEN keys whose names list as the models "..", "bad\nname" and "UPPER" (S3 keys are
    # plain strings: nothing stops a writer from creating them)
    from onnxkit_tools.registry import Registry

    s3_client.create_bucket(Bucket="attack")
    for key in ("s/models/../1/manifest.json", "s/models/bad\nname/1/manifest.json",
                "s/models/UPPER/1/manifest.json", "s/models/good/1/manifest.json"):  # fmt: skip
        s3_client.put_object(Bucket="attack", Key=key, Body=b"{}")
    registry = Registry.from_uri("s3://attack/s", cache_dir=tmp_path / "c", s3_client=s3_client)

    # WHEN the store is listed (ONNXKIT_MODELS=*) THEN only valid names come back
    assert registry.list_models() == ["good"]


def test_the_cache_folder_of_a_manifest_stays_inside_the_cache(tmp_path: Path) -> None:
    store = ModelStore(blobs=None, cache_dir=tmp_path / "cache")  # type: ignore[arg-type]
    evil = Manifest(
        name="..",
        version="../../outside",
        files=(FileEntry("model.onnx", "0" * 64, 1),),
        inputs=(),
        outputs=(),
        opset=17,
    )

    with pytest.raises(IntegrityError, match="cannot be cached"):
        store.local_dir(evil)
    with pytest.raises(ValueError, match="outside"):
        inside(tmp_path / "cache", "a", "..", "..", "x")


def test_publish_refuses_a_traversal_name_or_version(
    tmp_path: Path, tiny_model: BuiltModel
) -> None:
    from onnxkit_tools.cli import main

    root = tmp_path / "deep" / "store"
    root.mkdir(parents=True)
    for args in (["--name", "../../escaped"], ["--name", "tiny", "--version", "../../escaped"]):
        code = main(["publish", str(tiny_model.path), *args, "--store", f"file://{root}"])
        assert code == 2
    assert not (tmp_path / "escaped").exists()
    assert not any(tmp_path.rglob("escaped"))


# --- 9. the cache trusts nothing it finds ---------------------------------------------------


def test_a_planted_same_size_file_is_hashed_and_replaced(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    # GIVEN a version published, and a file of the same size planted where its copy will go,
    # with the marker that says "complete"
    manifest = publish_tiny(store, tiny_model)
    folder = store.store.local_dir(manifest)
    folder.mkdir(parents=True)
    planted = bytes(manifest.model_file.size)
    (folder / "model.onnx").write_bytes(planted)
    folder.with_name(folder.name + ".complete").write_bytes(manifest.to_json())

    # WHEN the function fetches it (and, on a warm /tmp, asks for a cached copy)
    assert store.store.cached(manifest) is None
    fetched = store.store.fetch(manifest)

    # THEN the planted bytes were never taken: the copy is the published graph
    assert (fetched / "model.onnx").read_bytes() == tiny_model.path.read_bytes()
    assert store.streamed == ["models/tiny/1/model.onnx"]


def test_a_copy_changed_after_its_verification_is_not_reused(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    manifest = publish_tiny(store, tiny_model)
    folder = store.store.fetch(manifest)
    copy = folder / "model.onnx"
    tampered = bytearray(copy.read_bytes())
    tampered[-1] ^= 0xFF
    copy.write_bytes(bytes(tampered))  # same size, new bytes (a new mtime)

    assert store.store.cached(manifest) is None
    assert (store.store.fetch(manifest) / "model.onnx").read_bytes() == tiny_model.path.read_bytes()


def test_a_planted_symlinked_folder_is_never_written_through(
    store: StoreHarness, tiny_model: BuiltModel, tmp_path: Path
) -> None:
    # GIVEN the cache's folder for the model replaced by a symlink to somewhere else
    manifest = publish_tiny(store, tiny_model)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store.cache_dir.mkdir(mode=0o700)
    (store.cache_dir / "tiny").symlink_to(elsewhere, target_is_directory=True)

    # WHEN the version is fetched
    folder = store.store.fetch(manifest)

    # THEN nothing landed through the link, which is gone, and the copy is real and verified
    assert list(elsewhere.iterdir()) == []
    assert not (store.cache_dir / "tiny").is_symlink()
    assert (folder / "model.onnx").read_bytes() == tiny_model.path.read_bytes()


def test_a_planted_symlink_in_place_of_a_file_is_replaced_not_followed(
    store: StoreHarness, tiny_model: BuiltModel, tmp_path: Path
) -> None:
    manifest = publish_tiny(store, tiny_model)
    victim = tmp_path / "victim"
    victim.write_bytes(b"x" * manifest.model_file.size)
    folder = store.store.local_dir(manifest)
    folder.mkdir(parents=True)
    (folder / "model.onnx").symlink_to(victim)

    store.store.fetch(manifest)

    assert victim.read_bytes() == b"x" * manifest.model_file.size  # untouched
    assert not (folder / "model.onnx").is_symlink()


def test_the_cache_root_is_made_private(store: StoreHarness, tiny_model: BuiltModel) -> None:
    manifest = publish_tiny(store, tiny_model)

    folder = store.store.fetch(manifest)

    assert stat.S_IMODE(os.stat(store.cache_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700


@pytest.mark.parametrize("kind", ["symlink", "writable"])
def test_a_cache_root_others_could_write_to_is_refused(
    store: StoreHarness, tiny_model: BuiltModel, tmp_path: Path, kind: str
) -> None:
    manifest = publish_tiny(store, tiny_model)
    if kind == "symlink":
        target = tmp_path / "target"
        target.mkdir(mode=0o700)
        store.cache_dir.symlink_to(target, target_is_directory=True)
    else:
        store.cache_dir.mkdir()
        os.chmod(store.cache_dir, 0o777)  # noqa: S103 - the attack under test

    with pytest.raises(CacheError) as caught:
        store.store.fetch(manifest)

    assert caught.value.status == 500
    assert "ONNXKIT_CACHE_DIR" in caught.value.message
    assert str(store.cache_dir) not in caught.value.client_message


# --- 6. documents the store hands us are bounded before they are read ----------------------


def test_a_manifest_over_a_mebibyte_is_refused_by_its_size(store: StoreHarness) -> None:
    # 300,000 entries (the 15 s load) do not fit in 1 MiB
    entries = [{"path": f"f{n}", "sha256": "0" * 64, "size": 1} for n in range(300_000)]
    store.put_raw(
        "models/tiny/1/manifest.json", json.dumps({"name": "tiny", "files": entries}).encode()
    )

    with pytest.raises(IntegrityError, match="a store document is at most 1048576"):
        store.store.get_manifest("tiny", "1")


def test_a_manifest_with_too_many_or_repeated_files_is_refused() -> None:
    good = manifest_for("peek", "1", {"model.onnx": b"graph"}).to_dict()
    many = {**good, "files": list(good["files"]) * 257}
    repeated = {**good, "files": list(good["files"]) * 2}

    with pytest.raises(IntegrityError, match="at most 256"):
        Manifest.from_json(json.dumps(many).encode())
    with pytest.raises(IntegrityError, match="more than once"):
        Manifest.from_json(json.dumps(repeated).encode())


def test_a_huge_labels_file_is_refused_from_its_manifest_entry(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    # GIVEN a manifest declaring an 89 MB labels file (the 2.7 GB per request)
    manifest = describe_model(tiny_model.path, name="tiny", version="1")
    data = manifest.to_dict()
    data["files"] = [*data["files"], {"path": "labels.txt", "sha256": "0" * 64, "size": 89_000_000}]
    data["processing"] = {"postprocess": [{"output": "y", "top_k": 1, "labels": "labels.txt"}]}
    store.put_raw("models/tiny/1/manifest.json", json.dumps(data).encode())

    # WHEN it is read THEN it is refused before any file is fetched
    with pytest.raises(IntegrityError, match=r"labels\.txt' is 89000000 bytes"):
        store.store.get_manifest("tiny", "1")
    assert store.streamed == []


def test_shape_ranks_and_dimensions_are_bounded() -> None:
    good = manifest_for("peek", "1", {"model.onnx": b"graph"}).to_dict()
    for shape in ([1] * 33, [-2], [2**62]):
        data = {**good, "inputs": [{"name": "x", "datatype": "UINT8", "shape": shape}]}
        with pytest.raises(IntegrityError):
            Manifest.from_json(json.dumps(data).encode())


def test_a_model_folders_huge_manifest_is_refused_by_its_size(tmp_path: Path) -> None:
    # GIVEN a model.tar.gz whose manifest.json lists 300,000 files (tens of MB)
    folder = tmp_path / "model"
    folder.mkdir()
    entries = [{"path": f"f{n}", "sha256": "0" * 64, "size": 1} for n in range(300_000)]
    (folder / "manifest.json").write_text(json.dumps({"name": "x", "files": entries}))

    # WHEN the endpoint opens the folder THEN the manifest is refused before it is parsed
    with pytest.raises(IntegrityError, match="a store document is at most 1048576"):
        FolderSource(folder)
