"""Alias moves are conditional writes; rollback walks the history back; SSE-KMS is applied."""

from __future__ import annotations

from dataclasses import replace

import pytest

from onnxkit.errors import AliasConflictError, ModelNotFoundError
from tests.unit.conftest import BUCKET, BuiltModel, StoreHarness
from tests.unit.test_store import publish


def test_concurrent_promotions_cannot_overwrite_each_other(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    # GIVEN prod -> 1, and two operators who both read it before either writes
    for version in ("1", "2", "3"):
        publish(store, tiny_model, version)
    store.store.set_alias("tiny", "prod", "1")
    stale, etag = store.store._read_alias("tiny", "prod")

    # WHEN one promotes 2, and the other then writes 3 based on its stale read
    store.store.set_alias("tiny", "prod", "2")
    with pytest.raises(AliasConflictError) as raised:
        store.store._write_alias(replace(stale, version="3"), etag)

    # THEN the second write is refused and prod still points at 2
    assert raised.value.status == 409
    assert store.store.get_alias("tiny", "prod").version == "2"


def test_first_write_of_an_alias_is_create_only(
    store: StoreHarness, tiny_model: BuiltModel
) -> None:
    publish(store, tiny_model, "1")
    store.store.set_alias("tiny", "prod", "1")
    record = store.store.get_alias("tiny", "prod")
    with pytest.raises(AliasConflictError):
        store.store._write_alias(record, None)  # "create" when it already exists


def test_rollback_walks_back_and_then_runs_out(store: StoreHarness, tiny_model: BuiltModel) -> None:
    for version in ("1", "2", "3"):
        publish(store, tiny_model, version, alias="prod")

    assert store.store.rollback_alias("tiny", "prod").version == "2"
    record = store.store.rollback_alias("tiny", "prod")
    assert record.version == "1"
    assert record.history == ()
    with pytest.raises(ModelNotFoundError) as raised:
        store.store.rollback_alias("tiny", "prod")
    assert "no earlier version" in raised.value.message
    with pytest.raises(ModelNotFoundError):
        store.store.rollback_alias("tiny", "staging")


def test_list_aliases(store: StoreHarness, tiny_model: BuiltModel) -> None:
    publish(store, tiny_model, "1", alias="prod")
    publish(store, tiny_model, "2", alias="canary")
    assert store.store.list_aliases("tiny") == {"prod": "1", "canary": "2"}


def test_kms_key_is_applied_to_every_write(s3_client, tmp_path, tiny_model: BuiltModel) -> None:
    import boto3

    from onnxkit.store import ModelStore
    from onnxkit_tools.registry import publish_model

    key_id = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["KeyId"]
    store = ModelStore.from_uri(
        f"s3://{BUCKET}/enc", cache_dir=tmp_path / "c", s3_client=s3_client, kms_key_id=key_id
    )
    publish_model(store, tiny_model.path, name="tiny", version="1", alias="prod")
    for key in ("model.onnx", "manifest.json"):
        head = s3_client.head_object(Bucket=BUCKET, Key=f"enc/models/tiny/1/{key}")
        assert head["ServerSideEncryption"] == "aws:kms", key
        assert head["SSEKMSKeyId"].endswith(key_id), key
    head = s3_client.head_object(Bucket=BUCKET, Key="enc/models/tiny/_aliases/prod.json")
    assert head["ServerSideEncryption"] == "aws:kms"
