"""onnxruntime sessions: providers, threads sized to the CPUs we really have, one warm-up run."""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxkit.errors import ModelLoadError
from onnxkit.manifest import TensorSpec
from onnxkit.settings import CPU_PROVIDER, GPU_PROVIDERS, SessionSettings

# Lambda allocates CPU in proportion to memory: about one vCPU per 1,769 MB.
LAMBDA_MB_PER_VCPU = 1769

# onnxruntime resolves the external data of a graph loaded from memory against this folder;
# unset, it uses the process's working directory, so a graph naming ``etc/passwd`` as a
# weight file would read it and return the bytes in its outputs.
EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
_no_external: str | None = None
_no_external_lock = threading.Lock()


def empty_folder() -> str:
    """A private, empty folder (made once per process) that in-memory graphs resolve external
    data against: any external data is then refused, as a single-file graph has none to read."""
    global _no_external
    with _no_external_lock:
        try:
            usable = _no_external is not None and not os.listdir(_no_external)
        except OSError:  # gone (a SnapStart restore, a cleaned /tmp): make another
            usable = False
        if not usable:
            _no_external = tempfile.mkdtemp(prefix="onnxkit-no-external-data-")  # mode 0700
        assert _no_external is not None
        return _no_external


def available_cpus(
    environ: dict[str, str] | None = None, cgroup_root: Path = Path("/sys/fs/cgroup")
) -> int:
    """CPUs this process may actually use: affinity, cgroup quota and Lambda's memory share.

    Args:
        environ: Environment to read ``AWS_LAMBDA_FUNCTION_MEMORY_SIZE`` from (default os.environ).
        cgroup_root: Where cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us``) files live.

    Returns:
        At least 1.
    """
    environ = dict(os.environ if environ is None else environ)
    counts = [
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ]
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        counts.append(math.ceil(quota))
    memory = environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
    if memory.isdigit():
        counts.append(math.ceil(int(memory) / LAMBDA_MB_PER_VCPU))
    return max(1, min(counts))


