"""The registry's write side: describe a model, publish immutable versions, move aliases.

Tooling only: functions and the endpoint container read the store (``onnxkit.store``) and
never write it. Uploads verify every file against its manifest first; the manifest is written
last with a create-only conditional write, and aliases move with a conditional write on the
ETag that was read, so concurrent publishers and promoters cannot silently overwrite each
other.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxkit.datatypes import BY_ONNX

if TYPE_CHECKING:
    from onnxkit.processing import Processing
    from onnxkit_tools.processing import ProcessingOptions
from onnxkit.errors import (
    AliasConflictError,
    InvalidInputError,
    ModelNotFoundError,
    StoreUnavailableError,
    VersionConflictError,
)
from onnxkit.manifest import (
    BACKENDS,
    FileEntry,
    Manifest,
    TensorSpec,
    safe_relative,
    sha256_file,
    verify_folder,
)
from onnxkit.store import (
    MANIFEST_NAME,
    AliasRecord,
    FileBlobs,
    ModelStore,
    Progress,
    S3Blobs,
    alias_document,
    alias_key,
    atomic_write,
    utc_now,
)

ALIAS_HISTORY = 50
_CHUNK = 1024 * 1024


# --- describing a model ---------------------------------------------------------------------


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
    import onnx

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
        external = [safe_relative(rel) for rel in external]
    except ValueError as exc:
        raise InvalidInputError(f"{model_path}: {exc}") from exc
    paths = [model_path] + [model_path.parent / rel for rel in external] + list(extra_files)
    files = tuple(
        FileEntry(
            path=safe_relative(path.relative_to(model_path.parent).as_posix()),
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
        created_at=utc_now(),
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


# --- writable blobs -------------------------------------------------------------------------


class S3WritableBlobs(S3Blobs):
    """S3 blobs that can also be written, optionally encrypted with a KMS key (SSE-KMS).

    Without a key the bucket's default encryption applies (the stack's bucket: SSE-KMS).
    """

    def __init__(
        self, client: Any, bucket: str, prefix: str, *, kms_key_id: str | None = None
    ) -> None:
        super().__init__(client, bucket, prefix)
        self.sse: dict[str, str] = (
            {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id} if kms_key_id else {}
        )

    def write(
        self, key: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None
    ) -> None:
        # S3 conditional writes: IfNoneMatch="*" creates only; IfMatch=ETag replaces only the
        # object we read. Either failing is a 412, mapped to VersionConflictError.
        extra: dict[str, str] = dict(self.sse)
        if if_absent:
            extra["IfNoneMatch"] = "*"
        if if_match is not None:
            extra["IfMatch"] = if_match
        self.put_json(key, data, **extra)

    def upload(self, path: Path, key: str, progress: Progress | None = None) -> None:
        # upload_file switches to multipart for large files and retries parts by itself; it
        # wraps S3's answer in S3UploadFailedError, whose text carries the error code.
        from boto3.exceptions import S3UploadFailedError

        try:
            with self._errors(key):
                self._client.upload_file(
                    str(path),
                    self._bucket,
                    self._key(key),
                    ExtraArgs=self.sse or None,
                    Callback=progress,
                )
        except S3UploadFailedError as exc:
            if "NoSuchBucket" in str(exc):
                raise StoreUnavailableError(
                    f"bucket {self._bucket!r} does not exist; create it or fix the store URI",
                    code="store_bucket_missing",
                ) from exc
            raise StoreUnavailableError(
                f"upload to s3://{self._bucket}/{self._key(key)} failed: {exc}"
            ) from exc


class FileWritableBlobs(FileBlobs):
    """Directory blobs that can also be written, with the local twins of S3's conditions."""

    def write(
        self, key: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None
    ) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if if_match is not None:
            self.replace(key, data, if_match=if_match)
            return
        if if_absent:
            try:
                with path.open("xb") as handle:  # O_EXCL: the local twin of IfNoneMatch
                    handle.write(data)
            except FileExistsError as exc:
                raise VersionConflictError(f"{path} already exists and is immutable") from exc
            return
        atomic_write(path, data)

    def upload(self, path: Path, key: str, progress: Progress | None = None) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with path.open("rb") as src, dest.open("wb") as out:
            while chunk := src.read(_CHUNK):
                out.write(chunk)
                if progress:
                    progress(len(chunk))


# --- the registry ---------------------------------------------------------------------------


