"""The model store: publish versions, move aliases, download verified copies into a cache.

Layout under the store's root (``s3://bucket/prefix`` or ``file:///dir``)::

    models/{name}/{version}/manifest.json      written last: its presence means "published"
    models/{name}/{version}/{file}             every file the manifest lists
    models/{name}/_aliases/{alias}.json        {"version": ..., "history": [...]}

Downloads land in ``{cache_dir}/{name}/{version}/{digest}/`` through a temporary name, are
checked against the manifest's size and sha256 while they stream, and are renamed into
place only when they match. A ``.complete`` marker written last lets later invocations
(or a re-initialised process on a warm /tmp) reuse the copy without fetching it again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from onnxkit.errors import (
    AliasConflictError,
    CacheFullError,
    IntegrityError,
    ModelNotFoundError,
    OnnxkitError,
    StoreUnavailableError,
    VersionConflictError,
)
from onnxkit.manifest import Manifest, sha256_file

MANIFEST_NAME = "manifest.json"
ALIASES_DIR = "_aliases"
_COMPLETE_MARKER = ".complete"
_CHUNK = 1024 * 1024
_ALIAS_HISTORY = 50

Progress = Callable[[int], None]
"""Called with the number of bytes just moved (for progress bars)."""


class Blobs(Protocol):
    """Byte storage under one root: the part of the store that differs between S3 and disk."""

    uri: str

    def read(self, key: str) -> bytes:
        """The whole object. Raises ModelNotFoundError if absent."""
        ...

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        """The whole object and a token (ETag) for a later conditional write."""
        ...

    def stream(self, key: str) -> Iterator[bytes]:
        """The object in chunks. Raises ModelNotFoundError if absent."""
        ...

    def write(
        self, key: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None
    ) -> None:
        """Store bytes, optionally only if absent or only if unchanged since ``read_versioned``.

        Raises:
            VersionConflictError: The condition did not hold.
        """
        ...

    def upload(self, path: Path, key: str, progress: Progress | None = None) -> None:
        """Store a local file."""
        ...

    def exists(self, key: str) -> bool:
        """Whether the key exists."""
        ...

    def list_children(self, prefix: str) -> list[str]:
        """Names one level below ``prefix`` (a "directory" listing)."""
        ...


# --- S3 -------------------------------------------------------------------------------------


class S3Blobs:
    """Blobs in an S3 bucket under a prefix. The boto3 client is passed in, never made here."""

    def __init__(
        self, client: Any, bucket: str, prefix: str, *, kms_key_id: str | None = None
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        # Without a key the bucket's default encryption applies (the stack's bucket: SSE-KMS).
        self._sse: dict[str, str] = (
            {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id} if kms_key_id else {}
        )
        self.uri = f"s3://{bucket}/{self._prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    def read(self, key: str) -> bytes:
        return self.read_versioned(key)[0]

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        with self._errors(key):
            reply = self._client.get_object(Bucket=self._bucket, Key=self._key(key))
            return bytes(reply["Body"].read()), str(reply["ETag"])

    def stream(self, key: str) -> Iterator[bytes]:
        with self._errors(key):
            body = self._client.get_object(Bucket=self._bucket, Key=self._key(key))["Body"]
            try:
                yield from body.iter_chunks(_CHUNK)
            finally:
                body.close()

    def write(
        self, key: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None
    ) -> None:
        # S3 conditional writes: IfNoneMatch="*" creates only; IfMatch=ETag replaces only the
        # object we read. Either failing is a 412, mapped to VersionConflictError.
        extra: dict[str, str] = dict(self._sse)
        if if_absent:
            extra["IfNoneMatch"] = "*"
        if if_match is not None:
            extra["IfMatch"] = if_match
        with self._errors(key):
            self._client.put_object(
                Bucket=self._bucket,
                Key=self._key(key),
                Body=data,
                ContentType="application/json",
                **extra,
            )

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
                    ExtraArgs=self._sse or None,
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

    def exists(self, key: str) -> bool:
        try:
            with self._errors(key):
                self._client.head_object(Bucket=self._bucket, Key=self._key(key))
        except ModelNotFoundError:
            return False
        return True

    def list_children(self, prefix: str) -> list[str]:
        full = self._key(prefix).rstrip("/") + "/"
        names: list[str] = []
        with self._errors(prefix):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self._bucket, Prefix=full, Delimiter="/"):
                names += [
                    p["Prefix"][len(full) :].rstrip("/") for p in page.get("CommonPrefixes", [])
                ]
                names += [o["Key"][len(full) :] for o in page.get("Contents", [])]
        return sorted(names)

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Translate botocore failures into the onnxkit error tree."""
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"s3://{self._bucket}/{self._key(key)}"
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ModelNotFoundError(f"{where} does not exist") from exc
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
                raise VersionConflictError(f"{where} already exists and is immutable") from exc
            if code == "NoSuchBucket":
                raise StoreUnavailableError(
                    f"bucket {self._bucket!r} does not exist; check ONNXKIT_MODEL_STORE",
                    code="store_bucket_missing",
                ) from exc
            if code in ("AccessDenied", "403", "Forbidden"):
                raise StoreUnavailableError(
                    f"access denied to {where}: the object is missing or this role may not read it",
                    code="store_access_denied",
                ) from exc
            if code in ("SlowDown", "Throttling", "503", "ServiceUnavailable", "InternalError"):
                raise StoreUnavailableError(
                    f"S3 is throttling or unavailable for {where} ({code}); retry shortly"
                ) from exc
            raise StoreUnavailableError(f"S3 error {code or status} on {where}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailableError(
                f"cannot reach S3 for {where}: {type(exc).__name__}"
            ) from exc


