"""Model canaries at runtime: the rollout an alias describes, health counting, memory, abort.

An alias may name a canary version beside its stable one (``onnxkit models promote NAME V
--canary 20``). A predictor following it keeps both loaded and sends that share of requests
to the canary; when the canary's error rate passes the configured threshold it stops routing
to it at once and aborts it in the store with :func:`abort_canary`, the one write the runtime
ever makes.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from onnxkit.errors import OnnxkitError, VersionConflictError
from onnxkit.manifest import Manifest
from onnxkit.store import (
    AliasRecord,
    Blobs,
    alias_document,
    alias_key,
    parse_alias,
    utc_now,
)

logger = logging.getLogger(__name__)

# A loaded model costs its file bytes once more than on disk at least: the bytes onnxruntime
# reads plus the initialised weights. Twice the files is the floor; the measured RSS growth of
# the stable load raises it when that load cost more.
MEMORY_FACTOR = 2.0
_MIB = 1024 * 1024


@dataclass(frozen=True)
class Rollout:
    """What an alias asks a server to serve: a stable version and maybe a weighted canary.

    Attributes:
        stable: The stable version's manifest.
        canary: The canary's manifest, or None.
        weight: Percent of requests for the canary (1-99; 0 without one).
    """

    stable: Manifest
    canary: Manifest | None = None
    weight: int = 0


@dataclass
class CanaryHealth:
    """Requests served by a canary in this process and how many of them failed (5xx)."""

    requests: int = 0
    failures: int = 0

    def error_rate(self) -> float:
        """Failures per request (0 before the first)."""
        return self.failures / self.requests if self.requests else 0.0


def should_roll_back(health: CanaryHealth, *, min_requests: int, max_error_rate: float) -> bool:
    """Whether a canary's health calls for an automatic rollback.

    Args:
        health: Its requests and failures so far.
        min_requests: Requests to see before judging (fewer say too little).
        max_error_rate: The highest tolerated failures per request.
    """
    return health.requests >= min_requests and health.error_rate() > max_error_rate


@dataclass(frozen=True)
class MemoryProbe:
    """How much memory a process has left for one more model.

    Attributes:
        limit_bytes: The function's memory (``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``), or None when
            unknown (the endpoint container): then the system's MemAvailable is what is left.
        rss: This process's resident memory in bytes, or None when it cannot be read.
        available: Free memory without a known limit, or None when it cannot be read.
    """

    limit_bytes: int | None = None
    rss: Callable[[], int | None] = field(default=lambda: read_rss())
    available: Callable[[], int | None] = field(default=lambda: read_mem_available())

    def left(self) -> int | None:
        """Bytes this process may still grow by, or None when nothing can be measured."""
        if self.limit_bytes is None:
            return self.available()
        rss = self.rss()
        return None if rss is None else self.limit_bytes - rss


def canary_memory_need(canary: Manifest, stable: Manifest, stable_growth: int | None) -> int:
    """Bytes a canary is expected to add once loaded.

    The larger of :data:`MEMORY_FACTOR` times its files and the RSS growth the stable
    version's load caused, scaled by the ratio of their sizes.
    """
    need = int(canary.total_size * MEMORY_FACTOR)
    if stable_growth and stable.total_size:
        need = max(need, int(stable_growth * canary.total_size / stable.total_size))
    return need


def read_rss(path: Path = Path("/proc/self/status")) -> int | None:
    """This process's VmRSS in bytes (Linux), or None."""
    return _proc_kib(path, "VmRSS:")


def read_mem_available(path: Path = Path("/proc/meminfo")) -> int | None:
    """The system's MemAvailable in bytes (Linux), or None."""
    return _proc_kib(path, "MemAvailable:")


def _proc_kib(path: Path, label: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(label):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass(frozen=True)
class CanaryPolicy:
    """How a predictor runs canaries.

    Attributes:
        auto_rollback: Stop and abort a failing canary without a person acting.
        min_requests: Canary requests to see before judging its error rate.
        max_error_rate: Failures per canary request above which it is rolled back.
        abort: Writes the abort to the store: called with (version, reason); True when this
            call aborted it, False when it had finished or been aborted already. None: only
            stop routing in this process.
        memory: Checks a canary fits before it is loaded (None: no check).
        draw: Uniform [0, 1) per request; the module's ``random.random`` by default, which
            SnapStart's restore hook reseeds.
    """

    auto_rollback: bool = True
    min_requests: int = 10
    max_error_rate: float = 0.1
    abort: Callable[[str, str], bool] | None = None
    memory: MemoryProbe | None = None
    draw: Callable[[], float] = random.random


def abort_canary(
    blobs: Blobs,
    name: str,
    alias: str,
    version: str,
    reason: str,
    *,
    now: Callable[[], str] | None = None,
    attempts: int = 3,
) -> bool:
    """Abort a running canary in the store: the runtime's one write (``_aliases/{alias}.json``).

    Reads the alias and its ETag, and replaces it only if the canary is still ``version``,
    with a write conditional on that ETag. When the write loses a race (412) it reads again
    and decides again: if someone finished, dropped or replaced the canary meanwhile, or
    another instance aborted it first, nothing is written.

    Args:
        blobs: The store's blobs (their ``replace`` is the conditional write).
        name: Model name.
        alias: The alias carrying the canary.
        version: The canary version to abort.
        reason: Why, for ``onnxkit models list``.
        now: The time to record (ISO 8601; default now, UTC).
        attempts: Read-decide-write rounds before giving up on a busy alias.

    Returns:
        True when this call aborted the canary; False when there was nothing to abort.

    Raises:
        OnnxkitError: The store could not be read or written (the caller retries later).
    """
    key = alias_key(name, alias)
    for _ in range(attempts):
        raw, etag = blobs.read_versioned(key)
        record = parse_alias(name, alias, raw)
        if record.canary_version != version:
            return False  # finished, dropped, replaced or aborted meanwhile: not ours to touch
        aborted = AliasRecord(
            name=name,
            alias=alias,
            version=record.version,
            updated_at=(now or utc_now)(),
            history=record.history,
            aborted={"version": version, "reason": reason, "at": (now or utc_now)()},
        )
        try:
            blobs.replace(key, alias_document(aborted), if_match=etag)
        except VersionConflictError:
            continue  # someone wrote between our read and write: read and decide again
        return True
    raise OnnxkitError(
        f"alias {name}@{alias} kept changing; canary {version} not aborted in the store yet",
        code="alias_busy",
    )


class CanaryAborter:
    """Aborts canaries of one model alias in a store (what the composition root hands in)."""

    def __init__(self, blobs: Blobs, name: str, alias: str) -> None:
        self._blobs = blobs
        self._name = name
        self._alias = alias
        self._lock = threading.Lock()

    def __call__(self, version: str, reason: str) -> bool:
        """Abort ``version``; see :func:`abort_canary`."""
        with self._lock:  # one instance writes once even when several threads trip together
            return abort_canary(self._blobs, self._name, self._alias, version, reason)


def memory_limit_bytes(megabytes: int | None) -> int | None:
    """``AWS_LAMBDA_FUNCTION_MEMORY_SIZE`` (MB) in bytes."""
    return None if megabytes is None else megabytes * _MIB
