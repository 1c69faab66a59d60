"""The endpoint's worker plan, GPU claims and shared readiness."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from onnxkit.adapters.endpoint.workers import (
    GPU_THREADS,
    SiblingReadiness,
    claim_gpu,
    count_gpus,
    plan_workers,
)
from onnxkit.errors import ModelNotReadyError
from onnxkit.settings import Settings

CPU_ONLY = Settings.from_env({"ONNXKIT_MODEL_DIR": "/m"})
ON_GPU = Settings.from_env(
    {"ONNXKIT_MODEL_DIR": "/m", "ONNXKIT_PROVIDERS": "CUDAExecutionProvider,CPUExecutionProvider"}
)


@pytest.mark.parametrize(
    ("settings", "cpus", "gpus", "expected"),
    [
        (CPU_ONLY, 4, 0, (4, 0, 1, 0)),  # one worker per vCPU, each on the event loop, 1 thread
        (CPU_ONLY, 8, 2, (8, 0, 1, 0)),  # GPUs are ignored without a GPU provider
        (ON_GPU, 8, 1, (1, GPU_THREADS, 8, 1)),  # one worker per GPU, model calls in threads
        (ON_GPU, 16, 4, (4, GPU_THREADS, 4, 4)),
        (ON_GPU, 4, 0, (4, 0, 1, 0)),  # asked for CUDA, no GPU visible: the CPU plan
    ],
    ids=["cpu", "cpu-ignores-gpus", "one-gpu", "four-gpus", "no-gpu-visible"],
)
def test_the_worker_plan_follows_the_machine(
    settings: Settings, cpus: int, gpus: int, expected: tuple[int, int, int, int]
) -> None:
    plan = plan_workers(settings, cpus=cpus, gpus=gpus)

    assert (plan.workers, plan.threads, plan.intra_op_threads, plan.gpus) == expected


def test_explicit_settings_win_over_the_plan() -> None:
    settings = Settings.from_env(
        {
            "ONNXKIT_MODEL_DIR": "/m",
            "ONNXKIT_WORKERS": "2",
            "ONNXKIT_SERVER_THREADS": "3",
            "ONNXKIT_INTRA_OP_THREADS": "5",
        }
    )
    batching = Settings.from_env({"ONNXKIT_MODEL_DIR": "/m", "ONNXKIT_DYNAMIC_BATCH_ROWS": "16"})

    plan = plan_workers(settings, cpus=8, gpus=0)

    assert (plan.workers, plan.threads, plan.intra_op_threads) == (2, 3, 5)
    # a batch of 16 rows needs 16 requests waiting at once: batching implies enough threads
    assert plan_workers(batching, cpus=2, gpus=0).threads == 16


def test_gpus_are_counted_from_cuda_visible_devices_or_the_driver(tmp_path: Path) -> None:
    (tmp_path / "0000:01:00.0").mkdir()
    (tmp_path / "0000:02:00.0").mkdir()

    assert count_gpus({}, tmp_path) == 2
    assert count_gpus({"CUDA_VISIBLE_DEVICES": "3"}, tmp_path) == 1
    assert count_gpus({"CUDA_VISIBLE_DEVICES": ""}, tmp_path) == 0
    assert count_gpus({"CUDA_VISIBLE_DEVICES": "-1"}, tmp_path) == 0
    assert count_gpus({}, tmp_path / "no-driver") == 0


def test_each_worker_claims_a_different_gpu(tmp_path: Path) -> None:
    # Each claim holds its lock for the life of its process: claim from separate processes.
    script = (
        "import sys, time; from pathlib import Path;"
        "from onnxkit.adapters.endpoint import claim_gpu;"
        "print(claim_gpu(3, Path(sys.argv[1])), flush=True); time.sleep(3)"
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    try:
        claimed = sorted(int(w.stdout.readline()) for w in workers if w.stdout)
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    assert claimed == [0, 1, 2]
    assert claim_gpu(1, tmp_path) == 0


def test_siblings_are_ready_only_when_every_live_worker_has_marked_itself(tmp_path: Path) -> None:
    # GIVEN two expected workers: this process, and one that has exited
    readiness = SiblingReadiness(tmp_path / "workers", expected=2)
    script = "import os; print(os.getpid())"
    gone = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    (tmp_path / "workers" / gone.stdout.strip()).touch()  # a dead worker's marker

    # THEN a dead worker's marker does not count, nor an unmarked live one
    assert readiness.ready() == 0
    with pytest.raises(ModelNotReadyError, match="0 of 2 workers have loaded the model"):
        readiness.check()

    # WHEN this worker marks itself, and a second live process (the parent) does
    readiness.mark_ready()
    assert readiness.ready() == 1
    (tmp_path / "workers" / str(os.getppid())).touch()

    # THEN all are ready
    assert readiness.ready() == 2
    readiness.check()
