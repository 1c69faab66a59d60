"""The on-demand init budget: how long a function's init takes for a model, against Lambda's 10 s.

On demand, Lambda gives a function's init phase 10 s; past it, init is abandoned and retried
inside the first invoke, where it counts against the function timeout. With SnapStart or
provisioned concurrency that limit does not apply. The estimate adds up the phases the function
runs one after another at init, each measured here or computed from a stated rate:

- imports: ``import numpy, onnxruntime, boto3`` and the Lambda adapter (Powertools), timed in a
  fresh interpreter (page cache warm; a container image's first cold start reads those files
  lazily and can be slower), or :data:`IMPORTS_FALLBACK_S` when that cannot run;
- download: every file the manifest lists (external data included) at ``s3_mbps``;
- verify: sha256 over the same bytes, at the rate measured here;
- session: ``onnxruntime.InferenceSession`` created as the runtime does (``onnxkit.session``),
  with one intra-op thread, median of a few;
- warm-up: the runtime's one run on zeros, median of a few.

The CPU phases are scaled to the vCPU share of the memory size: Lambda gives about one vCPU per
1,769 MB, and below one vCPU a thread gets that fraction of a core. A Lambda core is taken as
fast as one core here unless ``cpu_factor`` says otherwise (2.0: Lambda's core takes twice as
long). Measured with one thread, the session and warm-up phases are the serial CPU work; above
one vCPU the parallel parts of a run can go faster than this, so there the estimate errs high.
"""

from __future__ import annotations

import functools
import hashlib
import math
import shlex
import statistics
import subprocess
import sys
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from onnxkit.manifest import TensorSpec
from onnxkit.session import LAMBDA_MB_PER_VCPU
from onnxkit_tools.template import load_template

LAMBDA_INIT_LIMIT_S = 10.0
DEFAULT_MARGIN = 0.8
MIN_MEMORY_MB = 128
MAX_MEMORY_MB = 10_240
# The S3 throughput a function sees, in MB/s (10^6 bytes). Lambda does not document a
# function's network share. One S3 GET stream gives about 80-100 MB/s (S3's per-connection
# figure, as seen from EC2); downloads measured inside Lambda functions come to 400-700 Mbit/s
# (50-90 MB/s, e.g. 1 GB in 16.5 s). The function reads each file as one GET stream today;
# parallel ranged GETs raise the ceiling on large files, but how far inside Lambda is not
# known, so the default stays in the measured band. Measure yours and pass it.
DEFAULT_S3_MBPS = 75.0
# What the imports cost when they cannot be timed here: FACTS.md measured onnxruntime + numpy +
# boto3 at about 150 ms and Powertools at about 45 ms on this project's 2-core machines.
IMPORTS_FALLBACK_S = 0.2
IMPORT_STATEMENT = "import numpy, onnxruntime, boto3, onnxkit.adapters.lambda_api"
DEFAULT_REPEATS = 3
# /tmp without an EphemeralStorage setting; the function caches the model there.
DEFAULT_TMP_MB = 512
PHASES = ("imports", "download", "verify", "session", "warm-up")
CPU_PHASES = ("imports", "verify", "session", "warm-up")
_MB = 1_000_000
_HASH_SAMPLE = 64 * 1024 * 1024
_HASH_CHUNK = 1024 * 1024  # what the store's download hashes per update


@dataclass(frozen=True)
class Measurements:
    """What was measured on this machine, one core, before any scaling.

    Attributes:
        imports_s: Seconds for the function's imports in a fresh interpreter.
        session_s: Seconds to create the onnxruntime session (one intra-op thread).
        warmup_s: Seconds for the warm-up run on zeros.
        hash_mb_per_s: sha256 throughput in MB/s (10^6 bytes).
        imports_measured: False when ``imports_s`` is :data:`IMPORTS_FALLBACK_S`.
    """

    imports_s: float
    session_s: float
    warmup_s: float
    hash_mb_per_s: float
    imports_measured: bool = True


