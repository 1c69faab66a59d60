"""onnxruntime sessions: CPU counting (affinity, cgroups, Lambda memory), loading, warm-up."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxkit import session as session_module
from onnxkit.errors import ModelLoadError
from onnxkit.manifest import TensorSpec
from onnxkit.session import (
    LAMBDA_MB_PER_VCPU,
    available_cpus,
    choose_providers,
    create_session,
    fallen_back,
    load_session,
    warm_up,
)
from onnxkit.settings import CPU_PROVIDER
from tests.unit.conftest import BuiltModel

AFFINITY = 8


@pytest.fixture
def eight_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler lets this process use eight CPUs."""
    monkeypatch.setattr(session_module.os, "sched_getaffinity", lambda pid: set(range(AFFINITY)))


@pytest.fixture
def cgroup(tmp_path: Path) -> Path:
    """An empty fake cgroup root."""
    root = tmp_path / "cgroup"
    root.mkdir()
    return root


def cgroup_v1(root: Path, quota_us: int, period_us: int) -> None:
    """Write cgroup v1 CFS files."""
    (root / "cpu").mkdir()
    (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text(f"{period_us}\n")


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("50000 100000\n", 1),  # half a CPU still needs one thread
        ("max 100000\n", AFFINITY),  # no quota: the affinity mask decides
        ("200000 100000\n", 2),
        ("250000 100000\n", 3),
        ("3200000 100000\n", AFFINITY),  # a quota above the mask does not add CPUs
        ("garbage\n", AFFINITY),
    ],
)
def test_cgroup_v2_quota(eight_cpus: None, cgroup: Path, cpu_max: str, expected: int) -> None:
    (cgroup / "cpu.max").write_text(cpu_max)

    assert available_cpus(environ={}, cgroup_root=cgroup) == expected


@pytest.mark.parametrize(("quota", "expected"), [(150_000, 2), (-1, AFFINITY), (50_000, 1)])
def test_cgroup_v1_quota(eight_cpus: None, cgroup: Path, quota: int, expected: int) -> None:
    cgroup_v1(cgroup, quota, 100_000)

    assert available_cpus(environ={}, cgroup_root=cgroup) == expected


def test_no_cgroup_files_means_the_affinity_count(eight_cpus: None, cgroup: Path) -> None:
    assert available_cpus(environ={}, cgroup_root=cgroup) == AFFINITY


def test_real_affinity_is_used_when_nothing_else_limits(cgroup: Path) -> None:
    assert available_cpus(environ={}, cgroup_root=cgroup) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        (str(LAMBDA_MB_PER_VCPU), 1),
        ("128", 1),
        ("3538", 2),
        ("10240", 6),
        ("not-a-number", AFFINITY),
        ("", AFFINITY),
    ],
)
def test_lambda_memory_limits_cpus(
    eight_cpus: None, cgroup: Path, memory: str, expected: int
) -> None:
    environ = {"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": memory}

    assert available_cpus(environ=environ, cgroup_root=cgroup) == expected


def test_the_smallest_limit_wins(eight_cpus: None, cgroup: Path) -> None:
    (cgroup / "cpu.max").write_text("400000 100000\n")  # 4 CPUs

    environ = {"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "3008"}  # 2 vCPUs

    assert available_cpus(environ=environ, cgroup_root=cgroup) == 2


def test_lambda_memory_is_read_from_os_environ_by_default(
    eight_cpus: None, cgroup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1769")

    assert available_cpus(cgroup_root=cgroup) == 1


# --- loading -----------------------------------------------------------------------------------


def test_load_session_runs_the_model(tiny_model: BuiltModel) -> None:
    session = load_session(tiny_model.path, intra_op_threads=1)

    x = np.array([[1, 2, 3, 4], [-1, 0, 0.5, 2]], dtype=np.float32)
    (y,) = session.run(None, {"x": x})

    assert [i.name for i in session.get_inputs()] == ["x"]
    assert y.dtype == np.float32
    assert y.shape == (2, 2)
    np.testing.assert_allclose(y, tiny_model.compute(x)["y"], rtol=1e-6)
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_load_session_sizes_threads_to_available_cpus(
    tiny_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_module, "available_cpus", lambda: 1)

    session = load_session(tiny_model.path)

    assert session.get_session_options().intra_op_num_threads == 1


def test_spinning_between_runs_is_a_choice(tiny_model: BuiltModel) -> None:
    entry = "session.force_spinning_stop"
    served = load_session(tiny_model.path).get_session_options()
    paired = load_session(tiny_model.path, spin_between_runs=False).get_session_options()

    # Both spin inside a run; only the paired-timing one parks as soon as a run returns.
    assert served.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert paired.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert paired.get_session_config_entry(entry) == "1"
    with pytest.raises(RuntimeError, match=entry):  # onnxruntime's answer for an unset key
        served.get_session_config_entry(entry)


def test_garbage_file_is_a_model_load_error(tmp_path: Path) -> None:
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"this is not an onnx graph\x00\xff" * 4)

    with pytest.raises(ModelLoadError) as caught:
        load_session(garbage, intra_op_threads=1)

    assert caught.value.status == 500
    assert caught.value.code == "model_load_error"
    assert caught.value.message.startswith("onnxruntime could not load model.onnx: ")
    assert caught.value.__cause__ is not None


def test_missing_file_is_a_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError):
        load_session(tmp_path / "absent.onnx", intra_op_threads=1)


