"""Publishing a local ONNX model into a store as a new version, optionally moving an alias."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from onnxkit.manifest import Manifest, describe_model
from onnxkit.store import ModelStore, Progress


def next_version(store: ModelStore, name: str) -> str:
    """One more than the largest integer version published (``1`` for a new model)."""
    numbers = [int(v) for v in store.list_versions(name) if v.isdigit()]
    return str(max(numbers, default=0) + 1)


def publish_model(
    store: ModelStore,
    model_path: Path,
    *,
    name: str,
    version: str | None = None,
    alias: str | None = None,
    backend: str = "lambda",
    report_path: Path | None = None,
    progress: Progress | None = None,
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
        progress: Byte-count callback for a progress bar.

    Returns:
        The published manifest.

    Raises:
        VersionConflictError: The version exists already.
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
    store.publish(manifest, model_path.parent, progress)
    if alias:
        store.set_alias(name, alias, manifest.version)
    return manifest
