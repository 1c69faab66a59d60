"""Where a served model's files come from: the model store, or a plain local folder.

A source resolves the manifest to serve (the store: an alias or a pinned version; a folder:
its ``manifest.json``) and fetches verified files for it. A folder holds ``model.onnx`` (plus
any external data) and, when ``onnxkit models pull`` wrote it, ``manifest.json``: then every
listed file is checked against its size and sha256 before onnxruntime reads a byte of it.
Without one the signature comes from the onnxruntime session and nothing can be verified (a
warning says so).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from onnxkit.aws import AwsClients
from onnxkit.datatypes import BY_ORT
from onnxkit.errors import (
    ConfigurationError,
    IntegrityError,
    ModelLoadError,
    ModelNotFoundError,
    OnnxkitError,
)
from onnxkit.manifest import FileEntry, Manifest, TensorSpec, verify_folder
from onnxkit.phases import Phases
from onnxkit.settings import ENV_MODEL_DIR, ForwardSettings, ModelSettings, Settings
from onnxkit.store import MANIFEST_NAME, FileBlobs, ModelStore

if TYPE_CHECKING:
    from onnxkit.canary import Rollout  # imported when an alias is followed, not at cold start

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
UNVERSIONED = "local"
IN_MEMORY_MAX_BYTES = 256 * 1024 * 1024
"""Single-file models up to this size are read from the store straight into memory. onnxruntime
keeps the bytes for the session's life, so larger ones go through the /tmp cache instead."""


class ModelSource(Protocol):
    """Resolves and fetches the files of the one model a server serves."""

    name: str
    follows_alias: bool

    def resolve(self) -> Manifest | None:
        """The manifest to serve now (None: a folder without one, nothing to verify).

        Raises:
            OnnxkitError: The store cannot be read, or the model/alias is not published.
        """
        ...

    def open(self, manifest: Manifest | None, phases: Phases) -> Path | bytes:
        """What onnxruntime should load: the verified graph's path, or its verified bytes.

        Counts the download and verify times in ``phases``.

        Raises:
            OnnxkitError: Integrity, cache or store failures.
        """
        ...

    def read(self, manifest: Manifest, path: str) -> bytes:
        """One of the version's other files (a tokenizer, a labels file), verified.

        Raises:
            OnnxkitError: Integrity or store failures.
        """
        ...

    def release(self, keep: Manifest, *also: Manifest) -> None:
        """Free the files of every version but ``keep`` and ``also`` (after a swap)."""
        ...


