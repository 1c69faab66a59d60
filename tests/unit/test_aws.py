"""AwsClients: clients made once, handed out behind handles that a reset renews."""

from __future__ import annotations

from typing import Any

from onnxkit.aws import AwsClients, ClientHandle


class FakeClient:
    def __init__(self, number: int) -> None:
        self.number = number
        self.closed = False

    def get_object(self, **kwargs: Any) -> str:
        return f"client {self.number}"

    def close(self) -> None:
        self.closed = True


def counting_maker() -> tuple[list[FakeClient], Any]:
    made: list[FakeClient] = []

    def make() -> FakeClient:
        made.append(FakeClient(len(made) + 1))
        return made[-1]

    return made, make


def test_a_handle_makes_its_client_once_and_anew_after_a_drop() -> None:
    made, make = counting_maker()
    handle = ClientHandle(make)

    assert made == []  # nothing made until used
    assert handle.get_object(Bucket="b") == "client 1"
    assert handle.get_object(Bucket="b") == "client 1"
    first = handle.client

    handle.drop()

    assert first.closed, "the dropped client's connections are closed"
    assert handle.get_object(Bucket="b") == "client 2"
    assert handle.client is not first
    assert len(made) == 2


def test_reset_renews_made_clients_behind_the_same_handle(monkeypatch: Any) -> None:
    made, make = counting_maker()
    monkeypatch.setattr("onnxkit.aws._client", lambda service, **options: make())
    clients = AwsClients()
    held = clients.s3()  # what the model store keeps
    assert len(made) == 1, "made when asked for, at init"

    clients.reset()

    assert made[0].closed
    assert clients.s3() is held
    assert held.get_object() == "client 2", "the holder now talks through a new client"


def test_reset_keeps_handed_in_clients_unless_asked(monkeypatch: Any) -> None:
    _, make = counting_maker()
    monkeypatch.setattr("onnxkit.aws._client", lambda service, **options: make())
    given = FakeClient(0)
    clients = AwsClients(s3=given)

    clients.reset()
    assert clients.s3() is given
    assert not given.closed, "a client handed in is its owner's to close"

    clients.reset(handed_in=True)
    fresh = clients.s3()
    assert isinstance(fresh, ClientHandle)
    assert fresh.get_object() == "client 1"
    assert not given.closed
