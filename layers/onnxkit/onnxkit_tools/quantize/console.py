"""What a gate run shows on the terminal: progress steps on stderr, the quantizers kept quiet."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def _quiet(verbose: bool = False) -> Iterator[None]:
    """Silence onnxruntime's quantizers: they print to stdout and log warnings on the root logger
    (e.g. "Please consider to run pre-processing"), which would mix into the report table."""
    if verbose:
        yield
        return
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


class _Progress:
    """Steps on stderr: a tqdm bar on a terminal, one line per step otherwise (logs, CI)."""

    def __init__(self, enabled: bool, total: int, label: str, *, prefix: str = "quantize") -> None:
        self._label = label
        self._prefix = prefix  # the command the log lines name: [quantize 12.3s] ...
        self._bar: Any = None
        self._count = 0
        self.total = total
        self._enabled = enabled
        self._started = time.perf_counter()
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, file=sys.stderr, leave=False)

    def step(self, name: str) -> None:
        """Announce the next step."""
        self._count += 1
        if not self._enabled:
            return
        text = f"{self._label} {self._count}/{self.total}: {name}"
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.set_description_str(text)
            self._bar.update(1)
        else:
            elapsed = time.perf_counter() - self._started
            print(f"[{self._prefix} {elapsed:6.1f}s] {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()
