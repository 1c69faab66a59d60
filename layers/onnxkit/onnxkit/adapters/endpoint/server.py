"""The endpoint's entry point: settings, the worker plan, uvicorn configured and run, logging.

SageMaker's contract for a real-time inference container: listen on port 8080 (or
``SAGEMAKER_BIND_TO_PORT``), answer ``GET /ping`` with 200 once the model can serve, answer
``POST /invocations`` within 60 s, and stop within 30 s of SIGTERM (then comes SIGKILL).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from collections.abc import Mapping
from typing import Any

import uvicorn

from onnxkit.adapters.endpoint.logs import configure_logging
from onnxkit.adapters.endpoint.protocol import HardenedHttpToolsProtocol
from onnxkit.adapters.endpoint.workers import (
    count_gpus,
    endpoint_settings,
    plan_workers,
    readiness_folder,
)
from onnxkit.errors import ConfigurationError
from onnxkit.session import available_cpus
from onnxkit.settings import unknown_variables

logger = logging.getLogger(__name__)

# Idle keep-alive connections are closed after this. SageMaker's front end pools its
# connections to the container; 75 s outlasts the 60 s idle timeout load balancers use by
# default (a back end that closes first races the front end's next request) and is nginx's
# default. Idle connections also count toward ONNXKIT_MAX_CONNECTIONS, and make way for a new
# one at the cap, so holding them costs no one a connection.
KEEP_ALIVE_SECONDS = 75
APP_FACTORY = "onnxkit.adapters.endpoint.app:app_from_env"


def main(environ: Mapping[str, str] | None = None, *, app_factory: str = APP_FACTORY) -> int:
    """The container's entry point (``serve``): validate, then serve until SIGTERM and drain.

    Configuration errors, and a model folder that does not exist, fail here at once (exit 2)
    rather than in every worker.

    Args:
        environ: The environment (default ``os.environ``).
        app_factory: ``module:function`` each worker calls for its ASGI app (local tools
            wrap the container's own).

    Returns:
        The exit code: 0 after a graceful stop, 2 for bad configuration, 1 when the server
        could not start.
    """
    from onnxkit.aws import AwsClients
    from onnxkit.sources import open_source

    environ = os.environ if environ is None else environ
    configure_logging()
    for name in unknown_variables(environ):
        logger.warning("ignoring unknown variable %s (a typo?)", name)
    try:
        settings = endpoint_settings(environ)
        for old, new in settings.deprecated_variables:
            logger.warning("%s is deprecated; set %s instead", old, new)
        if settings.model.model_dir is not None:
            open_source(settings, AwsClients())  # a missing folder fails now, not per worker
        plan = plan_workers(settings, cpus=available_cpus(dict(environ)), gpus=count_gpus(environ))
    except ConfigurationError as exc:
        logger.error("%s", exc.message)
        return 2
    if settings.endpoint.max_connections < settings.endpoint.max_concurrency:
        logger.warning(
            "ONNXKIT_MAX_CONNECTIONS (%d) is below ONNXKIT_MAX_CONCURRENCY (%d): at most %d "
            "requests can be in flight per worker",
            settings.endpoint.max_connections,
            settings.endpoint.max_concurrency,
            settings.endpoint.max_connections,
        )
    logger.info(
        "starting",
        extra={
            "host": settings.endpoint.host,
            "port": settings.endpoint.port,
            "workers": plan.workers,
            "threads": plan.threads,
            "intra_op_threads": plan.intra_op_threads,
            "gpus": plan.gpus,
            "batch_rows": settings.endpoint.batch_rows,
        },
    )
    config = EndpointConfig(
        app_factory,
        factory=True,
        host=settings.endpoint.host,
        port=settings.endpoint.port,
        workers=plan.workers,
        http=HardenedHttpToolsProtocol,
        loop="auto",  # uvloop when installed (the endpoint extra has it), else asyncio
        lifespan="on",
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=int(settings.endpoint.drain_seconds),
        access_log=False,
        log_config=None,
        server_header=False,
        header_timeout=settings.endpoint.header_timeout,
        body_timeout=settings.endpoint.body_timeout,
        max_connections=settings.endpoint.max_connections,
    )
    server = uvicorn.Server(config)
    # uvicorn drains on SIGTERM/SIGINT, then raises the signal again for whoever handled it
    # before: handle it here, so a drained server exits 0 rather than dying by the signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(
            sig, lambda signum, _: logger.info("stopped by %s", signal.Signals(signum).name)
        )
    folder = readiness_folder(os.getpid())
    try:
        if plan.workers > 1:  # uvicorn's supervisor: spawns, watches and restarts the workers
            from uvicorn.supervisors import Multiprocess

            folder.mkdir(exist_ok=True)
            Multiprocess(config, sockets=[config.bind_socket()]).run()
        else:
            server.run()
    except OSError as exc:
        logger.error(
            "cannot listen on %s:%d: %s",
            settings.endpoint.host,
            settings.endpoint.port,
            exc.strerror or exc,
        )
        return 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if plan.workers == 1 and not server.started:
        return 1
    return 0


class EndpointConfig(uvicorn.Config):
    """uvicorn's config plus what :class:`HardenedHttpToolsProtocol` reads (pickled to workers).

    Args:
        app: The ASGI app, or the ``module:function`` factory of one.
        header_timeout: Seconds for a request's headers, and between the chunks of its body.
        body_timeout: Seconds for a whole body, from the end of its headers.
        max_connections: Connections per worker (None: no cap).
        **kwargs: uvicorn's own settings.
    """

    def __init__(
        self,
        app: Any,
        *,
        header_timeout: float,
        body_timeout: float,
        max_connections: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections


def exit_after(app_factory: str = APP_FACTORY) -> None:
    """Run :func:`main` and exit with its code, skipping interpreter teardown.

    A model load still going in a daemon thread (SIGTERM during loading) must not turn a
    clean stop into a crash at teardown.
    """
    code = main(app_factory=app_factory)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
