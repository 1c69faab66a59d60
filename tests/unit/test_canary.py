"""Canaries in the predictor: weighted routing, explicit versions, finish, drop, rollback."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

import pytest

from onnxkit.canary import (
    CanaryHealth,
    CanaryPolicy,
    MemoryProbe,
    Rollout,
    canary_memory_need,
    read_rss,
    should_roll_back,
)
from onnxkit.errors import InferenceError, InvalidInputError, ModelNotFoundError, OnnxkitError
from onnxkit.manifest import FileEntry
from onnxkit.predictor import VERSION_HEADER, Predictor, Refresh
from tests.unit.conftest import infer_json
from tests.unit.test_predictor_refresh import BODY, LIMITS, manifest

MIB = 1024 * 1024


class Backend:
    """Multiplies by the version number; fails (500, or unexpectedly) when told to."""

    processing = None  # tensors only: no declared processing

    def __init__(self, manifest, world: World) -> None:
        self.manifest = manifest
        self._world = world

    def run(self, inputs, outputs=None):
        failure = self._world.failing.get(self.manifest.version)
        if failure is not None:
            raise failure
        return {"y": inputs["x"] * float(self.manifest.version)}


@dataclass
class World:
    """The alias (stable, canary, weight), loads counted, backends retired, aborts written."""

    stable: str = "1"
    canary: str | None = None
    weight: int = 0
    now: float = 0.0
    loads: list[str] = field(default_factory=list)
    retired: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    aborts: list[tuple[str, str]] = field(default_factory=list)
    failing: dict[str, Exception] = field(default_factory=dict)

    def resolve(self) -> Rollout:
        canary = manifest(self.canary) if self.canary else None
        return Rollout(manifest(self.stable), canary, self.weight if canary else 0)

    def load(self, m) -> Backend:
        self.loads.append(m.version)
        return Backend(m, self)

    def abort(self, version: str, reason: str) -> bool:
        self.aborts.append((version, reason))
        return True

    def predictor(self, **policy: object) -> Predictor:
        refresh = Refresh(
            resolve=self.resolve,
            load=self.load,
            interval_s=10,
            clock=lambda: self.now,
            on_retire=lambda old, served: self.retired.append(
                (old.manifest.version, tuple(m.version for m in served))
            ),
            canary_pending=lambda: self.canary is not None,
        )
        options: dict = {"draw": random.Random(8).random, "abort": self.abort, **policy}
        return Predictor(
            "m",
            lambda: self.load(manifest(self.stable)),
            LIMITS,
            refresh=refresh,
            canary=CanaryPolicy(**options),
        )

    def tick(self, predictor: Predictor) -> None:
        """Let the interval pass and check the alias."""
        self.now += 10
        predictor.refresh()


def served(predictor: Predictor, version: str | None = None) -> str:
    return infer_json(predictor, "m", version, BODY)["model_version"]


# --- routing -----------------------------------------------------------------------------------


def test_a_canary_gets_its_weight_of_requests_chosen_at_random() -> None:
    # GIVEN stable 1 and canary 2 at 20 %, with a seeded draw
    world = World(canary="2", weight=20)
    predictor = world.predictor()
    predictor.load()

    # WHEN 1,000 requests arrive
    versions = [served(predictor) for _ in range(1000)]

    # THEN the canary served exactly the draws below 0.20 of the same seeded sequence
    reference = random.Random(8)
    expected = sum(reference.random() < 0.20 for _ in range(1000))
    assert versions.count("2") == expected
    assert 150 < expected < 250  # and that is near 20 % (a sanity check of the reference)
    assert set(versions) == {"1", "2"}
    assert world.loads == ["1", "2"], "the canary is loaded at init, beside the stable version"


def test_a_request_naming_a_version_gets_that_version() -> None:
    world = World(canary="2", weight=1)
    predictor = world.predictor()
    predictor.load()

    assert {served(predictor, "2") for _ in range(20)} == {"2"}
    assert {served(predictor, "1") for _ in range(20)} == {"1"}
    with pytest.raises(ModelNotFoundError) as raised:
        served(predictor, "3")
    assert "the served versions are '1', '2'" in raised.value.message


def test_the_canary_is_re_weighted_without_a_reload() -> None:
    world = World(canary="2", weight=1)
    predictor = world.predictor(draw=lambda: 0.5)
    predictor.load()
    assert served(predictor) == "1"  # 0.5 * 100 is not below 1

    world.weight = 60
    world.tick(predictor)
    assert served(predictor) == "2"  # 50 < 60
    assert world.loads == ["1", "2"]


def test_finishing_the_canary_swaps_to_it_without_a_reload() -> None:
    world = World(canary="2", weight=20)
    predictor = world.predictor()
    predictor.load()

    # WHEN the alias makes 2 stable and drops the canary
    world.stable, world.canary = "2", None
    world.tick(predictor)

    # THEN every request is served by 2, nothing was loaded again, and 1 was freed
    assert {served(predictor) for _ in range(50)} == {"2"}
    assert world.loads == ["1", "2"]
    assert world.retired == [("1", ("2",))]
    assert predictor.canary_version is None


def test_dropping_the_canary_frees_it_and_keeps_the_stable_version() -> None:
    world = World(canary="2", weight=50)
    predictor = world.predictor()
    predictor.load()

    world.canary = None
    world.tick(predictor)

    assert {served(predictor) for _ in range(50)} == {"1"}
    assert world.retired == [("2", ("1",))]
    with pytest.raises(ModelNotFoundError):
        served(predictor, "2")


def test_a_canary_that_does_not_fit_in_memory_is_not_loaded() -> None:
    # GIVEN a 512 MiB function whose process uses 400 MiB, and a canary of 100 MiB of files
    world = World(canary="2", weight=20)
    big = dataclasses.replace(manifest("2"), files=(FileEntry("model.onnx", "0" * 64, 100 * MIB),))
    world_resolve = world.resolve
    world.resolve = lambda: Rollout(world_resolve().stable, big, 20)  # type: ignore[method-assign]
    probe = MemoryProbe(limit_bytes=512 * MIB, rss=lambda: 400 * MIB)
    predictor = world.predictor(memory=probe)

    # WHEN it loads: the canary needs 2 x 100 MiB = 200 MiB but 112 MiB are left
    predictor.load()

    # THEN only the stable version serves, and the refusal says why
    assert world.loads == ["1"]
    assert {served(predictor) for _ in range(50)} == {"1"}
    error = predictor.refresh_error
    assert error is not None
    assert error.code == "canary_insufficient_memory"
    assert "needs about 200 MiB but only 112 MiB are left" in error.message


def test_memory_need_is_the_larger_of_twice_the_files_and_the_measured_growth() -> None:
    stable, canary = manifest("1"), manifest("2")  # 1 byte each in the fixture
    assert canary_memory_need(canary, stable, None) == 2
    assert canary_memory_need(canary, stable, 1) == 2
    assert canary_memory_need(canary, stable, 300) == 300  # the stable load grew RSS by 300
    assert MemoryProbe(limit_bytes=1000, rss=lambda: 600).left() == 400
    assert MemoryProbe(limit_bytes=None, available=lambda: 77).left() == 77
    assert MemoryProbe(limit_bytes=1000, rss=lambda: None).left() is None


def test_rss_is_read_from_proc(tmp_path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t  9 kB\nVmRSS:\t  1234 kB\n")
    assert read_rss(status) == 1234 * 1024
    assert read_rss(tmp_path / "missing") is None


# --- automatic rollback ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requests", "failures", "min_requests", "max_rate", "expected"),
    [
        (10, 9, 10, 0.1, True),  # 0.9 > 0.1, enough requests
        (9, 9, 10, 0.1, False),  # every one failed, but too few to judge
        (20, 1, 10, 0.1, False),  # 0.05
        (20, 2, 10, 0.1, False),  # 0.10 is not above 0.10
        (20, 3, 10, 0.1, True),  # 0.15
        (1, 1, 1, 0.0, True),
    ],
)
def test_rollback_thresholds(
    requests: int, failures: int, min_requests: int, max_rate: float, expected: bool
) -> None:
    health = CanaryHealth(requests=requests, failures=failures)
    assert should_roll_back(health, min_requests=min_requests, max_error_rate=max_rate) is expected


def test_a_failing_canary_is_rolled_back_after_min_requests_and_aborted_once() -> None:
    # GIVEN canary 2 failing every inference, every request routed to it (draw 0)
    world = World(canary="2", weight=20, failing={"2": InferenceError("boom")})
    predictor = world.predictor(draw=lambda: 0.0, min_requests=10, max_error_rate=0.1)
    predictor.load()

    # WHEN requests come: the first nine fail, each naming the canary
    for _ in range(9):
        with pytest.raises(InferenceError) as raised:
            served(predictor)
        assert raised.value.headers[VERSION_HEADER] == "2"
    assert world.aborts == []
    with pytest.raises(InferenceError):
        served(predictor)  # the 10th: 10 of 10 failed

    # THEN routing stops at once, the store write happened once, and stable serves all
    assert world.aborts == [("2", "10 of 10 canary requests failed (more than 10%)")]
    assert predictor.canary_version is None
    assert {served(predictor) for _ in range(30)} == {"1"}

    # AND a refresh that still sees the canary (before other writers) does not reload it
    world.tick(predictor)
    assert served(predictor) == "1"
    assert world.loads == ["1", "2"]
    assert world.aborts == [("2", "10 of 10 canary requests failed (more than 10%)")]


def test_client_errors_and_stable_failures_do_not_count_against_the_canary() -> None:
    world = World(canary="2", weight=50, failing={"1": InferenceError("stable is down")})
    draws = iter([0.9, 0.1] * 100)  # alternately stable (90 >= 50) and canary (10 < 50)
    predictor = world.predictor(draw=lambda: next(draws), min_requests=2, max_error_rate=0.1)
    predictor.load()

    for _ in range(20):
        with pytest.raises(InferenceError) as raised:
            served(predictor)  # the stable version fails
        assert raised.value.headers[VERSION_HEADER] == "1"
        assert served(predictor) == "2"
    for _ in range(20):
        with pytest.raises(InvalidInputError):
            infer_json(predictor, "m", "2", b'{"inputs": [{"name": "x", "shape": [1, 2], '
                            b'"datatype": "FP32", "data": [1]}]}')  # fmt: skip

    health = predictor.canary_health
    assert health is not None
    assert (health.requests, health.failures) == (20, 0)
    assert predictor.canary_version == "2"
    assert world.aborts == []


def test_an_unexpected_backend_exception_counts_and_stays_generic() -> None:
    world = World(canary="2", weight=100, failing={"2": RuntimeError("secret detail")})
    predictor = world.predictor(draw=lambda: 0.0, min_requests=1, max_error_rate=0.5)
    predictor.load()

    with pytest.raises(OnnxkitError) as raised:
        served(predictor)

    assert raised.value.code == "internal_error"
    assert "secret" not in raised.value.message
    assert raised.value.headers[VERSION_HEADER] == "2"
    assert [v for v, _ in world.aborts] == ["2"]


def test_without_auto_rollback_the_canary_keeps_serving() -> None:
    world = World(canary="2", weight=20, failing={"2": InferenceError("boom")})
    predictor = world.predictor(draw=lambda: 0.0, min_requests=1, auto_rollback=False)
    predictor.load()
    for _ in range(5):
        with pytest.raises(InferenceError):
            served(predictor)
    assert predictor.canary_version == "2"
    assert world.aborts == []


def test_a_failed_abort_write_is_retried_at_the_next_refresh() -> None:
    world = World(canary="2", weight=20, failing={"2": InferenceError("boom")})
    calls: list[str] = []

    def flaky_abort(version: str, reason: str) -> bool:
        calls.append(version)
        if len(calls) == 1:
            raise OnnxkitError("S3 unreachable", code="store_unavailable")
        return True

    predictor = world.predictor(draw=lambda: 0.0, min_requests=1, abort=flaky_abort)
    predictor.load()
    with pytest.raises(InferenceError):
        served(predictor)

    # THEN routing stopped although the write failed; the error is kept for operators
    assert predictor.canary_version is None
    assert predictor.refresh_error is not None
    assert predictor.refresh_error.code == "store_unavailable"
    world.tick(predictor)
    assert calls == ["2", "2"]
    world.tick(predictor)
    assert calls == ["2", "2"], "once written, the abort is not repeated"


# --- settings ----------------------------------------------------------------------------------

BASE_ENV = {"ONNXKIT_MODEL_STORE": "file:///tmp/s", "ONNXKIT_MODEL_NAME": "m"}


def test_canary_settings_are_read_and_validated_together() -> None:
    from onnxkit.errors import ConfigurationError
    from onnxkit.settings import CanarySettings, Settings

    assert Settings.from_env(BASE_ENV).canary == CanarySettings(True, 10, 0.1, None)
    read = Settings.from_env(
        {
            **BASE_ENV,
            "ONNXKIT_CANARY_AUTO_ROLLBACK": "false",
            "ONNXKIT_CANARY_MIN_REQUESTS": "25",
            "ONNXKIT_CANARY_MAX_ERROR_RATE": "0.02",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048",
        }
    ).canary
    assert read == CanarySettings(False, 25, 0.02, 2048)
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env(
            {
                **BASE_ENV,
                "ONNXKIT_CANARY_AUTO_ROLLBACK": "maybe",
                "ONNXKIT_CANARY_MIN_REQUESTS": "0",
                "ONNXKIT_CANARY_MAX_ERROR_RATE": "1.5",
            }
        )
    assert len(raised.value.problems) == 3
    assert "ONNXKIT_CANARY_MIN_REQUESTS='0' is out of range" in raised.value.message
