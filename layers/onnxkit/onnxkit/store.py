"""The model store's read side: resolve aliases and versions, download verified copies.

Publishing and moving aliases are tooling (``onnxkit_tools.registry``); a function or the
endpoint container only reads, except for one conditional write: aborting a failing canary
(``onnxkit.canary.abort_canary``, through :meth:`S3Blobs.replace`).

Layout under the store's root (``s3://bucket/prefix`` or ``file:///dir``)::

    models/{name}/{version}/manifest.json      written last: its presence means "published"
    models/{name}/{version}/{file}             every file the manifest lists
    models/{name}/_aliases/{alias}.json        {"version": ..., "history": [...],
                                                "canary": {"version", "weight"} | null,
                                                "aborted": {"version", "reason", "at"}}

Every download is checked against the manifest's size and sha256 while it streams (a
:class:`VerifyingSink` hashes each part as it arrives, in order). Files at or above the
store's parallel threshold come down as parallel ranged GETs (boto3's transfer manager).
A small single-file model can be read straight into memory (:meth:`ModelStore.read_model`),
so the function's cold start builds its session from the bytes; :meth:`ModelStore.keep_copy`
then writes them to the cache off the critical path. Cached copies live in
``{cache_dir}/{name}/{version}/{digest}/``, written through a temporary name and renamed into
place only when they match; a ``{digest}.complete`` marker beside the folder, written last,
lets a later load (an alias refresh, a re-initialised process on a warm /tmp) reuse the copy
without fetching it again. The folder holds the manifest's files and nothing else, so a graph
loaded from it can read no other file as external data.

The cache is not trusted either: its root is private to the process's user (made 0700, refused
when other users may write to it), names and versions are checked (:mod:`onnxkit.names`) and
every path is checked to resolve inside it, a symlink or a foreign file where a folder of ours
should be is removed, and a copy is hashed again before it is reused (once per process: a
file this process verified keeps its identity, inode, size and mtime, until it changes).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Protocol, Self
from urllib.parse import urlparse

from onnxkit.errors import (
    CacheError,
    CacheFullError,
    IntegrityError,
    ModelNotFoundError,
    OnnxkitError,
    StoreUnavailableError,
    VersionConflictError,
)
from onnxkit.manifest import FileEntry, Manifest, sha256_file, verify_file
from onnxkit.names import NAME_RULE, check_name, inside, is_name
from onnxkit.phases import Phases
from onnxkit.settings import ENV_CACHE_DIR, ENV_S3_READ_TIMEOUT

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
ALIASES_DIR = "_aliases"
_COMPLETE_SUFFIX = ".complete"
MAX_DOCUMENT_BYTES = 1024 * 1024
"""A manifest or an alias document past this is refused by its size, before its body is read:
a manifest lists a version's files and signature, an alias a few versions (a real MiniLM
manifest, tokenizer declaration included, is about 5 kB)."""
MAX_ALIAS_HISTORY = 1000
_CHUNK = 1024 * 1024
PARALLEL_PART_BYTES = 16 * 1024 * 1024
"""Part size of parallel ranged GETs (AWS suggests 8-16 MB parts for throughput)."""

Progress = Callable[[int], object]
"""Called with the number of bytes just moved (for progress bars)."""


class VerifyingSink:
    """Receives one file's bytes in order and hashes them as they arrive.

    It keeps them in memory (``out=None``) or writes them to ``out``. It is not seekable, so
    boto3's transfer manager hands it the parts of a parallel download in order. More bytes
    than the manifest lists stop the transfer at once (a bigger object can only be wrong).
    The sha256 runs in a worker thread, in order (hashlib releases the GIL), so it overlaps
    the transfer instead of pausing it after every part; :meth:`verify` waits for it.

    Args:
        entry: The manifest's entry for the file.
        where: The object's key, for messages.
        out: A file to write to; None keeps the bytes (:attr:`data`).
        progress: Called with each part's length.
    """

    def __init__(
        self,
        entry: FileEntry,
        where: str,
        out: BinaryIO | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.entry = entry
        self.where = where
        self.size = 0
        self._out = out
        self._parts: list[bytes] = []
        self._digest = hashlib.sha256()
        self._hasher: ThreadPoolExecutor | None = None
        self._progress = progress

    def seekable(self) -> bool:
        """No: the transfer manager must write the parts in order."""
        return False

    def write(self, data: bytes) -> int:
        """Hash and keep one part.

        Raises:
            IntegrityError: The object is already longer than the manifest says.
        """
        self.size += len(data)
        if self.size > self.entry.size:
            self._check(sha256=None)  # raises: the size already differs
        data = bytes(data)  # immutable: the hasher reads it after this returns
        if self._hasher is None:
            self._hasher = ThreadPoolExecutor(1, thread_name_prefix="onnxkit-sha256")
        self._hasher.submit(self._digest.update, data)  # one worker: in order
        if self._out is not None:
            self._out.write(data)
        else:
            self._parts.append(data)
        if self._progress:
            self._progress(len(data))
        return len(data)

    def verify(self) -> None:
        """Wait for the hash to catch up, then check the size and digest of everything received.

        Raises:
            IntegrityError: They differ from the manifest.
        """
        self.close()
        self._check(self._digest.hexdigest())

    def close(self) -> None:
        """Finish hashing what was received and stop the worker (also after a failure)."""
        if self._hasher is not None:
            self._hasher.shutdown(wait=True)
            self._hasher = None

    def data(self) -> bytes:
        """The bytes received (kept in memory); the parts are released."""
        data = b"".join(self._parts)
        self._parts = []
        return data

    def _check(self, sha256: str | None) -> None:
        verify_file(
            self.entry,
            size=self.size,
            sha256=sha256,
            where=self.where,
            fix="republish the version or repair the object",
        )


class Blobs(Protocol):
    """Byte storage under one root: the part of the store that differs between S3 and disk."""

    uri: str

    def read(self, key: str, max_bytes: int = ...) -> bytes:
        """The whole object. Raises ModelNotFoundError if absent, IntegrityError when it is
        larger than ``max_bytes`` (told by its size, before its body is read)."""
        ...

    def read_versioned(self, key: str, max_bytes: int = ...) -> tuple[bytes, str]:
        """The whole object and a token (ETag) for a later conditional write."""
        ...

    def download(self, key: str, sink: VerifyingSink) -> None:
        """Write the object's bytes, in order, to ``sink``. Raises ModelNotFoundError if absent."""
        ...

    def exists(self, key: str) -> bool:
        """Whether the key exists."""
        ...

    def list_children(self, prefix: str) -> list[str]:
        """Names one level below ``prefix`` (a "directory" listing)."""
        ...

    def replace(self, key: str, data: bytes, *, if_match: str) -> None:
        """Replace an object only if its token is still ``if_match``.

        Raises VersionConflictError when it changed (S3: 412 Precondition Failed).
        """
        ...