class Registry(ModelStore):
    """A model store that also publishes versions and moves aliases.

    ``Registry.from_uri(uri, cache_dir=..., s3_client=..., kms_key_id=...)`` opens one; with
    ``kms_key_id`` what it writes to S3 is encrypted with that KMS key (SSE-KMS).
    """

    s3_blobs = S3WritableBlobs
    file_blobs = FileWritableBlobs
    blobs: S3WritableBlobs | FileWritableBlobs

    def publish(
        self, manifest: Manifest, source_dir: Path, progress: Progress | None = None
    ) -> None:
        """Upload a version's files, then its manifest (refused if the version exists).

        Every file is checked against the manifest before anything is uploaded.

        Raises:
            VersionConflictError: The version is already published.
            IntegrityError: A local file does not match the manifest.
        """
        # What the function will read back must parse: names, versions and limits checked by
        # the same code that reads the store, before anything is written.
        Manifest.from_json(manifest.to_json())
        prefix = f"models/{manifest.name}/{manifest.version}"
        if self.blobs.exists(f"{prefix}/{MANIFEST_NAME}"):
            raise VersionConflictError(
                f"{manifest.name} version {manifest.version} is already published in {self.uri}; "
                "versions are immutable: publish a new version"
            )
        verify_folder(source_dir, manifest, fix="describe the model again (it changed since)")
        for entry in manifest.files:
            self.blobs.upload(source_dir / entry.path, f"{prefix}/{entry.path}", progress)
        self.blobs.write(f"{prefix}/{MANIFEST_NAME}", manifest.to_json(), if_absent=True)

    def _write_alias(self, record: AliasRecord, etag: str | None) -> None:
        try:
            self.blobs.write(
                alias_key(record.name, record.alias),
                alias_document(record),
                if_absent=etag is None,
                if_match=etag,
            )
        except VersionConflictError as exc:
            raise AliasConflictError(
                f"alias {record.name}@{record.alias} was moved by someone else meanwhile; "
                "look at `onnxkit models list` and retry"
            ) from exc

    def set_alias(self, name: str, alias: str, version: str) -> AliasRecord:
        """Point an alias at a published version, keeping the previous targets as history.

        The write is conditional on the alias being unchanged since it was read, so two
        concurrent promotions cannot silently overwrite each other. Refused while a canary
        runs on the alias (finish or roll it back first).

        Raises:
            ModelNotFoundError: The version is not published.
            AliasConflictError: The alias moved concurrently, or a canary runs on it.
        """
        self.get_manifest(name, version)  # refuse to point at nothing
        previous, etag = self._read_alias(name, alias)
        history: list[dict[str, str]] = []
        if previous is not None:
            _refuse_while_canary(previous, f"promote {version}")
            history = [{"version": previous.version, "updated_at": previous.updated_at}]
            history += list(previous.history)
        record = AliasRecord(
            name=name,
            alias=alias,
            version=version,
            updated_at=utc_now(),
            history=tuple(history[:ALIAS_HISTORY]),
        )
        self._write_alias(record, etag)
        return record

    def set_canary(self, name: str, alias: str, version: str, weight: int) -> AliasRecord:
        """Serve ``version`` to ``weight`` percent of an alias's requests, beside its stable one.

        Setting the running canary's version again changes its weight. Conditional on the
        alias being unchanged since it was read, like :meth:`set_alias`.

        Raises:
            InvalidInputError: The weight is not 1-99, or the version is the stable one.
            ModelNotFoundError: The version is not published, or the alias is not set.
            AliasConflictError: Another canary runs, or the alias moved concurrently.
        """
        if not 1 <= weight <= 99:
            raise InvalidInputError(f"a canary weight is a percent from 1 to 99, not {weight}")
        self.get_manifest(name, version)
        current, etag = self._read_alias(name, alias)
        if current is None:
            raise ModelNotFoundError(
                f"model {name!r} has no alias {alias!r} in {self.uri}; promote a stable "
                "version first (a canary runs beside one)"
            )
        if version == current.version:
            raise InvalidInputError(
                f"{name}@{alias} already serves version {version} as its stable version"
            )
        if current.canary_version not in (None, version):
            raise AliasConflictError(
                f"{name}@{alias} already runs canary {current.canary_version} "
                f"({current.canary_weight}%); finish it (promote --finish) or roll it back first",
                code="canary_running",
            )
        record = replace(
            current, updated_at=utc_now(), canary_version=version, canary_weight=weight
        )
        if current.canary_version is None:
            record = replace(record, aborted=None)  # a new canary: the last abort is history
        self._write_alias(record, etag)
        return record

    def finish_canary(self, name: str, alias: str) -> AliasRecord:
        """Make an alias's canary its stable version (the old stable goes into the history).

        Raises:
            ModelNotFoundError: The alias is not set, or runs no canary.
            AliasConflictError: The alias moved concurrently.
        """
        current, etag = self._read_canary(name, alias)
        assert current.canary_version is not None
        history = [{"version": current.version, "updated_at": current.updated_at}]
        record = AliasRecord(
            name=name,
            alias=alias,
            version=current.canary_version,
            updated_at=utc_now(),
            history=tuple([*history, *current.history][:ALIAS_HISTORY]),
        )
        self._write_alias(record, etag)
        return record

    def rollback_alias(self, name: str, alias: str) -> AliasRecord:
        """Drop an alias's running canary; without one, point it back at its previous version.

        Dropping a canary leaves the stable version as it is and records the drop in
        ``aborted``. Otherwise the current target is dropped from the history, so rolling
        back twice walks further back rather than toggling.

        Raises:
            ModelNotFoundError: The alias is not set or has no earlier version.
            AliasConflictError: The alias moved concurrently.
        """
        current, etag = self._read_alias(name, alias)
        if current is None:
            raise ModelNotFoundError(f"model {name!r} has no alias {alias!r} in {self.uri}")
        if current.canary_version is not None:
            now = utc_now()
            record = replace(
                current,
                updated_at=now,
                canary_version=None,
                canary_weight=0,
                aborted={
                    "version": current.canary_version,
                    "reason": "rolled back by hand",
                    "at": now,
                },
            )
            self._write_alias(record, etag)
            return record
        if not current.history:
            raise ModelNotFoundError(
                f"{name}@{alias} has no earlier version to roll back to (it has only pointed "
                f"at {current.version})"
            )
        target = current.history[0]["version"]
        self.get_manifest(name, target)
        record = AliasRecord(
            name=name,
            alias=alias,
            version=target,
            updated_at=utc_now(),
            history=current.history[1:],
            aborted=current.aborted,
        )
        self._write_alias(record, etag)
        return record

    def _read_canary(self, name: str, alias: str) -> tuple[AliasRecord, str]:
        current, etag = self._read_alias(name, alias)
        if current is None or etag is None:
            raise ModelNotFoundError(f"model {name!r} has no alias {alias!r} in {self.uri}")
        if current.canary_version is None:
            raise ModelNotFoundError(
                f"{name}@{alias} runs no canary (it serves {current.version}); "
                "start one with promote VERSION --canary PERCENT",
                code="no_canary",
            )
        return current, etag


