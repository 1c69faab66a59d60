"""The composition root: which source, which backend, what each role builds."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxkit import sources
from onnxkit import store as store_module
from onnxkit.aws import AwsClients
from onnxkit.backends.batching import BatchingBackend
from onnxkit.backends.onnxruntime import OnnxruntimeBackend
from onnxkit.backends.sagemaker import SageMakerBackend
from onnxkit.compose import build_predictor
from onnxkit.errors import ConfigurationError, ModelNotReadyError
from onnxkit.manifest import FileEntry, Manifest, TensorSpec
from onnxkit.phases import LOAD_PHASES, Phases
from onnxkit.settings import ForwardSettings, Settings
from onnxkit.sources import FolderSource, StoreSource, choose_backend, open_source, prefetch
from onnxkit_tools.registry import describe_model
from tests.unit.conftest import BuiltModel, StoreHarness

MANIFEST = Manifest(
    name="minilm",
    version="1",
    files=(FileEntry("model.onnx", "0" * 64, 1),),
    inputs=(TensorSpec("ids", "INT64", (-1, 8)),),
    outputs=(TensorSpec("embedding", "FP32", (-1, 4)),),
    opset=17,
)


@pytest.mark.parametrize(
    ("backend", "manifest_backend", "size", "gpu", "expected"),
    [
        ("auto", "lambda", 1_000, False, "lambda"),
        ("auto", "sagemaker", 1_000, False, "sagemaker"),
        ("auto", "lambda", 300_000_000, False, "sagemaker"),
        ("auto", "lambda", 1_000, True, "sagemaker"),
        ("lambda", "sagemaker", 300_000_000, True, "lambda"),
        ("sagemaker", "lambda", 1_000, False, "sagemaker"),
    ],
)
def test_backend_choice(
    backend: str, manifest_backend: str, size: int, gpu: bool, expected: str
) -> None:
    forward = ForwardSettings(backend=backend, endpoint="e")
    manifest = replace(
        MANIFEST,
        backend=manifest_backend,
        files=(FileEntry("model.onnx", "0" * 64, size),),
        metadata={"gpu": gpu},
    )
    assert choose_backend(forward, manifest) == expected


def store_settings(harness: StoreHarness, **environ: str) -> Settings:
    """Settings serving model ``tiny`` from the harness's store."""
    return Settings.from_env(
        {
            "ONNXKIT_MODEL_STORE": harness.store.uri,
            "ONNXKIT_MODEL_NAME": "tiny",
            "ONNXKIT_CACHE_DIR": str(harness.cache_dir),
            "ONNXKIT_INTRA_OP_THREADS": "1",
            **environ,
        }
    )


