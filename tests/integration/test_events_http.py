"""Every bad event replayed over real HTTP to `onnxkit local start-api`; the server still serves.

Each event stands for an HTTP request: its method, path, headers and body (base64-decoded when
``isBase64Encoded``, as API Gateway encoded it). The bad ones (4xx in expected.json) go first,
each answered with its status and our JSON error body; then every good one is answered 200,
so no bad request left the function (one warm environment) unable to serve.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from tests.conftest import (
    EMBEDDING_SIZE,
    EVENT_FILES,
    TEXT_EVENT_FILES,
    decode_reply,
    expected_code,
    expected_labels,
    expected_status,
    request_sentences,
)
from tests.integration.conftest import serve_api

pytestmark = pytest.mark.integration

Reply = tuple[int, dict[str, str], bytes]


@pytest.fixture(scope="module")
def text_start_api(rie: Path, text_env_vars: Path) -> Iterator[str]:
    """`onnxkit local start-api` for the function serving minilm; yields the base URL."""
    with serve_api(text_env_vars) as base:
        yield base


def replay(base: str, event: dict) -> Reply:
    """Send the HTTP request an event stands for; its status, headers (lower-case) and body."""
    body = event.get("body")
    raw = None if body is None else body.encode()
    if body is not None and event.get("isBase64Encoded"):
        with contextlib.suppress(binascii.Error):  # predict_garbage_base64_400: the client's bytes
            raw = base64.b64decode(body, validate=True)
    headers = {k: v for k, v in (event.get("headers") or {}).items() if k.lower() != "host"}
    url = urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=60)
    try:
        connection.request(event["httpMethod"], event["path"], body=raw, headers=headers)
        reply = connection.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        connection.close()


def check_good_reply(event_file: Path, event: dict, reply: Reply) -> None:
    """A 200, and for an inference the right digits or one embedding per sentence."""
    status, headers, body = reply
    assert status == 200, body[:500]
    if not event["path"].endswith("/infer"):
        assert "error" not in json.loads(body)
        return
    document, outputs = decode_reply(
        body, headers["content-type"], headers.get("inference-header-content-length")
    )
    if document["model_name"] == "digits":
        assert outputs["label"].tolist() == expected_labels(event, event_file)
    else:
        sentences = request_sentences(event)
        assert sentences is not None
        assert outputs["sentence_embedding"].shape == (len(sentences), EMBEDDING_SIZE)
        norms = np.linalg.norm(outputs["sentence_embedding"], axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-3)


def replay_bad_then_good(base: str, event_files: list[Path]) -> None:
    """Replay the bad events, each answered with its error; then the good ones, each served."""
    bad = [p for p in event_files if expected_status(p) >= 400]
    good = [p for p in event_files if expected_status(p) == 200]
    assert bad
    assert good

    # WHEN every bad request is sent over HTTP, one after the other
    for event_file in bad:
        status, headers, body = replay(base, json.loads(event_file.read_text()))

        # THEN each gets its 4xx and our JSON error body, with its code
        assert status == expected_status(event_file), (event_file.name, body[:500])
        assert headers["content-type"] == "application/json", event_file.name
        error = json.loads(body)
        assert set(error) == {"error"}
        assert set(error["error"]) == {"code", "message"}
        assert error["error"]["code"] == expected_code(event_file), event_file.name

    # AND afterwards every valid request is still answered, and answered right
    for event_file in good:
        event = json.loads(event_file.read_text())
        check_good_reply(event_file, event, replay(base, event))


def test_digits_server_still_answers_after_every_bad_request(start_api: str) -> None:
    replay_bad_then_good(start_api, EVENT_FILES)


def test_text_server_still_answers_after_every_bad_request(text_start_api: str) -> None:
    replay_bad_then_good(text_start_api, TEXT_EVENT_FILES)