class StoreSource:
    """A model in the registry, by alias (followed) or pinned version, cached and verified.

    Args:
        store: The model store.
        model: Which model, and which alias or version.
        cpu_graph: Load a version's CPU twin (``Manifest.cpu_graph``) when it has one that
            this onnxruntime can read (sessions on CPU only; a GPU session needs the original).
    """

    def __init__(self, store: ModelStore, model: ModelSettings, *, cpu_graph: bool = True) -> None:
        if not model.name:
            raise ConfigurationError(["a model from the store needs ONNXKIT_MODEL_NAME"])
        self.name = model.name
        self.follows_alias = model.version is None
        self._store = store
        self._model = model
        self._cpu_graph = cpu_graph
        self._saw_canary = False

    @property
    def store(self) -> ModelStore:
        """The store the model comes from."""
        return self._store

    def resolve(self) -> Manifest:
        if self._model.version is not None:
            return self._store.get_manifest(self.name, self._model.version)
        record = self._store.get_alias(self.name, self._model.alias)
        self._saw_canary = record.canary_version is not None
        return self._store.get_manifest(self.name, record.version)

    def resolve_rollout(self) -> Rollout:
        """The alias's stable version and its canary (a pinned version has none).

        Raises:
            OnnxkitError: The store cannot be read, or a version is not published.
        """
        from onnxkit.canary import Rollout

        if self._model.version is not None:
            return Rollout(self._store.get_manifest(self.name, self._model.version))
        record = self._store.get_alias(self.name, self._model.alias)
        self._saw_canary = record.canary_version is not None
        stable = self._store.get_manifest(self.name, record.version)
        if record.canary_version is None:
            return Rollout(stable)
        canary = self._store.get_manifest(self.name, record.canary_version)
        return Rollout(stable, canary, record.canary_weight)

    def saw_canary(self) -> bool:
        """Whether the alias named a canary when it was last read."""
        return self._saw_canary

    def open(self, manifest: Manifest | None, phases: Phases) -> Path | bytes:
        # A copy already in the cache (a re-init on a warm /tmp) costs no download. A small
        # single-file model goes straight to memory: the /tmp round trip would buy nothing.
        assert manifest is not None, "a store always has a manifest"
        cached = self._store.cached(manifest)
        if cached is not None:
            return cached / manifest.model_file.path
        graph = self.graph_for(manifest)
        if len(manifest.model_files) == 1 and graph.size <= IN_MEMORY_MAX_BYTES:
            return self._store.read_model(manifest, phases, entry=graph)
        return self._store.fetch(manifest, phases=phases) / manifest.model_file.path

    def read(self, manifest: Manifest, path: str) -> bytes:
        # From the verified cached copy when there is one, else straight from the store.
        entry = _entry(manifest, path)
        cached = self._store.cached(manifest)
        if cached is not None:
            return (cached / entry.path).read_bytes()
        return self._store.read_file(manifest, entry)

    def graph_for(self, manifest: Manifest) -> FileEntry:
        """The graph file to load: the CPU twin when there is a usable one, else the original."""
        twin = manifest.cpu_file
        if twin is None or manifest.cpu_graph is None or not self._cpu_graph:
            return manifest.model_file
        made_with = _release(manifest.cpu_graph["onnxruntime"])
        here = installed_onnxruntime()
        if made_with is None or here is None or here < made_with:
            logger.info(
                "the CPU twin was made by onnxruntime %s, this is %s: loading the original graph",
                manifest.cpu_graph["onnxruntime"],
                ".".join(map(str, here)) if here else "unknown",
            )
            return manifest.model_file
        return twin

    def release(self, keep: Manifest, *also: Manifest) -> None:
        # /tmp is small: keep only what is served (the stable version, and a canary's)
        local_dir = self._store.local_dir
        self._store.evict(
            keep=local_dir(keep), also=tuple(local_dir(m) for m in also), name=self.name
        )


class FolderSource:
    """A model in a local folder (SageMaker's ``/opt/ml/model``), verified when it can be.

    Args:
        folder: The model folder; it must exist (a typo fails at start, not at the first request).
        name: The served name; None takes the manifest's (or the folder's name without one).
        version: The version to report without a manifest.

    Raises:
        ConfigurationError: The folder does not exist.
        IntegrityError: Its ``manifest.json`` is not a valid manifest.
    """

    follows_alias = False

    def __init__(
        self, folder: Path, *, name: str | None = None, version: str | None = None
    ) -> None:
        if not folder.is_dir():
            raise ConfigurationError(
                [f"{ENV_MODEL_DIR}={folder} is not a folder; point it at a folder holding "
                 f"{MODEL_FILE} (and, from `onnxkit models pull`, {MANIFEST_NAME})"]
            )  # fmt: skip
        self._folder = folder
        self._manifest = read_manifest(folder)
        self._version = version or UNVERSIONED
        manifest_name = self._manifest.name if self._manifest else None
        if name and manifest_name and name != manifest_name:
            logger.warning(
                "%s names model %r but this server is configured as %r; serving it as %r",
                MANIFEST_NAME,
                manifest_name,
                name,
                name,
            )
        self.name = name or manifest_name or folder.name

    def resolve(self) -> Manifest | None:
        return self._manifest

    def fetch(self, manifest: Manifest | None) -> Path:
        if manifest is None:
            confine_folder(self._folder, None)
            model_file = find_model_file(self._folder)
            logger.warning(
                "no %s in %s: the model files are not verified "
                "(write one with `onnxkit models pull`)",
                MANIFEST_NAME,
                self._folder,
            )
            return model_file
        confine_folder(self._folder, manifest)
        verify_folder(self._folder, manifest, fix="the model folder is incomplete or was modified")
        logger.info(
            "model files verified",
            extra={
                "model": manifest.name,
                "version": manifest.version,
                "files": len(manifest.files),
            },
        )
        return self._folder / manifest.model_file.path

    def open(self, manifest: Manifest | None, phases: Phases) -> Path | bytes:
        with phases.timed("verify"):
            return self.fetch(manifest)

    def read(self, manifest: Manifest, path: str) -> bytes:
        # open() verified every file of the folder against the manifest already
        return (self._folder / _entry(manifest, path).path).read_bytes()

    def release(self, keep: Manifest, *also: Manifest) -> None:
        pass  # the folder is not ours to clean

    def describe(self, session: Any, model_file: Path) -> Manifest:
        """A manifest for a folder without one, from what the session reports."""
        return manifest_from_session(session, model_file, name=self.name, version=self._version)