def _cgroup_quota(root: Path) -> float | None:
    try:  # cgroup v2: "max 100000" or "200000 100000"
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def load_session(
    model: Path | bytes,
    *,
    intra_op_threads: int = 0,
    providers: list[str] | None = None,
    allow_spinning: bool = True,
    spin_between_runs: bool = True,
    gpu_device: int = 0,
) -> Any:
    """Create an onnxruntime session with full graph optimisation.

    No custom-op library is ever registered: a model artifact cannot bring native code. A
    graph reads no file but its own: from memory, external data is resolved against an empty
    private folder (and refused); from a file, onnxruntime confines it to the file's folder
    (no absolute path, no ``..``, no symlink leading out), which the caller fills with the
    manifest's files only.

    Args:
        model: The verified ``.onnx`` file (external data beside it), or a verified
            single-file graph's bytes (the cold start reads small models straight to memory).
        intra_op_threads: 0 sizes the pool to :func:`available_cpus`.
        providers: Execution providers in order of preference (default CPU).
        allow_spinning: Let idle pool threads spin (lower latency, more CPU while idle).
        spin_between_runs: With ``allow_spinning``, keep spinning after a run returns (40-80 ms
            measured on onnxruntime 1.32) rather than parking at once. False when another
            session shares the cores between runs (the gate's paired timing): the idle pool
            would otherwise steal them from the session being timed.
        gpu_device: The device index GPU providers use.

    Returns:
        An ``onnxruntime.InferenceSession``.

    Raises:
        ModelLoadError: onnxruntime refused the model.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads or available_cpus()
    options.inter_op_num_threads = 1
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if allow_spinning else "0"
    )
    if not spin_between_runs:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    if isinstance(model, bytes):
        options.add_session_config_entry(EXTERNAL_FOLDER_KEY, empty_folder())
    providers = providers or [CPU_PROVIDER]
    device = {"device_id": str(gpu_device)}
    try:
        return ort.InferenceSession(
            model if isinstance(model, bytes) else str(model),
            sess_options=options,
            providers=providers,
            provider_options=[device if p in GPU_PROVIDERS else {} for p in providers],
        )
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        what = "the model" if isinstance(model, bytes) else model.name
        raise ModelLoadError(f"onnxruntime could not load {what}: {type(exc).__name__}") from exc


def warm_up(session: Any, inputs: tuple[TensorSpec, ...]) -> None:
    """Run once on zeros (dynamic dimensions set to 1) so the first request pays nothing extra.

    String inputs (BYTES) get empty strings, the zero onnxruntime's string tensors take.

    Raises:
        ModelLoadError: The model cannot run even on zeros.
    """
    from onnxkit.datatypes import BY_NAME

    feed = {spec.name: _zeros(spec, BY_NAME[spec.datatype].numpy) for spec in inputs}
    try:
        session.run(None, feed)
    except Exception as exc:
        raise ModelLoadError(f"warm-up run failed: {type(exc).__name__}: {exc}") from exc


def _zeros(spec: TensorSpec, dtype: np.dtype) -> np.ndarray:
    shape = [d if d > 0 else 1 for d in spec.shape]
    if dtype.kind == "O":  # BYTES: onnxruntime's string tensors want str elements
        return np.full(shape, "", dtype=object)
    return np.zeros(shape, dtype)


# --- execution providers: ask only for what this build offers, and say when we fell back ------

_provider_logger = logging.getLogger(__name__)


def choose_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """The requested providers this onnxruntime build offers, in order, with CPU last.

    Asking onnxruntime for a provider its build lacks only earns a warning and a silent CPU
    session, so unavailable ones are dropped (and logged) here, where the reason is known.

    Args:
        requested: Providers in order of preference (``Settings.providers``).
        available: ``onnxruntime.get_available_providers()``.

    Returns:
        The providers to pass to the session; never empty, CPU always the last resort.
    """
    chosen = [p for p in dict.fromkeys(requested) if p in available and p != CPU_PROVIDER]
    missing = [p for p in dict.fromkeys(requested) if p not in available]
    if missing:
        _provider_logger.warning(
            "execution provider(s) %s requested but not in this onnxruntime build (it offers "
            "%s); install onnxruntime-gpu with matching CUDA/cuDNN libraries to use them",
            ", ".join(missing),
            ", ".join(available) or "nothing",
        )
    return [*chosen, CPU_PROVIDER]


def fallen_back(requested: Sequence[str], active: Sequence[str]) -> list[str]:
    """Accelerators that were requested but are not active in the session (empty: none).

    Logs a warning naming them: a GPU endpoint silently running on CPU is slow and costly.

    Args:
        requested: The providers asked for.
        active: ``session.get_providers()`` after creation.
    """
    lost = [p for p in dict.fromkeys(requested) if p != CPU_PROVIDER and p not in active]
    if lost:
        _provider_logger.warning(
            "%s requested but the session runs on %s: the model runs on CPU (no GPU visible, "
            "or the CUDA/cuDNN libraries failed to load; onnxruntime's own log has the cause)",
            ", ".join(lost),
            ", ".join(active) or "nothing",
        )
    return lost


def open_session(model: Path | bytes, settings: SessionSettings) -> Any:
    """:func:`create_session` as the settings ask (providers, threads, GPU device).

    Raises:
        ModelLoadError: onnxruntime refused the model.
    """
    return create_session(
        model,
        providers=settings.providers,
        intra_op_threads=settings.intra_op_threads,
        gpu_device=settings.gpu_device,
    )


def create_session(
    model: Path | bytes,
    *,
    providers: Sequence[str] = (CPU_PROVIDER,),
    intra_op_threads: int = 0,
    allow_spinning: bool = True,
    available: Sequence[str] | None = None,
    gpu_device: int = 0,
) -> Any:
    """:func:`load_session` with provider selection and a logged CPU fallback.

    Args:
        model: The verified ``.onnx`` file, or a single-file graph's verified bytes.
        providers: Execution providers in order of preference.
        intra_op_threads: 0 sizes the pool to :func:`available_cpus`.
        allow_spinning: Let idle pool threads spin.
        available: What the build offers (default ``onnxruntime.get_available_providers()``).
        gpu_device: The device index GPU providers use.

    Returns:
        An ``onnxruntime.InferenceSession``.

    Raises:
        ModelLoadError: onnxruntime refused the model.
    """
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    chosen = choose_providers(providers, available)
    session = load_session(
        model,
        intra_op_threads=intra_op_threads,
        providers=chosen,
        allow_spinning=allow_spinning,
        gpu_device=gpu_device,
    )
    active = list(session.get_providers())
    fallen_back(providers, active)
    _provider_logger.info("session providers: %s", ", ".join(active))
    return session
