"""The endpoint's processes: workers per vCPU or GPU, a GPU each, readiness they share."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from onnxkit.errors import ModelNotReadyError
from onnxkit.session import available_cpus
from onnxkit.settings import ENV_MODEL_DIR, ENV_MODEL_STORE, Settings

SAGEMAKER_MODEL_DIR = "/opt/ml/model"
GPU_THREADS = 8  # per worker: CUDA runs release the GIL, so requests overlap on the device


@dataclass(frozen=True)
class WorkerPlan:
    """How many processes serve, and how each runs the model.

    Attributes:
        workers: Server processes.
        threads: Threads per worker that run the model (0: on the event loop).
        intra_op_threads: onnxruntime threads per session.
        gpus: GPUs visible (0 on a CPU instance).
    """

    workers: int
    threads: int
    intra_op_threads: int
    gpus: int


def plan_workers(settings: Settings, *, cpus: int, gpus: int) -> WorkerPlan:
    """Resolve the endpoint's "auto" settings for this machine.

    One worker per GPU when a GPU provider is asked for and a GPU is visible, else one per
    vCPU; each CPU worker's session gets its share of the CPUs, so workers do not fight over
    cores.

    Args:
        settings: The endpoint's settings.
        cpus: CPUs this process may use.
        gpus: GPUs visible.
    """
    gpus = gpus if settings.session.wants_gpu else 0
    configured = settings.endpoint
    workers = configured.workers or (gpus or cpus)
    threads = configured.threads
    if threads is None:
        threads = GPU_THREADS if gpus else 0
    if configured.batching:
        threads = max(threads, configured.batch_rows)  # a batch needs that many waiting requests
    intra = settings.session.intra_op_threads or max(1, cpus // workers)
    return WorkerPlan(workers=workers, threads=threads, intra_op_threads=intra, gpus=gpus)


def count_gpus(environ: Mapping[str, str], proc: Path = Path("/proc/driver/nvidia/gpus")) -> int:
    """GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else the driver's list."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        return sum(1 for _ in proc.iterdir())
    except OSError:
        return 0


def claim_gpu(gpus: int, lock_dir: Path | None = None) -> int:
    """The index of a GPU no other worker of this machine holds (held until the process ends).

    Workers are started alike and do not know their index, so each takes the first free
    device lock. With one GPU every worker uses device 0.
    """
    if gpus <= 1:
        return 0
    lock_dir = lock_dir or Path(tempfile.gettempdir())
    for index in range(gpus):
        handle = (lock_dir / f"onnxkit-gpu-{index}.lock").open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _HELD.append(handle)  # the lock lives as long as the process
        return index
    return os.getpid() % gpus  # more workers than GPUs: share


_HELD: list[Any] = []


class SiblingReadiness:
    """Whether every worker process of the server has loaded the model.

    ``/ping`` answers 200 only then: SageMaker sends traffic once a ping succeeds, and a
    request landing on a worker still loading would get 503. Each worker leaves a marker named
    after its pid in a folder its parent made; markers of dead workers do not count.

    Args:
        folder: The shared folder (:func:`readiness_folder` of the supervisor's pid).
        expected: How many workers the server runs.
    """

    def __init__(self, folder: Path, expected: int) -> None:
        self.folder = folder
        self.expected = expected
        folder.mkdir(parents=True, exist_ok=True)

    def mark_ready(self) -> None:
        """This worker has loaded the model."""
        (self.folder / str(os.getpid())).touch()

    def ready(self) -> int:
        """Workers alive that have loaded the model."""
        return sum(1 for marker in self.folder.iterdir() if _alive(marker.name))

    def check(self) -> None:
        """Raise unless every worker is ready.

        Raises:
            ModelNotReadyError: Some workers are still loading.
        """
        ready = self.ready()
        if ready < self.expected:
            loading = f"{ready} of {self.expected} workers have loaded the model; retry shortly"
            raise ModelNotReadyError(loading, public=loading, headers={"Retry-After": "1"})


def readiness_folder(supervisor_pid: int) -> Path:
    """Where the workers of one server leave their readiness markers."""
    return Path(tempfile.gettempdir()) / f"onnxkit-workers-{supervisor_pid}"


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def resolve_settings(settings: Settings, environ: Mapping[str, str]) -> tuple[Settings, WorkerPlan]:
    """The endpoint's settings with the plan applied (threads per session) and the plan."""
    plan = plan_workers(settings, cpus=available_cpus(dict(environ)), gpus=count_gpus(environ))
    session = replace(settings.session, intra_op_threads=plan.intra_op_threads)
    if plan.gpus:
        session = replace(session, gpu_device=claim_gpu(plan.gpus))
    return replace(settings, session=session), plan


def endpoint_settings(environ: Mapping[str, str]) -> Settings:
    """Settings for the container: without a store or folder, SageMaker's /opt/ml/model."""
    environ = dict(environ)
    if not environ.get(ENV_MODEL_DIR, "").strip() and not environ.get(ENV_MODEL_STORE, "").strip():
        environ[ENV_MODEL_DIR] = SAGEMAKER_MODEL_DIR
    return Settings.from_env(environ)
