"""SnapStart runtime hooks: drop AWS connections before the snapshot, refresh after a restore.

Lambda SnapStart snapshots the initialised function (model loaded) once per published
version and resumes every new execution environment from that snapshot, possibly hours or
days later and many times over. What init captured is then stale or shared:

- open connections (and the clients that hold them) point at sockets that no longer exist;
- the model alias may have moved since the snapshot was taken;
- every restored environment starts from the same random state.

``snapshot_restore_py`` (``register_before_snapshot`` / ``register_after_restore``) exists only
in the Lambda Python base images; elsewhere :func:`register_snapstart_hooks` does nothing.
The hook functions are public so tests (and other edges) can drive them directly.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

from onnxkit.aws import AwsClients
from onnxkit.predictor import Serving

logger = logging.getLogger(__name__)


def before_snapshot(clients: AwsClients) -> None:
    """Close and forget the AWS clients made at init, so the snapshot holds no connection.

    Args:
        clients: The clients the function was built with.
    """
    clients.reset()
    logger.info("snapshot: AWS clients dropped")


def reseed(seed: int | None = None) -> None:
    """Reseed ``random`` and numpy's global generator (from the OS when ``seed`` is None).

    Restored environments share the snapshot's random state: without this, every copy draws
    the same "random" numbers.
    """
    import numpy as np  # the runtime's own dependency; imported here to keep this module light

    random.seed(seed)
    np.random.seed(seed if seed is not None else int.from_bytes(os.urandom(4), "little"))


def after_restore(predictor: Serving, clients: AwsClients, *, seed: int | None = None) -> None:
    """Make fresh AWS clients, reseed, and re-read the model alias before the first request.

    A restored snapshot may be older than the alias's last move; reading it now (not at the
    next refresh interval) means no request is served by a version the alias has left.
    A failed re-read is logged by the predictor, which keeps serving and retries later.

    Args:
        predictor: The function's predictor.
        clients: The clients the function was built with.
        seed: A fixed seed (tests); None draws one from the OS.
    """
    clients.reset()
    reseed(seed)
    swapped = predictor.refresh(force=True)
    logger.info("restore: AWS clients renewed, reseeded, alias re-read", extra={"swapped": swapped})


def register_snapstart_hooks(predictor: Serving, clients: AwsClients) -> bool:
    """Register :func:`before_snapshot` and :func:`after_restore` with the Lambda runtime.

    Args:
        predictor: The function's predictor.
        clients: The clients the predictor was built with (``build_predictor(clients=...)``).

    Returns:
        True when registered; False outside a Lambda Python base image (no hooks needed).
    """
    try:
        import snapshot_restore_py
    except ImportError:
        logger.debug("snapshot_restore_py not available: no SnapStart runtime hooks")
        return False
    hooks: Any = snapshot_restore_py
    hooks.register_before_snapshot(before_snapshot, clients)
    hooks.register_after_restore(after_restore, predictor, clients)
    return True
