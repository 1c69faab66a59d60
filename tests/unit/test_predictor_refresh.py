"""Following an alias: swap only after the new version loads; keep serving the old on failure."""

from __future__ import annotations

from dataclasses import dataclass, field

from onnxkit.errors import IntegrityError, OnnxkitError
from onnxkit.manifest import FileEntry, Manifest, TensorSpec
from onnxkit.predictor import Predictor, Refresh
from onnxkit.settings import ApiSettings
from tests.unit.conftest import infer_json

LIMITS = ApiSettings(max_request_bytes=10_000, max_batch_size=8)
BODY = b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}'


def manifest(version: str) -> Manifest:
    return Manifest(
        name="m",
        version=version,
        files=(FileEntry("model.onnx", "0" * 64, 1),),
        inputs=(TensorSpec("x", "FP32", (-1, 2)),),
        outputs=(TensorSpec("y", "FP32", (-1, 2)),),
        opset=17,
    )


class Backend:
    """Multiplies by the version number, so each response says which version ran."""

    processing = None  # tensors only: no declared processing

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    def run(self, inputs, outputs=None):
        return {"y": inputs["x"] * float(self.manifest.version)}


@dataclass
class World:
    """The alias target, what fails to load, and a hand-driven clock."""

    target: str = "1"
    broken: set[str] = field(default_factory=set)
    now: float = 0.0
    resolves: int = 0
    loads: list[str] = field(default_factory=list)
    swaps: list[tuple[str, str]] = field(default_factory=list)

    def resolve(self) -> Manifest:
        self.resolves += 1
        return manifest(self.target)

    def load(self, m: Manifest) -> Backend:
        self.loads.append(m.version)
        if m.version in self.broken:
            raise IntegrityError(f"version {m.version} is corrupt")
        return Backend(m)

    def predictor(self, interval: float = 60.0) -> Predictor:
        refresh = Refresh(
            resolve=self.resolve,
            load=self.load,
            interval_s=interval,
            clock=lambda: self.now,
            on_swap=lambda old, new: self.swaps.append(
                (old.manifest.version, new.manifest.version)
            ),
        )
        return Predictor("m", lambda: self.load(self.resolve()), LIMITS, refresh=refresh)


def served(predictor: Predictor) -> tuple[str, list[float]]:
    body = infer_json(predictor, "m", None, BODY)
    return body["model_version"], body["outputs"][0]["data"]


def test_alias_move_is_picked_up_after_the_interval_not_before() -> None:
    world = World()
    predictor = world.predictor(interval=60)
    assert served(predictor) == ("1", [1.0, 2.0])

    # WHEN the alias moves, THEN nothing changes until the interval has passed
    world.target = "2"
    world.now = 59.9
    assert served(predictor)[0] == "1"
    assert world.resolves == 1, "the alias must not be re-read before the interval"

    # WHEN the interval passes, THEN the request is served by the new version
    world.now = 60.0
    assert served(predictor) == ("2", [2.0, 4.0])
    assert world.swaps == [("1", "2")]


def test_failed_load_keeps_the_old_version_serving_and_is_retried() -> None:
    world = World(broken={"2"})
    predictor = world.predictor(interval=10)
    served(predictor)

    # GIVEN the alias moves to a version that cannot be loaded
    world.target = "2"
    world.now = 10
    # THEN the old version answers, and the failure is kept for operators
    assert served(predictor) == ("1", [1.0, 2.0])
    assert isinstance(predictor.refresh_error, IntegrityError)
    assert world.swaps == []

    # WHEN it is repaired, THEN the next check after the interval swaps it in
    world.broken.clear()
    world.now = 15
    assert served(predictor)[0] == "1"  # not yet: one check per interval
    world.now = 20
    assert served(predictor)[0] == "2"
    assert predictor.refresh_error is None


def test_unmoved_alias_does_not_reload() -> None:
    world = World()
    predictor = world.predictor(interval=1)
    for step in range(5):
        world.now = float(step * 2)
        served(predictor)
    assert world.loads == ["1"]
    assert world.resolves >= 4


def test_pinned_predictor_never_checks() -> None:
    world = World()
    predictor = Predictor("m", lambda: world.load(world.resolve()), LIMITS)
    served(predictor)
    world.target, world.now = "2", 1e9
    assert served(predictor)[0] == "1"
    assert predictor.refresh() is False
    assert world.resolves == 1


def test_store_outage_during_a_check_keeps_serving() -> None:
    world = World()
    predictor = world.predictor(interval=1)
    served(predictor)

    def down() -> Manifest:
        raise OnnxkitError("S3 unreachable", code="store_unavailable")

    predictor._refresh = Refresh(resolve=down, load=world.load, interval_s=1, clock=lambda: 5.0)
    assert served(predictor)[0] == "1"
    assert predictor.refresh_error is not None
    assert predictor.refresh_error.code == "store_unavailable"


def test_forced_refresh_ignores_the_interval() -> None:
    world = World()
    predictor = world.predictor(interval=3600)
    served(predictor)
    world.target = "3"
    assert predictor.refresh() is False
    assert predictor.refresh(force=True) is True
    assert served(predictor) == ("3", [3.0, 6.0])