@dataclass(frozen=True)
class Estimate:
    """The on-demand init time of one model at one memory size, by phase.

    Attributes:
        memory_mb: The function's MemorySize.
        total_bytes: Bytes over every file the manifest lists.
        s3_mbps: Assumed S3 throughput, MB/s.
        cpu_factor: Lambda core time / local core time.
        phases: Seconds per phase, in :data:`PHASES` order.
        measured: The local measurements behind the CPU phases.
        limit_s: Lambda's on-demand init limit.
        margin: Fraction of the limit the estimate must stay under to pass.
    """

    memory_mb: int
    total_bytes: int
    s3_mbps: float
    cpu_factor: float
    phases: dict[str, float]
    measured: Measurements
    limit_s: float = LAMBDA_INIT_LIMIT_S
    margin: float = DEFAULT_MARGIN

    @property
    def vcpus(self) -> float:
        """The vCPU share of ``memory_mb``."""
        return vcpu_share(self.memory_mb)

    @property
    def cpu_scale(self) -> float:
        """What the CPU phases were multiplied by."""
        return cpu_scale(self.memory_mb, self.cpu_factor)

    @property
    def total_s(self) -> float:
        """Seconds over all phases (they run one after another)."""
        return sum(self.phases.values())

    @property
    def budget_s(self) -> float:
        """The limit times the margin: what passes."""
        return self.limit_s * self.margin

    @property
    def fits(self) -> bool:
        """Whether the estimate stays within the budget (no warning)."""
        return self.total_s <= self.budget_s

    @property
    def over_limit(self) -> bool:
        """Whether the estimate passes the limit itself, not only the margin."""
        return self.total_s > self.limit_s


def vcpu_share(memory_mb: int) -> float:
    """The vCPUs Lambda allocates to ``memory_mb`` (about one per 1,769 MB)."""
    return memory_mb / LAMBDA_MB_PER_VCPU


def cpu_scale(memory_mb: int, cpu_factor: float = 1.0) -> float:
    """How much longer single-threaded CPU work takes on Lambda at ``memory_mb`` than here.

    Below one vCPU a thread gets that fraction of a core (1,024 MB: 0.58 of a core, so x1.73);
    from one vCPU on, a single thread runs on a whole core.

    Args:
        memory_mb: The function's MemorySize.
        cpu_factor: Lambda core time / local core time (1.0: as fast as a core here).
    """
    return cpu_factor / min(1.0, vcpu_share(memory_mb))


def estimate_init(
    measured: Measurements,
    total_bytes: int,
    memory_mb: int,
    *,
    s3_mbps: float = DEFAULT_S3_MBPS,
    cpu_factor: float = 1.0,
    limit_s: float = LAMBDA_INIT_LIMIT_S,
    margin: float = DEFAULT_MARGIN,
) -> Estimate:
    """Scale local measurements to a memory size and add the download.

    Args:
        measured: Local one-core measurements (:func:`measure_locally`).
        total_bytes: Bytes over every file the manifest lists.
        memory_mb: The function's MemorySize, 128-10,240.
        s3_mbps: S3 throughput the function gets, MB/s.
        cpu_factor: Lambda core time / local core time.
        limit_s: The init limit.
        margin: Fraction of the limit to stay under.

    Returns:
        The estimate, by phase.

    Raises:
        ValueError: A memory size Lambda does not offer, or a non-positive rate.
    """
    if not MIN_MEMORY_MB <= memory_mb <= MAX_MEMORY_MB:
        raise ValueError(
            f"MemorySize {memory_mb} MB is outside Lambda's {MIN_MEMORY_MB}-{MAX_MEMORY_MB} MB"
        )
    if s3_mbps <= 0 or cpu_factor <= 0 or measured.hash_mb_per_s <= 0:
        raise ValueError("throughputs and the CPU factor must be positive")
    scale = cpu_scale(memory_mb, cpu_factor)
    phases = {
        "imports": measured.imports_s * scale,
        "download": total_bytes / (s3_mbps * _MB),
        "verify": total_bytes / (measured.hash_mb_per_s * _MB) * scale,
        "session": measured.session_s * scale,
        "warm-up": measured.warmup_s * scale,
    }
    return Estimate(
        memory_mb=memory_mb,
        total_bytes=total_bytes,
        s3_mbps=s3_mbps,
        cpu_factor=cpu_factor,
        phases=phases,
        measured=measured,
        limit_s=limit_s,
        margin=margin,
    )


def memory_to_fit(estimate: Estimate) -> int | None:
    """The smallest MemorySize at which the estimate stays within its budget, if any.

    Only the CPU phases shrink with memory, and only up to one vCPU (1,769 MB): past that a
    thread is no faster here, and the download is bound by S3 throughput. So the answer is
    at most 1,769 MB, or None when even a whole core does not fit.

    Args:
        estimate: An estimate at any memory size (its measurements and rates are reused).

    Returns:
        MB (128-1,769), or None.
    """
    cpu_work = (
        sum(estimate.phases[p] for p in CPU_PHASES) / estimate.cpu_scale * estimate.cpu_factor
    )
    room = estimate.budget_s - estimate.phases["download"]
    if room <= 0:
        return None
    needed_vcpus = cpu_work / room
    if needed_vcpus > 1.0:
        return None
    return max(MIN_MEMORY_MB, math.ceil(needed_vcpus * LAMBDA_MB_PER_VCPU))


