"""Every text_* event through the real handler in-process, serving MiniLM (model ``minilm``)
published with its tokenizer (max_length 128, truncation off), S3 from moto.

MiniLM is published once for the module (its 90 MB take about 3 s to publish and load), not
per test. The embeddings are compared with the model run directly in the integration tests
(tests/integration/test_local_invoke.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import (
    EMBEDDING_SIZE,
    TEXT_EVENT_FILES,
    TEXT_MODEL,
    asks_binary_output,
    decode_proxy_reply,
    expected_code,
    expected_status,
    publish_text_model,
    request_sentences,
)
from tests.functional.conftest import (
    BUCKET,
    STORE,
    LambdaContext,
    body_of,
    function_settings,
    mock_aws_env,
)


@pytest.fixture(scope="module")
def text_handler(
    minilm_built: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[dict], dict]]:
    """The function serving ``minilm`` from moto, built once for the module."""
    import boto3
    from moto import mock_aws

    from onnxkit.adapters.lambda_api import build_handler
    from onnxkit.aws import AwsClients
    from onnxkit_tools.registry import Registry

    folder = tmp_path_factory.mktemp("text")
    with pytest.MonkeyPatch.context() as monkeypatch:
        mock_aws_env(monkeypatch)
        with mock_aws():
            s3 = boto3.client("s3", region_name="us-east-1")
            s3.create_bucket(Bucket=BUCKET)
            store = Registry.from_uri(STORE, cache_dir=folder / "publisher-cache", s3_client=s3)
            publish_text_model(store, minilm_built)
            settings = function_settings(folder / "lambda-tmp", ONNXKIT_MODEL_NAME=TEXT_MODEL)
            handler = build_handler(settings, clients=AwsClients(s3=s3))
            yield lambda event: handler(event, LambdaContext())


@pytest.mark.parametrize("event_file", TEXT_EVENT_FILES, ids=lambda p: p.stem)
def test_text_event_returns_the_status_in_its_name(event_file: Path, text_handler) -> None:
    # GIVEN a text event, its body base64-encoded as API Gateway sends it (BinaryMediaTypes */*)
    event = json.loads(event_file.read_text())

    # WHEN the function serving minilm answers it
    response = text_handler(event)

    # THEN the status and error code are the expected ones
    status = expected_status(event_file)
    assert response["statusCode"] == status, response["body"]
    if status >= 400:
        assert response["multiValueHeaders"]["Content-Type"] == ["application/json"]
        assert body_of(response)["error"]["code"] == expected_code(event_file)
        assert body_of(response)["error"]["message"]
        return
    assert expected_code(event_file) is None
    sentences = request_sentences(event)
    if sentences is None:  # the model's metadata
        body = body_of(response)
        assert body["name"] == TEXT_MODEL
        assert "text/plain" in body["parameters"]["content_types"]
        assert body["parameters"]["processed_inputs"] == [
            {"name": "text", "datatype": "BYTES", "shape": [-1]}
        ]
        return
    # AND an inference answers one unit-length embedding per sentence, binary when asked
    binary = asks_binary_output(event)
    assert response["isBase64Encoded"] is binary
    document, outputs = decode_proxy_reply(response)
    assert document["model_name"] == TEXT_MODEL
    embeddings = outputs["sentence_embedding"]
    assert embeddings.dtype == np.float32
    assert embeddings.shape == (len(sentences), EMBEDDING_SIZE)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-3)


def test_a_sentence_gets_the_same_embedding_in_every_form(text_handler) -> None:
    # GIVEN the events that send the sentence "onnxkit serves ONNX models from AWS Lambda."
    # as a list element and as a BYTES element, and the German one as JSON and binary BYTES
    by_sentence: dict[str, list[np.ndarray]] = {}
    for event_file in TEXT_EVENT_FILES:
        if expected_status(event_file) != 200:
            continue
        event = json.loads(event_file.read_text())
        sentences = request_sentences(event)
        if sentences is None:
            continue
        _, outputs = decode_proxy_reply(text_handler(event))
        for sentence, row in zip(sentences, outputs["sentence_embedding"], strict=True):
            by_sentence.setdefault(sentence, []).append(row)

    # THEN each sentence's embedding does not depend on its batch, padding or encoding
    repeated = {sentence: rows for sentence, rows in by_sentence.items() if len(rows) > 1}
    assert len(repeated) >= 2
    for rows in repeated.values():
        for row in rows[1:]:
            np.testing.assert_allclose(row, rows[0], atol=1e-5)
