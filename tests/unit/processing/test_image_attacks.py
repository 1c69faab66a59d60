"""Image preprocessing under attack: budgets read from headers, declarations that ask too much.

Written as a client or a store writer would attack: many highly compressed large images in one
request, an image whose aspect ratio blows up a resize, declarations whose sizes make Pillow
allocate gigabytes from a 67-byte PNG. Every expected count is computed here from the sizes the
test chose, never read from the module under test.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import time
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from onnxkit.errors import PayloadTooLargeError
from onnxkit.processing.image import ImageDecoder, ImageSpec
from tests.unit.processing.test_image import encode, header_only_png, png_chunk

DIGITS_LIKE = {"max_pixels": 4096 * 4096, "color": "L", "resize": [8, 8], "layout": "NF"}
"""The digits example's declaration: 8x8 gray features from images up to 4096x4096."""


class PixelsTouched(BaseException):
    """Raised by the spies: a BaseException, so no ``except Exception`` in the decoder hides it."""


class Spy:
    """Counts (or forbids) pixel decoding (``ImageFile.load``) and resizing (``Image.resize``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, forbid: bool) -> None:
        self.loads = 0
        self.resizes: list[tuple[int, int]] = []
        load, resize = ImageFile.ImageFile.load, Image.Image.resize

        def spy_load(image: Any, *args: Any, **kwargs: Any) -> Any:
            self.loads += 1
            if forbid:
                raise PixelsTouched(f"pixels of a {image.size} image decoded")
            return load(image, *args, **kwargs)

        def spy_resize(image: Any, size: Any, *args: Any, **kwargs: Any) -> Any:
            self.resizes.append(tuple(size))
            if forbid:
                raise PixelsTouched(f"resize to {tuple(size)} (from {image.size}) called")
            return resize(image, size, *args, **kwargs)

        monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
        monkeypatch.setattr(Image.Image, "resize", spy_resize)


@pytest.fixture
def forbidden(monkeypatch: pytest.MonkeyPatch) -> Spy:
    """Any pixel decoded or resized fails the test at once (with PixelsTouched)."""
    return Spy(monkeypatch, forbid=True)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Spy:
    """Pixel decoding and resizing still work, and are counted."""
    return Spy(monkeypatch, forbid=False)


def flat_png(width: int, height: int) -> bytes:
    """A real, complete single-colour gray PNG: every pixel is in it, and it is tiny."""
    buffer = io.BytesIO()
    Image.new("L", (width, height), 255).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def one_column_png(height: int) -> bytes:
    """A complete 1-pixel-wide gray PNG of ``height`` rows (filter byte + one pixel each)."""
    ihdr = (1).to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    idat = zlib.compress(b"\x00\x80" * height, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


# --- item 4: the decode budget is read from the headers, summed over the request ------------


def test_many_compressed_large_images_are_refused_before_any_pixel_is_decoded(
    forbidden: Spy,
) -> None:
    # GIVEN a few hundred 4000x4000 single-colour PNGs (each a few kB, each under the limit
    # of 4096x4096 on its own): billions of pixels in a body of about 6 MB
    png = flat_png(4000, 4000)
    assert len(png) < 32_000
    images = [png] * 290
    decoder = ImageDecoder(ImageSpec.from_dict({"feeds": "x", **DIGITS_LIKE}))

    # WHEN they are decoded as one request
    started = time.perf_counter()
    with pytest.raises(PayloadTooLargeError) as caught:
        decoder.decode(images)
    elapsed = time.perf_counter() - started

    # THEN the request is refused from the headers (the second one already passes the budget),
    # without a pixel decoded or resized, well within a second
    assert caught.value.status == 413
    assert caught.value.message == (
        f"the images up to #1 declare {2 * 4000 * 4000} pixels; the limit for one request is "
        f"{4096 * 4096}: send fewer or smaller images per request"
    )
    assert (forbidden.loads, forbidden.resizes) == (0, [])
    assert elapsed < 1.0


def test_the_header_budget_is_the_sum_over_the_request(counted: Spy) -> None:
    # GIVEN 50x50 images (2,500 pixels each) and a budget of 10,000 pixels per request
    png = encode(np.full((50, 50), 7, dtype=np.uint8))
    decoder = ImageDecoder(ImageSpec(feeds="x", color="L", layout="NHW", max_pixels=10_000))

    # THEN four images fit exactly (10,000 pixels)
    assert decoder.decode([png] * 4).shape == (4, 50, 50)
    assert counted.loads > 0

    # AND a fifth is refused from the headers (12,500 pixels), before any pixel is decoded
    counted.loads = 0
    with pytest.raises(PayloadTooLargeError, match=r"up to #4 declare 12500 pixels.* 10000:"):
        decoder.decode([png] * 5)
    assert counted.loads == 0


def test_a_damaged_image_after_the_budget_is_refused_by_the_budget(forbidden: Spy) -> None:
    # The budget is checked over every header first: pixels after it are never looked at.
    decoder = ImageDecoder(ImageSpec(feeds="x", color="L", max_pixels=100))

    with pytest.raises(PayloadTooLargeError, match=r"up to #1 declare 128 pixels"):
        decoder.decode([header_only_png(8, 8), header_only_png(8, 8), b"not an image"])


# --- the pixels after resizing are bounded before the resize ---------------------------------


def test_resize_shorter_of_a_one_pixel_wide_image_is_refused_before_resizing(
    forbidden: Spy,
) -> None:
    # GIVEN a complete 1 x 16,000,000 PNG (under the 4096x4096 default limit) and an ImageNet
    # declaration: the shorter side to 224 would make 224 x 3,584,000,000 pixels
    png = one_column_png(16_000_000)
    assert len(png) < 100_000
    decoder = ImageDecoder(ImageSpec(feeds="x", resize_shorter=224, crop=(224, 224)))

    with pytest.raises(PayloadTooLargeError) as caught:
        decoder.decode([png])

    resized = 224 * int(224 * 16_000_000 / 1)
    assert caught.value.message == (
        f"image #0 is 1x16000000: resized to a shorter side of 224 it would hold {resized} "
        "pixels; the limit is 16777216"
    )
    assert (forbidden.loads, forbidden.resizes) == (0, [])


def test_resize_shorter_portrait_and_landscape_count_alike(counted: Spy) -> None:
    # 40x10 and 10x40 both become 256 x 1024 (or 1024 x 256) = 262,144 pixels
    landscape, portrait = flat_png(40, 10), flat_png(10, 40)
    decoder = ImageDecoder(ImageSpec(feeds="x", resize_shorter=256, max_pixels=262_144))

    assert decoder.decode([landscape]).shape == (1, 3, 256, 1024)
    assert decoder.decode([portrait]).shape == (1, 3, 1024, 256)
    with pytest.raises(PayloadTooLargeError, match=r"up to #1 hold 524288 pixels after resizing"):
        decoder.decode([landscape, portrait])
    assert counted.resizes == [(1024, 256), (256, 1024)]  # the refused request resized nothing


def test_the_batch_after_resizing_is_refused_before_resizing(forbidden: Spy) -> None:
    # GIVEN 1x1 PNGs (67 bytes) upscaled to 1000x1000, and 2,500,000 pixels per request
    tiny = flat_png(1, 1)
    decoder = ImageDecoder(ImageSpec(feeds="x", color="L", resize=(1000, 1000),
                                     max_pixels=2_500_000))  # fmt: skip

    # THEN three are refused (3,000,000 pixels after resizing) before one is resized
    with pytest.raises(PayloadTooLargeError) as caught:
        decoder.decode([tiny] * 3)
    assert caught.value.message == (
        "the images up to #2 hold 3000000 pixels after resizing; the limit for one request is "
        "2500000: send fewer images per request"
    )
    assert (forbidden.loads, forbidden.resizes) == (0, [])


def test_two_upscaled_images_fit_the_budget(counted: Spy) -> None:
    tiny = flat_png(1, 1)
    spec = ImageSpec(feeds="x", color="L", resize=(1000, 1000), max_pixels=2_500_000, scale=1.0)

    batch = ImageDecoder(spec).decode([tiny] * 2)

    assert batch.shape == (2, 1, 1000, 1000)
    assert (batch == 255).all()
    assert counted.resizes == [(1000, 1000)] * 2


# --- item 5: declaration sizes are bounded when the declaration is read ----------------------


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"resize": [100_000, 100_000]}, r"resize 100000x100000: each side must be at most 8192"),
        ({"resize": [9000, 9000]}, r"resize 9000x9000: each side must be at most 8192"),
        ({"resize": [64, 9000]}, r"resize 64x9000: each side must be at most 8192"),
        ({"crop": [9000, 9000]}, r"crop 9000x9000: each side must be at most 8192"),
        ({"resize_shorter": 9000}, r"resize_shorter 9000 must be at most 8192"),
        ({"max_pixels": 2**26 + 1}, r"max_pixels 67108865 must be at most 67108864"),
        ({"max_pixels": 10**12}, r"max_pixels 1000000000000 must be at most 67108864"),
        # Each side within bounds, but one image alone would pass the request's budget.
        ({"resize": [8192, 8192]}, r"resize 8192x8192 makes 67108864 pixels.*max_pixels 16777216"),
        ({"crop": [5000, 5000]}, r"crop 5000x5000 makes 25000000 pixels.*max_pixels 16777216"),
        ({"resize_shorter": 5000}, r"resize_shorter 5000 makes at least 25000000 pixels"),
        ({"resize": [224, 224], "max_pixels": 50_000}, r"50176 pixels.*max_pixels 50000"),
    ],
)
def test_oversize_declarations_are_refused_when_read(fields: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        ImageSpec.from_dict({"feeds": "x", **fields})


@pytest.mark.parametrize(
    "fields",
    [
        {"resize": [4096, 4096]},
        {"resize": [8192, 8192], "max_pixels": 2**26},
        {"resize_shorter": 4096, "crop": [4096, 4096]},
        {"resize": [1, 8192], "max_pixels": 8192},
        {"max_pixels": 2**26},
    ],
)
def test_declarations_at_the_bounds_are_accepted(fields: dict[str, Any]) -> None:
    spec = ImageSpec.from_dict({"feeds": "x", **fields})

    assert ImageSpec.from_dict(spec.to_dict()) == spec


# What a request does with a declaration: parse it (as the manifest is read), then decode a
# 67-byte PNG with it. The address space is capped at 2 GiB over what the imports take, so a
# declaration that still reaches Pillow fails with MemoryError instead of taking the machine.
_MEASURE = textwrap.dedent(
    """
    import io, json, resource, sys
    from PIL import Image
    from onnxkit.processing.image import ImageDecoder, ImageSpec

    tiny = io.BytesIO(); Image.new("RGB", (1, 1)).save(tiny, "PNG"); tiny = tiny.getvalue()
    ImageDecoder(ImageSpec(feeds="x", resize=(8, 8))).decode([tiny])  # warm every import
    with open("/proc/self/statm") as statm:
        virtual = int(statm.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (virtual + 2 * 1024**3, resource.RLIM_INFINITY))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcome = {"png_bytes": len(tiny)}
    try:
        spec = ImageSpec.from_dict(json.loads(sys.argv[1]))
    except (TypeError, ValueError) as exc:
        outcome["refused"] = str(exc)
    else:
        try:
            ImageDecoder(spec).decode([tiny])
            outcome["decoded"] = True
        except BaseException as exc:
            outcome["decode_error"] = type(exc).__name__
    outcome["grew_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps(outcome))
    """
)


@pytest.mark.parametrize("side", [100_000, 9000])
def test_an_oversize_resize_is_refused_at_parse_without_allocating(side: int) -> None:
    # GIVEN a manifest's declaration asking to resize to side x side
    declaration = {"feeds": "x", "resize": [side, side], "max_pixels": 2**26}

    # WHEN a process reads it and decodes a 67-byte PNG with it (as a request would)
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, json.dumps(declaration)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    outcome = json.loads(result.stdout)

    # THEN the declaration is refused when read, and the peak memory did not move
    assert outcome["png_bytes"] < 100
    assert "refused" in outcome, outcome
    assert outcome["refused"].startswith(
        f"image processing: resize {side}x{side}: each side must be at most 8192"
    )
    assert outcome["grew_kib"] < 16 * 1024, outcome
