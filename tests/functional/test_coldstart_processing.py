"""The cold start loads a version's processing beside the session, once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from onnxkit.sources import StoreSource


def test_the_labels_are_read_once_beside_the_session(
    published: Any, make_handler: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN digits published with image preprocessing and a labels file, and a spy on the reads
    reads: list[tuple[str, str]] = []
    real = StoreSource.read

    def spy(self: StoreSource, manifest: Any, path: str) -> bytes:
        reads.append((path, threading.current_thread().name))
        return real(self, manifest, path)

    monkeypatch.setattr(StoreSource, "read", spy)

    # WHEN the function starts cold
    handler = make_handler()

    # THEN its processing is loaded, from one read in the thread beside the session
    backend = handler.predictor.current_backend
    assert backend.processing is not None
    assert backend.processing.declared.image is not None
    assert reads == [("labels.txt", "onnxkit-processing")]
