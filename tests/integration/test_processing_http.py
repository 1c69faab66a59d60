"""Text and images in, over real HTTP: tritonclient with its defaults (binary tensors both ways)
and curl, against `onnxkit local start-api` and `onnxkit local start-endpoint`.

The references are computed here, apart from the code under test: the tokenizer run directly with
the ``tokenizers`` library and the fp32 graph with onnxruntime (MiniLM), and the tensor path of
the same rows (digits).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxkit_tools.net import free_port, wait_http
from onnxkit_tools.numeric import row_cosines
from tests.conftest import REPO, TEXT_MAX_LENGTH, TEXT_MODEL
from tests.integration.conftest import ONNXKIT, cli_env

pytestmark = pytest.mark.integration

MIN_COSINE = 0.9999
PNG_BATCH = 64


@contextmanager
def serving(command: str, env_vars: Path, ready: str, log: Path) -> Iterator[str]:
    """`onnxkit local COMMAND --env-vars FILE` on a free port; yields its base URL."""
    port = free_port()
    extra = ["--workers", "1"] if command == "start-endpoint" else []
    with log.open("wb") as out:
        process = subprocess.Popen(
            [ONNXKIT, "local", command, "--port", str(port), "--env-vars", str(env_vars), *extra],
            cwd=REPO, env=cli_env(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(f"{base}{ready}", process=process, timeout_s=180)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{log.read_text(errors='replace')[-3000:]}") from exc
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


EDGES = ["start-api", "start-endpoint"]


def serve_edge(command: str, env_vars: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The function's local API, or the endpoint server, over the model ``env_vars`` names."""
    ready = "/v2/health/ready" if command == "start-api" else "/ping"
    return serving(command, env_vars, ready, tmp_path_factory.mktemp(command) / "server.log")


@pytest.fixture(scope="module", params=EDGES)
def text_server(
    request: pytest.FixtureRequest, text_env_vars: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The text model behind the function's local API, then behind the endpoint server."""
    with serve_edge(request.param, text_env_vars, tmp_path_factory) as base:
        yield base


@pytest.fixture(scope="module", params=EDGES)
def digits_server(
    request: pytest.FixtureRequest, env_vars: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """digits (image preprocessing, labels) behind the local API, then the endpoint server."""
    with serve_edge(request.param, env_vars, tmp_path_factory) as base:
        yield base


def reference_embeddings(folder: Path, texts: list[str]) -> np.ndarray:
    """The fp32 pipeline run directly: the tokenizer (tokenizers) then the graph (onnxruntime)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from onnxkit_tools.examples.minilm import tokenizer_file

    tokenizer = Tokenizer.from_file(str(tokenizer_file()))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    session = ort.InferenceSession(str(folder / "fp32" / "model.onnx"))
    rows = []
    for text in texts:  # one at a time: no padding at all, the plainest reference
        encoding = tokenizer.encode(text)
        feed = {
            "input_ids": np.array([encoding.ids], np.int64),
            "attention_mask": np.array([encoding.attention_mask], np.int64),
        }
        rows.append(session.run(None, feed)[0][0])
    return np.stack(rows)


def short_texts() -> list[str]:
    """The example's varied validation texts that fit in 128 tokens (truncation is off)."""
    from tokenizers import Tokenizer

    from onnxkit_tools.examples.minilm import tokenizer_file, validation_texts

    tokenizer = Tokenizer.from_file(str(tokenizer_file()))
    tokenizer.no_truncation()
    texts = [t for t in validation_texts() if len(tokenizer.encode(t).ids) <= TEXT_MAX_LENGTH]
    return texts[:24]


def test_tritonclient_defaults_send_sentences_and_get_the_fp32_embeddings(
    text_server: str, minilm_built: Path
) -> None:
    import tritonclient.http as httpclient

    # GIVEN varied sentences as a BYTES input, with tritonclient's defaults: binary tensors in,
    # and (no outputs named) binary tensors out
    texts = short_texts()
    client = httpclient.InferenceServerClient(text_server.removeprefix("http://"))
    tensor = httpclient.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))

    # WHEN it infers
    result = client.infer(TEXT_MODEL, [tensor])

    # THEN the embeddings are the fp32 pipeline's, sentence by sentence
    served = result.as_numpy("sentence_embedding")
    expected = reference_embeddings(minilm_built, texts)
    assert served.shape == expected.shape == (len(texts), 384)
    cosines = row_cosines(served, expected)
    print(f"\n{text_server}: {len(texts)} sentences, min cosine {cosines.min():.7f}")
    assert cosines.min() >= MIN_COSINE
    assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] == served.nbytes


def test_a_bare_sentence_and_a_json_list_answer_like_the_bytes_input(text_server: str) -> None:
    texts = ["a cat sat on the mat", "ein Hund läuft im Park"]
    plain = post(f"{text_server}/v2/models/{TEXT_MODEL}/infer", texts[0].encode(), "text/plain")
    listed = post(f"{text_server}/v2/models/{TEXT_MODEL}/infer", json.dumps(texts).encode())

    one = embedding(plain)
    both = embedding(listed)
    assert both.shape == (2, 384)
    np.testing.assert_allclose(one[0], both[0], atol=1e-5)


