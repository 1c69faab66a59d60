"""SnapStart runtime hooks driven directly, as the Lambda runtime would around a snapshot.

The real handler over moto S3: version 1 is served when the snapshot is taken, the alias
moves to version 2 while the snapshot sleeps, and the restored function must serve 2 at once.
"""

from __future__ import annotations

import json
import random
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO
from tests.functional.conftest import STORE, LambdaContext, body_of, function_settings

INFER = json.loads((REPO / "events" / "predict_infer_200.json").read_text())


def test_after_restore_serves_the_version_the_alias_moved_to(
    s3: Any, published: Any, digits_dir: Path, tmp_path: Path
) -> None:
    from onnxkit.adapters.lambda_api import build_handler
    from onnxkit.adapters.snapstart import after_restore, before_snapshot
    from onnxkit.aws import AwsClients
    from onnxkit_tools.registry import Registry, publish_model

    # GIVEN a function built with its own clients (made under moto), serving version 1, and
    # an alias re-read only every hour
    clients = AwsClients()
    settings = function_settings(tmp_path / "lambda-tmp", ONNXKIT_REFRESH_SECONDS="3600")
    handler = build_handler(settings, clients=clients)
    assert body_of(handler(INFER, LambdaContext()))["model_version"] == "1"
    s3_before = clients.s3().client

    # WHEN the snapshot is taken, and the alias moves to version 2 while it sleeps
    before_snapshot(clients)
    registry = Registry.from_uri(STORE, cache_dir=tmp_path / "publisher", s3_client=s3)
    publish_model(
        registry, digits_dir / "int8" / "model.onnx", name="digits", version="2", alias="prod"
    )
    # (without the hook, the function would go on serving 1 until the next hourly check)
    assert body_of(handler(INFER, LambdaContext()))["model_version"] == "1"
    after_restore(handler.predictor, clients, seed=7)

    # THEN the next request is served by version 2, through a new S3 client
    response = handler(INFER, LambdaContext())
    assert response["statusCode"] == 200, response["body"]
    assert body_of(response)["model_version"] == "2"
    assert clients.s3().client is not s3_before


def test_reseed_changes_the_random_state_of_both_generators() -> None:
    # GIVEN the state a snapshot would hand to every restored copy
    random.seed(1234)
    np.random.seed(1234)
    py_state, np_state = random.getstate(), np.random.get_state()[1].copy()

    # WHEN reseeded from the OS, THEN neither generator is where the snapshot left it
    from onnxkit.adapters.snapstart import reseed

    reseed()
    assert random.getstate() != py_state
    assert not np.array_equal(np.random.get_state()[1], np_state)

    # AND a fixed seed gives what the standard library and numpy give for it
    reseed(7)
    assert random.random() == random.Random(7).random()
    assert np.random.random() == np.random.RandomState(7).random_sample()


def test_hooks_register_with_the_runtime_module(monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxkit.adapters import snapstart

    # GIVEN a stand-in for snapshot_restore_py (register_*(func, *args), as the real one)
    registered: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
    module = types.SimpleNamespace(
        register_before_snapshot=lambda func, *args: registered.update(before=(func, args)),
        register_after_restore=lambda func, *args: registered.update(after=(func, args)),
    )
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", module)
    predictor, clients = object(), object()

    # WHEN the hooks are registered
    assert snapstart.register_snapstart_hooks(predictor, clients) is True  # type: ignore[arg-type]

    # THEN the runtime will call the two hooks with the function's predictor and clients
    assert registered == {
        "before": (snapstart.before_snapshot, (clients,)),
        "after": (snapstart.after_restore, (predictor, clients)),
    }


def test_no_hooks_outside_a_lambda_base_image(monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxkit.adapters import snapstart

    monkeypatch.setitem(sys.modules, "snapshot_restore_py", None)  # import raises ImportError

    assert snapstart.register_snapstart_hooks(object(), object()) is False  # type: ignore[arg-type]
