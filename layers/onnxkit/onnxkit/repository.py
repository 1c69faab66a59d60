"""Many models behind one function or endpoint (``ONNXKIT_MODELS``), loaded on demand.

A :class:`ModelRepository` keeps one :class:`~onnxkit.predictor.Predictor` per model (and one
per version or alias a request addresses explicitly). Nothing is loaded at init: a model loads
on its first request, through the same loader a single-model function uses (resolve, fetch,
verify, session, warm-up; or only the manifest, for a model forwarded to SageMaker).

Loaded models are counted against two budgets, a memory budget and a disk budget (the cache
folder, Lambda's ``/tmp`` sized by ``EphemeralStorage``). After each load, the least recently
used other models are evicted until the loaded ones fit: their sessions are dropped and their
cached files deleted. An evicted model stays listed and reloads on its next request.

A model's memory is counted as :data:`~onnxkit.canary.MEMORY_FACTOR` times its files (the same
floor a canary is checked with), so the budget decides the same way on every machine; the
repository index also reports the resident memory its load was measured to add.

It answers the same protocol calls as a single :class:`Predictor` (the route table and both
edges serve either), plus the v2 model repository extension's index.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxkit import __version__
from onnxkit.canary import MEMORY_FACTOR
from onnxkit.codecs import Reply
from onnxkit.errors import ModelNotFoundError
from onnxkit.manifest import Manifest
from onnxkit.predictor import SERVER_EXTENSIONS, SERVER_NAME, NullObserver, Observer, Predictor
from onnxkit.settings import ApiSettings

logger = logging.getLogger(__name__)

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"

Key = tuple[str, str | None]
"""A model name and the version or alias a request pinned (None: the configured alias)."""


@dataclass
class Loaded:
    """What a load brought in, as the budgets count it.

    Attributes:
        memory: Bytes of memory it is counted for.
        disk: Bytes its cached files take in the cache folder.
        measured: Resident memory its load was measured to add (None: not measurable).
    """

    memory: int
    disk: int
    measured: int | None = None


@dataclass
class Budget:
    """How much the loaded models may take together (None: unbounded).

    Attributes:
        memory_bytes: Memory budget (``ONNXKIT_MODELS_MEMORY_MB``).
        disk_bytes: Cache-folder budget (``ONNXKIT_MODELS_DISK_MB``).
    """

    memory_bytes: int | None = None
    disk_bytes: int | None = None


@dataclass
class _Entry:
    key: Key
    predictor: Predictor
    forget: Callable[[tuple[Manifest, ...], tuple[Manifest, ...]], None]
    last_used: float = 0.0
    loaded: Loaded | None = None
    evicted: str = ""


class Catalog:
    """Which model names a repository serves: a list, or every model in the store.

    Args:
        names: The configured names (``ONNXKIT_MODELS=a,b,c``); empty with ``lister``.
        lister: Lists the store's models (``ONNXKIT_MODELS=*``); called at most once per
            ``ttl_s``, and again on a miss at most once per ``miss_ttl_s`` (a model
            published a moment ago is found without waiting for the next listing).
        allow: fnmatch patterns a name must match (empty: any).
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        names: Iterable[str] = (),
        *,
        lister: Callable[[], list[str]] | None = None,
        allow: Iterable[str] = (),
        ttl_s: float = 60.0,
        miss_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lister = lister
        self._allow = tuple(allow)
        self._names = tuple(n for n in names if self.allowed(n))  # checked on every request
        self._ttl_s = ttl_s
        self._miss_ttl_s = miss_ttl_s
        self._clock = clock
        self._listed: tuple[str, ...] = ()
        self._listed_at: float | None = None
        self._lock = threading.Lock()

    def allowed(self, name: str) -> bool:
        """Whether the allow-list admits ``name``."""
        return not self._allow or any(fnmatch.fnmatchcase(name, p) for p in self._allow)

    def names(self, *, fresh_after: float | None = None) -> tuple[str, ...]:
        """The served names, in order (a listing may raise the store's errors).

        Raises:
            OnnxkitError: The store cannot be listed (``*`` only).
        """
        if self._lister is None:
            return self._names
        with self._lock:
            now = self._clock()
            age_limit = self._ttl_s if fresh_after is None else fresh_after
            if self._listed_at is None or now - self._listed_at >= age_limit:
                self._listed = tuple(sorted(n for n in self._lister() if self.allowed(n)))
                self._listed_at = now
            return self._listed

    def contains(self, name: str) -> bool:
        """Whether ``name`` is served (a miss re-lists the store when its listing is stale).

        Raises:
            OnnxkitError: The store cannot be listed.
        """
        if name in self.names():
            return True
        return self._lister is not None and name in self.names(fresh_after=self._miss_ttl_s)

    def describe(self) -> str:
        """The served names for an error message."""
        if self._lister is None:
            return ", ".join(map(repr, self.names())) or "none"
        allow = f" matching {', '.join(self._allow)}" if self._allow else ""
        return f"every model in the store{allow}"


