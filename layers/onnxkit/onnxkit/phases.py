"""Milliseconds spent in each phase of a model load: resolve, download, verify, session,
processing (a tokenizer or labels, when declared), warm-up."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

LOAD_PHASES = ("resolve", "download", "verify", "session", "processing", "warmup")
"""The phases of a model load, in the order they run."""


class Phases:
    """A stopwatch per phase; a phase timed twice adds up.

    Attributes:
        ms: Milliseconds per phase name, in the order first timed.
    """

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    def add(self, phase: str, milliseconds: float) -> None:
        """Count ``milliseconds`` against ``phase``."""
        self.ms[phase] = self.ms.get(phase, 0.0) + milliseconds

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Time the block and count it against ``phase`` (also when it raises)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, (time.perf_counter() - started) * 1000)
