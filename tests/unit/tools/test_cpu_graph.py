"""The CPU twin: onnxruntime's extended optimizations done at publish, checked, and loaded by a
CPU function instead of the original."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from onnxkit import sources
from onnxkit.errors import IntegrityError
from onnxkit.manifest import Manifest
from onnxkit.phases import Phases
from onnxkit.settings import ModelSettings
from onnxkit.sources import StoreSource
from onnxkit_tools import cpu_graph
from onnxkit_tools.registry import describe_model, publish_model
from tests.unit.conftest import BuiltModel, StoreHarness


def test_the_twin_computes_what_the_original_does(tiny_model: BuiltModel, tmp_path: Path) -> None:
    # GIVEN the tiny model y = x @ W + b
    manifest = describe_model(tiny_model.path, name="tiny", version="1")
    twin = tmp_path / "model.cpu.onnx"

    # WHEN its twin is built
    record = cpu_graph.build_cpu_graph(tiny_model.path, twin, manifest.inputs)

    # THEN it is recorded with the onnxruntime that made it, and answers as numpy does
    assert record is not None
    assert record["path"] == "model.cpu.onnx"
    assert record["onnxruntime"] == ort.__version__
    assert record["level"] == "extended"
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    (y,) = ort.InferenceSession(str(twin), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(y, tiny_model.compute(x)["y"], rtol=1e-6)


def test_a_string_model_gets_a_twin_checked_by_equality(
    strings_model: BuiltModel, tmp_path: Path
) -> None:
    manifest = describe_model(strings_model.path, name="strings", version="1")

    record = cpu_graph.build_cpu_graph(strings_model.path, tmp_path / "s.onnx", manifest.inputs)

    assert record is not None
    assert record["max_abs_diff"] == 0.0


def test_a_string_twin_that_answers_differently_is_not_published(
    strings_model: BuiltModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a twin session whose string output differs from the original's
    manifest = describe_model(strings_model.path, name="strings", version="1")
    real = ort.InferenceSession

    class Changed:
        def __init__(self, *args: object, **kwargs: object) -> None:
            self._session = real(*args, **kwargs)

        def run(self, *args: object) -> list[np.ndarray]:
            same, shape = self._session.run(*args)
            return [np.full_like(same, "other"), shape]

    sessions = iter([real, Changed])
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: next(sessions)(*a, **k))

    # WHEN its twin is built THEN it is not published
    assert (
        cpu_graph.build_cpu_graph(strings_model.path, tmp_path / "s.onnx", manifest.inputs) is None
    )


def test_a_twin_outside_the_tolerance_is_not_published(
    tiny_model: BuiltModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a tolerance no difference can meet (even 0 is over it)
    monkeypatch.setattr(cpu_graph, "TOLERANCE", -1.0)
    manifest = describe_model(tiny_model.path, name="tiny", version="1")

    assert cpu_graph.build_cpu_graph(tiny_model.path, tmp_path / "t.onnx", manifest.inputs) is None


def test_publish_adds_the_twin_for_the_function_only(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    # WHEN the same model is published for the function, for SageMaker, and without a twin
    lam = publish_model(store.store, tiny_model.path, name="tiny", version="1")
    gpu = publish_model(store.store, tiny_model.path, name="tiny", version="2", backend="sagemaker")
    bare = publish_model(store.store, tiny_model.path, name="tiny", version="3", cpu_graph=False)

    # THEN only the function's version has one, listed after the graph, not counted as the model
    assert [f.path for f in lam.files] == ["model.onnx", "model.cpu.onnx"]
    assert lam.cpu_graph is not None
    assert lam.cpu_file is not None
    assert lam.total_size == tiny_model.path.stat().st_size
    assert lam.stored_size == lam.total_size + lam.cpu_file.size
    assert [f.path for f in gpu.files] == [f.path for f in bare.files] == ["model.onnx"]
    assert gpu.cpu_graph is None
    assert bare.cpu_graph is None
    # AND the user's folder is left as it was
    assert sorted(p.name for p in tiny_model.folder.iterdir()) == ["model.onnx"]


def test_a_cpu_source_loads_the_twin_and_a_gpu_one_the_original(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    manifest = publish_model(store.store, tiny_model.path, name="tiny", alias="prod")
    twin_bytes = store.get_raw("models/tiny/1/model.cpu.onnx")

    cpu = StoreSource(store.store, ModelSettings(name="tiny"))
    gpu = StoreSource(store.store, ModelSettings(name="tiny"), cpu_graph=False)

    assert cpu.open(manifest, Phases()) == twin_bytes
    assert gpu.open(manifest, Phases()) == tiny_model.path.read_bytes()


def test_a_twin_from_a_newer_onnxruntime_is_not_loaded(
    store: StoreHarness, tiny_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a twin made by onnxruntime 1.32 and a function running 1.20
    manifest = publish_model(store.store, tiny_model.path, name="tiny", alias="prod")
    newer = Manifest.from_dict(
        {**manifest.to_dict(), "cpu_graph": {**(manifest.cpu_graph or {}), "onnxruntime": "1.32.0"}}
    )
    monkeypatch.setattr(sources, "installed_onnxruntime", lambda: (1, 20))

    # THEN the original graph is what it loads
    source = StoreSource(store.store, ModelSettings(name="tiny"))
    assert source.graph_for(newer) == newer.model_file


def test_a_corrupt_twin_is_refused(store: StoreHarness, tiny_model: BuiltModel) -> None:
    manifest = publish_model(store.store, tiny_model.path, name="tiny", alias="prod")
    store.put_raw("models/tiny/1/model.cpu.onnx", b"not the twin")

    with pytest.raises(IntegrityError, match="does not match its manifest"):
        StoreSource(store.store, ModelSettings(name="tiny")).open(manifest, Phases())


@pytest.mark.parametrize(
    ("cpu", "problem"),
    [
        ({"path": "model.onnx", "onnxruntime": "1.32.0"}, "after the graph"),
        ({"path": "elsewhere.onnx", "onnxruntime": "1.32.0"}, "not one of the version's files"),
        ({"path": "../x.onnx", "onnxruntime": "1.32.0"}, "must be relative"),
    ],
)
def test_a_manifest_twin_must_be_one_of_its_other_files(
    tiny_model: BuiltModel, cpu: dict, problem: str
) -> None:
    data = describe_model(tiny_model.path, name="tiny", version="1").to_dict()
    data["cpu_graph"] = cpu

    with pytest.raises(IntegrityError, match=f"manifest is not valid: .*{problem}"):
        Manifest.from_json(json.dumps(data).encode())


def test_a_manifest_without_a_twin_reads_and_writes_as_before(tiny_model: BuiltModel) -> None:
    manifest = describe_model(tiny_model.path, name="tiny", version="1")

    assert "cpu_graph" not in json.loads(manifest.to_json())
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_publish_says_how_much_it_uploads_before_it_starts(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    # GIVEN a progress bar that learns its total from the publish
    totals: list[int] = []
    moved: list[int] = []

    # WHEN a model is published with its twin
    publish_model(
        store.store,
        tiny_model.path,
        name="tiny",
        version="1",
        progress=moved.append,
        on_upload_size=totals.append,
    )

    # THEN the total announced is what was uploaded: the graph's bytes and the twin's
    twin = store.get_raw("models/tiny/1/model.cpu.onnx")
    assert totals == [tiny_model.path.stat().st_size + len(twin)]
    assert sum(moved) == totals[0]