def _refuse_while_canary(current: AliasRecord, action: str) -> None:
    if current.canary_version is not None:
        raise AliasConflictError(
            f"{current.name}@{current.alias} runs canary {current.canary_version} "
            f"({current.canary_weight}%); finish it (promote --finish) or roll it back before "
            f"you {action}",
            code="canary_running",
        )


# --- publishing a model file ----------------------------------------------------------------


def next_version(store: ModelStore, name: str) -> str:
    """One more than the largest integer version published (``1`` for a new model)."""
    numbers = [int(v) for v in store.list_versions(name) if v.isdigit()]
    return str(max(numbers, default=0) + 1)


def publish_model(
    store: Registry,
    model_path: Path,
    *,
    name: str,
    version: str | None = None,
    alias: str | None = None,
    backend: str = "lambda",
    report_path: Path | None = None,
    conversion_path: Path | None = None,
    progress: Progress | None = None,
    cpu_graph: bool = True,
    on_upload_size: Callable[[int], object] | None = None,
    processing: ProcessingOptions | None = None,
) -> Manifest:
    """Describe, checksum and upload a model; then point ``alias`` at it.

    Args:
        store: Where to publish.
        model_path: The ``.onnx`` file (external data files beside it are included).
        name: Model name.
        version: Explicit version; default the next integer.
        alias: An alias to move to the new version (``prod``).
        backend: ``lambda`` or ``sagemaker``.
        report_path: A quantization report (JSON) to record in the manifest.
        conversion_path: A conversion report (``onnxkit convert``'s ``.conversion.json``) to
            record in the manifest.
        progress: Byte-count callback for a progress bar.
        cpu_graph: Also publish the CPU twin (:mod:`onnxkit_tools.cpu_graph`) of a
            single-file model that runs in the function, so cold starts skip the graph
            optimizations.
        on_upload_size: Called with the bytes to upload (the twin included) before the upload
            starts (a progress bar's total).
        processing: Processing to declare with the version (a tokenizer, an image
            preprocessing, labels); its files are stored and checksummed with the graph.

    Returns:
        The published manifest.

    Raises:
        VersionConflictError: The version exists already.
        ProcessingOptionError: The processing does not fit the model or its files.
    """
    quantization: dict[str, Any] | None = None
    if report_path is not None:
        report = json.loads(report_path.read_text())
        quantization = {**report.get("quantization", {}), "report": report}
    manifest = describe_model(
        model_path,
        name=name,
        version=version or next_version(store, name),
        quantization=quantization,
        backend=backend,
    )
    if conversion_path is not None:
        manifest = replace(manifest, conversion=json.loads(conversion_path.read_text()))
    declared = None
    if processing is not None:
        from onnxkit_tools.processing import declare_processing

        declared = declare_processing(processing, manifest)
    with tempfile.TemporaryDirectory(prefix="onnxkit-publish-") as staging:
        source_dir = model_path.parent
        if cpu_graph and _wants_cpu_graph(manifest):
            manifest, source_dir = _with_cpu_graph(manifest, model_path, Path(staging))
        if declared is not None:
            manifest, source_dir = _with_processing(manifest, source_dir, Path(staging), *declared)
        if on_upload_size is not None:
            on_upload_size(manifest.stored_size)
        store.publish(manifest, source_dir, progress)
    if alias:
        store.set_alias(name, alias, manifest.version)
    return manifest


