"""Write the events/ files for images, binary tensors and text, and their expected.json entries.

The files are API Gateway REST proxy events built like ``events/predict_infer_200.json``: the
same headers, ``multiValueHeaders`` and ``requestContext``, with a stable UUIDv5 request id,
trace id and request time derived from the file name. The API declares ``BinaryMediaTypes:
*/*`` (template.yaml), so on AWS every request body reaches the function base64-encoded with
``isBase64Encoded: true``; these events carry their bodies that way.

Digit images are rows of scikit-learn's ``load_digits()`` rendered by
``onnxkit_tools.examples.digits.render_digit`` (PNG), converted to JPEG (quality 95) or GIF by
Pillow. A JSON or binary request's ``id`` names its rows and their true labels
(``digits-rows-4-5-labels-4-5``); a bare image body has no id, so its labels go in its
expected.json entry (``"labels"``). Only the files listed here are written; the other
expected.json entries are kept. Usage:

    .venv/bin/python scripts/make_events.py            # write the files
    .venv/bin/python scripts/make_events.py --check    # exit 1 when events/ differs
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import struct
import sys
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EVENTS = REPO / "events"
EXPECTED = "expected.json"

HOST = "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com"
API_KEY = "onnxkitFakeApiKey0123456789abcdefLOCAL"
REQUESTS_AGENT = "python-requests/2.32.3"
TRITON_AGENT = "python/gevent-http-client-2.6.1"  # tritonclient's HTTP client
FIRST_REQUEST = datetime(2024, 6, 1, 13, 0, 0, tzinfo=UTC)  # then one request every 17 s
REQUEST_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "onnxkit/events")

DIGITS_INFER = "/v2/models/digits/infer"
MINILM_INFER = "/v2/models/minilm/infer"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
INVALID = "invalid_input"

# Fixed rows of load_digits(); the int8 model gets each right from its PNG and its JPEG.
ROW_PNG = 2
ROW_JPEG = 3
ROWS_JSON = (4, 5)  # a PNG and a JPEG in one JSON batch
ROWS_BINARY = (6, 7)
ROW_TENSOR = 8
ROW_GIF = 9
ROW_BAD = 0  # the well-formed part of the bad binary requests
BOMB_SIDE = 100_000  # declared in the PNG header: 10^10 pixels, over any limit

SENTENCE = "The quick brown fox jumps over the lazy dog."
SENTENCES = (
    "onnxkit serves ONNX models from AWS Lambda.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Embeddings place similar sentences close together 🚀",
)
LONG_TEXT = " ".join(["A sentence repeated until it is far longer than the model takes."] * 20)
NON_UTF8 = "café crème, naïve façade".encode("latin-1")  # é as the lone byte 0xE9


@dataclass(frozen=True)
class Spec:
    """One event file: the request, and what the function must answer.

    Attributes:
        name: The file name, ``<function>_<scenario>_<status>.json``.
        method: The HTTP method.
        path: The path, without the stage.
        body: The request body's bytes (None: no body).
        content_type: The Content-Type header (None: none is sent).
        headers: More headers (``Inference-Header-Content-Length``).
        accept: The Accept header (None: none is sent).
        agent: The User-Agent.
        status: The status the function must answer with.
        code: The error code it must answer with (None for a success).
        labels: True digit labels, for a body that cannot carry them in a request id.
    """

    name: str
    method: str
    path: str
    body: bytes | None
    content_type: str | None = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    accept: str | None = JSON_TYPE
    agent: str = REQUESTS_AGENT
    status: int = 200
    code: str | None = None
    labels: tuple[int, ...] | None = None

    def expectation(self) -> dict[str, Any]:
        """The file's expected.json entry."""
        entry: dict[str, Any] = {"status": self.status, "code": self.code}
        if self.labels is not None:
            entry["labels"] = list(self.labels)
        return entry


# -- the payloads ------------------------------------------------------------------------------


@cache
def _digits() -> tuple[Any, Any]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data, digits.target


def label_of(row: int) -> int:
    """The true label of a row of load_digits()."""
    return int(_digits()[1][row])


def png_of(row: int) -> bytes:
    """A row of load_digits() as the 8x8 grayscale PNG the digits example renders."""
    from onnxkit_tools.examples.digits import render_digit

    return render_digit(_digits()[0][row])


def _converted(row: int, **save: Any) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    with Image.open(io.BytesIO(png_of(row))) as image:
        image.save(buffer, **save)
    return buffer.getvalue()


def jpeg_of(row: int) -> bytes:
    """A row as JPEG (Pillow, quality 95)."""
    return _converted(row, format="JPEG", quality=95)


