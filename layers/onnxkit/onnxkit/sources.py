"""A model served from a plain folder (SageMaker's ``/opt/ml/model``), verified when it can be.

The folder holds ``model.onnx`` (plus any external data) and, when ``onnxkit models pull``
wrote it, ``manifest.json``. With a manifest every listed file is checked against its size
and sha256 before onnxruntime reads a byte of it; without one the signature comes from the
onnxruntime session itself and nothing can be verified (a warning says so).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onnxkit.backends import Backend
from onnxkit.datatypes import BY_ORT
from onnxkit.errors import IntegrityError, ModelLoadError, ModelNotFoundError
from onnxkit.manifest import FileEntry, Manifest, TensorSpec, sha256_file
from onnxkit.settings import Settings

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.onnx"
UNVERSIONED = "local"

SessionFactory = Callable[[Path, Settings], Any]


def read_manifest(folder: Path) -> Manifest | None:
    """The folder's ``manifest.json``, or None when there is none.

    Raises:
        IntegrityError: The manifest exists but is not a valid manifest.
    """
    path = folder / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IntegrityError(f"{path} cannot be read: {exc.strerror}") from exc
    return Manifest.from_json(raw)


def verify_files(folder: Path, manifest: Manifest) -> None:
    """Check every file the manifest lists against its size and sha256.

    Sizes are checked first (cheap), so a truncated upload fails before any hashing.

    Raises:
        IntegrityError: A file is missing, unreadable, or differs from the manifest.
    """
    for entry in manifest.files:
        path = folder / entry.path
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise IntegrityError(
                f"{entry.path} is listed in {MANIFEST_NAME} but cannot be read in {folder} "
                f"({exc.strerror}); repack the model folder"
            ) from exc
        if size != entry.size:
            raise IntegrityError(
                f"{entry.path} is {size} bytes but {MANIFEST_NAME} says {entry.size}; "
                "the model folder is incomplete or was modified"
            )
    for entry in manifest.files:
        try:
            digest = sha256_file(folder / entry.path)
        except OSError as exc:
            raise IntegrityError(f"{entry.path} cannot be read: {exc.strerror}") from exc
        if digest != entry.sha256:
            raise IntegrityError(
                f"{entry.path} does not match {MANIFEST_NAME} (expected sha256 "
                f"{entry.sha256[:12]}…, got {digest[:12]}…); the model folder was modified"
            )


def signature_from_session(session: Any) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs as onnxruntime sees them; symbolic or unknown dimensions become -1.

    Raises:
        ModelLoadError: A tensor type the v2 JSON protocol cannot carry (maps, sequences...).
    """

    def spec(arg: Any) -> TensorSpec:
        datatype = BY_ORT.get(arg.type)
        if datatype is None:
            raise ModelLoadError(
                f"{arg.name!r} has type {arg.type}, which onnxkit's v2 JSON protocol cannot "
                "carry; export the model with plain tensors (skl2onnx: zipmap=False)"
            )
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape or ())
        return TensorSpec(arg.name, datatype.name, shape)

    return (
        tuple(spec(arg) for arg in session.get_inputs()),
        tuple(spec(arg) for arg in session.get_outputs()),
    )


def manifest_from_session(
    session: Any, model_file: Path, *, name: str, version: str = UNVERSIONED
) -> Manifest:
    """A manifest describing an unverified local model (no sha256: nothing to check it with).

    Args:
        session: The onnxruntime session that loaded ``model_file``.
        model_file: The graph file.
        name: The served model name.
        version: The version label to report.
    """
    inputs, outputs = signature_from_session(session)
    meta = session.get_modelmeta()
    return Manifest(
        name=name,
        version=version,
        files=(FileEntry(model_file.name, sha256="", size=model_file.stat().st_size),),
        inputs=inputs,
        outputs=outputs,
        opset=0,  # onnxruntime does not expose it; 0 reads as "unknown"
        producer={"name": str(meta.producer_name), "version": str(meta.version)},
        backend="sagemaker",
        metadata={"source": str(model_file.parent), "verified": False},
    )


def find_model_file(folder: Path) -> Path:
    """``model.onnx``, or the folder's only ``.onnx`` file.

    Raises:
        ModelNotFoundError: No folder, no model, or several candidates.
    """
    if not folder.is_dir():
        raise ModelNotFoundError(f"the model folder {folder} does not exist")
    preferred = folder / MODEL_NAME
    if preferred.is_file():
        return preferred
    candidates = sorted(p for p in folder.glob("*.onnx") if p.is_file())
    if len(candidates) == 1:
        return candidates[0]
    found = ", ".join(p.name for p in candidates) or "none"
    raise ModelNotFoundError(
        f"{folder} must hold {MODEL_NAME} (or exactly one .onnx file); found {found}"
    )


def default_session_factory(model_file: Path, settings: Settings) -> Any:
    """An onnxruntime session with the settings' providers and a logged CPU fallback."""
    from onnxkit.session import create_session

    return create_session(
        model_file, providers=settings.providers, intra_op_threads=settings.intra_op_threads
    )


def load_model_dir(
    folder: Path,
    settings: Settings,
    *,
    session_factory: SessionFactory = default_session_factory,
) -> Backend:
    """Verify (when a manifest is present), load and warm up the model in ``folder``.

    Args:
        folder: The model folder (``Settings.model_dir``).
        settings: Providers, threads and the served model name.
        session_factory: Builds the session (tests pass a slow or failing one).

    Returns:
        A ready onnxruntime backend.

    Raises:
        ModelNotFoundError: No model file in the folder.
        IntegrityError: A file differs from ``manifest.json``, or the manifest is invalid.
        ModelLoadError: onnxruntime refused the model or its warm-up run failed.
    """
    from onnxkit.backends.onnxruntime import OnnxruntimeBackend
    from onnxkit.session import warm_up

    manifest = read_manifest(folder)
    if manifest is not None:
        model_file = folder / manifest.model_file.path
        verify_files(folder, manifest)
        if manifest.name != settings.model_name:
            logger.warning(
                "%s names model %r but this endpoint is configured as %r; serving it as %r",
                MANIFEST_NAME,
                manifest.name,
                settings.model_name,
                settings.model_name,
            )
        logger.info(
            "model files verified",
            extra={
                "model": manifest.name,
                "version": manifest.version,
                "files": len(manifest.files),
            },
        )
    else:
        model_file = find_model_file(folder)
        logger.warning(
            "no %s in %s: the model files are not verified (write one with `onnxkit models pull`)",
            MANIFEST_NAME,
            folder,
        )
    session = session_factory(model_file, settings)
    if manifest is None:
        manifest = manifest_from_session(
            session,
            model_file,
            name=settings.model_name,
            version=settings.model_version or UNVERSIONED,
        )
    warm_up(session, manifest.inputs)
    return OnnxruntimeBackend(manifest, session)
