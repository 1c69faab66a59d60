"""The composition root: Settings -> AWS clients -> store -> loader -> Predictor.

Entry points (the Lambda function, the local server) call :func:`build_predictor`; the
library below it never creates AWS clients or reads the environment by itself.
"""

from __future__ import annotations

from typing import Any

from onnxkit.backends import Backend
from onnxkit.backends.onnxruntime import OnnxruntimeBackend
from onnxkit.manifest import Manifest
from onnxkit.predictor import Limits, Observer, Predictor, Refresh
from onnxkit.session import load_session, warm_up
from onnxkit.settings import Settings
from onnxkit.store import ModelStore


def make_s3_client(settings: Settings) -> Any:
    """A boto3 S3 client whose retries and timeouts come from botocore's config.

    The endpoint follows boto3's own ``AWS_ENDPOINT_URL_S3`` (a moto server locally).
    """
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": settings.s3_max_attempts},
        connect_timeout=settings.s3_connect_timeout,
        read_timeout=settings.s3_read_timeout,
    )
    return boto3.client("s3", config=config)


def open_store(settings: Settings, s3_client: Any = None) -> ModelStore:
    """The model store named by the settings (an S3 client is made if needed and not given)."""
    if settings.model_store.startswith("s3://") and s3_client is None:
        s3_client = make_s3_client(settings)
    return ModelStore.from_uri(
        settings.model_store, cache_dir=settings.cache_dir, s3_client=s3_client
    )


def build_predictor(
    settings: Settings, *, s3_client: Any = None, observer: Observer | None = None
) -> Predictor:
    """Wire a Predictor whose loader resolves, fetches, verifies, loads and warms the model.

    Serving an alias (no pinned version) with a refresh interval, the predictor re-reads the
    alias at most once per interval and swaps in a new version once it is loaded.
    """
    store = open_store(settings, s3_client)

    def resolve() -> Manifest:
        return store.resolve(
            settings.model_name, version=settings.model_version, alias=settings.model_alias
        )

    def load(manifest: Manifest) -> Backend:
        folder = store.fetch(manifest)
        session = load_session(
            folder / manifest.model_file.path, intra_op_threads=settings.intra_op_threads
        )
        warm_up(session, manifest.inputs)
        return OnnxruntimeBackend(manifest, session)

    def free_old_files(_: Backend, new: Backend) -> None:
        store.evict(keep=store.local_dir(new.manifest))  # /tmp is small: keep one version

    refresh = None
    if settings.model_version is None and settings.refresh_seconds > 0:
        refresh = Refresh(
            resolve=resolve,
            load=load,
            interval_s=settings.refresh_seconds,
            on_swap=free_old_files,
        )
    limits = Limits(
        max_request_bytes=settings.max_request_bytes, max_batch_size=settings.max_batch_size
    )
    return Predictor(settings.model_name, lambda: load(resolve()), limits, observer, refresh)