def gif_of(row: int) -> bytes:
    """A row as GIF (Pillow): a real image, in a format the digits model does not take."""
    return _converted(row, format="GIF")


def features_of(row: int) -> bytes:
    """A row's 64 features as the binary tensor form: FP32, little-endian."""
    return _digits()[0][row].astype("<f4").tobytes()


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A tiny, well-formed PNG whose header declares ``side`` x ``side`` grayscale pixels.

    Every chunk has a valid CRC, so only the declared size is wrong; the one row of image data
    is stored uncompressed (byte-for-byte the same with any zlib).
    """
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit gray, no interlace
    row = b"\x00" * 16  # filter byte + the first pixels; a decoder never gets this far
    stored = b"\x78\x01\x01" + struct.pack("<HH", len(row), len(row) ^ 0xFFFF) + row
    data = stored + struct.pack(">I", zlib.adler32(row))
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        _png_chunk(kind, payload)
        for kind, payload in ((b"IHDR", header), (b"IDAT", data), (b"IEND", b""))
    )


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def compact(document: Any) -> bytes:
    """Compact JSON bytes (non-ASCII kept as UTF-8, as clients send it)."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def bytes_elements(items: Sequence[bytes]) -> bytes:
    """BYTES elements in the binary form: each a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def binary_request(document: dict[str, Any], tensors: Sequence[bytes]) -> tuple[bytes, int]:
    """A binary-extension body, and the JSON part's length (``Inference-Header-Content-Length``).

    Each input of ``document`` with a ``binary_data_size`` of None gets the length of its
    tensor (in input order).
    """
    chunks = iter(tensors)
    for tensor in document["inputs"]:
        parameters = tensor.get("parameters", {})
        if parameters.get("binary_data_size", 0) is None:
            parameters["binary_data_size"] = len(next(chunks))
    head = compact(document)
    return head + b"".join(tensors), len(head)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _ids(prefix: str, rows: Sequence[int]) -> str:
    if len(rows) == 1:
        return f"{prefix}-row-{rows[0]}-label-{label_of(rows[0])}"
    numbers = "-".join(map(str, rows))
    return f"{prefix}-rows-{numbers}-labels-" + "-".join(str(label_of(r)) for r in rows)


def _features_request(row: int) -> tuple[bytes, int]:
    """Row ``row`` as one FP32 [1,64] binary input (outputs as JSON), and the JSON length."""
    tensor = {
        "name": "input",
        "shape": [1, 64],
        "datatype": "FP32",
        "parameters": {"binary_data_size": None},
    }
    return binary_request({"id": _ids("digits", [row]), "inputs": [tensor]}, [features_of(row)])


# -- the events --------------------------------------------------------------------------------


def digits_specs() -> list[Spec]:
    """The ``predict_*`` events: the digits model's image and binary routes."""
    json_images = {
        "id": _ids("digits", ROWS_JSON),
        "inputs": [
            {
                "name": "image",
                "shape": [2],
                "datatype": "BYTES",
                "data": [_b64(png_of(ROWS_JSON[0])), _b64(jpeg_of(ROWS_JSON[1]))],
            }
        ],
    }
    binary_images, binary_images_length = binary_request(
        {
            "id": _ids("digits", ROWS_BINARY),
            "inputs": [
                {
                    "name": "image",
                    "shape": [len(ROWS_BINARY)],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": None},
                }
            ],
            "parameters": {"binary_data_output": True},
        },
        [bytes_elements([png_of(row) for row in ROWS_BINARY])],
    )
    tensor, tensor_length = _features_request(ROW_TENSOR)
    bad_tensor, bad_length = _features_request(ROW_BAD)
    short = features_of(ROW_BAD)[:192]  # 48 of the 64 floats the JSON part announces
    mismatched = bad_tensor[:bad_length] + short
    garbage = {
        "id": "digits-image-not-base64",
        "inputs": [
            {"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%% not base64 %%%"]}
        ],
    }
    header = "Inference-Header-Content-Length"
    bad = {"status": 400, "code": INVALID}
    return [
        Spec("predict_image_png_200.json", "POST", DIGITS_INFER, png_of(ROW_PNG),
             content_type="image/png", labels=(label_of(ROW_PNG),)),
        Spec("predict_image_jpeg_200.json", "POST", DIGITS_INFER, jpeg_of(ROW_JPEG),
             content_type="image/jpeg", labels=(label_of(ROW_JPEG),)),
        Spec("predict_image_bytes_json_200.json", "POST", DIGITS_INFER, compact(json_images)),
        Spec("predict_image_binary_200.json", "POST", DIGITS_INFER, binary_images,
             content_type=None, accept=None, agent=TRITON_AGENT,
             headers={header: str(binary_images_length)}),
        Spec("predict_binary_tensor_200.json", "POST", DIGITS_INFER, tensor,
             content_type=BINARY_TYPE, headers={header: str(tensor_length)}),
        Spec("predict_image_undecodable_400.json", "POST", DIGITS_INFER,
             b"this is not a PNG image\n", content_type="image/png", **bad),
        Spec("predict_image_bomb_413.json", "POST", DIGITS_INFER, bomb_png(),
             content_type="image/png", status=413, code="payload_too_large"),
        Spec("predict_image_gif_400.json", "POST", DIGITS_INFER, gif_of(ROW_GIF),
             content_type="image/png", **bad),
        Spec("predict_image_wrong_type_415.json", "POST", DIGITS_INFER, gif_of(ROW_GIF),
             content_type="image/gif", status=415, code="unsupported_media_type"),
        Spec("predict_image_garbage_base64_400.json", "POST", DIGITS_INFER, compact(garbage),
             **bad),
        Spec("predict_binary_header_past_end_400.json", "POST", DIGITS_INFER, bad_tensor,
             content_type=BINARY_TYPE, headers={header: str(len(bad_tensor) + 1000)}, **bad),
        Spec("predict_binary_header_negative_400.json", "POST", DIGITS_INFER, bad_tensor,
             content_type=BINARY_TYPE, headers={header: f"-{bad_length}"}, **bad),
        Spec("predict_binary_header_not_a_number_400.json", "POST", DIGITS_INFER, bad_tensor,
             content_type=BINARY_TYPE, headers={header: hex(bad_length)}, **bad),
        Spec("predict_binary_size_mismatch_400.json", "POST", DIGITS_INFER, mismatched,
             content_type=BINARY_TYPE, headers={header: str(bad_length)}, **bad),
        Spec("predict_text_on_image_model_415.json", "POST", DIGITS_INFER,
             b"a photo of the digit seven", content_type="text/plain; charset=utf-8",
             status=415, code="unsupported_media_type"),
    ]  # fmt: skip


