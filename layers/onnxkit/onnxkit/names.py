"""The one rule for model names, versions and aliases, and for cache paths built from them.

Standard library only (the ground floor): settings, the manifest, the store, the request path
and the CLI all check with :func:`check_name`, so a name that reaches a path, a key or a
cache folder has passed the same test everywhere. The store's contents are untrusted input:
a version of ``../..`` in an alias document, a key that lists as a model named ``..``, or a
name with a trailing newline must never become part of a path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

NAME_RULE = (
    "1-64 characters: lower-case letters, digits, '.', '_' and '-', starting with a letter or digit"
)
"""How the rule reads in messages and ``--help``."""

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def is_name(value: object) -> bool:
    """Whether ``value`` is a valid model name, version or alias.

    The whole string must match (``re.fullmatch``: a ``$`` anchor would admit a trailing
    newline), so ``..``, ``.hidden``, ``a/b``, ``A`` and ``x\\n`` are all refused.
    """
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def check_name(value: object, what: str = "model name") -> str:
    """Return ``value`` when it is a valid name, version or alias.

    Args:
        value: What was read (from the store, a request, the command line, the environment).
        what: What it is, for the message (``"version"``, ``"alias"``...).

    Raises:
        ValueError: It is not (the message quotes at most 64 characters of it).
    """
    if not is_name(value):
        shown = repr(value)[:70] if isinstance(value, str) else type(value).__name__
        raise ValueError(f"{what} {shown} is not valid ({NAME_RULE})")
    return value  # type: ignore[return-value]  # is_name checked it is a str


def inside(root: Path, *parts: str) -> Path:
    """``root / parts``, checked to stay inside ``root`` once every symlink is resolved.

    Args:
        root: The folder everything must stay under (the cache).
        parts: Path parts below it (names and versions, already checked with
            :func:`check_name`; a manifest's relative file paths).

    Raises:
        ValueError: The path would resolve outside ``root`` (``..``, an absolute part, a
            symlink pointing away).
    """
    base = Path(os.path.realpath(root))
    path = Path(os.path.realpath(base.joinpath(*parts)))
    if path != base and base not in path.parents:
        raise ValueError(f"{'/'.join(parts)!r} resolves outside its folder")
    return base.joinpath(*parts)