def memory_cost(manifests: Iterable[Manifest]) -> int:
    """Bytes of memory loaded versions are counted for (:data:`MEMORY_FACTOR` x their files)."""
    return sum(int(m.total_size * MEMORY_FACTOR) for m in manifests)


def folder_bytes(folders: Iterable[Path]) -> int:
    """Bytes the files under ``folders`` take (missing folders count 0)."""
    total = 0
    for folder in folders:
        if folder.is_dir():
            total += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return total


class ModelRepository:
    """Serves many models, each loaded on its first request and evicted least recently used.

    Args:
        make: Builds an (unloaded) predictor for a name and a pinned version or alias
            (None: the configured alias), and a callable that deletes the cached files of
            the given manifests except those still served (the second argument).
        catalog: Which names are served.
        limits: Body and batch limits (the same for every model).
        budget: Memory and disk budgets.
        memory_of: Bytes of memory some loaded versions are counted for (default
            :func:`memory_cost`; the function counts none for models it forwards).
        disk_of: Bytes the cached files of some versions take (default: none are cached).
        clock: Monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        make: Callable[
            [str, str | None],
            tuple[Predictor, Callable[[tuple[Manifest, ...], tuple[Manifest, ...]], None]],
        ],
        catalog: Catalog,
        limits: ApiSettings,
        budget: Budget | None = None,
        *,
        memory_of: Callable[[tuple[Manifest, ...]], int] | None = None,
        disk_of: Callable[[tuple[Manifest, ...]], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model_name = ""  # no default model: every request names one
        self._make = make
        self._catalog = catalog
        self._limits = limits
        self._budget = budget or Budget()
        self._memory_of = memory_of or memory_cost
        self._disk_of = disk_of or (lambda _: 0)
        self._clock = clock
        self._observer: Observer = NullObserver()
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._lock = threading.RLock()

    # -- what the edges ask of any server --------------------------------------------------

    @property
    def limits(self) -> ApiSettings:
        """The body and batch limits."""
        return self._limits

    @property
    def ready(self) -> bool:
        """A repository is ready at once: its models load on demand."""
        return True

    @property
    def current_backend(self) -> None:
        """No single backend (each model's predictor has its own)."""
        return None

    @property
    def refresh_interval(self) -> float:
        """How often the endpoint's background thread refreshes the loaded models' aliases."""
        intervals = [e.predictor.refresh_interval for e in self._snapshot()]
        return min((i for i in intervals if i), default=60.0)

    def observe(self, observer: Observer) -> None:
        """Send every model's timings (and evictions) to ``observer`` from now on."""
        self._observer = observer
        for entry in self._snapshot():
            entry.predictor.observe(observer)

    def try_load(self) -> bool:
        """Nothing loads at init (models load on their first request)."""
        return True

    def refresh(self, *, force: bool = False) -> bool:
        """Follow the alias of every loaded model; True when any swapped."""
        swapped = False
        for entry in self._snapshot():
            if entry.predictor.ready:
                swapped |= entry.predictor.refresh(force=force)
        return swapped

    def check_ready(self) -> None:
        """The repository serves once it is built (``/ping``)."""

    # -- the protocol ----------------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        """``GET /v2``."""
        return {
            "name": SERVER_NAME,
            "version": __version__,
            "extensions": list(SERVER_EXTENSIONS),
        }

    def server_ready(self) -> dict[str, Any]:
        """``GET /v2/health/ready``: ready (models load on demand; a model's own readiness is
        ``GET /v2/models/{name}/ready``)."""
        return {"ready": True}

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """``GET /v2/models/{name}[/versions/{version}]`` (loads the model when needed)."""
        return self._call(name, version, lambda p, v: p.model_metadata(p.model_name, v))

    def model_ready(self, name: str, version: str | None = None) -> dict[str, Any]:
        """``GET /v2/models/{name}[/versions/{version}]/ready`` (loads the model when needed)."""
        return self._call(name, version, lambda p, v: p.model_ready(p.model_name, v))

    def infer(
        self,
        name: str,
        version: str | None,
        body: bytes | str | None,
        *,
        content_type: str | None = None,
        header_length: str | None = None,
    ) -> Reply:
        """``POST /v2/models/{name}[/versions/{version}]/infer`` on the named model.

        Raises:
            ModelNotFoundError: The name is not served here.
            OnnxkitError: What the model's predictor raises (its load included).
        """
        return self._call(
            name,
            version,
            lambda p, v: p.infer(
                p.model_name, v, body, content_type=content_type, header_length=header_length
            ),
        )

    def predictor_for(self, name: str, version: str | None = None) -> tuple[Predictor, str | None]:
        """The predictor that serves a request to ``name`` (and the version to pass it).

        Raises:
            ModelNotFoundError: The name is not served here.
        """
        entry, version = self._entry_for(name, version)
        return entry.predictor, version

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """``POST /v2/repository/index``: every served model with its state.

        A loaded model is ``READY`` with its version(s); one not loaded is ``UNAVAILABLE`` with
        the reason (not loaded yet, evicted, or its last load's error). Models pinned to a
        version or alias by a request are listed too, under that ``alias``.

        Raises:
            OnnxkitError: The store cannot be listed (``ONNXKIT_MODELS=*``).
        """
        rows: list[dict[str, Any]] = []
        entries = {e.key: e for e in self._snapshot()}
        for name in self._catalog.names():
            keys = [k for k in entries if k[0] == name] or [(name, None)]
            for key in sorted(keys, key=lambda k: (k[1] is not None, k[1] or "")):
                rows.extend(self._rows(key, entries.get(key)))
        if ready_only:
            rows = [row for row in rows if row["state"] == READY]
        return rows

    def load_model(self, name: str) -> list[dict[str, Any]]:
        """``POST /v2/repository/models/{name}/load``: load it now (counted and evicting like
        a first request); its index rows.

        Raises:
            ModelNotFoundError: The name is not served here.
            OnnxkitError: The load failed.
        """
        self._call(name, None, lambda p, v: p.model_ready(p.model_name, v))
        return [row for row in self.repository_index() if row["name"] == name]

    def unload_model(self, name: str) -> list[dict[str, Any]]:
        """``POST /v2/repository/models/{name}/unload``: drop every loaded copy of the model
        (its alias's and any pinned one) and delete their cached files; its index rows.

        Raises:
            ModelNotFoundError: The name is not served here.
        """
        self._entry_for(name, None)  # the 404 for a name not served
        with self._lock:
            for entry in [e for e in self._entries.values() if e.key[0] == name]:
                if entry.predictor.ready:
                    self._evict(entry, "unloaded on request; it reloads on its next request")
        return [row for row in self.repository_index() if row["name"] == name]

    def _rows(self, key: Key, entry: _Entry | None) -> list[dict[str, Any]]:
        name, ref = key
        base: dict[str, Any] = {"name": name}
        if ref is not None:
            base["alias"] = ref
        if entry is None or not entry.predictor.ready:
            reason = "not loaded yet; it loads on its first request"
            if entry is not None and entry.predictor.last_error is not None:
                error = entry.predictor.last_error
                reason = f"its last load failed: {error.client_message} ({error.code})"
            elif entry is not None and entry.evicted:
                reason = entry.evicted
            return [{**base, "version": "", "state": UNAVAILABLE, "reason": reason}]
        rows = []
        for manifest in entry.predictor.served_manifests:
            row = {**base, "version": manifest.version, "state": READY, "reason": ""}
            if entry.loaded is not None:
                row["memory_bytes"] = entry.loaded.memory
                row["disk_bytes"] = entry.loaded.disk
                if entry.loaded.measured is not None:
                    row["measured_memory_bytes"] = entry.loaded.measured
            rows.append(row)
        return rows

    # -- entries, loads and evictions ------------------------------------------------------

    def _snapshot(self) -> list[_Entry]:
        with self._lock:
            return list(self._entries.values())

    def _call(
        self, name: str, version: str | None, call: Callable[[Predictor, str | None], Any]
    ) -> Any:
        entry, version = self._entry_for(name, version)
        was_ready = entry.predictor.ready
        try:
            return call(entry.predictor, version)
        finally:
            if not was_ready and entry.predictor.ready:
                self._admit(entry)

    def _entry_for(self, name: str, version: str | None) -> tuple[_Entry, str | None]:
        """The entry serving ``name`` (and ``version``, when that is not its own)."""
        if not self._catalog.contains(name):
            raise ModelNotFoundError(
                f"model {name!r} is not served here; this server serves {self._catalog.describe()}"
            )
        with self._lock:
            default = self._entry((name, None))
            if version is not None and not (
                default.predictor.ready and version in default.predictor.served_versions
            ):
                entry, version = self._entry((name, version)), None  # pinned: it serves that
            else:
                entry = default
            entry.last_used = self._clock()
            self._entries.move_to_end(entry.key)
        return entry, version

    def _entry(self, key: Key) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            predictor, forget = self._make(*key)
            predictor.observe(self._observer)
            entry = _Entry(key, predictor, forget)
            self._entries[key] = entry
        return entry

    def _admit(self, entry: _Entry) -> None:
        """Count a fresh load against the budgets; evict the least recently used others."""
        with self._lock:
            served = entry.predictor.served_manifests
            entry.loaded = Loaded(
                memory=self._memory_of(served),
                disk=self._disk_of(served),
                measured=entry.predictor.measured_growth,
            )
            entry.evicted = ""
            memory = self._budget.memory_bytes
            disk = self._budget.disk_bytes
            for victim in [e for e in self._entries.values() if e is not entry]:
                used = self._used()
                over_memory = memory is not None and used.memory > memory
                over_disk = disk is not None and used.disk > disk
                if not (over_memory or over_disk):
                    break
                if victim.predictor.ready:
                    budget = "memory" if over_memory else "disk"
                    self._evict(
                        victim,
                        f"evicted (least recently used) to keep the loaded models within the "
                        f"{budget} budget; it reloads on its next request",
                    )
            used = self._used()
            if (memory is not None and used.memory > memory) or (
                disk is not None and used.disk > disk
            ):
                logger.warning(
                    "model %s alone is over the repository's budget (memory %s of %s bytes, "
                    "disk %s of %s); raise ONNXKIT_MODELS_MEMORY_MB / ONNXKIT_MODELS_DISK_MB",
                    entry.key[0],
                    used.memory,
                    memory,
                    used.disk,
                    disk,
                )

    def _used(self) -> Loaded:
        loaded = [e.loaded for e in self._entries.values() if e.loaded and e.predictor.ready]
        return Loaded(sum(x.memory for x in loaded), sum(x.disk for x in loaded))

    def _evict(self, victim: _Entry, why: str) -> None:
        manifests = victim.predictor.unload()
        still_served = tuple(
            m
            for e in self._entries.values()
            if e is not victim and e.predictor.ready
            for m in e.predictor.served_manifests
        )
        victim.forget(manifests, still_served)
        victim.loaded = None
        victim.evicted = why
        for manifest in manifests:
            logger.info(
                "model evicted",
                extra={"model": manifest.name, "version": manifest.version, "why": why},
            )
            self._observer.model_evicted(manifest)
