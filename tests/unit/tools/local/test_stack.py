"""The local stack's payload store: created on a local S3 only, never on a remote one."""

from __future__ import annotations

from typing import Any

import pytest

from onnxkit_tools.local import stack
from onnxkit_tools.local.stack import LOCAL_PAYLOAD_STORE, with_payload_store


@pytest.fixture
def created(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Buckets the stack creates, as (endpoint, bucket), without an S3."""
    made: list[tuple[str, str]] = []
    monkeypatch.setattr(stack, "s3_client", lambda endpoint: endpoint)
    monkeypatch.setattr(stack, "ensure_bucket", lambda client, name: made.append((client, name)))
    return made


def test_a_local_s3_gets_a_payload_bucket_and_the_function_its_store(created: Any) -> None:
    env = with_payload_store({"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:4566"})

    assert env["ONNXKIT_PAYLOAD_STORE"] == LOCAL_PAYLOAD_STORE
    assert created == [("http://127.0.0.1:4566", "onnxkit-local-payloads")]


def test_a_store_given_is_kept_and_its_bucket_created(created: Any) -> None:
    env = with_payload_store(
        {"AWS_ENDPOINT_URL": "http://localhost:5000", "ONNXKIT_PAYLOAD_STORE": "s3://mine/p"}
    )

    assert env["ONNXKIT_PAYLOAD_STORE"] == "s3://mine/p"
    assert created == [("http://localhost:5000", "mine")]


@pytest.mark.parametrize("endpoint", [None, "https://s3.eu-west-1.amazonaws.com"])
def test_no_local_s3_no_payload_store(created: Any, endpoint: str | None) -> None:
    env = {"AWS_ENDPOINT_URL_S3": endpoint} if endpoint else {}

    assert with_payload_store(env) == env
    assert created == []