# --- S3 -------------------------------------------------------------------------------------


class S3Blobs:
    """Blobs in an S3 bucket under a prefix. The boto3 client is passed in, never made here.

    Args:
        client: A boto3 S3 client.
        bucket: The bucket.
        prefix: The key prefix of the store.
        parallel_from: Objects of at least this many bytes come down as parallel ranged GETs
            (0: never); smaller ones as one GET, which saves the transfer manager's HEAD.
        max_concurrency: Ranged GETs in flight at once.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        *,
        parallel_from: int = 64 * 1024 * 1024,
        max_concurrency: int = 8,
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        self._parallel_from = parallel_from
        self._max_concurrency = max_concurrency
        self.uri = f"s3://{bucket}/{self._prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    def read(self, key: str, max_bytes: int = MAX_DOCUMENT_BYTES) -> bytes:
        return self.read_versioned(key, max_bytes)[0]

    def read_versioned(self, key: str, max_bytes: int = MAX_DOCUMENT_BYTES) -> tuple[bytes, str]:
        with self._errors(key):
            reply = self._client.get_object(Bucket=self._bucket, Key=self._key(key))
            body = reply["Body"]
            try:
                _check_document_size(key, int(reply.get("ContentLength", 0)), max_bytes)
                data = body.read(max_bytes + 1)  # a wrong ContentLength cannot lift the bound
                _check_document_size(key, len(data), max_bytes)
            finally:
                body.close()
            return bytes(data), str(reply["ETag"])

    def download(self, key: str, sink: VerifyingSink) -> None:
        with self._errors(key):
            if self._parallel_from and sink.entry.size >= self._parallel_from:
                from boto3.s3.transfer import TransferConfig

                config = TransferConfig(
                    multipart_threshold=self._parallel_from,
                    multipart_chunksize=PARALLEL_PART_BYTES,
                    max_concurrency=self._max_concurrency,
                )
                self._client.download_fileobj(self._bucket, self._key(key), sink, Config=config)
                return
            body = self._client.get_object(Bucket=self._bucket, Key=self._key(key))["Body"]
            try:
                for chunk in body.iter_chunks(_CHUNK):
                    sink.write(chunk)
            finally:
                body.close()

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

    def replace(self, key: str, data: bytes, *, if_match: str) -> None:
        # S3's conditional write: replaces only the object we read, else 412 (mapped to
        # VersionConflictError). The bucket's default encryption applies.
        self.put_json(key, data, IfMatch=if_match)

    def put_json(self, key: str, data: bytes, **conditions: str) -> None:
        """PutObject of a JSON document, with S3's conditions/encryption as extra arguments."""
        with self._errors(key):
            self._client.put_object(
                Bucket=self._bucket,
                Key=self._key(key),
                Body=data,
                ContentType="application/json",
                **conditions,
            )

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Translate botocore failures into the onnxkit error tree."""
        from botocore.exceptions import BotoCoreError, ClientError
        from s3transfer.exceptions import RetriesExceededError

        where = f"s3://{self._bucket}/{self._key(key)}"
        try:
            yield
        except RetriesExceededError as exc:  # a ranged, parallel download gave up on a part
            last = exc.last_exception
            raise StoreUnavailableError(
                f"cannot download {where}: {type(last).__name__} on every retry of a part; S3 "
                f"too slow or unreachable (a slow local store may need a longer "
                f"{ENV_S3_READ_TIMEOUT})"
            ) from exc
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

    def read(self, key: str, max_bytes: int = MAX_DOCUMENT_BYTES) -> bytes:
        try:
            with self._path(key).open("rb") as handle:
                _check_document_size(key, os.fstat(handle.fileno()).st_size, max_bytes)
                data = handle.read(max_bytes + 1)
        except FileNotFoundError as exc:
            raise ModelNotFoundError(f"{self._path(key)} does not exist") from exc
        _check_document_size(key, len(data), max_bytes)
        return data

    def download(self, key: str, sink: VerifyingSink) -> None:
        try:
            handle = self._path(key).open("rb")
        except FileNotFoundError as exc:
            raise ModelNotFoundError(f"{self._path(key)} does not exist") from exc
        with handle:
            while chunk := handle.read(_CHUNK):
                sink.write(chunk)

    def read_versioned(self, key: str, max_bytes: int = MAX_DOCUMENT_BYTES) -> tuple[bytes, str]:
        data = self.read(key, max_bytes)
        return data, hashlib.sha256(data).hexdigest()

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list_children(self, prefix: str) -> list[str]:
        folder = self._path(prefix)
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def replace(self, key: str, data: bytes, *, if_match: str) -> None:
        # The local twin of S3's IfMatch: compare and replace under an exclusive lock.
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with (path.parent / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = hashlib.sha256(path.read_bytes()).hexdigest()
            except FileNotFoundError:
                current = None
            if current != if_match:
                raise VersionConflictError(f"{path} changed since it was read")
            atomic_write(path, data)


# --- the store ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AliasRecord:
    """Where an alias points now, and where it pointed before (newest first).

    Attributes:
        name: Model name.
        alias: Alias name.
        version: The stable version.
        updated_at: When the alias document was last written (ISO 8601).
        history: Earlier stable versions, newest first.
        canary_version: A canary version served beside the stable one, or None.
        canary_weight: Percent of requests for the canary (1-99; 0 without one).
        aborted: The last canary stopped (automatically or by hand): its version, reason and
            time, or None.
    """

    name: str
    alias: str
    version: str
    updated_at: str
    history: tuple[dict[str, str], ...] = ()
    canary_version: str | None = None
    canary_weight: int = 0
    aborted: dict[str, str] | None = None


class ModelStore:
    """Versions, aliases and a verified local cache over :class:`Blobs`."""

    # The blob types :meth:`from_uri` opens (the registry's write side opens writable ones).
    s3_blobs: ClassVar[type[S3Blobs]] = S3Blobs
    file_blobs: ClassVar[type[FileBlobs]] = FileBlobs

    def __init__(self, blobs: Blobs, cache_dir: Path | str) -> None:
        self.blobs = blobs
        self.cache_dir = Path(cache_dir)

    @property
    def uri(self) -> str:
        """Where the store lives."""
        return self.blobs.uri

    @classmethod
    def from_uri(
        cls, uri: str, *, cache_dir: Path | str, s3_client: Any = None, **s3_options: Any
    ) -> Self:
        """Open ``s3://bucket/prefix`` (with a boto3 S3 client) or ``file:///dir``.

        Args:
            uri: Where the store lives.
            cache_dir: Where verified copies are kept.
            s3_client: A boto3 S3 client (needed for ``s3://``).
            s3_options: Passed to the S3 blob type (the registry's ``kms_key_id``).

        Raises:
            ValueError: Unknown scheme, or an S3 URI without a client.
        """
        scheme, bucket_or_root, prefix = split_store_uri(uri)
        if scheme == "s3":
            if s3_client is None:
                raise ValueError("an s3:// store needs an S3 client")
            return cls(cls.s3_blobs(s3_client, bucket_or_root, prefix, **s3_options), cache_dir)
        return cls(cls.file_blobs(Path(bucket_or_root)), cache_dir)

    # -- reading ---------------------------------------------------------------------------

    def get_manifest(self, name: str, version: str) -> Manifest:
        """The manifest of one version.

        Raises:
            ModelNotFoundError: No such version.
            IntegrityError: The manifest is malformed or names another model/version.
        """
        _check_ref(name, version=version)
        try:
            raw = self.blobs.read(f"models/{name}/{version}/{MANIFEST_NAME}")
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(f"model {name!r} has no version {version!r}") from exc
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
                f"model {name!r} has no alias {alias!r}; publish a version with --alias {alias}"
            )
        return record

    def _read_alias(self, name: str, alias: str) -> tuple[AliasRecord | None, str | None]:
        """The alias and its ETag, or (None, None) when it is not set."""
        _check_ref(name, alias=alias)
        try:
            raw, etag = self.blobs.read_versioned(alias_key(name, alias))
        except ModelNotFoundError:
            return None, None
        return parse_alias(name, alias, raw), etag

    def has_alias(self, name: str, alias: str) -> bool:
        """Whether ``alias`` is set for the model (a request may name an alias or a version).

        Raises:
            StoreUnavailableError: The store cannot be read.
        """
        if not (is_name(name) and is_name(alias)):
            return False
        return self.blobs.exists(alias_key(name, alias))

    def resolve(self, name: str, *, version: str | None = None, alias: str = "prod") -> Manifest:
        """The manifest for an explicit version, else for the version an alias points to."""
        if version is None:
            version = self.get_alias(name, alias).version
        return self.get_manifest(name, version)

    def list_models(self) -> list[str]:
        """Model names in the store (keys that do not list as a valid name are skipped)."""
        return _valid_children(self.blobs.list_children("models"), "model name", "models/")

    def list_versions(self, name: str) -> list[str]:
        """Published versions of a model (those with a manifest)."""
        _check_ref(name)
        children = [c for c in self.blobs.list_children(f"models/{name}") if c != ALIASES_DIR]
        return [
            child
            for child in _valid_children(children, "version", f"models/{name}/")
            if self.blobs.exists(f"models/{name}/{child}/{MANIFEST_NAME}")
        ]

    # -- the cache -------------------------------------------------------------------------

    def local_dir(self, manifest: Manifest) -> Path:
        """Where a manifest's files live in the cache (one folder per manifest digest).

        Raises:
            IntegrityError: The manifest's name or version is not a valid one.
        """
        digest = hashlib.sha256(manifest.to_json()).hexdigest()[:16]
        try:
            name = check_name(manifest.name)
            version = check_name(manifest.version, "version")
        except ValueError as exc:
            raise IntegrityError(
                f"{manifest.name!r} version {manifest.version!r} cannot be cached: {exc}"
            ) from exc
        # Valid names are single path parts (no "/", no ".."): the path is inside the cache as
        # written. A symlink planted along it is removed by _private_dirs before any write.
        return Path(os.path.realpath(self.cache_dir)) / name / version / digest

    def drop(self, manifest: Manifest) -> None:
        """Delete a version's cached copy and its marker (nothing follows a symlink)."""
        folder = self.local_dir(manifest)
        _remove(_marker(folder))
        _remove(folder)

    def fetch(
        self, manifest: Manifest, progress: Progress | None = None, phases: Phases | None = None
    ) -> Path:
        """Make a verified local copy of every file; reuse one already verified.

        Args:
            manifest: The version to fetch.
            progress: Called with the bytes of each part (progress bars).
            phases: Where the download and hashing (verify) times are counted.

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
            self._private_dirs(manifest.name, manifest.version, folder.name)
            _remove(_marker(folder))  # complete again only once every file is verified
            free = shutil.disk_usage(folder).free
            missing = sum(f.size for f in manifest.files if not self._reusable(folder, f))
            if missing > free:
                raise CacheFullError(
                    f"{manifest.name}/{manifest.version} needs {missing} bytes but only {free} "
                    f"are free in {self.cache_dir}; raise the function's ephemeral storage"
                )
            started = time.perf_counter()
            verifying = 0.0
            for entry in manifest.files:
                if not self._reusable(folder, entry):
                    verifying += self._download(manifest, entry, folder, progress)
            if phases is not None:
                phases.add("download", (time.perf_counter() - started - verifying) * 1000)
                phases.add("verify", verifying * 1000)
            atomic_write(_marker(folder), manifest.to_json())
        except OnnxkitError:
            raise
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise CacheFullError(
                    f"ran out of space in {self.cache_dir} while fetching "
                    f"{manifest.name}/{manifest.version}; raise the function's ephemeral storage"
                ) from exc
            raise CacheError(f"cannot write the cache {self.cache_dir}: {exc}") from exc
        return folder

    def _is_complete(self, folder: Path, manifest: Manifest) -> bool:
        """Whether the folder holds a verified copy: its marker names this manifest, and each
        file is a regular file (no symlink) whose sha256 matches (hashed again unless this
        process verified that very file)."""
        try:
            self._private_root()
            if _marker(folder).read_bytes() != manifest.to_json():
                return False
        except OSError:
            return False
        return all(self._reusable(folder, entry) for entry in manifest.files)

    def _reusable(self, folder: Path, entry: FileEntry) -> bool:
        """Whether the cached file for ``entry`` can be used as it is: a regular file (not a
        symlink), inside the folder, with the entry's size and sha256. Anything else found
        there is deleted, so it is downloaded again."""
        try:
            path = inside(folder, entry.path)
            found = os.lstat(path)
        except (OSError, ValueError):
            return False
        identity = (found.st_ino, found.st_size, found.st_mtime_ns)
        if not stat.S_ISREG(found.st_mode) or found.st_size != entry.size:
            _remove(path)
            return False
        with _verified_lock:
            if _verified.get(str(path)) == (identity, entry.sha256):
                return True
        try:
            digest = sha256_file(path)
        except OSError:
            return False
        if digest != entry.sha256:
            logger.warning("cached %s does not match its manifest: fetching it again", entry.path)
            _remove(path)
            return False
        _remember(path, identity, entry.sha256)
        return True

    def _download(
        self, manifest: Manifest, entry: FileEntry, folder: Path, progress: Progress | None
    ) -> float:
        """Download one file into place, verified; returns the seconds spent verifying after
        the last byte arrived (the hash runs beside the transfer)."""
        dest = folder / entry.path
        self._private_dirs(
            manifest.name, manifest.version, folder.name, *entry.path.split("/")[:-1]
        )
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".partial-")
        tmp = Path(tmp_name)
        key = file_key(manifest, entry)
        try:
            with os.fdopen(fd, "wb") as out:
                sink = VerifyingSink(entry, key, out, progress)
                try:
                    self.blobs.download(key, sink)
                    started = time.perf_counter()
                    sink.verify()
                    verifying = time.perf_counter() - started
                finally:
                    sink.close()
            os.replace(tmp, dest)  # replaces a file or a symlink itself, never its target
            found = os.lstat(dest)
            _remember(dest, (found.st_ino, found.st_size, found.st_mtime_ns), entry.sha256)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return verifying

    def _private_root(self) -> Path:
        """The cache's root, made private (0700) when we create it; refused when it is a
        symlink, belongs to another user, or other users may write to it.

        Raises:
            CacheError: The cache folder cannot be used safely.
        """
        root = self.cache_dir
        try:
            found = os.lstat(root)
        except FileNotFoundError:
            root.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(root, 0o700)
            found = os.lstat(root)
        problem = ""
        if stat.S_ISLNK(found.st_mode) or not stat.S_ISDIR(found.st_mode):
            problem = "is not a folder (a symlink or a file)"
        elif found.st_uid != os.geteuid():
            problem = f"belongs to user {found.st_uid}, not to this process's user"
        elif found.st_mode & 0o022:
            problem = "may be written by other users (group or others have write permission)"
        if problem:
            raise CacheError(
                f"the cache folder {root} {problem}: another user could plant files there; "
                f"point {ENV_CACHE_DIR} at a folder of this user's (it is made 0700 when missing)"
            )
        return root

    def _private_dirs(self, *parts: str) -> Path:
        """Make (0700) or check each folder from the cache's root down ``parts``; a symlink or a
        file where a folder should be is removed first, so nothing is written through it."""
        path = self._private_root()
        for part in parts:
            path = path / part
            try:
                found = os.lstat(path)
            except FileNotFoundError:
                pass
            else:
                if stat.S_ISDIR(found.st_mode):
                    continue
                logger.warning("removing %s from the cache: not a folder it made", path)
                _remove(path)
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise CacheError(f"{path} in the cache keeps changing under this process")
        return path

    def cached(self, manifest: Manifest) -> Path | None:
        """The folder of a complete, verified cached copy, or None."""
        folder = self.local_dir(manifest)
        return folder if self._is_complete(folder, manifest) else None

    def read_model(
        self, manifest: Manifest, phases: Phases | None = None, entry: FileEntry | None = None
    ) -> bytes:
        """Download a single-file model's graph into memory, verified (no /tmp round trip).

        Args:
            manifest: The version to read.
            phases: Where the download and hashing (verify) times are counted.
            entry: Which graph: the original (default) or the CPU twin.

        Raises:
            ValueError: The model has external data (that needs a folder).
            IntegrityError: The size or sha256 differs from the manifest.
            StoreUnavailableError: The store cannot be read.
        """
        if len(manifest.model_files) != 1:
            raise ValueError("only a single-file model can be read into memory")
        return self.read_file(manifest, entry or manifest.model_file, phases)

    def read_file(
        self, manifest: Manifest, entry: FileEntry, phases: Phases | None = None
    ) -> bytes:
        """Download one of a version's files into memory, verified against its entry.

        Raises:
            IntegrityError: The size or sha256 differs from the manifest.
            StoreUnavailableError: The store cannot be read.
        """
        sink = VerifyingSink(entry, file_key(manifest, entry))
        phases = phases or Phases()
        try:
            with phases.timed("download"):
                self.blobs.download(sink.where, sink)
            with phases.timed("verify"):  # what the hash adds after the last byte
                sink.verify()
        finally:
            sink.close()
        return sink.data()

    def evict(
        self, keep: Path | None = None, *, also: tuple[Path, ...] = (), name: str | None = None
    ) -> None:
        """Drop every cached copy except ``keep`` and ``also`` (frees /tmp for a new version;
        a canary keeps both versions' copies).

        Args:
            keep: A version folder to keep.
            also: More folders to keep.
            name: Only this model's copies (a function serving many models shares the cache
                folder: one model's swap must not drop another's files); None: every model.
        """
        if not _is_dir(self.cache_dir):
            return
        kept = {p for p in (keep, *also) if p is not None}
        kept |= {_marker(p) for p in kept}
        root = Path(os.path.realpath(self.cache_dir))  # as local_dir() names the folders
        if name is not None:
            models = [root / check_name(name)]
        else:
            models = [p for p in root.iterdir() if is_name(p.name)]
        for model_dir in models:
            for version_dir in _children(model_dir):
                for child in _children(version_dir):
                    if child not in kept:
                        _remove(child)

    def list_aliases(self, name: str) -> dict[str, str]:
        """Alias -> (stable) version for one model."""
        return {alias: record.version for alias, record in self.list_alias_records(name).items()}

    def list_alias_records(self, name: str) -> dict[str, AliasRecord]:
        """Alias -> its record (canary and last abort included) for one model."""
        _check_ref(name)
        documents = self.blobs.list_children(f"models/{name}/{ALIASES_DIR}")
        aliases = [c.removesuffix(".json") for c in documents if c.endswith(".json")]
        where = f"models/{name}/{ALIASES_DIR}/"
        valid = _valid_children(aliases, "alias", where)
        return {alias: self.get_alias(name, alias) for alias in valid}


def split_store_uri(uri: str) -> tuple[str, str, str]:
    """``s3://bucket/prefix`` -> ("s3", bucket, prefix); ``file:///dir`` -> ("file", dir, "").

    Raises:
        ValueError: Any other scheme.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        return "s3", parsed.netloc, parsed.path.strip("/")
    if parsed.scheme == "file":
        return "file", parsed.netloc + parsed.path, ""
    raise ValueError(f"model store must be s3://bucket/prefix or file:///dir, not {uri!r}")


def utc_now() -> str:
    """The time stamp manifests and alias documents carry: ISO-8601 UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def file_key(manifest: Manifest, entry: FileEntry) -> str:
    """Where one of a version's files lives under the store's root."""
    return f"models/{manifest.name}/{manifest.version}/{entry.path}"


def alias_key(name: str, alias: str) -> str:
    """Where an alias document lives under the store's root."""
    return f"models/{name}/{ALIASES_DIR}/{alias}.json"


def parse_alias(name: str, alias: str, raw: bytes) -> AliasRecord:
    """An alias document -> :class:`AliasRecord` (documents without a canary parse as before).

    Every version it names (stable, canary, history, last abort) must be a valid version:
    they become store keys and cache folders.

    Raises:
        IntegrityError: Not valid JSON, no version, a version that is not a valid one, too
            long a history, or a canary weight outside 1-99.
    """
    _check_document_size(f"alias {name}@{alias}", len(raw), MAX_DOCUMENT_BYTES)
    try:
        data = json.loads(raw)
        canary = data.get("canary")
        weight = int(canary["weight"]) if canary else 0
        if canary and not 1 <= weight <= 99:
            raise ValueError(f"canary weight {weight} is not 1-99")
        aborted = data.get("aborted")
        history = tuple(
            {**h, "version": _version(h["version"], "history version")}
            for h in data.get("history", ())
        )
        if len(history) > MAX_ALIAS_HISTORY:
            raise ValueError(f"history holds {len(history)} entries (at most {MAX_ALIAS_HISTORY})")
        aborted = {str(k): str(v) for k, v in aborted.items()} if aborted else None
        if aborted is not None and "version" in aborted:
            _version(aborted["version"], "aborted version")
        return AliasRecord(
            name=name,
            alias=alias,
            version=_version(data["version"], "version"),
            updated_at=str(data.get("updated_at", "")),
            history=history,
            canary_version=_version(canary["version"], "canary version") if canary else None,
            canary_weight=weight,
            aborted=aborted,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"alias {name}@{alias} is not a valid alias document: {exc}") from exc


def _version(value: Any, what: str) -> str:
    """A version an alias document names: a valid name (a JSON integer reads as its digits)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return check_name(value, what)


def _check_document_size(what: str, size: int, limit: int) -> None:
    """Refuse a store document (manifest, alias) over ``limit`` bytes before parsing it.

    Raises:
        IntegrityError: It is larger.
    """
    if size > limit:
        raise IntegrityError(
            f"{what} is {'over ' if size == limit + 1 else ''}{size} bytes; a store document "
            f"is at most {limit}"
        )


def _check_ref(name: str, *, version: str | None = None, alias: str | None = None) -> None:
    """A name (and version or alias) asked of the store must be valid before it becomes a key.

    Raises:
        ModelNotFoundError: It is not: no such model can exist (a request's 404).
    """
    for value, what in ((name, "model name"), (version, "version"), (alias, "alias")):
        if value is not None and not is_name(value):
            raise ModelNotFoundError(f"{what} {value[:70]!r} is not valid ({NAME_RULE})")


def _valid_children(children: list[str], what: str, where: str) -> list[str]:
    """The listed names that are valid; the others (``..``, a key with a newline) are skipped
    with a warning, never used as a key or a folder."""
    valid = [c for c in children if is_name(c)]
    if len(valid) != len(children):
        skipped = [c for c in children if not is_name(c)][:5]
        logger.warning("skipping %s in the store that are not valid: %s", where, skipped)
    return valid


def alias_document(record: AliasRecord) -> bytes:
    """The JSON document stored for an alias (``canary`` is null without one)."""
    body: dict[str, Any] = {
        "name": record.name,
        "alias": record.alias,
        "version": record.version,
        "updated_at": record.updated_at,
        "history": list(record.history),
        "canary": (
            {"version": record.canary_version, "weight": record.canary_weight}
            if record.canary_version is not None
            else None
        ),
    }
    if record.aborted is not None:
        body["aborted"] = dict(record.aborted)
    return json.dumps(body, indent=2).encode() + b"\n"


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file through a temporary name in its folder, so readers never see half of it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# Files this process downloaded or hashed: path -> ((inode, size, mtime_ns), sha256). A file
# whose identity is unchanged need not be hashed again (alias refreshes, processing reads).
_verified: dict[str, tuple[tuple[int, int, int], str]] = {}
_verified_lock = threading.Lock()


def _remember(path: Path, identity: tuple[int, int, int], sha256: str) -> None:
    with _verified_lock:
        _verified[str(path)] = (identity, sha256)


def _marker(folder: Path) -> Path:
    """The ``.complete`` marker of a cached version's folder: beside it, not in it."""
    return folder.with_name(folder.name + _COMPLETE_SUFFIX)


def _is_dir(path: Path) -> bool:
    """A real folder (a symlink to one is not)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _children(folder: Path) -> list[Path]:
    """A real folder's entries (nothing when it is missing or a symlink)."""
    return list(folder.iterdir()) if _is_dir(folder) else []


def _remove(path: Path) -> None:
    """Delete a file, a symlink (never what it points to) or a folder tree; missing is fine."""
    try:
        if _is_dir(path):
            shutil.rmtree(path, ignore_errors=True)  # rmtree does not follow symlinks inside
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    with _verified_lock:
        for key in [k for k in _verified if k == str(path) or k.startswith(f"{path}/")]:
            del _verified[key]