def advice(estimate: Estimate) -> list[str]:
    """What to do when the estimate does not fit: each option with its parameter or command.

    Args:
        estimate: The estimate (nothing is advised when it fits).

    Returns:
        Lines for a person, empty when the estimate fits.
    """
    if estimate.fits:
        return []
    lines = []
    memory = memory_to_fit(estimate)
    if memory is not None:
        lines.append(
            f"raise MemorySize to {memory} MB or more (estimate then within "
            f"{estimate.budget_s:.0f} s): `sam deploy --parameter-overrides MemorySize={memory}`"
        )
    else:
        why = (
            "the download alone takes "
            f"{estimate.phases['download']:.1f} s at {estimate.s3_mbps:g} MB/s"
            if estimate.phases["download"] >= estimate.budget_s
            else "past 1,769 MB (one vCPU) a thread runs no faster"
        )
        lines.append(f"more memory does not bring it within {estimate.budget_s:.0f} s: {why}")
    lines += [
        "SnapStart (template parameter `SnapStart=Enabled`): init runs once when a version is "
        "published and restores skip it; the 10 s limit does not apply. Needs /tmp <= 512 MB "
        "and excludes provisioned concurrency",
        "provisioned concurrency (template parameter `ProvisionedConcurrency=N`): N environments "
        "initialised ahead of traffic, without the 10 s limit; paid while idle, and on-demand "
        "scale-out beyond N still pays the full init",
        "the SageMaker endpoint: publish with `onnxkit publish ... --backend sagemaker` (the "
        "manifest's backend, followed under `ModelBackend=auto`), or set "
        "`ModelBackend=sagemaker` (ONNXKIT_BACKEND); the function forwards requests and never "
        "loads the model",
    ]
    return lines


def size_notes(total_bytes: int, *, auto_max_lambda_bytes: int | None = None) -> list[str]:
    """Warnings about the model's size that hold whatever the time estimate.

    Args:
        total_bytes: Bytes over every file.
        auto_max_lambda_bytes: ``ONNXKIT_AUTO_MAX_LAMBDA_BYTES`` (default the runtime's).
    """
    from onnxkit.settings import DEFAULT_AUTO_MAX_LAMBDA_BYTES, ENV_AUTO_MAX_LAMBDA_BYTES

    limit = (
        DEFAULT_AUTO_MAX_LAMBDA_BYTES if auto_max_lambda_bytes is None else auto_max_lambda_bytes
    )
    notes = []
    if total_bytes > limit:
        notes.append(
            f"{_size(total_bytes)} is over {ENV_AUTO_MAX_LAMBDA_BYTES} ({_size(limit)}): under "
            "ModelBackend=auto (the template default) the function forwards it to the SageMaker "
            "endpoint and does not load it; this estimate is for ModelBackend=lambda"
        )
    if total_bytes > DEFAULT_TMP_MB * 1024 * 1024:
        notes.append(
            f"{_size(total_bytes)} does not fit the function's default {DEFAULT_TMP_MB} MB /tmp, "
            "where it caches the model: the function needs more ephemeral storage (which "
            "SnapStart does not allow)"
        )
    return notes


# --- measuring here -------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def measure_imports(repeats: int = DEFAULT_REPEATS) -> float | None:
    """Median seconds for the function's imports in a fresh interpreter (None: could not run).

    The child is this interpreter with this environment, so it imports what this process
    would. Cached per process: it does not depend on the model.
    """
    code = (
        f"import time; t = time.perf_counter(); {IMPORT_STATEMENT}; print(time.perf_counter() - t)"
    )
    times = []
    for _ in range(repeats):
        try:
            done = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
            )
            times.append(float(done.stdout.strip().splitlines()[-1]))
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None
        if done.returncode != 0:
            return None
    return statistics.median(times)


@functools.lru_cache(maxsize=1)
def measure_hash_rate(repeats: int = DEFAULT_REPEATS) -> float:
    """Median sha256 throughput here in MB/s, hashing 1 MiB updates as the store does."""
    sample = memoryview(bytes(_HASH_SAMPLE))
    rates = []
    for _ in range(repeats):
        digest = hashlib.sha256()
        start = time.perf_counter()
        for offset in range(0, _HASH_SAMPLE, _HASH_CHUNK):
            digest.update(sample[offset : offset + _HASH_CHUNK])
        digest.hexdigest()
        rates.append(_HASH_SAMPLE / (time.perf_counter() - start) / _MB)
    return statistics.median(rates)


