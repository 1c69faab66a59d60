"""Cached example builds, keyed by what made them: the builder's source code, packages, parameters.

A build folder holds its key in ``build-key.json``, written last: a folder without it, or with
another key, is rebuilt. The key digests the source of the modules that shape the artefacts, so
editing the export or quantization code invalidates the cache without a version to remember to
bump.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

KEY_FILE = "build-key.json"
_LOCK_FILE = ".build.lock"


def source_files(module: str) -> list[tuple[str, Path]]:
    """The source files of a module: its ``.py`` file, or for a package every ``.py`` under it.

    Package files come in the order of their path relative to the package; hidden files (editor
    locks such as ``.#name.py``) are skipped, as Python never imports them.

    Args:
        module: A dotted module name, e.g. ``onnxkit_tools.quantize``. Its parent packages are
            imported to find it; the module itself is not.

    Returns:
        ``(name, path)`` pairs: the path relative to the package (or the file name of a plain
        module) and the file.

    Raises:
        LookupError: the module cannot be found, or has no Python source (an extension module).
    """
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise LookupError(f"module {module} not found")
    if spec.submodule_search_locations:
        files: list[tuple[str, Path]] = []
        for location in spec.submodule_search_locations:
            root = Path(location)
            for path in root.rglob("*.py"):
                name = path.relative_to(root).as_posix()
                if path.is_file() and not any(part.startswith(".") for part in name.split("/")):
                    files.append((name, path))
        return sorted(files)
    if spec.origin is None or not spec.origin.endswith(".py"):
        raise LookupError(f"module {module} has no Python source ({spec.origin})")
    origin = Path(spec.origin)
    return [(origin.name, origin)]


def source_digest(module: str) -> str:
    """Hex sha256 over the source of one module (see :func:`source_files`).

    Each file contributes its name and its bytes, so adding, removing or renaming a file of a
    package changes the digest, as does any byte of any file.

    Raises:
        LookupError: the module cannot be found or has no Python source.
    """
    digest = hashlib.sha256()
    for name, path in source_files(module):
        content = path.read_bytes()
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def source_digests(modules: Iterable[str]) -> dict[str, str]:
    """:func:`source_digest` of each module, by name (a key part that shows what changed).

    Raises:
        LookupError: a module cannot be found or has no Python source.
    """
    return {module: source_digest(module) for module in modules}


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    """Installed versions of distributions, read from metadata (nothing is imported).

    Raises:
        importlib.metadata.PackageNotFoundError: a package is not installed.
    """
    return {package: metadata.version(package) for package in packages}


def is_cached(out: Path, key: Mapping[str, Any], outputs: Iterable[str | Path]) -> bool:
    """Whether ``out`` holds a complete build with this key and every output file."""
    try:
        stored = json.loads((Path(out) / KEY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # Round-trip the key so tuples compare equal to the lists JSON stores.
    if stored != json.loads(json.dumps(key)):
        return False
    return all((Path(out) / name).is_file() for name in outputs)


def clear_key(out: Path) -> None:
    """Mark ``out`` incomplete: call before writing the first output of a build."""
    (Path(out) / KEY_FILE).unlink(missing_ok=True)


def write_key(out: Path, key: Mapping[str, Any]) -> None:
    """Mark ``out`` complete with this key: call after the last output is written."""
    write_json(Path(out) / KEY_FILE, key)


def write_json(path: Path, document: Any) -> None:
    """Write JSON through a temporary file, so a reader never sees half a document."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@contextmanager
def build_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` (created if missing) while checking and building it.

    Two processes building the same folder (two test runs sharing the user's cache) then take
    turns: the second finds the first one's complete build instead of writing over it.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: build without the lock
        yield
        return
    with (out / _LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