def test_tritonclient_defaults_send_pngs_and_reach_the_tensor_path_accuracy(
    digits_server: str, digits_dir: Path, digits_validation: Any
) -> None:
    import onnxruntime as ort
    import tritonclient.http as httpclient

    from onnxkit_tools.examples.digits import render_digit

    # GIVEN the held-out split, once as PNGs and once as the tensors the PNGs were made from
    features, labels = digits_validation
    client = httpclient.InferenceServerClient(digits_server.removeprefix("http://"))
    predicted, top_labels = [], []
    for start in range(0, len(features), PNG_BATCH):
        rows = features[start : start + PNG_BATCH]
        images = np.array([render_digit(row) for row in rows], dtype=object)
        tensor = httpclient.InferInput("image", [len(images)], "BYTES")
        tensor.set_data_from_numpy(images)  # binary_data=True: tritonclient's default
        # WHEN each batch of PNGs is sent (outputs binary too, none named)
        result = client.infer("digits", [tensor])
        predicted.append(result.as_numpy("label"))
        top_labels.append(result.as_numpy("top_labels"))

    # THEN they reach at least the accuracy of the tensor path on the same rows
    session = ort.InferenceSession(str(digits_dir / "int8" / "model.onnx"))
    (tensor_labels,) = session.run(["label"], {"input": features})
    png_accuracy = float(np.mean(np.concatenate(predicted) == labels))
    tensor_accuracy = float(np.mean(tensor_labels == labels))
    print(
        f"\n{digits_server}: {len(labels)} held-out PNGs, accuracy {png_accuracy:.4f} "
        f"(tensor path {tensor_accuracy:.4f})"
    )
    assert png_accuracy >= tensor_accuracy, (png_accuracy, tensor_accuracy)
    # AND the labels file names the top class: "0".."9", the label output as text
    first = np.concatenate(top_labels)[:, 0]
    assert [int(x) for x in first] == np.concatenate(predicted).tolist()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_readme_s_curl_line_posts_a_png_file(digits_server: str, tmp_path: Path) -> None:
    from onnxkit_tools.examples.digits import render_digit

    features, label = digit_row(7)
    image = tmp_path / "digit.png"
    image.write_bytes(render_digit(features))

    result = subprocess.run(
        ["curl", "-s", "-X", "POST", f"{digits_server}/v2/models/digits/infer",
         "-H", "Content-Type: image/png", "--data-binary", f"@{image}"],
        capture_output=True, timeout=30, check=True,
    )  # fmt: skip

    outputs = {o["name"]: o["data"] for o in json.loads(result.stdout)["outputs"]}
    assert outputs["label"] == [label]
    assert outputs["top_labels"][0] == str(label)


def digit_row(index: int) -> tuple[np.ndarray, int]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data[index], int(digits.target[index])


def post(url: str, body: bytes, content_type: str = "application/json") -> Any:
    import urllib.request

    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.loads(reply.read())


def embedding(answer: Any) -> np.ndarray:
    (output,) = answer["outputs"]
    return np.array(output["data"], np.float32).reshape(output["shape"])


def test_a_body_of_many_large_pngs_is_refused_within_a_second_while_ping_answers(
    digits_server: str, request: pytest.FixtureRequest
) -> None:
    """Issue 20's acceptance: the function answers the many-image body with 413 within 1 s;
    the endpoint does too and keeps answering /ping within 1 s meanwhile. Before: the body's
    billions of pixels were decoded (about 20 s of CPU), /ping blocked behind them."""
    import io
    import struct
    import threading
    import time
    import urllib.error
    import urllib.request

    from PIL import Image

    # GIVEN about 4 MB of 4000x4000 single-colour PNGs (the local API takes 6 MB of event, in
    # which a binary body is base64), each under the model's limit, together billions of pixels
    buffer = io.BytesIO()
    Image.new("L", (4000, 4000), 255).save(buffer, "PNG", optimize=True)
    png = buffer.getvalue()
    count = 4_000_000 // (len(png) + 4)
    elements = b"".join(struct.pack("<I", len(png)) + png for _ in range(count))
    tensor = {"name": "image", "shape": [count], "datatype": "BYTES"}
    header = json.dumps(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": len(elements)}}]}
    ).encode()
    edge = request.node.callspec.params["digits_server"]
    pings: list[float] = []
    done = threading.Event()

    def ping() -> None:  # the endpoint's health check, as SageMaker sends it
        while not done.is_set():
            started = time.perf_counter()
            with urllib.request.urlopen(f"{digits_server}/ping", timeout=10) as reply:
                assert reply.status == 200
            pings.append(time.perf_counter() - started)
            time.sleep(0.02)

    pinger = threading.Thread(target=ping, daemon=True)
    if edge == "start-endpoint":
        pinger.start()

    # WHEN it is posted
    started = time.perf_counter()
    post_request = urllib.request.Request(
        f"{digits_server}/v2/models/digits/infer",
        data=header + elements,
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        },
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(post_request, timeout=60)
    elapsed = time.perf_counter() - started
    done.set()
    if edge == "start-endpoint":
        pinger.join(timeout=15)

    # THEN it is a 413 within a second, and every /ping meanwhile answered within a second
    print(f"\n{edge}: {count} PNGs, 413 in {elapsed * 1000:.0f} ms; pings {len(pings)}, "
          f"slowest {max(pings, default=0) * 1000:.0f} ms")  # fmt: skip
    assert refused.value.code == 413
    assert json.loads(refused.value.read())["error"]["code"] == "payload_too_large"
    assert elapsed < 1.0
    assert max(pings, default=0.0) < 1.0
    assert edge != "start-endpoint" or pings
