"""The real handler under a many-image body: refused with 413 from the headers, within a second.

Issue 20, item 4: a body of about 6 MB holding a few hundred highly compressed large PNGs (each
under the digits model's limit of 4096x4096 on its own) cost ~22 s of CPU against a 28 s timeout,
because the per-request pixel budget was counted after the resize to 8x8. The event is built
here (a binary-extension request, as tritonclient sends it), not committed: it is 8 MB.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image

from tests.conftest import EVENTS
from tests.functional.conftest import body_of

DIGITS_LIMIT = 4096 * 4096  # the digits example's max_pixels
BODY_BYTES = 6_000_000  # under ONNXKIT_MAX_REQUEST_BYTES (6 MiB): the body itself is accepted
BINARY_TEMPLATE = EVENTS / "predict_image_binary_200.json"


@pytest.fixture
def handler(published: object, make_handler: Callable[..., Callable[[dict], dict]]) -> Any:
    call = make_handler()
    # The first request waits for the model's load: answer one before anything is timed.
    warm = call(json.loads(BINARY_TEMPLATE.read_text()))
    assert warm["statusCode"] == 200, warm["body"]
    return call


def flat_png(width: int, height: int) -> bytes:
    """A complete single-colour gray PNG: every pixel is in it, deflated to a few kB."""
    buffer = io.BytesIO()
    Image.new("L", (width, height), 255).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def images_event(images: list[bytes]) -> dict[str, Any]:
    """The binary-extension event of events/ with ``images`` as the ``image`` input's BYTES."""
    elements = b"".join(struct.pack("<I", len(image)) + image for image in images)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [len(images)],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(elements)},
                }
            ],
            "outputs": [{"name": "top_labels", "parameters": {"binary_data": False}}],
        },
        separators=(",", ":"),
    ).encode()
    event = json.loads(BINARY_TEMPLATE.read_text())
    event["body"] = base64.b64encode(header + elements).decode()
    event["isBase64Encoded"] = True
    event["headers"]["Inference-Header-Content-Length"] = str(len(header))
    event["multiValueHeaders"]["Inference-Header-Content-Length"] = [str(len(header))]
    return event


def timed(handler: Callable[[dict], dict], event: dict[str, Any]) -> tuple[dict, float]:
    started = time.perf_counter()
    response = handler(event)
    return response, time.perf_counter() - started


def test_a_body_of_many_compressed_large_pngs_is_a_413_within_a_second(handler: Any) -> None:
    # GIVEN about 6 MB of 4000x4000 single-colour PNGs: each under the model's limit, together
    # several billion pixels (each one decoded took ~60 ms of CPU)
    png = flat_png(4000, 4000)
    count = BODY_BYTES // (len(png) + 4)
    assert count >= 200
    event = images_event([png] * count)
    assert len(base64.b64decode(event["body"])) > 5_000_000

    # WHEN the function serves it
    response, elapsed = timed(handler, event)

    # THEN it is refused from the headers (the second image passes the budget), within 1 s
    print(f"\n{count} PNGs of {len(png)} bytes, {4000 * 4000 * count} pixels declared: "
          f"{response['statusCode']} in {elapsed * 1000:.0f} ms")  # fmt: skip
    assert response["statusCode"] == 413, response["body"]
    error = body_of(response)["error"]
    assert error["code"] == "payload_too_large"
    assert error["message"].startswith(
        f"the images up to #1 declare {2 * 4000 * 4000} pixels; the limit for one request is "
        f"{DIGITS_LIMIT}"
    )
    assert elapsed < 1.0


def test_a_body_of_many_tiny_pngs_is_bounded_by_the_batch_size(handler: Any) -> None:
    # GIVEN about 6 MB of 1x1 PNGs: tens of thousands of images, a handful of pixels
    png = flat_png(1, 1)
    count = BODY_BYTES // (len(png) + 4)
    assert count > 50_000

    response, elapsed = timed(handler, images_event([png] * count))

    # THEN the count of images is refused (ONNXKIT_MAX_BATCH_SIZE, 1024 by default) before one
    # is opened
    print(
        f"\n{count} PNGs of {len(png)} bytes: {response['statusCode']} in {elapsed * 1000:.0f} ms"
    )
    assert response["statusCode"] == 413, response["body"]
    assert body_of(response)["error"]["code"] == "payload_too_large"
    assert "batch of" in body_of(response)["error"]["message"]
    assert elapsed < 1.0


def test_a_batch_within_the_budget_is_still_served(handler: Any) -> None:
    # Four 2000x2000 PNGs declare exactly 16,000,000 pixels, under the 16,777,216 budget.
    png = flat_png(2000, 2000)

    response = handler(images_event([png] * 4))

    assert response["statusCode"] == 200, response["body"]
    outputs = {o["name"]: o for o in body_of(response)["outputs"]}
    assert outputs["top_labels"]["shape"][0] == 4