def text_specs() -> list[Spec]:
    """The ``text_*`` events: MiniLM (model ``minilm``) published with its tokenizer."""
    bytes_json = {
        "id": "minilm-bytes-two-sentences",
        "inputs": [
            {"name": "text", "shape": [2], "datatype": "BYTES", "data": list(SENTENCES[:2])}
        ],
    }
    encoded = [sentence.encode() for sentence in SENTENCES[1:]]
    binary_text, binary_text_length = binary_request(
        {
            "id": "minilm-binary-two-sentences",
            "inputs": [
                {
                    "name": "text",
                    "shape": [len(encoded)],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": None},
                }
            ],
            "parameters": {"binary_data_output": True},
        },
        [bytes_elements(encoded)],
    )
    header = "Inference-Header-Content-Length"
    bad = {"status": 400, "code": INVALID}
    return [
        Spec("text_plain_200.json", "POST", MINILM_INFER, SENTENCE.encode(),
             content_type="text/plain; charset=utf-8"),
        Spec("text_list_200.json", "POST", MINILM_INFER, compact(list(SENTENCES))),
        Spec("text_bytes_json_200.json", "POST", MINILM_INFER, compact(bytes_json)),
        Spec("text_binary_200.json", "POST", MINILM_INFER, binary_text,
             content_type=BINARY_TYPE, headers={header: str(binary_text_length)}),
        Spec("text_model_metadata_200.json", "GET", "/v2/models/minilm", None),
        Spec("text_non_utf8_400.json", "POST", MINILM_INFER, NON_UTF8,
             content_type="text/plain; charset=utf-8", **bad),
        Spec("text_too_long_400.json", "POST", MINILM_INFER, LONG_TEXT.encode(),
             content_type="text/plain", **bad),
        Spec("text_empty_list_400.json", "POST", MINILM_INFER, b"[]", **bad),
        Spec("text_image_on_text_model_415.json", "POST", MINILM_INFER, png_of(ROW_PNG),
             content_type="image/png", status=415, code="unsupported_media_type"),
    ]  # fmt: skip


def all_specs() -> list[Spec]:
    """Every event this script writes, in the order their request times follow."""
    return [*digits_specs(), *text_specs()]


