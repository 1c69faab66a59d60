"""Canaries in the registry (file:// and S3): the alias document, promote, finish, aborts."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest

from onnxkit.canary import abort_canary
from onnxkit.errors import (
    AliasConflictError,
    IntegrityError,
    InvalidInputError,
    ModelNotFoundError,
)
from onnxkit.store import alias_key, parse_alias
from tests.unit.conftest import BuiltModel, StoreHarness
from tests.unit.test_store import publish

ALIAS_KEY = "models/tiny/_aliases/prod.json"


@pytest.fixture
def three(store: StoreHarness, tiny_model: BuiltModel) -> StoreHarness:
    """tiny versions 1, 2 and 3 published; prod -> 1."""
    publish(store, tiny_model, "1", alias="prod")
    publish(store, tiny_model, "2")
    publish(store, tiny_model, "3")
    return store


def stored(store: StoreHarness) -> dict[str, Any]:
    """The alias document as stored (read raw, not through the code under test)."""
    return json.loads(store.get_raw(ALIAS_KEY))


# --- the document ------------------------------------------------------------------------------


def test_an_old_alias_document_parses_as_before() -> None:
    raw = b'{"version": "4", "updated_at": "t", "history": [{"version": 3, "updated_at": "s"}]}'
    record = parse_alias("m", "prod", raw)
    assert (record.version, record.history) == ("4", ({"version": "3", "updated_at": "s"},))
    assert (record.canary_version, record.canary_weight, record.aborted) == (None, 0, None)


def test_a_canary_and_an_abort_parse() -> None:
    raw = json.dumps(
        {
            "version": "1",
            "canary": {"version": 2, "weight": 20},
            "aborted": {"version": "3", "reason": "r", "at": "t"},
        }
    ).encode()
    record = parse_alias("m", "prod", raw)
    assert (record.canary_version, record.canary_weight) == ("2", 20)
    assert record.aborted == {"version": "3", "reason": "r", "at": "t"}
    assert parse_alias("m", "prod", b'{"version": "1", "canary": null}').canary_version is None


@pytest.mark.parametrize("weight", [0, 100, -5])
def test_a_canary_weight_outside_1_to_99_is_an_integrity_error(weight: int) -> None:
    raw = json.dumps({"version": "1", "canary": {"version": "2", "weight": weight}}).encode()
    with pytest.raises(IntegrityError) as raised:
        parse_alias("m", "prod", raw)
    assert f"canary weight {weight} is not 1-99" in raised.value.message


# --- promote --canary, --finish, rollback ------------------------------------------------------


def test_start_reweight_and_finish_a_canary(three: StoreHarness) -> None:
    three.store.set_canary("tiny", "prod", "2", 20)
    document = stored(three)
    assert (document["version"], document["canary"]) == ("1", {"version": "2", "weight": 20})
    assert document["history"] == []

    three.store.set_canary("tiny", "prod", "2", 50)  # the same version: a new weight
    assert stored(three)["canary"] == {"version": "2", "weight": 50}

    record = three.store.finish_canary("tiny", "prod")
    document = stored(three)
    assert (document["version"], document["canary"]) == ("2", None)
    assert [h["version"] for h in document["history"]] == ["1"]
    assert record.version == "2"


def test_a_second_canary_the_stable_version_and_bad_weights_are_refused(
    three: StoreHarness,
) -> None:
    three.store.set_canary("tiny", "prod", "2", 20)
    before = three.get_raw(ALIAS_KEY)

    with pytest.raises(AliasConflictError) as running:
        three.store.set_canary("tiny", "prod", "3", 10)
    assert running.value.code == "canary_running"
    assert "already runs canary 2 (20%)" in running.value.message
    with pytest.raises(AliasConflictError) as plain:
        three.store.set_alias("tiny", "prod", "3")
    assert "finish it (promote --finish) or roll it back" in plain.value.message
    with pytest.raises(InvalidInputError) as same:
        three.store.set_canary("tiny", "prod", "1", 10)
    assert "already serves version 1 as its stable version" in same.value.message
    with pytest.raises(InvalidInputError):
        three.store.set_canary("tiny", "prod", "2", 100)
    with pytest.raises(ModelNotFoundError):
        three.store.set_canary("tiny", "prod", "9", 10)
    assert three.get_raw(ALIAS_KEY) == before, "a refusal writes nothing"


def test_rollback_drops_a_canary_then_walks_back_as_before(three: StoreHarness) -> None:
    three.store.set_alias("tiny", "prod", "2")  # history: 1
    three.store.set_canary("tiny", "prod", "3", 20)

    three.store.rollback_alias("tiny", "prod")
    document = stored(three)
    assert (document["version"], document["canary"]) == ("2", None)
    assert document["aborted"]["version"] == "3"
    assert document["aborted"]["reason"] == "rolled back by hand"

    assert three.store.rollback_alias("tiny", "prod").version == "1"  # no canary: walk back
    with pytest.raises(ModelNotFoundError) as none:
        three.store.finish_canary("tiny", "prod")
    assert none.value.code == "no_canary"


def test_a_new_canary_clears_the_last_abort(three: StoreHarness) -> None:
    three.store.set_canary("tiny", "prod", "2", 20)
    three.store.rollback_alias("tiny", "prod")
    assert "aborted" in stored(three)
    three.store.set_canary("tiny", "prod", "3", 20)
    assert "aborted" not in stored(three)


def race(*writers: Callable[[], object], after_read: Callable[[], None]) -> list[object]:
    """Run writers in threads that all read before any writes; each result or exception."""
    results: list[object] = [None] * len(writers)

    def run(i: int) -> None:
        try:
            results[i] = writers[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(writers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_two_canary_promotions_from_the_same_read_exactly_one_wins(
    three: StoreHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN two operators whose reads both happen before either writes
    barrier = threading.Barrier(2, timeout=10)
    read = three.store._read_alias

    def read_then_wait(name: str, alias: str) -> Any:
        result = read(name, alias)
        barrier.wait()
        return result

    monkeypatch.setattr(three.store, "_read_alias", read_then_wait)

    # WHEN one starts canary 2 and the other canary 3
    results = race(
        lambda: three.store.set_canary("tiny", "prod", "2", 20),
        lambda: three.store.set_canary("tiny", "prod", "3", 30),
        after_read=barrier.wait,
    )

    # THEN exactly one wrote, the other got the conflict, and the stored canary is the winner's
    conflicts = [r for r in results if isinstance(r, AliasConflictError)]
    winners = [r for r in results if not isinstance(r, Exception)]
    assert len(conflicts) == 1, results
    assert len(winners) == 1, results
    assert conflicts[0].code == "alias_conflict"
    assert stored(three)["canary"]["version"] == winners[0].canary_version  # type: ignore[attr-defined]


# --- the runtime's abort -----------------------------------------------------------------------


def test_abort_writes_canary_null_and_the_reason(three: StoreHarness) -> None:
    three.store.set_canary("tiny", "prod", "2", 20)
    blobs = three.store.blobs

    assert abort_canary(blobs, "tiny", "prod", "2", "9 of 10 failed", now=lambda: "T") is True

    document = stored(three)
    assert document["version"] == "1"
    assert document["canary"] is None
    assert document["aborted"] == {"version": "2", "reason": "9 of 10 failed", "at": "T"}
    assert three.store.list_aliases("tiny") == {"prod": "1"}
    # a second abort, or one for a version that is not the canary, writes nothing
    before = three.get_raw(ALIAS_KEY)
    assert abort_canary(blobs, "tiny", "prod", "2", "again") is False
    assert three.get_raw(ALIAS_KEY) == before


def test_an_abort_that_loses_to_a_finish_writes_nothing(three: StoreHarness) -> None:
    # GIVEN canary 2, and an operator who finishes it between the abort's read and write
    three.store.set_canary("tiny", "prod", "2", 20)
    blobs = three.store.blobs
    real_read = blobs.read_versioned
    reads: list[str] = []

    def read_then_finish(key: str) -> tuple[bytes, str]:
        result = real_read(key)
        reads.append(key)
        if len(reads) == 1:
            three.store.finish_canary("tiny", "prod")
        return result

    blobs.read_versioned = read_then_finish  # type: ignore[method-assign]

    # WHEN the runtime aborts: its write is refused (412), it reads again, the canary is gone
    assert abort_canary(blobs, "tiny", "prod", "2", "failing") is False

    # THEN the finish stands
    document = stored(three)
    assert (document["version"], document["canary"]) == ("2", None)
    assert "aborted" not in document
    # the abort's read, the finish's own, and the abort's second read after the 412
    assert reads == [alias_key("tiny", "prod")] * 3


def test_two_instances_aborting_at_once_write_once(
    three: StoreHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    three.store.set_canary("tiny", "prod", "2", 20)
    blobs = three.store.blobs
    barrier = threading.Barrier(2, timeout=10)
    real_read = blobs.read_versioned
    first_round = threading.local()

    def read_then_wait(key: str) -> tuple[bytes, str]:
        result = real_read(key)
        if not getattr(first_round, "done", False):
            first_round.done = True
            barrier.wait()
        return result

    monkeypatch.setattr(blobs, "read_versioned", read_then_wait)

    results = race(
        lambda: abort_canary(blobs, "tiny", "prod", "2", "instance a", now=lambda: "A"),
        lambda: abort_canary(blobs, "tiny", "prod", "2", "instance b", now=lambda: "B"),
        after_read=barrier.wait,
    )

    assert sorted(results, key=str) == [False, True]
    assert stored(three)["canary"] is None
    winner = "instance a" if results[0] is True else "instance b"
    assert stored(three)["aborted"]["reason"] == winner


# --- the CLI -----------------------------------------------------------------------------------


def test_the_cli_starts_lists_finishes_and_drops_a_canary(
    tiny_model: BuiltModel, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from onnxkit_tools.cli import main

    store = f"file://{tmp_path / 'store'}"
    publish_args = ["publish", str(tiny_model.path), "--name", "tiny", "--store", store]
    assert main([*publish_args, "--alias", "prod"]) == 0
    assert main(publish_args) == 0
    assert main(publish_args) == 0
    capsys.readouterr()

    assert main(["models", "promote", "tiny", "2", "--canary", "20", "--store", store]) == 0
    assert capsys.readouterr().out == "tiny@prod: 1, canary 2 at 20% of requests\n"
    assert main(["models", "list", "--store", store]) == 0
    assert capsys.readouterr().out == (
        "tiny: versions 1, 2, 3; aliases prod->1 (canary 2 at 20%)\n"
    )
    assert main(["models", "promote", "tiny", "3", "--canary", "5", "--store", store]) == 1
    assert "error [canary_running]: tiny@prod already runs canary 2" in capsys.readouterr().err

    assert main(["models", "promote", "tiny", "--finish", "--store", store]) == 0
    assert capsys.readouterr().out == "tiny@prod: 1 -> 2 (canary finished)\n"

    assert main(["models", "promote", "tiny", "3", "--canary", "10", "--store", store]) == 0
    assert main(["models", "rollback", "tiny", "--store", store]) == 0
    out = capsys.readouterr().out
    assert out.endswith("tiny@prod: canary 3 dropped; serving 2\n")
    assert main(["models", "list", "--store", store]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith("tiny: versions 1, 2, 3; aliases prod->2 (canary 3 aborted ")
    assert listed.endswith(": rolled back by hand)\n")
    assert main(["models", "promote", "tiny", "--store", store]) == 2  # no VERSION, no --finish