# --- warm-up -----------------------------------------------------------------------------------


class RecordingSession:
    """Records what warm_up feeds it."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[Any, dict[str, np.ndarray]]] = []
        self._error = error

    def run(self, outputs: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.calls.append((outputs, feed))
        if self._error is not None:
            raise self._error
        return []


def test_warm_up_feeds_zeros_with_dynamic_dims_set_to_one() -> None:
    fake = RecordingSession()
    inputs = (
        TensorSpec("x", "FP32", (-1, 4)),
        TensorSpec("ids", "INT64", (-1, -1)),
        TensorSpec("mask", "BOOL", (2, 3)),
    )

    warm_up(fake, inputs)

    assert len(fake.calls) == 1
    outputs, feed = fake.calls[0]
    assert outputs is None
    assert {name: (a.shape, a.dtype) for name, a in feed.items()} == {
        "x": ((1, 4), np.dtype(np.float32)),
        "ids": ((1, 1), np.dtype(np.int64)),
        "mask": ((2, 3), np.dtype(np.bool_)),
    }
    assert not any(a.any() for a in feed.values())


def test_warm_up_feeds_empty_strings_to_a_bytes_input() -> None:
    # onnxruntime's string tensors take str; it would run on integer zeros too, as "0".
    fake = RecordingSession()

    warm_up(fake, (TensorSpec("text", "BYTES", (-1, 2)),))

    ((_, feed),) = fake.calls
    assert feed["text"].dtype == np.dtype(object)
    assert feed["text"].tolist() == [["", ""]]


def test_warm_up_runs_a_real_session(typed_model: BuiltModel) -> None:
    session = load_session(typed_model.path, intra_op_threads=1)
    inputs = (TensorSpec("ids", "INT64", (-1, 3)), TensorSpec("mask", "BOOL", (-1, 3)))

    assert warm_up(session, inputs) is None


def test_warm_up_failure_is_a_model_load_error() -> None:
    fake = RecordingSession(error=RuntimeError("kernel exploded"))

    with pytest.raises(ModelLoadError) as caught:
        warm_up(fake, (TensorSpec("x", "FP32", (-1, 4)),))

    assert caught.value.code == "model_load_error"
    assert caught.value.message.startswith("warm-up run failed: RuntimeError")
    assert isinstance(caught.value.__cause__, RuntimeError)


# --- execution providers ---------------------------------------------------------------------


def test_choose_providers_keeps_what_the_build_offers_with_cpu_last(
    caplog: pytest.LogCaptureFixture,
) -> None:
    offered = ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU_PROVIDER]

    assert choose_providers(["CUDAExecutionProvider", CPU_PROVIDER], offered) == [
        "CUDAExecutionProvider",
        CPU_PROVIDER,
    ]
    assert choose_providers(["CUDAExecutionProvider"], offered) == [
        "CUDAExecutionProvider",
        CPU_PROVIDER,
    ]
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING):
        chosen = choose_providers(["CUDAExecutionProvider", CPU_PROVIDER], [CPU_PROVIDER])
    assert chosen == [CPU_PROVIDER]
    assert "CUDAExecutionProvider requested but not in this onnxruntime build" in caplog.text


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_a_session_that_fell_back_to_cpu_says_so(
    tiny_model: BuiltModel, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a build that claims CUDA (so it is passed to onnxruntime), on a machine without it
    with caplog.at_level(logging.WARNING):
        session = create_session(
            tiny_model.path,
            providers=["CUDAExecutionProvider", CPU_PROVIDER],
            intra_op_threads=1,
            available=["CUDAExecutionProvider", CPU_PROVIDER],
            gpu_device=1,
        )

    # THEN the session runs on CPU and the log names the lost accelerator
    assert session.get_providers() == [CPU_PROVIDER]
    assert "CUDAExecutionProvider requested but the session runs on CPUExecutionProvider" in (
        caplog.text
    )
    assert fallen_back([CPU_PROVIDER], [CPU_PROVIDER]) == []


def test_the_gpu_device_is_passed_to_gpu_providers_only(
    monkeypatch: pytest.MonkeyPatch, tiny_model: BuiltModel
) -> None:
    import onnxruntime as ort

    seen: dict[str, Any] = {}

    class Recording:
        def __init__(self, path: str, **kwargs: Any) -> None:
            seen.update(kwargs)

    monkeypatch.setattr(ort, "InferenceSession", Recording)

    load_session(tiny_model.path, providers=["CUDAExecutionProvider", CPU_PROVIDER], gpu_device=2)

    assert seen["providers"] == ["CUDAExecutionProvider", CPU_PROVIDER]
    assert seen["provider_options"] == [{"device_id": "2"}, {}]
