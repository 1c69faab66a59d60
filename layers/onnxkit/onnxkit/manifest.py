"""The model manifest: what a published version is, byte for byte.

A manifest names the model and version, lists every file with its sha256 and size, and
records the input/output signature, opset, producer, quantization and preferred backend.
It is stored beside the files as ``manifest.json`` and is the only thing a function trusts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from onnxkit.datatypes import BY_NAME
from onnxkit.errors import IntegrityError
from onnxkit.names import check_name

SCHEMA_VERSION = 1
BACKENDS = ("lambda", "sagemaker")
_HASH_CHUNK = 1024 * 1024
# What a manifest may make a server loop over or allocate, checked as it is parsed (the store's
# documents are untrusted input; the store also refuses a document over 1 MiB before reading).
MAX_FILES = 256
"""Files in one version: a graph, its external data, a CPU twin, a tokenizer, labels."""
MAX_TENSORS = 1024
"""Inputs, and outputs, of one model."""
MAX_RANK = 32
"""Dimensions of one tensor (onnxruntime's own kernels stop well before)."""
MAX_FILE_BYTES = 1 << 40
"""A file's declared size: past a TiB it can only be a lie (the disk check refuses it anyway)."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: name, v2 datatype, shape with -1 for dynamic dimensions."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON form (also the v2 metadata form)."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class FileEntry:
    """One file of a version, relative to the version folder."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """A published model version.

    Attributes:
        name: Model name (lower-case, ``[a-z0-9._-]``).
        version: Version string, immutable once published.
        files: Every file, the model first; paths are relative POSIX paths.
        inputs: Input signature.
        outputs: Output signature.
        opset: The default-domain opset the graph imports.
        producer: ``{"name", "version"}`` of the tool that wrote the graph.
        quantization: What was done to the weights (None for an original model).
        backend: Where it should run: ``lambda`` or ``sagemaker``.
        created_at: ISO-8601 UTC timestamp.
        metadata: Free-form labels (task, dataset, accuracy...).
        cpu_graph: The CPU twin of the graph, when publish made one: ``{"path", "onnxruntime",
            "level", "max_abs_diff"}``. onnxruntime's extended graph optimizations are done
            once at publish (and checked against the original's outputs) instead of at every
            cold start; a CPU function with that onnxruntime version or newer loads the twin.
            Its file is one of ``files``, never the first.
        processing: What turns the requests people have into the model's tensors, and its
            outputs into answers (:mod:`onnxkit.processing`): ``{"text", "image",
            "postprocess"}`` declarations, data only. The files they name (a tokenizer, a
            labels file) are among ``files``, never the first, and verified like the graph.
        conversion: How the graph was made from a framework model, when ``onnxkit convert``
            made it: its report (source, converter versions, parity with the framework).
    """

    name: str
    version: str
    files: tuple[FileEntry, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    producer: dict[str, str] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None
    backend: str = "lambda"
    created_at: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    cpu_graph: dict[str, Any] | None = None
    processing: dict[str, Any] | None = None
    conversion: dict[str, Any] | None = None

    @property
    def model_file(self) -> FileEntry:
        """The ONNX graph file (the first entry)."""
        return self.files[0]

    @property
    def cpu_file(self) -> FileEntry | None:
        """The CPU twin's entry (None without one)."""
        if self.cpu_graph is None:
            return None
        return next(f for f in self.files if f.path == self.cpu_graph["path"])

    @property
    def processing_files(self) -> tuple[FileEntry, ...]:
        """The files the processing declarations name (a tokenizer, a labels file)."""
        if not self.processing:
            return ()
        from onnxkit.processing import processing_files

        named = set(processing_files(self.processing))
        return tuple(f for f in self.files if f.path in named)

    @property
    def model_files(self) -> tuple[FileEntry, ...]:
        """The model's own files: the graph and its external data (not the CPU twin, not the
        processing files)."""
        other = {f.path for f in self.processing_files}
        if self.cpu_graph:
            other.add(self.cpu_graph["path"])
        return tuple(f for f in self.files if f.path not in other)

    @property
    def total_size(self) -> int:
        """Bytes over the model's own files (what the model weighs; the twin not counted)."""
        return sum(f.size for f in self.model_files)

    @property
    def stored_size(self) -> int:
        """Bytes over every file stored for the version (the twin included)."""
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (without ``cpu_graph`` when there is none, as before it)."""
        data = asdict(self)
        data["inputs"] = [t.to_dict() for t in self.inputs]
        data["outputs"] = [t.to_dict() for t in self.outputs]
        for optional in ("cpu_graph", "processing", "conversion"):  # absent, as before them
            if data[optional] is None:
                del data[optional]
        return data

    def to_json(self) -> bytes:
        """Canonical JSON bytes (sorted keys), the form that is stored."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        """Parse and validate a stored manifest.

        Raises:
            IntegrityError: The bytes are not a valid manifest.
        """
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise TypeError("a manifest is a JSON object")
            return cls.from_dict(data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"manifest is not valid: {exc}") from exc

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Build from the JSON form, validating every field.

        Raises:
            ValueError, KeyError, TypeError: On any malformed field.
        """
        if data.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {data['schema_version']} is newer than this onnxkit "
                f"understands ({SCHEMA_VERSION}); upgrade onnxkit"
            )
        listed = _bounded_list(data["files"], "files", MAX_FILES)
        files = tuple(
            FileEntry(path=safe_relative(f["path"]), sha256=str(f["sha256"]), size=int(f["size"]))
            for f in listed
        )
        if not files:
            raise ValueError("manifest lists no files")
        for entry in files:
            if not _is_sha256(entry.sha256) or not 0 <= entry.size <= MAX_FILE_BYTES:
                raise ValueError(f"bad checksum or size for {entry.path}")
        paths = [entry.path for entry in files]
        if len(set(paths)) != len(paths):
            twice = sorted({p for p in paths if paths.count(p) > 1})[:5]
            raise ValueError(f"manifest lists {twice} more than once")
        manifest = cls(
            name=check_name(data["name"]),
            version=check_name(data["version"], "version"),
            files=files,
            inputs=tuple(_spec(t) for t in _bounded_list(data["inputs"], "inputs", MAX_TENSORS)),
            outputs=tuple(_spec(t) for t in _bounded_list(data["outputs"], "outputs", MAX_TENSORS)),
            opset=int(data["opset"]),
            producer={str(k): str(v) for k, v in data.get("producer", {}).items()},
            quantization=data.get("quantization"),
            backend=str(data.get("backend", "lambda")),
            created_at=str(data.get("created_at", "")),
            metadata=dict(data.get("metadata", {})),
            cpu_graph=_cpu_graph(data.get("cpu_graph"), files),
            conversion=_optional_object(data.get("conversion"), "conversion"),
        )
        if manifest.backend not in BACKENDS:
            raise ValueError(f"backend {manifest.backend!r} is not one of {BACKENDS}")
        if data.get("processing") is not None:
            manifest = replace(manifest, processing=_processing(data["processing"], manifest))
        return manifest


def _optional_object(data: Any, what: str) -> dict[str, Any] | None:
    if data is not None and not isinstance(data, dict):
        raise TypeError(f"{what} is a JSON object or absent")
    return data


def _cpu_graph(data: Any, files: tuple[FileEntry, ...]) -> dict[str, Any] | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise TypeError("cpu_graph must be an object")
    path = safe_relative(str(data["path"]))
    if path not in {f.path for f in files[1:]}:
        raise ValueError(f"cpu_graph {path!r} is not one of the version's files (after the graph)")
    return {
        "path": path,
        "onnxruntime": str(data["onnxruntime"]),
        "level": str(data.get("level", "extended")),
        "max_abs_diff": float(data.get("max_abs_diff", 0.0)),
    }


def _processing(data: Any, manifest: Manifest) -> dict[str, Any]:
    """The processing declarations, validated against the signature and the files (the
    processing package, and numpy with it, is imported only for a model that declares some)."""
    from onnxkit.processing import Processing

    if not isinstance(data, dict):
        raise TypeError("processing must be an object")
    processing = Processing.from_dict(data)
    listed = {f.path: f for f in manifest.files[1:]}
    limits = processing.file_limits()
    for path in processing.files:
        entry = listed.get(safe_relative(path))
        if entry is None:
            raise ValueError(f"processing names {path!r}, which is not one of the version's files")
        if entry.size > limits.get(path, MAX_FILE_BYTES):
            raise ValueError(
                f"processing file {path!r} is {entry.size} bytes; the most for it is {limits[path]}"
            )
    processing.check(manifest.inputs, manifest.outputs)
    return processing.to_dict()


def _spec(data: dict[str, Any]) -> TensorSpec:
    datatype = str(data["datatype"])
    if datatype not in BY_NAME:
        raise ValueError(f"unsupported datatype {datatype!r}")
    shape = tuple(int(d) for d in _bounded_list(data["shape"], "a shape", MAX_RANK))
    if any(d < -1 or d >= 1 << 62 for d in shape):
        raise ValueError(f"shape {list(shape)[:8]} holds a dimension below -1 or too large")
    return TensorSpec(str(data["name"]), datatype, shape)


def _bounded_list(data: Any, what: str, limit: int) -> list[Any] | tuple[Any, ...]:
    """A JSON list of at most ``limit`` items, checked before any item is read."""
    if not isinstance(data, list | tuple):  # tuple: a dict from to_dict(), not from JSON
        raise TypeError(f"{what} must be a list")
    if len(data) > limit:
        raise ValueError(f"{what} holds {len(data)} items; at most {limit}")
    return data


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def safe_relative(path: str) -> str:
    """Reject absolute paths and ``..`` so a manifest can never write outside its folder."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or "\\" in path:
        raise ValueError(f"file path {path!r} must be relative and stay inside the version")
    return str(pure)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(entry: FileEntry, *, size: int, sha256: str | None, where: str, fix: str) -> None:
    """Check one file's measured size and digest against its manifest entry.

    The one check behind every verification: downloads (digest computed while streaming)
    and model folders (digest computed from disk) both end here.

    Args:
        entry: The manifest's entry for the file.
        size: Bytes found (for a download stopped early: more than ``entry.size``).
        sha256: Hex digest found; None when only the size is known (it already differs).
        where: Where the file is, for the message.
        fix: What to do about a mismatch, for the message.

    Raises:
        IntegrityError: The size or the digest differs.
    """
    if size == entry.size and sha256 == entry.sha256:
        return
    found = f"more than {entry.size} bytes" if size > entry.size else f"{size} bytes"
    if sha256 is not None:
        found += f" sha256 {sha256[:12]}…"
    raise IntegrityError(
        f"{where} does not match its manifest (expected {entry.size} bytes sha256 "
        f"{entry.sha256[:12]}…, got {found}); {fix}"
    )


def verify_folder(folder: Path, manifest: Manifest, *, fix: str) -> None:
    """Check every file the manifest lists, in ``folder``, against its size and sha256.

    Sizes are checked first (cheap), so a truncated copy fails before any hashing.

    Raises:
        IntegrityError: A file is missing, unreadable, or differs from the manifest.
    """
    sizes: dict[str, int] = {}
    for entry in manifest.files:
        try:
            sizes[entry.path] = (folder / entry.path).stat().st_size
        except OSError as exc:
            raise IntegrityError(
                f"{entry.path} is listed in the manifest but cannot be read in {folder} "
                f"({exc.strerror}); {fix}"
            ) from exc
        if sizes[entry.path] != entry.size:
            verify_file(entry, size=sizes[entry.path], sha256=None, where=entry.path, fix=fix)
    for entry in manifest.files:
        try:
            digest = sha256_file(folder / entry.path)
        except OSError as exc:
            raise IntegrityError(f"{entry.path} cannot be read: {exc.strerror}; {fix}") from exc
        verify_file(entry, size=sizes[entry.path], sha256=digest, where=entry.path, fix=fix)