def measure_session(
    model_path: Path, inputs: Sequence[TensorSpec], *, repeats: int = DEFAULT_REPEATS
) -> tuple[float, float]:
    """Median seconds to create the session and to warm it up, as the runtime does, one thread.

    Raises:
        ModelLoadError: onnxruntime refused the model, or it cannot run on zeros.
    """
    from onnxkit.session import load_session, warm_up

    creates, warms = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        session = load_session(model_path, intra_op_threads=1)
        created = time.perf_counter()
        warm_up(session, tuple(inputs))
        creates.append(created - start)
        warms.append(time.perf_counter() - created)
        del session  # a large model's weights are freed before the next one is made
    return statistics.median(creates), statistics.median(warms)


def measure_locally(
    model_path: Path, inputs: Sequence[TensorSpec], *, repeats: int = DEFAULT_REPEATS
) -> Measurements:
    """Everything :func:`estimate_init` needs that is measured on this machine.

    Args:
        model_path: The ``.onnx`` file (external data beside it).
        inputs: Its input signature (for the warm-up run).
        repeats: How many sessions to create (median).

    Raises:
        ModelLoadError: onnxruntime refused the model, or it cannot run on zeros.
    """
    imports = measure_imports()
    session_s, warmup_s = measure_session(model_path, inputs, repeats=repeats)
    return Measurements(
        imports_s=IMPORTS_FALLBACK_S if imports is None else imports,
        session_s=session_s,
        warmup_s=warmup_s,
        hash_mb_per_s=measure_hash_rate(),
        imports_measured=imports is not None,
    )


# --- the report -----------------------------------------------------------------------------


def format_estimate(estimate: Estimate, *, label: str, memory_source: str) -> list[str]:
    """The estimate as lines for stdout: each phase with how it was obtained, then the verdict.

    Args:
        estimate: The estimate.
        label: The model, as the user named it.
        memory_source: Where the MemorySize came from (``template.yaml default``...).
    """
    m = estimate.measured
    x = f"x{estimate.cpu_scale:.2f}"
    imports_how = (
        f"measured here in a fresh interpreter, {x}"
        if m.imports_measured
        else f"could not be timed here: the stated {IMPORTS_FALLBACK_S:g} s, {x}"
    )
    how = {
        "imports": imports_how,
        "download": f"{_size(estimate.total_bytes)} at {estimate.s3_mbps:g} MB/s from S3 "
        "(assumed, --s3-mbps)",
        "verify": f"sha256 at {m.hash_mb_per_s:,.0f} MB/s measured here, {x}",
        "session": f"InferenceSession measured here (1 thread, median), {x}",
        "warm-up": f"one run on zeros measured here (median), {x}",
    }
    lines = [
        f"init estimate for {label} ({_size(estimate.total_bytes)}) at MemorySize "
        f"{estimate.memory_mb} MB ({memory_source}):"
    ]
    lines += [f"  {p:<9}{estimate.phases[p]:>8.3f} s  {how[p]}" for p in PHASES]
    lines.append(
        f"  {'total':<9}{estimate.total_s:>8.3f} s  of the {estimate.limit_s:g} s on-demand init "
        f"limit (passes up to {estimate.budget_s:.1f} s, {estimate.margin:.0%})"
    )
    lines += [
        f"assumed: {estimate.vcpus:.2f} vCPU at {estimate.memory_mb} MB (1 per "
        f"{LAMBDA_MB_PER_VCPU:,} MB); CPU phases x{estimate.cpu_scale:.2f} = --cpu-factor "
        f"{estimate.cpu_factor:g} / min(1, vCPU)",
        "  a Lambda core as fast as one here unless --cpu-factor says otherwise, below 1 vCPU",
        "  a thread gets that share of a core; the phases run one after another",
    ]
    verdict = "within budget" if estimate.fits else "OVER BUDGET"
    lines.append(f"{verdict}: {estimate.total_s:.2f} s against {estimate.budget_s:.1f} s")
    return lines


def format_warnings(estimate: Estimate) -> list[str]:
    """Warning lines for stderr when the estimate does not fit (empty when it does)."""
    if estimate.fits:
        return []
    where = (
        f"over the {estimate.limit_s:g} s on-demand init limit"
        if estimate.over_limit
        else f"within {1 - estimate.margin:.0%} of the {estimate.limit_s:g} s on-demand init limit"
    )
    return [
        f"warning: estimated init {estimate.total_s:.1f} s at {estimate.memory_mb} MB is {where}. "
        "Past the limit Lambda abandons init and retries it inside the first invoke, where it "
        "counts against the function timeout (cold requests slow or timed out). What to do:",
        *(f"  - {line}" for line in advice(estimate)),
    ]