def _entry(manifest: Manifest, path: str) -> FileEntry:
    """The manifest's entry for a file (a declaration only names files the manifest lists)."""
    for entry in manifest.files:
        if entry.path == path:
            return entry
    raise IntegrityError(f"{path} is not one of {manifest.name} {manifest.version}'s files")


def confine_folder(folder: Path, manifest: Manifest | None) -> None:
    """Check that a model folder holds nothing a graph could read beyond its own files.

    onnxruntime loads a graph's external data from the graph's folder (refusing absolute paths
    and ``..``), so what that folder holds is what a graph can read. A symlink could point
    anywhere (a tarball's ``weights -> /etc/shadow``); a file the manifest does not list was
    verified by nobody. Both are refused: the folder may hold the manifest's files and
    ``manifest.json``, and without a manifest, regular files and folders only.

    Raises:
        IntegrityError: The folder holds a symlink, or a file its manifest does not list.
    """
    allowed = None if manifest is None else {MANIFEST_NAME, *(f.path for f in manifest.files)}
    links: list[str] = []
    extra: list[str] = []
    for parent, folders, files in os.walk(folder):
        for name in (*folders, *files):
            path = Path(parent, name)
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink():
                links.append(relative)
            elif allowed is not None and name in files and relative not in allowed:
                extra.append(relative)
    if links:
        raise IntegrityError(
            f"the model folder {folder} holds symlinks ({', '.join(sorted(links)[:5])}): a graph "
            "could read what they point to as external data; replace them with the files"
        )
    if extra:
        raise IntegrityError(
            f"the model folder {folder} holds files its {MANIFEST_NAME} does not list "
            f"({', '.join(sorted(extra)[:5])}): a graph could read them as external data; "
            "remove them, or pull the version again with `onnxkit models pull`"
        )


def read_manifest(folder: Path) -> Manifest | None:
    """The folder's ``manifest.json``, or None when there is none.

    Raises:
        IntegrityError: The manifest exists but is not a valid manifest.
    """
    # The folder comes from a model.tar.gz: its manifest is bounded like the store's (1 MiB,
    # told by its size before it is read).
    try:
        raw = FileBlobs(folder).read(MANIFEST_NAME)
    except ModelNotFoundError:
        return None
    except OSError as exc:
        raise IntegrityError(f"{folder / MANIFEST_NAME} cannot be read: {exc.strerror}") from exc
    return Manifest.from_json(raw)


def find_model_file(folder: Path) -> Path:
    """``model.onnx``, or the folder's only ``.onnx`` file.

    Raises:
        ModelNotFoundError: No model, or several candidates.
    """
    preferred = folder / MODEL_FILE
    if preferred.is_file():
        return preferred
    candidates = sorted(p for p in folder.glob("*.onnx") if p.is_file())
    if len(candidates) == 1:
        return candidates[0]
    found = ", ".join(p.name for p in candidates) or "none"
    raise ModelNotFoundError(
        f"{folder} must hold {MODEL_FILE} (or exactly one .onnx file); found {found}"
    )