def clients_for(harness: StoreHarness, sagemaker_runtime: Any = None) -> AwsClients:
    """Clients reusing the harness's S3 client (moto) when it has one."""
    blobs = harness.store.blobs
    return AwsClients(s3=getattr(blobs, "_client", None), sagemaker_runtime=sagemaker_runtime)


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every object any store downloads (the predictor opens its own store, not the harness's)."""
    seen: list[str] = []
    for kind in (store_module.S3Blobs, store_module.FileBlobs):
        original = kind.download

        def spy(self: Any, key: str, sink: Any, _original: Any = original) -> None:
            seen.append(key)
            _original(self, key, sink)

        monkeypatch.setattr(kind, "download", spy)
    return seen


def publish_tiny(harness: StoreHarness, model: BuiltModel, backend: str = "lambda") -> Manifest:
    manifest = describe_model(model.path, name="tiny", version="1", backend=backend)
    harness.store.publish(manifest, model.folder)
    harness.store.set_alias("tiny", "prod", "1")
    return manifest


def test_a_folder_is_the_source_when_model_dir_is_set(tiny_model: BuiltModel) -> None:
    settings = Settings.from_env({"ONNXKIT_MODEL_DIR": str(tiny_model.folder)})

    assert isinstance(open_source(settings, AwsClients()), FolderSource)


def test_the_store_is_the_source_otherwise(store: StoreHarness) -> None:
    source = open_source(store_settings(store), clients_for(store))

    assert isinstance(source, StoreSource)
    assert source.name == "tiny"


def test_a_missing_model_folder_fails_when_the_predictor_is_built(tmp_path: Path) -> None:
    settings = Settings.from_env({"ONNXKIT_MODEL_DIR": str(tmp_path / "missing")})

    with pytest.raises(ConfigurationError):
        build_predictor(settings, role="endpoint")


def test_the_function_runs_a_lambda_model_in_process(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    publish_tiny(store, tiny_model)

    predictor = build_predictor(store_settings(store), role="function", clients=clients_for(store))

    backend = predictor.load()
    assert isinstance(backend, OnnxruntimeBackend)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(backend.run({"x": x})["y"], tiny_model.compute(x)["y"], rtol=1e-6)
    assert predictor.refresh_interval == 60.0  # serving the prod alias: it follows it


def test_the_function_forwards_a_sagemaker_model_without_downloading_it(
    store: StoreHarness, tiny_model: BuiltModel, downloads: list[str]
) -> None:
    publish_tiny(store, tiny_model, backend="sagemaker")
    runtime = object()  # never called here
    settings = store_settings(store, ONNXKIT_SAGEMAKER_ENDPOINT="gpu-endpoint")

    predictor = build_predictor(settings, role="function", clients=clients_for(store, runtime))

    assert isinstance(predictor.load(), SageMakerBackend)
    assert downloads == []  # only the manifest was read


def test_the_function_says_what_to_set_for_a_sagemaker_model_without_an_endpoint(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    publish_tiny(store, tiny_model, backend="sagemaker")
    predictor = build_predictor(store_settings(store), role="function", clients=clients_for(store))

    with pytest.raises(ModelNotReadyError, match="set ONNXKIT_SAGEMAKER_ENDPOINT"):
        predictor.load()


def test_the_endpoint_runs_every_model_in_process_behind_batching_when_asked(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    # GIVEN a model published for SageMaker, and an endpoint with dynamic batching on
    publish_tiny(store, tiny_model, backend="sagemaker")
    settings = store_settings(store, ONNXKIT_DYNAMIC_BATCH_ROWS="4")

    # WHEN the endpoint builds its predictor
    predictor = build_predictor(settings, role="endpoint", clients=clients_for(store))

    # THEN it loads only in the background, runs the model itself, and batches
    with pytest.raises(ModelNotReadyError):
        predictor.check_ready()
    assert predictor.try_load()
    backend = predictor.load()
    assert isinstance(backend, BatchingBackend)
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(backend.run({"x": x})["y"], tiny_model.compute(x)["y"], rtol=1e-6)
    backend.close()


def test_a_pinned_version_or_zero_interval_does_not_follow_the_alias(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    publish_tiny(store, tiny_model)
    clients = clients_for(store)

    pinned = build_predictor(
        store_settings(store, ONNXKIT_MODEL_VERSION="1"), role="function", clients=clients
    )
    never = build_predictor(
        store_settings(store, ONNXKIT_REFRESH_SECONDS="0"), role="function", clients=clients
    )

    assert pinned.refresh_interval == 0.0
    assert never.refresh_interval == 0.0


def test_a_swap_frees_the_old_versions_files(
    store: StoreHarness, tiny_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the function serving prod = 1 from the /tmp cache (as a large model would)
    monkeypatch.setattr(sources, "IN_MEMORY_MAX_BYTES", 0)
    publish_tiny(store, tiny_model)
    predictor = build_predictor(store_settings(store), role="function", clients=clients_for(store))
    predictor.load()
    old_files = [p for p in store.cached_files() if p.name == "model.onnx"]

    # WHEN prod moves to 2 and the predictor refreshes
    store.store.publish(
        describe_model(tiny_model.path, name="tiny", version="2"), tiny_model.folder
    )
    store.store.set_alias("tiny", "prod", "2")
    assert predictor.refresh(force=True)

    # THEN version 2 serves and version 1's cached files are gone
    assert predictor.load().manifest.version == "2"
    assert old_files
    assert not any(p.exists() for p in old_files)
    assert [p.parts[-3] for p in store.cached_files() if p.name == "model.onnx"] == ["2"]


def test_resolved_settings_reach_the_session(
    tiny_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxkit import session as session_module

    seen: dict[str, Any] = {}
    real = session_module.create_session

    def spy(path: Path, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return real(path, **{**kwargs, "gpu_device": 0})

    monkeypatch.setattr(session_module, "create_session", spy)
    settings = Settings.from_env(
        {"ONNXKIT_MODEL_DIR": str(tiny_model.folder), "ONNXKIT_INTRA_OP_THREADS": "3"}
    )
    settings = replace(settings, session=replace(settings.session, gpu_device=1))

    build_predictor(settings, role="endpoint").try_load()

    assert seen == {"providers": ("CPUExecutionProvider",), "intra_op_threads": 3, "gpu_device": 1}


def test_a_small_model_loads_from_memory_once_and_reports_every_phase(
    store: StoreHarness, tiny_model: BuiltModel, downloads: list[str]
) -> None:
    # GIVEN a published single-file model well under the in-memory limit
    publish_tiny(store, tiny_model)
    seen: list[tuple[str, Phases]] = []
    predictor = build_predictor(
        store_settings(store),
        role="function",
        clients=clients_for(store),
        on_loaded=lambda manifest, phases: seen.append((manifest.version, phases)),
    )

    # WHEN it loads
    backend = predictor.load()

    # THEN the graph was read once, straight into memory: nothing was written to the cache
    assert downloads == ["models/tiny/1/model.onnx"]
    assert [p for p in store.cached_files() if p.name == "model.onnx"] == []
    # AND it computes y = x @ W + b: for ones, the column sums of W plus b, by hand
    x = np.ones((1, 4), np.float32)
    assert backend.run({"x": x})["y"].tolist() == [[3.0, 1.75]]
    # AND every phase of the load was timed, once
    ((version, phases),) = seen
    assert version == "1"
    assert list(phases.ms) == [p for p in LOAD_PHASES if p != "processing"]  # none declared
    assert all(ms >= 0 for ms in phases.ms.values())


def test_a_complete_cached_copy_is_reused_without_a_download(
    store: StoreHarness, tiny_model: BuiltModel, downloads: list[str]
) -> None:
    # GIVEN a warm /tmp: a verified copy from an earlier process (onnxkit models pull writes
    # the same layout)
    publish_tiny(store, tiny_model)
    manifest = store.store.resolve("tiny")
    store.store.fetch(manifest)
    downloads.clear()

    # WHEN a new predictor loads the same version
    predictor = build_predictor(store_settings(store), role="function", clients=clients_for(store))
    predictor.load()

    # THEN nothing was downloaded again
    assert downloads == []


def test_a_failed_prefetch_fails_the_first_load_once_then_loads_afresh(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    # GIVEN the cold start's prefetch found nothing (the model is published only afterwards)
    settings = store_settings(store, ONNXKIT_LOAD_RETRY_SECONDS="0")  # no backoff here
    clients = clients_for(store)
    source = open_source(settings, clients)
    early = prefetch(source, settings.forward)
    assert early.error is not None
    assert early.error.code == "model_not_found"
    predictor = build_predictor(
        settings, role="function", clients=clients, source=source, prefetched=early
    )

    # WHEN the first load runs, THEN it reports the prefetch's failure without a second try
    assert predictor.try_load() is False
    assert predictor.last_error is not None

    # AND once the model is published, the next load reads the store again and serves it
    publish_tiny(store, tiny_model)
    x = np.ones((1, 4), np.float32)
    assert predictor.load().run({"x": x})["y"].tolist() == [[3.0, 1.75]]


def test_a_prefetched_model_is_not_downloaded_again(
    store: StoreHarness, tiny_model: BuiltModel, downloads: list[str]
) -> None:
    # GIVEN the graph already read by the cold start's prefetch
    publish_tiny(store, tiny_model)
    settings = store_settings(store)
    source = open_source(settings, clients_for(store))
    early = prefetch(source, settings.forward)
    assert downloads == ["models/tiny/1/model.onnx"]

    # WHEN the predictor loads from it
    predictor = build_predictor(
        settings, role="function", clients=clients_for(store), source=source, prefetched=early
    )
    predictor.load()

    # THEN nothing more came down
    assert downloads == ["models/tiny/1/model.onnx"]
