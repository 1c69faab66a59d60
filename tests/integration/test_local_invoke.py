"""Every file in events/ through `onnxkit local invoke`: the emulator, awslambdaric, moto S3.

``predict_*`` events go to the function serving digits, ``text_*`` events to one serving
MiniLM (``minilm``) with its tokenizer; text embeddings are compared with the model run
directly (the tokenizers library on the package's tokenizer.json, then onnxruntime).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import (
    EMBEDDING_SIZE,
    EVENT_FILES,
    REPO,
    TEXT_EVENT_FILES,
    TEXT_MODEL,
    asks_binary_output,
    decode_proxy_reply,
    expected_code,
    expected_status,
    request_sentences,
)
from tests.integration.conftest import ONNXKIT, cli_env

pytestmark = pytest.mark.integration

MIN_COSINE = 0.9999


def local_invoke(event_file: Path, env_vars: Path) -> dict[str, Any]:
    """`onnxkit local invoke` with an event: the proxy response it prints (exit 0 asserted)."""
    result = subprocess.run(
        [ONNXKIT, "local", "invoke", "--event", str(event_file), "--env-vars", str(env_vars)],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)  # stdout is exactly the Lambda proxy response


def check_status_and_code(response: dict[str, Any], event_file: Path) -> None:
    """The response has the event's expected status, and an error its expected code."""
    status = expected_status(event_file)
    assert response["statusCode"] == status, response
    if status >= 400:
        body = json.loads(response["body"])
        assert set(body["error"]) == {"code", "message"}
        assert body["error"]["code"] == expected_code(event_file)
    elif response["isBase64Encoded"]:  # binary tensors: they must read back
        decode_proxy_reply(response)
    else:
        assert "error" not in json.loads(response["body"])


@pytest.mark.parametrize("event_file", EVENT_FILES, ids=lambda p: p.stem)
def test_local_invoke_returns_the_status_in_the_name(
    event_file: Path, rie: Path, env_vars: Path
) -> None:
    # WHEN the CLI invokes the function under the emulator with this event
    response = local_invoke(event_file, env_vars)

    # THEN it answers the expected status, and an error the expected code
    check_status_and_code(response, event_file)


@pytest.fixture(scope="module")
def embed_directly(minilm_built: Path) -> Any:
    """Sentence -> embedding, computed here: the tokenizers library on the package's own
    tokenizer.json, then onnxruntime on the fp32 export (no onnxkit code involved)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from onnxkit_tools.examples.minilm import tokenizer_file

    tokenizer = Tokenizer.from_file(str(tokenizer_file()))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    session = ort.InferenceSession(
        str(minilm_built / "fp32" / "model.onnx"), providers=["CPUExecutionProvider"]
    )

    def embed(sentence: str) -> np.ndarray:
        encoding = tokenizer.encode(sentence)
        feed = {
            "input_ids": np.array([encoding.ids], dtype=np.int64),
            "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
        }
        return session.run(None, feed)[0][0]

    return embed


@pytest.mark.parametrize("event_file", TEXT_EVENT_FILES, ids=lambda p: p.stem)
def test_local_invoke_serves_the_text_events(
    event_file: Path, rie: Path, text_env_vars: Path, embed_directly: Any
) -> None:
    # GIVEN the function serving MiniLM with its tokenizer (truncation off)
    event = json.loads(event_file.read_text())

    # WHEN the CLI invokes it with this text event
    response = local_invoke(event_file, text_env_vars)

    # THEN it answers the expected status, and an error the expected code
    check_status_and_code(response, event_file)
    sentences = request_sentences(event) if expected_status(event_file) == 200 else None
    if sentences is None:
        return
    # AND an inference answers one unit-length embedding per sentence, binary when asked,
    # the embedding the model gives each sentence on its own
    assert response["isBase64Encoded"] is asks_binary_output(event)
    document, outputs = decode_proxy_reply(response)
    assert document["model_name"] == TEXT_MODEL
    embeddings = outputs["sentence_embedding"]
    assert embeddings.shape == (len(sentences), EMBEDDING_SIZE)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-3)
    for sentence, embedding in zip(sentences, embeddings, strict=True):
        direct = embed_directly(sentence)
        cosine = float(embedding @ direct / np.linalg.norm(embedding) / np.linalg.norm(direct))
        assert cosine >= MIN_COSINE, (sentence, cosine)


def test_local_invoke_starts_its_own_s3_when_none_is_configured(rie: Path, tmp_path: Path) -> None:
    # GIVEN no endpoint and no env-vars file: the command must start moto and seed the default
    env = cli_env()
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")  # build the default model from scratch
    result = subprocess.run(
        [ONNXKIT, "local", "invoke", "--event", "events/predict_infer_200.json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    body = json.loads(json.loads(result.stdout)["body"])
    assert body["outputs"][0]["data"] == [0]
    assert "started a local S3 (moto) at http://127.0.0.1:" in result.stderr


def test_missing_event_file_is_a_clear_error(rie: Path) -> None:
    result = subprocess.run(
        [ONNXKIT, "local", "invoke", "--event", "events/nope.json"],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2  # a usage error, as click (and argparse) report them
    assert "'events/nope.json' does not exist" in result.stderr
    assert "Traceback" not in result.stderr
