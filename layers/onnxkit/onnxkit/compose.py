"""The composition root: Settings -> AWS clients -> store -> loader -> Predictor.

Entry points (the Lambda function, the local server) call :func:`build_predictor`; the
library below it never creates AWS clients or reads the environment by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from onnxkit.backends import Backend
from onnxkit.backends.onnxruntime import OnnxruntimeBackend
from onnxkit.backends.sagemaker import SageMakerBackend
from onnxkit.errors import ModelNotReadyError
from onnxkit.manifest import Manifest
from onnxkit.predictor import Limits, Observer, Predictor, Refresh
from onnxkit.session import create_session, warm_up
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


def make_sagemaker_client(settings: Settings) -> Any:
    """A boto3 sagemaker-runtime client with the invocation timeout and retry budget.

    The endpoint follows ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` (the local endpoint server).
    """
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": settings.sagemaker_max_attempts},
        connect_timeout=2,
        read_timeout=settings.sagemaker_timeout,
    )
    return boto3.client("sagemaker-runtime", config=config)


def choose_backend(settings: Settings, manifest: Manifest) -> str:
    """``lambda`` or ``sagemaker`` for this model.

    ``auto`` follows the manifest's ``backend`` (set at publish), and sends models whose
    files exceed ``ONNXKIT_AUTO_MAX_LAMBDA_BYTES`` or whose metadata declares ``gpu: true``
    to SageMaker; anything else runs in the function.
    """
    if settings.backend != "auto":
        return settings.backend
    if manifest.backend == "sagemaker" or bool(manifest.metadata.get("gpu")):
        return "sagemaker"
    return "sagemaker" if manifest.total_size > settings.auto_max_lambda_bytes else "lambda"


def open_store(settings: Settings, s3_client: Any = None) -> ModelStore:
    """The model store named by the settings (an S3 client is made if needed and not given)."""
    if settings.model_store.startswith("s3://") and s3_client is None:
        s3_client = make_s3_client(settings)
    return ModelStore.from_uri(
        settings.model_store, cache_dir=settings.cache_dir, s3_client=s3_client
    )


def build_predictor(
    settings: Settings,
    *,
    s3_client: Any = None,
    sagemaker_client: Any = None,
    observer: Observer | None = None,
    wrap_backend: Callable[[Backend], Backend] | None = None,
) -> Predictor:
    """Wire a Predictor whose loader resolves, fetches, verifies, loads and warms the model.

    Serving an alias (no pinned version) with a refresh interval, the predictor re-reads the
    alias at most once per interval and swaps in a new version once it is loaded. Models
    routed to SageMaker (see :func:`choose_backend`) are not downloaded: only their manifest
    is read, to validate requests before they are forwarded. ``wrap_backend`` wraps each
    in-process backend (the endpoint container's dynamic batching).
    """
    store = open_store(settings, s3_client)

    def resolve() -> Manifest:
        return store.resolve(
            settings.model_name, version=settings.model_version, alias=settings.model_alias
        )

    clients: dict[str, Any] = {"sagemaker": sagemaker_client}

    def load(manifest: Manifest) -> Backend:
        if choose_backend(settings, manifest) == "sagemaker":
            if not settings.sagemaker_endpoint:
                raise ModelNotReadyError(
                    f"{manifest.name} {manifest.version} is routed to SageMaker but no endpoint "
                    "is configured; set ONNXKIT_SAGEMAKER_ENDPOINT or ONNXKIT_BACKEND=lambda"
                )
            if clients["sagemaker"] is None:
                clients["sagemaker"] = make_sagemaker_client(settings)
            return SageMakerBackend(manifest, clients["sagemaker"], settings.sagemaker_endpoint)
        folder = store.fetch(manifest)
        session = create_session(
            folder / manifest.model_file.path,
            providers=settings.providers,
            intra_op_threads=settings.intra_op_threads,
        )
        warm_up(session, manifest.inputs)
        backend: Backend = OnnxruntimeBackend(manifest, session)
        return wrap_backend(backend) if wrap_backend is not None else backend

    def free_old_files(old: Backend, new: Backend) -> None:
        close = getattr(old, "close", None)
        if callable(close):  # e.g. a batching wrapper's dispatcher thread
            close()
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
