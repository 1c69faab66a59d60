"""What the commands share: the store option, the tokenizer options, opening the registry,
progress bars."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from onnxkit.aws import AwsClients
from onnxkit.names import check_name
from onnxkit.processing.text import PADDINGS
from onnxkit.settings import ENV_MODEL_STORE, STORE_PATTERN, read_aws_settings
from onnxkit_tools.processing import ProcessingOptions
from onnxkit_tools.registry import Registry


def check_name_param(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A click callback: a model name, version or alias must follow the one rule
    (:func:`onnxkit.names.check_name`), or the command stops with a usage error."""
    if value is None:
        return value
    what = {"name": "model name", "version": "version", "alias": "alias"}.get(
        param.name or "", "name"
    )
    try:
        return check_name(value, what)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc


def store_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--store URI``, defaulting to ``$ONNXKIT_MODEL_STORE``."""
    return click.option(
        "--store",
        envvar=ENV_MODEL_STORE,
        show_envvar=True,
        metavar="URI",
        help="model store: s3://bucket/prefix or file:///dir",
    )(function)


def tokenizer_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--max-length``, ``--truncation/--no-truncation`` and ``--padding``: how a tokenizer is
    run, the same options (and defaults) for ``onnxkit publish`` and ``onnxkit quantize``."""
    defaults = ProcessingOptions()
    options = (
        click.option(
            "--max-length",
            type=click.IntRange(1, 1_000_000),
            default=defaults.max_length,
            show_default=True,
            help="tokens per sentence, special tokens included",
        ),
        click.option(
            "--truncation/--no-truncation",
            default=defaults.truncation,
            show_default=True,
            help="cut longer sentences to --max-length, or refuse them (400)",
        ),
        click.option(
            "--padding",
            type=click.Choice(PADDINGS),
            default=defaults.padding,
            show_default=True,
            help="pad a batch to its longest sentence, or every sentence to --max-length",
        ),
    )
    for option in reversed(options):
        function = option(function)
    return function


def open_registry(
    uri: str | None, *, cache_dir: Path | None = None, kms_key_id: str | None = None
) -> Registry:
    """The registry at ``uri``, S3 through the client made with ``ONNXKIT_S3_*`` retries.

    Raises:
        click.UsageError: No store, or not one onnxkit can open.
    """
    if not uri:
        raise click.UsageError(
            f"no model store: pass --store s3://bucket/prefix or set {ENV_MODEL_STORE}"
        )
    if not STORE_PATTERN.fullmatch(uri):
        raise click.UsageError(f"--store {uri!r} is not s3://bucket/prefix or file:///dir")
    s3 = AwsClients(read_aws_settings(os.environ)).s3() if uri.startswith("s3://") else None
    return Registry.from_uri(
        uri,
        # The system temp folder is shared by every user: the cache is a folder of ours in it.
        cache_dir=cache_dir or Path(tempfile.gettempdir()) / f"onnxkit-cache-{os.getuid()}",
        s3_client=s3,
        kms_key_id=kms_key_id,
    )


@contextlib.contextmanager
def progress_bar(total: int, description: str) -> Iterator[ByteProgress]:
    """A byte-count progress bar on stderr (tqdm); yields a callable that advances it."""
    from tqdm import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, desc=description, file=sys.stderr) as bar:
        yield ByteProgress(bar)


class ByteProgress:
    """Advances a tqdm bar by a byte count; :meth:`resize` sets its total once it is known."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar

    def __call__(self, count: int) -> object:
        return self._bar.update(count)

    def resize(self, total: int) -> None:
        """Set the bar's total (a publish learns it once the CPU twin is made)."""
        self._bar.total = total
        self._bar.refresh()