def _wants_cpu_graph(manifest: Manifest) -> bool:
    from onnxkit.sources import IN_MEMORY_MAX_BYTES

    # Only what a CPU function reads into memory: one file, not routed to SageMaker/GPU.
    return (
        len(manifest.files) == 1
        and manifest.backend == "lambda"
        and not manifest.metadata.get("gpu")
        and manifest.model_file.size <= IN_MEMORY_MAX_BYTES
    )


def _with_cpu_graph(manifest: Manifest, model_path: Path, staging: Path) -> tuple[Manifest, Path]:
    """The manifest with the CPU twin added, and a folder holding every file to upload (the
    original linked, the twin written there: the user's folder is left as it was)."""
    from onnxkit_tools.cpu_graph import build_cpu_graph, twin_path

    (staging / model_path.name).symlink_to(model_path.resolve())
    twin = twin_path(staging / model_path.name)
    record = build_cpu_graph(model_path, twin, manifest.inputs)
    if record is None:
        return manifest, model_path.parent
    entry = FileEntry(path=twin.name, sha256=sha256_file(twin), size=twin.stat().st_size)
    return replace(manifest, files=(*manifest.files, entry), cpu_graph=record), staging


def _with_processing(
    manifest: Manifest,
    source_dir: Path,
    staging: Path,
    processing: Processing,
    files: dict[str, Path],
) -> tuple[Manifest, Path]:
    """The manifest with the processing declared and its files listed, and a staging folder
    holding every file to upload under its stored name (links: nothing is copied)."""
    from onnxkit_tools.processing import ProcessingOptionError

    for entry in manifest.files:
        staged = staging / entry.path
        if not staged.exists():
            staged.parent.mkdir(parents=True, exist_ok=True)
            staged.symlink_to((source_dir / entry.path).resolve())
    taken = {entry.path for entry in manifest.files}
    entries = []
    for stored, local in files.items():
        if stored in taken:
            raise ProcessingOptionError(
                f"the model already has a file named {stored}; rename it before publishing"
            )
        (staging / stored).symlink_to(local.resolve())
        entries.append(FileEntry(stored, sha256_file(local), local.stat().st_size))
    manifest = replace(manifest, files=(*manifest.files, *entries), processing=processing.to_dict())
    return manifest, staging


def write_manifest(
    model_path: Path,
    *,
    name: str,
    version: str = "local",
    quantization: dict[str, Any] | None = None,
) -> Manifest:
    """Describe a local model and write its ``manifest.json`` beside it.

    The folder can then be served as is, verified and under ``name``
    (``onnxkit local start-endpoint --model-dir``, or SageMaker's /opt/ml/model).
    """
    manifest = describe_model(model_path, name=name, version=version, quantization=quantization)
    (model_path.parent / MANIFEST_NAME).write_bytes(manifest.to_json())
    return manifest


def resolve_ref(store: ModelStore, ref: str) -> Manifest:
    """``NAME``, ``NAME@VERSION`` or ``NAME@ALIAS`` (default alias ``prod``) -> its manifest.

    Raises:
        ModelNotFoundError: No such model, version or alias.
    """
    name, _, target = ref.partition("@")
    target = target or "prod"
    if target in store.list_versions(name):
        return store.get_manifest(name, target)
    return store.resolve(name, alias=target)


def pull(
    store: ModelStore, manifest: Manifest, out: Path, progress: Progress | None = None
) -> None:
    """Download a version into ``out``, verified, with its ``manifest.json`` beside the files.

    The files are fetched into a temporary folder beside ``out`` (same file system), checked
    against the manifest while they stream, then moved into place: large models are written
    once, and ``out`` never holds a half-downloaded version.

    Raises:
        IntegrityError: A file differs from the manifest.
        StoreUnavailableError: The store cannot be read.
    """
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as scratch:
        staging = ModelStore(store.blobs, scratch)
        folder = staging.fetch(manifest, progress)
        if out.exists():
            shutil.rmtree(out)
        for entry in manifest.files:
            (out / entry.path).parent.mkdir(parents=True, exist_ok=True)
            os.replace(folder / entry.path, out / entry.path)
    (out / MANIFEST_NAME).write_bytes(manifest.to_json())