def signature_from_session(session: Any) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs as onnxruntime sees them; symbolic or unknown dimensions become -1.

    Raises:
        ModelLoadError: A tensor type the v2 JSON protocol cannot carry (maps, sequences...).
    """

    def spec(arg: Any) -> TensorSpec:
        datatype = BY_ORT.get(arg.type)
        if datatype is None:
            raise ModelLoadError(
                f"{arg.name!r} has type {arg.type}, which onnxkit's v2 JSON protocol cannot "
                "carry; export the model with plain tensors (skl2onnx: zipmap=False)"
            )
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape or ())
        return TensorSpec(arg.name, datatype.name, shape)

    return (
        tuple(spec(arg) for arg in session.get_inputs()),
        tuple(spec(arg) for arg in session.get_outputs()),
    )


def manifest_from_session(
    session: Any, model_file: Path, *, name: str, version: str = UNVERSIONED
) -> Manifest:
    """A manifest describing an unverified local model (no sha256: nothing to check it with).

    Args:
        session: The onnxruntime session that loaded ``model_file``.
        model_file: The graph file.
        name: The served model name.
        version: The version label to report.
    """
    inputs, outputs = signature_from_session(session)
    meta = session.get_modelmeta()
    return Manifest(
        name=name,
        version=version,
        files=(FileEntry(model_file.name, sha256="", size=model_file.stat().st_size),),
        inputs=inputs,
        outputs=outputs,
        opset=0,  # onnxruntime does not expose it; 0 reads as "unknown"
        producer={"name": str(meta.producer_name), "version": str(meta.version)},
        backend="sagemaker",
        metadata={"source": str(model_file.parent), "verified": False},
    )


# --- choosing and opening the source ---------------------------------------------------------


def open_store(settings: Settings, clients: AwsClients) -> ModelStore:
    """The model store named by ``settings.model.store`` (S3 through the configured client)."""
    if not settings.model.store.startswith("s3://"):
        return ModelStore.from_uri(settings.model.store, cache_dir=settings.model.cache_dir)
    return ModelStore.from_uri(
        settings.model.store,
        cache_dir=settings.model.cache_dir,
        s3_client=clients.s3(),
        parallel_from=settings.aws.s3_parallel_mb * 1024 * 1024,
        max_concurrency=settings.aws.s3_max_concurrency,
    )


def open_source(settings: Settings, clients: AwsClients) -> ModelSource:
    """A folder source when ``model_dir`` is set, else the store.

    Raises:
        ConfigurationError: The folder does not exist, or the store has no model name.
    """
    model = settings.model
    if model.model_dir is not None:
        return FolderSource(Path(model.model_dir), name=model.name, version=model.version)
    return StoreSource(
        open_store(settings, clients), model, cpu_graph=not settings.session.wants_gpu
    )


def choose_backend(forward: ForwardSettings, manifest: Manifest) -> str:
    """``lambda`` or ``sagemaker`` for this model, in the function.

    ``auto`` follows the manifest's ``backend`` (set at publish), and sends models whose
    files exceed ``ONNXKIT_AUTO_MAX_LAMBDA_BYTES`` or whose metadata declares ``gpu: true``
    to SageMaker; anything else runs in the function.
    """
    if forward.backend != "auto":
        return forward.backend
    if manifest.backend == "sagemaker" or bool(manifest.metadata.get("gpu")):
        return "sagemaker"
    return "sagemaker" if manifest.total_size > forward.auto_max_lambda_bytes else "lambda"


@dataclass(frozen=True)
class Prefetched:
    """A first load's resolve and download, done before the rest of the code is imported.

    Attributes:
        manifest: The version to serve (None: a folder without a manifest).
        model: The verified graph (path or bytes); None when the model is forwarded to
            SageMaker, or the prefetch failed.
        phases: The resolve, download and verify times (and the session's, when made).
        error: Why the prefetch failed (the first load raises it; later ones start afresh).
    """

    manifest: Manifest | None
    model: Path | bytes | None
    phases: Phases
    error: OnnxkitError | None = None
    session: Any = None
    """The onnxruntime session over ``model``, when the cold start made it already."""


def prefetch(
    source: ModelSource,
    forward: ForwardSettings,
    on_download: Callable[[], None] | None = None,
) -> Prefetched:
    """Resolve the served version and fetch its verified graph, timing each phase.

    Needs boto3 (for a store) but neither onnxruntime nor the edges: the function's cold
    start runs it in a thread before the rest of the code imports.

    Args:
        source: Where the model comes from.
        forward: Which models go to SageMaker (their files are not fetched).
        on_download: Called once the version is resolved, as its files start to come down
            (the long network wait, which other Python work can share; the two small reads
            before it are mostly Python work themselves).
    """
    phases = Phases()
    try:
        with phases.timed("resolve"):
            manifest = source.resolve()
        if on_download is not None:
            on_download()
        if manifest is not None and choose_backend(forward, manifest) == "sagemaker":
            return Prefetched(manifest, None, phases)
        return Prefetched(manifest, source.open(manifest, phases), phases)
    except OnnxkitError as exc:
        return Prefetched(None, None, phases, error=exc)


def installed_onnxruntime() -> tuple[int, int] | None:
    """The installed onnxruntime's (major, minor), read from its package metadata without
    importing it (the cold start reads the store before onnxruntime is imported)."""
    from importlib import metadata

    for distribution in ("onnxruntime", "onnxruntime-gpu"):
        try:
            return _release(metadata.version(distribution))
        except metadata.PackageNotFoundError:
            continue
    return None


def _release(version: str) -> tuple[int, int] | None:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None
