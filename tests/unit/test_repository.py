"""Many models behind one server: loads on first request, LRU eviction within budgets, the index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from onnxkit.compose import build_repository, build_server, repository_budget
from onnxkit.errors import ConfigurationError, ModelNotFoundError, OnnxkitError
from onnxkit.manifest import Manifest
from onnxkit.predictor import NullObserver, Predictor
from onnxkit.repository import READY, UNAVAILABLE, Budget, Catalog, ModelRepository
from onnxkit.routes import ENDPOINT, FUNCTION, RouteTable
from onnxkit.settings import Settings
from tests.conftest import WIDTH, offset_model
from tests.unit.conftest import infer_json

NAMES = ("m1", "m2", "m3", "m4", "m5")


@pytest.fixture
def five(tmp_path: Path) -> Path:
    """A file store with five models m1..m5 (alias prod at version 1; m1 also has version 2
    under alias staging, adding 10)."""
    from onnxkit_tools.registry import Registry, publish_model

    root = tmp_path / "store"
    root.mkdir()
    registry = Registry.from_uri(f"file://{root}", cache_dir=tmp_path / "pub")
    for index, name in enumerate(NAMES, start=1):
        path = offset_model(tmp_path / "src" / name, float(index), external=name == "m5")
        publish_model(registry, path, name=name, version="1", alias="prod", cpu_graph=False)
    path = offset_model(tmp_path / "src" / "m1-v2", 11.0)
    publish_model(registry, path, name="m1", version="2", alias="staging", cpu_graph=False)
    return root


def settings_for(root: Path, cache: Path, **environ: str) -> Settings:
    return Settings.from_env(
        {
            "ONNXKIT_MODEL_STORE": f"file://{root}",
            "ONNXKIT_CACHE_DIR": str(cache),
            "ONNXKIT_INTRA_OP_THREADS": "1",
            "ONNXKIT_MODELS": ",".join(NAMES),
            **environ,
        }
    )


def request(value: float = 0.5) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1, WIDTH], "datatype": "FP32", "data": [value] * WIDTH}
            ]
        }
    ).encode()


def first_value(repository: Any, name: str, version: str | None = None) -> float:
    answer = infer_json(repository, name, version, request(0.5))
    return float(answer["outputs"][0]["data"][0])


class Evictions(NullObserver):
    def __init__(self) -> None:
        self.evicted: list[tuple[str, str]] = []
        self.loaded: list[str] = []

    def model_loaded(self, manifest: Manifest, milliseconds: float) -> None:
        self.loaded.append(manifest.name)

    def model_evicted(self, manifest: Manifest) -> None:
        self.evicted.append((manifest.name, manifest.version))


def states(repository: ModelRepository) -> dict[str, str]:
    return {row["name"]: row["state"] for row in repository.repository_index()}


def test_nothing_loads_until_a_model_is_asked_for_then_only_that_one(
    five: Path, tmp_path: Path
) -> None:
    repository = build_repository(settings_for(five, tmp_path / "cache"), role=FUNCTION)
    observer = Evictions()
    repository.observe(observer)

    assert states(repository) == dict.fromkeys(NAMES, UNAVAILABLE)
    assert first_value(repository, "m3") == pytest.approx(3.5)  # x + 3, worked out by hand

    assert observer.loaded == ["m3"]
    rows = {row["name"]: row for row in repository.repository_index()}
    assert rows["m3"]["state"] == READY
    assert rows["m3"]["version"] == "1"
    assert "first request" in rows["m1"]["reason"]
    assert [row["name"] for row in repository.repository_index(ready_only=True)] == ["m3"]


def test_a_memory_budget_that_fits_three_evicts_the_least_recently_used(
    five: Path, tmp_path: Path
) -> None:
    # GIVEN each model counted as twice its ~256 KiB of weights; 2 MiB fits three, not four
    settings = settings_for(five, tmp_path / "cache", ONNXKIT_MODELS_MEMORY_MB="2")
    repository = build_repository(settings, role=FUNCTION)
    observer = Evictions()
    repository.observe(observer)

    # WHEN four models are used, m1 first and least recently
    for name, expected in (("m1", 1.5), ("m2", 2.5), ("m3", 3.5)):
        assert first_value(repository, name) == pytest.approx(expected)
    assert first_value(repository, "m2") == pytest.approx(2.5)  # m2 is used again: m1 is LRU
    assert first_value(repository, "m4") == pytest.approx(4.5)

    # THEN m1 was evicted, three stay loaded, and m1 reloads with the same answer
    assert observer.evicted == [("m1", "1")]
    loaded = {name for name, state in states(repository).items() if state == READY}
    assert loaded == {"m2", "m3", "m4"}
    reason = {r["name"]: r["reason"] for r in repository.repository_index()}["m1"]
    assert "evicted" in reason
    assert "memory" in reason
    assert first_value(repository, "m1") == pytest.approx(1.5)
    assert observer.evicted[-1] == ("m3", "1")  # m3 was the least recently used by then
    assert observer.loaded == ["m1", "m2", "m3", "m4", "m1"]


def test_the_disk_budget_evicts_and_deletes_cached_files(five: Path, tmp_path: Path) -> None:
    # GIVEN m5 keeps its weights in an external file, so it is fetched to the cache folder
    cache = tmp_path / "cache"
    settings = settings_for(five, cache, ONNXKIT_MODELS_DISK_MB="1")
    repository = build_repository(settings, role=FUNCTION)
    assert first_value(repository, "m5") == pytest.approx(5.5)
    files = [p for p in (cache / "m5").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) >= WIDTH * 4
    row = {r["name"]: r for r in repository.repository_index()}["m5"]
    assert row["disk_bytes"] >= WIDTH * 4

    # WHEN, with a disk budget with room for m5 alone, a second copy (pinned) is loaded
    repository = build_repository(
        settings, role=FUNCTION, budget=Budget(disk_bytes=row["disk_bytes"] + 1)
    )
    assert first_value(repository, "m5") == pytest.approx(5.5)
    other = offset_model(tmp_path / "src" / "m5-v2", 50.0, external=True)
    from onnxkit_tools.registry import Registry, publish_model

    registry = Registry.from_uri(f"file://{five}", cache_dir=tmp_path / "pub2")
    publish_model(registry, other, name="m5", version="2", cpu_graph=False)
    assert first_value(repository, "m5", "2") == pytest.approx(50.5)

    # THEN the alias's copy was evicted and its files deleted; the pinned one stays
    index = repository.repository_index()
    by_alias = {(r["name"], r.get("alias")): r for r in index}
    assert by_alias[("m5", None)]["state"] == UNAVAILABLE
    assert "disk" in by_alias[("m5", None)]["reason"]
    assert by_alias[("m5", "2")]["state"] == READY
    assert not any(p.is_file() for p in (cache / "m5" / "1").rglob("*"))
    assert any(p.is_file() for p in (cache / "m5" / "2").rglob("*"))


def test_versions_and_aliases_can_be_addressed(five: Path, tmp_path: Path) -> None:
    repository = build_repository(settings_for(five, tmp_path / "cache"), role=FUNCTION)

    assert first_value(repository, "m1") == pytest.approx(1.5)  # prod: version 1
    assert first_value(repository, "m1", "1") == pytest.approx(1.5)  # the alias's own version
    assert first_value(repository, "m1", "staging") == pytest.approx(11.5)  # another alias
    assert first_value(repository, "m1", "2") == pytest.approx(11.5)  # a version by name
    metadata = repository.model_metadata("m1", "staging")
    assert metadata["versions"] == ["2"]
    rows = [r for r in repository.repository_index() if r["name"] == "m1"]
    assert {(r.get("alias"), r["version"]) for r in rows} == {
        (None, "1"),
        ("staging", "2"),
        ("2", "2"),
    }
    with pytest.raises(ModelNotFoundError, match="no version '9'"):
        repository.infer("m1", "9", request())


def test_an_unknown_model_is_404_and_names_what_is_served(five: Path, tmp_path: Path) -> None:
    repository = build_repository(settings_for(five, tmp_path / "cache"), role=FUNCTION)
    with pytest.raises(ModelNotFoundError, match="'m1', 'm2'") as caught:
        repository.infer("nope", None, request())
    assert caught.value.status == 404


def test_star_serves_every_model_in_the_store_within_the_allow_list(
    five: Path, tmp_path: Path
) -> None:
    settings = settings_for(
        five, tmp_path / "cache", ONNXKIT_MODELS="*", ONNXKIT_MODELS_ALLOW="m1,m[34]"
    )
    repository = build_repository(settings, role=FUNCTION)

    assert [row["name"] for row in repository.repository_index()] == ["m1", "m3", "m4"]
    assert first_value(repository, "m4") == pytest.approx(4.5)
    with pytest.raises(ModelNotFoundError, match="matching m1, m"):
        repository.infer("m2", None, request())


def test_a_model_published_after_the_listing_is_found_on_its_first_request(
    five: Path, tmp_path: Path
) -> None:
    from onnxkit_tools.registry import Registry, publish_model

    now = [0.0]
    catalog_clock = lambda: now[0]  # noqa: E731
    settings = settings_for(five, tmp_path / "cache", ONNXKIT_MODELS="*")
    repository = build_repository(settings, role=FUNCTION)
    repository._catalog._clock = catalog_clock
    assert "m6" not in [row["name"] for row in repository.repository_index()]

    registry = Registry.from_uri(f"file://{five}", cache_dir=tmp_path / "pub")
    path = offset_model(tmp_path / "src" / "m6", 6.0)
    publish_model(registry, path, name="m6", version="1", alias="prod", cpu_graph=False)
    with pytest.raises(ModelNotFoundError):
        repository.infer("m6", None, request())  # the listing is a moment old: not re-read
    now[0] = 6.0
    assert first_value(repository, "m6") == pytest.approx(6.5)


def test_a_failed_load_is_reported_in_the_index_and_retried(five: Path, tmp_path: Path) -> None:
    # GIVEN m2's graph is corrupted in the store
    graph = next((five / "models" / "m2" / "1").glob("model.onnx"))
    good = graph.read_bytes()
    graph.write_bytes(good[:-10] + b"0123456789")
    settings = settings_for(five, tmp_path / "cache", ONNXKIT_LOAD_RETRY_SECONDS="0")
    repository = build_repository(settings, role=FUNCTION)  # no backoff: retried at once

    with pytest.raises(OnnxkitError) as caught:
        repository.infer("m2", None, request())
    assert caught.value.status >= 500
    row = {r["name"]: r for r in repository.repository_index()}["m2"]
    assert row["state"] == UNAVAILABLE
    assert "last load failed" in row["reason"]

    # WHEN the store is repaired THEN the next request loads it (no restart)
    graph.write_bytes(good)
    assert first_value(repository, "m2") == pytest.approx(2.5)


def test_the_route_table_serves_the_index_and_sagemaker_invocations_by_attribute(
    five: Path, tmp_path: Path
) -> None:
    settings = settings_for(five, tmp_path / "cache")
    server = build_server(settings, role=ENDPOINT)
    assert isinstance(server, ModelRepository)
    table = RouteTable(ENDPOINT)

    route, params = table.match("POST", "/invocations")
    reply = table.perform(
        server,
        route,
        params,
        request(0.5),
        {"content-type": "application/json", "x-amzn-sagemaker-custom-attributes": "model=m4"},
    )
    assert json.loads(reply.body)["model_name"] == "m4"

    route, params = table.match("POST", "/v2/repository/index")
    rows = table.perform(server, route, params, b'{"ready": true}', {})
    assert [(r["name"], r["state"]) for r in rows] == [("m4", READY)]
    with pytest.raises(Exception, match="ready"):
        table.perform(server, route, params, b'{"ready": "yes"}', {})
    assert server.server_metadata()["extensions"] == [
        "model_repository",
        "model_repository_metadata",
    ]


def test_many_models_need_a_store(tmp_path: Path) -> None:
    settings = Settings.from_env({"ONNXKIT_MODEL_DIR": str(tmp_path), "ONNXKIT_MODELS": "a,b"})
    with pytest.raises(ConfigurationError, match="ONNXKIT_MODELS"):
        build_repository(settings, role=ENDPOINT)


def test_default_budgets_are_shares_of_the_function(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "ONNXKIT_MODEL_STORE": f"file://{tmp_path}",
            "ONNXKIT_MODELS": "a",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
            "ONNXKIT_CACHE_DIR": str(tmp_path / "not-yet" / "cache"),
        }
    )
    budget = repository_budget(settings)
    assert budget.memory_bytes == int(1024 * 1024 * 1024 * 0.6)
    import shutil

    assert budget.disk_bytes == int(shutil.disk_usage(tmp_path).total * 0.8)
    pinned = Settings.from_env(
        {
            "ONNXKIT_MODEL_STORE": f"file://{tmp_path}",
            "ONNXKIT_MODELS": "a",
            "ONNXKIT_MODELS_MEMORY_MB": "300",
            "ONNXKIT_MODELS_DISK_MB": "400",
        }
    )
    assert repository_budget(pinned).memory_bytes == 300 * 1024 * 1024
    assert repository_budget(pinned).disk_bytes == 400 * 1024 * 1024


def test_catalog_lists_at_most_once_per_ttl() -> None:
    calls: list[int] = []
    now = [0.0]

    def lister() -> list[str]:
        calls.append(1)
        return ["b", "a"]

    catalog = Catalog(lister=lister, ttl_s=60, miss_ttl_s=5, clock=lambda: now[0])
    assert catalog.names() == ("a", "b")
    assert catalog.contains("a")
    assert len(calls) == 1
    assert not catalog.contains("c")
    assert len(calls) == 1
    now[0] = 6
    assert not catalog.contains("c")
    assert len(calls) == 2


def test_a_single_predictor_lists_itself_in_the_index(tmp_path: Path) -> None:
    predictor = Predictor(
        "tiny", lambda: (_ for _ in ()).throw(ModelNotFoundError("x")), Settings().api
    )
    rows = predictor.repository_index()
    assert rows == [{"name": "tiny", "version": "", "state": "UNAVAILABLE", "reason": "loading"}]


def test_load_and_unload_through_the_route_table(five: Path, tmp_path: Path) -> None:
    settings = settings_for(five, tmp_path / "cache")
    repository = build_repository(settings, role=FUNCTION)
    table = RouteTable(FUNCTION)

    route, params = table.match("POST", "/v2/repository/models/m5/load")
    rows = table.perform(repository, route, params)
    assert [(r["name"], r["state"], r["version"]) for r in rows] == [("m5", READY, "1")]
    assert any(p.is_file() for p in (tmp_path / "cache" / "m5").rglob("*"))  # external data

    route, params = table.match("POST", "/v2/repository/models/m5/unload")
    rows = table.perform(repository, route, params)
    assert [(r["name"], r["state"]) for r in rows] == [("m5", UNAVAILABLE)]
    assert "unloaded on request" in rows[0]["reason"]
    assert not any(p.is_file() for p in (tmp_path / "cache" / "m5").rglob("*"))
    assert first_value(repository, "m5") == pytest.approx(5.5)  # and it comes back on demand

    with pytest.raises(ModelNotFoundError):
        table.perform(repository, route, {"name": "nope"})


def test_a_single_model_loads_on_request_but_cannot_be_unloaded(five: Path, tmp_path: Path) -> None:
    from onnxkit.compose import build_predictor

    settings = settings_for(five, tmp_path / "cache", ONNXKIT_MODELS="", ONNXKIT_MODEL_NAME="m2")
    predictor = build_predictor(settings, role=FUNCTION)
    assert predictor.load_model("m2") == [
        {"name": "m2", "version": "1", "state": READY, "reason": ""}
    ]
    with pytest.raises(OnnxkitError, match="serves one model") as caught:
        predictor.unload_model("m2")
    assert caught.value.status == 409
    with pytest.raises(ModelNotFoundError):
        predictor.unload_model("m3")


def test_the_endpoints_workers_share_the_default_budgets(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"ONNXKIT_MODEL_STORE": f"file://{tmp_path}", "ONNXKIT_MODELS": "a",
         "ONNXKIT_CACHE_DIR": str(tmp_path)}
    )  # fmt: skip
    one = repository_budget(settings)
    four = repository_budget(settings, workers=4)
    assert one.disk_bytes is not None
    assert four.disk_bytes is not None
    assert abs(four.disk_bytes - one.disk_bytes / 4) <= 1
    assert four.memory_bytes is not None
    assert one.memory_bytes is not None
    assert four.memory_bytes < one.memory_bytes / 3  # MemAvailable moves between the two reads