def estimate_to_dict(estimate: Estimate) -> dict[str, Any]:
    """The estimate as JSON (``onnxkit check --json``)."""
    m = estimate.measured
    return {
        "memory_mb": estimate.memory_mb,
        "vcpus": round(estimate.vcpus, 4),
        "total_bytes": estimate.total_bytes,
        "s3_mbps": estimate.s3_mbps,
        "cpu_factor": estimate.cpu_factor,
        "cpu_scale": round(estimate.cpu_scale, 4),
        "phases_s": {p: round(estimate.phases[p], 4) for p in PHASES},
        "total_s": round(estimate.total_s, 4),
        "limit_s": estimate.limit_s,
        "budget_s": estimate.budget_s,
        "fits": estimate.fits,
        "over_limit": estimate.over_limit,
        "memory_to_fit_mb": memory_to_fit(estimate),
        "advice": advice(estimate),
        "measured": {
            "imports_s": m.imports_s,
            "imports_measured": m.imports_measured,
            "session_s": m.session_s,
            "warmup_s": m.warmup_s,
            "hash_mb_per_s": m.hash_mb_per_s,
        },
    }


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


# --- the stack's MemorySize -----------------------------------------------------------------


class StackConfigError(ValueError):
    """template.yaml or samconfig.toml cannot give a MemorySize."""


@dataclass(frozen=True)
class StackMemory:
    """The MemorySize a deploy would use, and where it was read."""

    memory_mb: int
    source: str


def stack_memory(template: Path, *, config_env: str = "default") -> StackMemory:
    """The MemorySize ``sam deploy`` would use: the template's default, or samconfig's override.

    ``samconfig.toml`` is read beside the template; ``[ENV.deploy.parameters]`` wins over
    ``[ENV.global.parameters]``, as in SAM CLI.

    Args:
        template: ``template.yaml``.
        config_env: The samconfig environment (``--config-env``).

    Raises:
        StackConfigError: The template is missing or unreadable, or a value is not a MemorySize.
    """
    try:
        document = load_template(template)
        default = document["Parameters"]["MemorySize"]["Default"]
    except OSError as exc:
        raise StackConfigError(
            f"cannot read {template} ({exc.strerror}); pass --memory-mb or --template-file"
        ) from exc
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise StackConfigError(
            f"{template} has no Parameters.MemorySize.Default ({exc}); pass --memory-mb"
        ) from exc
    found = StackMemory(
        _memory(default, f"{template} MemorySize default"), f"{template.name} default"
    )
    samconfig = template.parent / "samconfig.toml"
    try:
        config = tomllib.loads(samconfig.read_text())
    except FileNotFoundError:
        return found
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise StackConfigError(
            f"cannot read {samconfig}: {exc}; fix it or pass --memory-mb"
        ) from exc
    for command in ("deploy", "global"):
        section = config.get(config_env, {}).get(command, {}).get("parameters", {})
        overrides = parse_parameter_overrides(section.get("parameter_overrides", ""))
        if "MemorySize" in overrides:
            where = f"{samconfig.name} [{config_env}.{command}.parameters] parameter_overrides"
            return StackMemory(_memory(overrides["MemorySize"], where), where)
    return found


def parse_parameter_overrides(value: str | Sequence[str]) -> dict[str, str]:
    """samconfig's ``parameter_overrides`` as a dict.

    Args:
        value: A string (``"K=V K2='V 2'"``) or a list of ``K=V``; SAM's long form
            ``ParameterKey=K,ParameterValue=V`` is read too.
    """
    items = shlex.split(value) if isinstance(value, str) else [str(v) for v in value]
    found = {}
    for item in items:
        if item.startswith("ParameterKey="):
            pairs = dict(part.split("=", 1) for part in item.split(",") if "=" in part)
            if "ParameterValue" in pairs:
                found[pairs["ParameterKey"]] = pairs["ParameterValue"]
        elif "=" in item:
            key, _, raw = item.partition("=")
            found[key] = raw.strip("'\"")
    return found


def _memory(value: Any, where: str) -> int:
    try:
        memory = int(str(value))
    except ValueError:
        memory = 0
    if not MIN_MEMORY_MB <= memory <= MAX_MEMORY_MB:
        raise StackConfigError(
            f"{where} is {value!r}, not a MemorySize ({MIN_MEMORY_MB}-{MAX_MEMORY_MB} MB)"
        )
    return memory