def build_event(spec: Spec, order: int) -> dict[str, Any]:
    """The API Gateway REST proxy event for one spec (``order`` spaces the request times).

    Raises:
        ValueError: The path is not under ``/v2/``.
    """
    if not spec.path.startswith("/v2/"):
        raise ValueError(f"{spec.name}: {spec.path} is not under /v2/")
    digest = hashlib.sha256(spec.name.encode()).digest()
    when = FIRST_REQUEST + timedelta(seconds=17 * order)
    epoch = int(when.timestamp())
    headers = {
        "Accept": spec.accept,
        "Content-Type": spec.content_type,
        "Host": HOST,
        "User-Agent": spec.agent,
        "X-Amzn-Trace-Id": f"Root=1-{epoch:08x}-{digest.hex()[:24]}",
        "X-Forwarded-For": "127.0.0.1",
        "X-Forwarded-Port": "443",
        "X-Forwarded-Proto": "https",
        "x-api-key": API_KEY,
        **spec.headers,
    }
    headers = {name: headers[name] for name in sorted(headers, key=str.lower) if headers[name]}
    return {
        "resource": "/v2/{proxy+}",
        "path": spec.path,
        "httpMethod": spec.method,
        "headers": headers,
        "multiValueHeaders": {name: [value] for name, value in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": spec.path[len("/v2/") :]},
        "stageVariables": None,
        "requestContext": {
            "accountId": "123456789012",
            "resourceId": "p8x4kd",
            "stage": "Prod",
            "requestId": str(uuid.uuid5(REQUEST_ID_NAMESPACE, spec.name)),
            "extendedRequestId": base64.b32encode(digest).decode()[:16],
            "identity": {
                "sourceIp": "127.0.0.1",
                "userAgent": spec.agent,
                "apiKey": API_KEY,
                "apiKeyId": "fk3y0x7q1z",
                "accessKey": None,
                "accountId": None,
                "caller": None,
                "user": None,
                "userArn": None,
            },
            "resourcePath": "/v2/{proxy+}",
            "httpMethod": spec.method,
            "path": f"/Prod{spec.path}",
            "protocol": "HTTP/1.1",
            "requestTime": when.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "requestTimeEpoch": epoch * 1000,
            "domainName": HOST,
            "domainPrefix": HOST.split(".")[0],
            "apiId": HOST.split(".")[0],
        },
        # BinaryMediaTypes */*: API Gateway base64-encodes every body it passes on.
        "body": None if spec.body is None else _b64(spec.body),
        "isBase64Encoded": spec.body is not None,
    }


def _document(data: Any) -> str:
    return json.dumps(data, indent=2) + "\n"


def render_files(events_dir: Path, specs: Sequence[Spec] | None = None) -> dict[Path, str]:
    """Every file this script writes, with its text: the events and the updated expected.json.

    Raises:
        ValueError: expected.json exists but is not a JSON object.
    """
    specs = all_specs() if specs is None else specs
    files = {events_dir / s.name: _document(build_event(s, i)) for i, s in enumerate(specs)}
    expected_file = events_dir / EXPECTED
    expected: dict[str, Any] = {}
    if expected_file.exists():
        expected = json.loads(expected_file.read_text())
        if not isinstance(expected, dict):
            raise ValueError(f"{expected_file} is not a JSON object")
    expected.update({spec.name: spec.expectation() for spec in specs})
    files[expected_file] = _document(dict(sorted(expected.items())))
    return files


def stale_files(files: dict[Path, str]) -> list[Path]:
    """The files whose text on disk differs from ``files`` (missing ones included)."""
    return [
        path
        for path, text in files.items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    ]


def main(argv: Sequence[str] | None = None, out: Callable[[str], None] = print) -> int:
    """Write (or with --check, compare) the files; the exit status."""
    parser = argparse.ArgumentParser(
        description="Write the image, binary-tensor and text events into events/ and their "
        "entries into events/expected.json (other files and entries are left alone).",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if any file differs from what would be written",
    )
    parser.add_argument(
        "--events-dir", type=Path, default=EVENTS, help="where the events live (default: events/)"
    )
    args = parser.parse_args(argv)
    files = render_files(args.events_dir)
    stale = stale_files(files)
    if args.check:
        for path in stale:
            out(f"differs: {path}")
        if stale:
            out(f"{len(stale)} file(s) differ; run scripts/make_events.py to rewrite them")
            return 1
        out(f"{len(files)} files up to date")
        return 0
    args.events_dir.mkdir(parents=True, exist_ok=True)
    for path in stale:
        path.write_text(files[path], encoding="utf-8")
    out(f"wrote {len(stale)} of {len(files)} files into {args.events_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
