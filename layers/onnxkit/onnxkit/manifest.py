"""The model manifest: what a published version is, byte for byte.

A manifest names the model and version, lists every file with its sha256 and size, and
records the input/output signature, opset, producer, quantization and preferred backend.
It is stored beside the files as ``manifest.json`` and is the only thing a function trusts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from onnxkit.datatypes import BY_NAME, BY_ONNX
from onnxkit.errors import IntegrityError, InvalidInputError

SCHEMA_VERSION = 1
BACKENDS = ("lambda", "sagemaker")
_HASH_CHUNK = 1024 * 1024


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

    @property
    def model_file(self) -> FileEntry:
        """The ONNX graph file (the first entry)."""
        return self.files[0]

    @property
    def total_size(self) -> int:
        """Bytes over all files."""
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        data = asdict(self)
        data["inputs"] = [t.to_dict() for t in self.inputs]
        data["outputs"] = [t.to_dict() for t in self.outputs]
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
        files = tuple(
            FileEntry(path=_safe_relative(f["path"]), sha256=str(f["sha256"]), size=int(f["size"]))
            for f in data["files"]
        )
        if not files:
            raise ValueError("manifest lists no files")
        for entry in files:
            if len(entry.sha256) != 64 or entry.size < 0:
                raise ValueError(f"bad checksum or size for {entry.path}")
        manifest = cls(
            name=str(data["name"]),
            version=str(data["version"]),
            files=files,
            inputs=tuple(_spec(t) for t in data["inputs"]),
            outputs=tuple(_spec(t) for t in data["outputs"]),
            opset=int(data["opset"]),
            producer={str(k): str(v) for k, v in data.get("producer", {}).items()},
            quantization=data.get("quantization"),
            backend=str(data.get("backend", "lambda")),
            created_at=str(data.get("created_at", "")),
            metadata=dict(data.get("metadata", {})),
        )
        if manifest.backend not in BACKENDS:
            raise ValueError(f"backend {manifest.backend!r} is not one of {BACKENDS}")
        return manifest


def _spec(data: dict[str, Any]) -> TensorSpec:
    datatype = str(data["datatype"])
    if datatype not in BY_NAME:
        raise ValueError(f"unsupported datatype {datatype!r}")
    return TensorSpec(str(data["name"]), datatype, tuple(int(d) for d in data["shape"]))


def _safe_relative(path: str) -> str:
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


def describe_model(
    model_path: Path,
    *,
    name: str,
    version: str,
    extra_files: Iterable[Path] = (),
    quantization: dict[str, Any] | None = None,
    backend: str = "lambda",
    metadata: dict[str, Any] | None = None,
) -> Manifest:
    """Build a manifest for a local ONNX model (publish-time only; needs the ``onnx`` package).

    Files that the graph keeps as external data (``.onnx.data``) are found and listed
    automatically.

    Args:
        model_path: The ``.onnx`` graph.
        name: Model name.
        version: Version to record.
        extra_files: More files to ship beside the model (paths next to it).
        quantization: The quantization report, if any.
        backend: ``lambda`` or ``sagemaker``.
        metadata: Free-form labels.

    Returns:
        The manifest (not yet stored).

    Raises:
        InvalidInputError: The file is not a loadable ONNX model or uses unsupported types.
    """
    import onnx  # tools-only dependency: never imported on the request path

    if backend not in BACKENDS:
        raise InvalidInputError(f"backend must be one of {BACKENDS}, not {backend!r}")
    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:
        raise InvalidInputError(f"{model_path} is not a readable ONNX model: {exc}") from exc

    initializer_names = {init.name for init in proto.graph.initializer}
    inputs = tuple(
        _tensor_spec(value)
        for value in proto.graph.input
        if value.name not in initializer_names  # old exporters list weights as inputs
    )
    outputs = tuple(_tensor_spec(value) for value in proto.graph.output)

    external = sorted(
        {
            entry.value
            for tensor in _all_tensors(proto.graph)
            if tensor.data_location == onnx.TensorProto.EXTERNAL
            for entry in tensor.external_data
            if entry.key == "location"
        }
    )
    try:
        external = [_safe_relative(rel) for rel in external]
    except ValueError as exc:
        raise InvalidInputError(f"{model_path}: {exc}") from exc
    paths = [model_path] + [model_path.parent / rel for rel in external] + list(extra_files)
    files = tuple(
        FileEntry(
            path=_safe_relative(path.relative_to(model_path.parent).as_posix()),
            sha256=sha256_file(path),
            size=path.stat().st_size,
        )
        for path in paths
    )
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return Manifest(
        name=name,
        version=version,
        files=files,
        inputs=inputs,
        outputs=outputs,
        opset=opset,
        producer={"name": proto.producer_name, "version": proto.producer_version},
        quantization=quantization,
        backend=backend,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        metadata=dict(metadata or {}),
    )


def _all_tensors(graph: Any) -> Iterable[Any]:
    """Initializers and tensor attributes of a graph and of every subgraph (If, Loop, Scan)."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _all_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _all_tensors(subgraph)


def _tensor_spec(value: Any) -> TensorSpec:
    tensor_type = value.type.tensor_type
    datatype = BY_ONNX.get(tensor_type.elem_type)
    if datatype is None:
        raise InvalidInputError(
            f"tensor {value.name!r} has ONNX element type {tensor_type.elem_type}, which the v2 "
            "JSON protocol in onnxkit does not carry yet"
        )
    shape = tuple(
        dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim
    )
    return TensorSpec(value.name, datatype.name, shape)