# --- local directory ------------------------------------------------------------------------


class FileBlobs:
    """Blobs in a local directory (``file:///dir``), for development and tests."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self.uri = f"file://{root}"

    def _path(self, key: str) -> Path:
        return self._root / key

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ModelNotFoundError(f"{self._path(key)} does not exist") from exc

    def stream(self, key: str) -> Iterator[bytes]:
        try:
            handle = self._path(key).open("rb")
        except FileNotFoundError as exc:
            raise ModelNotFoundError(f"{self._path(key)} does not exist") from exc
        with handle:
            while chunk := handle.read(_CHUNK):
                yield chunk

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        data = self.read(key)
        return data, hashlib.sha256(data).hexdigest()

    def write(
        self, key: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None
    ) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if if_match is not None:
            # The local twin of S3's IfMatch: compare and replace under an exclusive lock.
            with (path.parent / ".lock").open("w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    current = hashlib.sha256(path.read_bytes()).hexdigest()
                except FileNotFoundError:
                    current = None
                if current != if_match:
                    raise VersionConflictError(f"{path} changed since it was read")
                _atomic_write(path, data)
            return
        if if_absent:
            try:
                with path.open("xb") as handle:  # O_EXCL: the local twin of IfNoneMatch
                    handle.write(data)
            except FileExistsError as exc:
                raise VersionConflictError(f"{path} already exists and is immutable") from exc
            return
        _atomic_write(path, data)

    def upload(self, path: Path, key: str, progress: Progress | None = None) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with path.open("rb") as src, dest.open("wb") as out:
            while chunk := src.read(_CHUNK):
                out.write(chunk)
                if progress:
                    progress(len(chunk))

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list_children(self, prefix: str) -> list[str]:
        folder = self._path(prefix)
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --- the store ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AliasRecord:
    """Where an alias points now, and where it pointed before (newest first)."""

    name: str
    alias: str
    version: str
    updated_at: str
    history: tuple[dict[str, str], ...] = ()


class ModelStore:
    """Versions, aliases and a verified local cache over :class:`Blobs`."""

    def __init__(self, blobs: Blobs, cache_dir: Path | str) -> None:
        self.blobs = blobs
        self.cache_dir = Path(cache_dir)

    @property
    def uri(self) -> str:
        """Where the store lives."""
        return self.blobs.uri

    @classmethod
    def from_uri(
        cls,
        uri: str,
        *,
        cache_dir: Path | str,
        s3_client: Any = None,
        kms_key_id: str | None = None,
    ) -> ModelStore:
        """Open ``s3://bucket/prefix`` (with a boto3 S3 client) or ``file:///dir``.

        ``kms_key_id`` encrypts what this store writes to S3 with that KMS key (SSE-KMS);
        without it the bucket's default encryption applies.

        Raises:
            ValueError: Unknown scheme, or an S3 URI without a client.
        """
        parsed = urlparse(uri)
        if parsed.scheme == "s3":
            if s3_client is None:
                raise ValueError("an s3:// store needs an S3 client")
            blobs = S3Blobs(s3_client, parsed.netloc, parsed.path, kms_key_id=kms_key_id)
            return cls(blobs, cache_dir)
        if parsed.scheme == "file":
            return cls(FileBlobs(Path(parsed.netloc + parsed.path)), cache_dir)
        raise ValueError(f"model store must be s3://bucket/prefix or file:///dir, not {uri!r}")

    # -- reading ---------------------------------------------------------------------------

    def get_manifest(self, name: str, version: str) -> Manifest:
        """The manifest of one version.

        Raises:
            ModelNotFoundError: No such version.
            IntegrityError: The manifest is malformed or names another model/version.
        """
        try:
            raw = self.blobs.read(f"models/{name}/{version}/{MANIFEST_NAME}")
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r} in {self.uri}"
            ) from exc
        manifest = Manifest.from_json(raw)
        if (manifest.name, manifest.version) != (name, version):
            raise IntegrityError(
                f"manifest at {name}/{version} describes {manifest.name}/{manifest.version}"
            )
        return manifest

    def get_alias(self, name: str, alias: str) -> AliasRecord:
        """Read an alias.

        Raises:
            ModelNotFoundError: The alias is not set.
        """
        record, _ = self._read_alias(name, alias)
        if record is None:
            raise ModelNotFoundError(
                f"model {name!r} has no alias {alias!r} in {self.uri}; "
                f"publish a version with --alias {alias}"
            )
        return record

    def resolve(self, name: str, *, version: str | None = None, alias: str = "prod") -> Manifest:
        """The manifest for an explicit version, else for the version an alias points to."""
        if version is None:
            version = self.get_alias(name, alias).version
        return self.get_manifest(name, version)

    def list_models(self) -> list[str]:
        """Model names in the store."""
        return self.blobs.list_children("models")

    def list_versions(self, name: str) -> list[str]:
        """Published versions of a model (those with a manifest)."""
        return [
            child
            for child in self.blobs.list_children(f"models/{name}")
            if child != ALIASES_DIR and self.blobs.exists(f"models/{name}/{child}/{MANIFEST_NAME}")
        ]

    # -- the cache -------------------------------------------------------------------------

    def local_dir(self, manifest: Manifest) -> Path:
        """Where a manifest's files live in the cache (one folder per manifest digest)."""
        digest = hashlib.sha256(manifest.to_json()).hexdigest()[:16]
        return self.cache_dir / manifest.name / manifest.version / digest

    def fetch(self, manifest: Manifest, progress: Progress | None = None) -> Path:
        """Make a verified local copy of every file; reuse one already verified.

        Returns:
            The folder holding the files; ``folder / manifest.model_file.path`` is the graph.

        Raises:
            IntegrityError: A file's size or sha256 differs from the manifest.
            CacheFullError: Not enough room in the cache.
            StoreUnavailableError: The store cannot be read.
        """
        folder = self.local_dir(manifest)
        if self._is_complete(folder, manifest):
            return folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(folder).free
            missing = sum(f.size for f in manifest.files if not _has_size(folder / f.path, f.size))
            if missing > free:
                raise CacheFullError(
                    f"{manifest.name}/{manifest.version} needs {missing} bytes but only {free} "
                    f"are free in {self.cache_dir}; raise the function's ephemeral storage"
                )
            for entry in manifest.files:
                dest = folder / entry.path
                if not _has_size(dest, entry.size):
                    self._download(manifest, entry.path, entry.sha256, entry.size, dest, progress)
            (folder / _COMPLETE_MARKER).write_text(manifest.to_json().decode())
        except OnnxkitError:
            raise
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise CacheFullError(
                    f"ran out of space in {self.cache_dir} while fetching "
                    f"{manifest.name}/{manifest.version}; raise the function's ephemeral storage"
                ) from exc
            raise StoreUnavailableError(f"cannot write the cache {self.cache_dir}: {exc}") from exc
        return folder

    def _is_complete(self, folder: Path, manifest: Manifest) -> bool:
        marker = folder / _COMPLETE_MARKER
        try:
            if marker.read_text() != manifest.to_json().decode():
                return False
        except OSError:
            return False
        return all(_has_size(folder / f.path, f.size) for f in manifest.files)

    def _download(
        self,
        manifest: Manifest,
        path: str,
        sha256: str,
        size: int,
        dest: Path,
        progress: Progress | None,
    ) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".partial-")
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            written = 0
            with os.fdopen(fd, "wb") as out:
                for chunk in self.blobs.stream(f"models/{manifest.name}/{manifest.version}/{path}"):
                    written += len(chunk)
                    if written > size:  # a bigger object can only be wrong: stop reading it
                        break
                    digest.update(chunk)
                    out.write(chunk)
                    if progress:
                        progress(len(chunk))
            if written != size or digest.hexdigest() != sha256:
                raise IntegrityError(
                    f"{manifest.name}/{manifest.version}/{path} does not match its manifest "
                    f"(expected {size} bytes sha256 {sha256[:12]}…, got "
                    f"{'more than ' if written > size else ''}{written} bytes"
                    f"{'' if written > size else ' sha256 ' + digest.hexdigest()[:12] + '…'}); "
                    "republish the version or repair the object"
                )
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    def evict(self, keep: Path | None = None) -> None:
        """Drop every cached copy except ``keep`` (frees /tmp for a new version)."""
        if not self.cache_dir.is_dir():
            return
        for model_dir in self.cache_dir.iterdir():
            for version_dir in model_dir.iterdir() if model_dir.is_dir() else ():
                for digest_dir in version_dir.iterdir() if version_dir.is_dir() else ():
                    if keep is None or digest_dir.resolve() != keep.resolve():
                        shutil.rmtree(digest_dir, ignore_errors=True)

    # -- writing ---------------------------------------------------------------------------

    def publish(
        self, manifest: Manifest, source_dir: Path, progress: Progress | None = None
    ) -> None:
        """Upload a version's files, then its manifest (refused if the version exists).

        Every file is checked against the manifest before anything is uploaded.

        Raises:
            VersionConflictError: The version is already published.
            IntegrityError: A local file does not match the manifest.
        """
        prefix = f"models/{manifest.name}/{manifest.version}"
        if self.blobs.exists(f"{prefix}/{MANIFEST_NAME}"):
            raise VersionConflictError(
                f"{manifest.name} version {manifest.version} is already published in {self.uri}; "
                "versions are immutable: publish a new version"
            )
        for entry in manifest.files:
            local = source_dir / entry.path
            if not _has_size(local, entry.size) or sha256_file(local) != entry.sha256:
                raise IntegrityError(f"{local} changed since its manifest was made")
        for entry in manifest.files:
            self.blobs.upload(source_dir / entry.path, f"{prefix}/{entry.path}", progress)
        self.blobs.write(f"{prefix}/{MANIFEST_NAME}", manifest.to_json(), if_absent=True)

    def _read_alias(self, name: str, alias: str) -> tuple[AliasRecord | None, str | None]:
        """The alias and its ETag, or (None, None) when it is not set."""
        try:
            raw, etag = self.blobs.read_versioned(f"models/{name}/{ALIASES_DIR}/{alias}.json")
        except ModelNotFoundError:
            return None, None
        return _parse_alias(name, alias, raw), etag

    def _write_alias(self, record: AliasRecord, etag: str | None) -> None:
        body = {
            "name": record.name,
            "alias": record.alias,
            "version": record.version,
            "updated_at": record.updated_at,
            "history": list(record.history),
        }
        try:
            self.blobs.write(
                f"models/{record.name}/{ALIASES_DIR}/{record.alias}.json",
                json.dumps(body, indent=2).encode() + b"\n",
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
        concurrent promotions cannot silently overwrite each other.

        Raises:
            ModelNotFoundError: The version is not published.
            AliasConflictError: The alias moved concurrently.
        """
        self.get_manifest(name, version)  # refuse to point at nothing
        previous, etag = self._read_alias(name, alias)
        history: list[dict[str, str]] = []
        if previous is not None:
            history = [{"version": previous.version, "updated_at": previous.updated_at}]
            history += list(previous.history)
        record = AliasRecord(
            name=name,
            alias=alias,
            version=version,
            updated_at=_now(),
            history=tuple(history[:_ALIAS_HISTORY]),
        )
        self._write_alias(record, etag)
        return record

    def rollback_alias(self, name: str, alias: str) -> AliasRecord:
        """Point an alias back at the version it had before its last move.

        The current target is dropped from the history, so rolling back twice walks further
        back rather than toggling.

        Raises:
            ModelNotFoundError: The alias is not set or has no earlier version.
            AliasConflictError: The alias moved concurrently.
        """
        current, etag = self._read_alias(name, alias)
        if current is None:
            raise ModelNotFoundError(f"model {name!r} has no alias {alias!r} in {self.uri}")
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
            updated_at=_now(),
            history=current.history[1:],
        )
        self._write_alias(record, etag)
        return record

    def list_aliases(self, name: str) -> dict[str, str]:
        """Alias -> version for one model."""
        return {
            child.removesuffix(".json"): self.get_alias(name, child.removesuffix(".json")).version
            for child in self.blobs.list_children(f"models/{name}/{ALIASES_DIR}")
            if child.endswith(".json")
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _parse_alias(name: str, alias: str, raw: bytes) -> AliasRecord:
    try:
        data = json.loads(raw)
        return AliasRecord(
            name=name,
            alias=alias,
            version=str(data["version"]),
            updated_at=str(data.get("updated_at", "")),
            history=tuple({**h, "version": str(h["version"])} for h in data.get("history", ())),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"alias {name}@{alias} is not valid JSON: {exc}") from exc


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False
