"""The SageMaker container edge: the route table as a Starlette app, served by uvicorn.

The HTTP server is uvicorn (httptools parser, uvloop), configured rather than written: worker
processes (one per vCPU on CPU instances, one per GPU on GPU instances), keep-alive, a graceful
drain on SIGTERM bounded by ``ONNXKIT_DRAIN_SECONDS``. ``protocol`` adds what uvicorn leaves
out: a deadline for a request's headers (and between the chunks of its body), one for a whole
body, a cap on connections, caps on the URL and on header count and size, and JSON bodies on
its own refusals. Each worker loads the model in a background thread once it listens; ``/ping``
answers 200 once every worker has, and requests beyond ``ONNXKIT_MAX_CONCURRENCY`` in flight
(counted once their bodies are in) get 503 ``overloaded``.

- ``app``: one worker's ASGI app; ``protocol``: the hardened HTTP protocol; ``workers``: the
  plan (processes, threads, GPUs) and shared readiness; ``server``: the entry point
  (``serve``, ``python -m onnxkit.adapters.endpoint``); ``logs``: JSON lines.
"""

from onnxkit.adapters.endpoint.app import (
    EndpointApp,
    app_from_env,
    create_app,
    error_response,
)
from onnxkit.adapters.endpoint.logs import JsonLinesFormatter, configure_logging
from onnxkit.adapters.endpoint.protocol import HardenedHttpToolsProtocol
from onnxkit.adapters.endpoint.server import EndpointConfig, exit_after, main
from onnxkit.adapters.endpoint.workers import (
    GPU_THREADS,
    SiblingReadiness,
    WorkerPlan,
    claim_gpu,
    count_gpus,
    endpoint_settings,
    plan_workers,
    readiness_folder,
    resolve_settings,
)

__all__ = [
    "GPU_THREADS",
    "EndpointApp",
    "EndpointConfig",
    "HardenedHttpToolsProtocol",
    "JsonLinesFormatter",
    "SiblingReadiness",
    "WorkerPlan",
    "app_from_env",
    "claim_gpu",
    "configure_logging",
    "count_gpus",
    "create_app",
    "endpoint_settings",
    "error_response",
    "exit_after",
    "main",
    "plan_workers",
    "readiness_folder",
    "resolve_settings",
]
