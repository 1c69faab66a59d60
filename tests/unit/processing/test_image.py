"""Image preprocessing: pixels against references computed here, hostile bytes, declarations.

References use Pillow and numpy directly (torchvision's definitions of Resize, CenterCrop,
ToTensor and Normalize), never the module under test.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sklearn.datasets
from PIL import Image, features

import onnxkit
from onnxkit.errors import InvalidInputError, PayloadTooLargeError
from onnxkit.manifest import TensorSpec
from onnxkit.processing.image import MAX_PIXELS, ImageDecoder, ImageSpec

PHOTOS = Path(sklearn.datasets.__file__).parent / "images"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# What Pillow says about bad data; a client must never read it.
PILLOW_WORDS = ("cannot identify", "truncated", "broken", "decompression bomb", "DOS attack")


def photo_bytes() -> list[bytes]:
    """The JPEG files of sklearn's two sample photographs (427x640 RGB)."""
    return [(PHOTOS / name).read_bytes() for name in ("china.jpg", "flower.jpg")]


def encode(array: np.ndarray, fmt: str = "PNG", **params: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def header_only_png(width: int, height: int) -> bytes:
    """A valid-looking grayscale PNG declaring ``width x height`` with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray, no interlace
    idat = zlib.compress(b"\x00" * 4096)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def torchvision_reference(jpeg: bytes, *, shorter: int, crop: int) -> np.ndarray:
    """Resize(shorter) + CenterCrop(crop) as torchvision defines them, uint8 (H, W, 3)."""
    with Image.open(io.BytesIO(jpeg)) as image:
        rgb = image.convert("RGB")
    width, height = rgb.size
    if width <= height:
        size = (shorter, int(shorter * height / width))
    else:
        size = (int(shorter * width / height), shorter)
    resized = np.asarray(rgb.resize(size, Image.BILINEAR))
    top = round((resized.shape[0] - crop) / 2.0)  # torchvision: int(round(...)), half to even
    left = round((resized.shape[1] - crop) / 2.0)
    return resized[top : top + crop, left : left + crop]


def normalized(pixels: np.ndarray) -> np.ndarray:
    """ToTensor + Normalize(ImageNet) on (..., H, W, 3) uint8, channels last."""
    values = pixels.astype(np.float32) / np.float32(255)
    return (values - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)


def imagenet(**fields: Any) -> ImageSpec:
    return ImageSpec(
        feeds="pixel_values",
        resize_shorter=256,
        crop=(224, 224),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        **fields,
    )


# --- pixels against independent references ----------------------------------------------------


def test_photographs_match_torchvision_pipeline_nchw() -> None:
    # GIVEN the two sample photographs and the usual ImageNet declaration
    jpegs = photo_bytes()
    crops = np.stack([torchvision_reference(j, shorter=256, crop=224) for j in jpegs])

    # WHEN both are decoded as one batch
    batch = ImageDecoder(imagenet()).decode(jpegs)

    # THEN the tensor is the reference, channels first
    expected = normalized(crops).transpose(0, 3, 1, 2)
    assert batch.shape == (2, 3, 224, 224)
    assert batch.dtype == np.float32
    assert batch.flags.c_contiguous
    np.testing.assert_allclose(batch, expected, rtol=0, atol=1e-6)
    # 640x427 resizes to 383x256 and the crop's left offset is round(79.5) = 80, not 79:
    # a one-pixel shift would be far outside the tolerance.
    assert np.abs(normalized(crops[:, :, 1:]) - normalized(crops[:, :, :-1])).max() > 0.1


def test_photographs_nhwc_layout() -> None:
    jpegs = photo_bytes()
    crops = np.stack([torchvision_reference(j, shorter=256, crop=224) for j in jpegs])

    batch = ImageDecoder(imagenet(layout="NHWC")).decode(jpegs)

    assert batch.shape == (2, 224, 224, 3)
    assert batch.flags.c_contiguous
    np.testing.assert_allclose(batch, normalized(crops), rtol=0, atol=1e-6)


def test_photographs_uint8_are_the_raw_cropped_pixels() -> None:
    jpegs = photo_bytes()
    spec = ImageSpec(
        feeds="image", resize_shorter=256, crop=(224, 224), scale=1.0, layout="NHWC", dtype="UINT8"
    )

    batch = ImageDecoder(spec).decode(jpegs)

    assert batch.dtype == np.uint8
    expected = np.stack([torchvision_reference(j, shorter=256, crop=224) for j in jpegs])
    np.testing.assert_array_equal(batch, expected)


def test_portrait_photograph_resizes_its_width_to_the_shorter_side() -> None:
    # GIVEN a photograph turned portrait (427 wide, 640 high), stored losslessly
    with Image.open(PHOTOS / "flower.jpg") as image:
        portrait = encode(np.asarray(image.convert("RGB")).transpose(1, 0, 2).copy())

    batch = ImageDecoder(imagenet(layout="NHWC")).decode([portrait])

    # THEN the longer side is int(256 * 640 / 427) = 383 (truncated, not rounded to 384)
    expected = torchvision_reference(portrait, shorter=256, crop=224)
    np.testing.assert_allclose(batch[0], normalized(expected), rtol=0, atol=1e-6)


def test_exact_resize_uses_the_declared_filter() -> None:
    jpeg = photo_bytes()[0]
    spec = ImageSpec(
        feeds="image", resize=(100, 150), interpolation="bicubic", scale=1.0, layout="NHWC"
    )

    batch = ImageDecoder(spec).decode([jpeg])

    with Image.open(io.BytesIO(jpeg)) as image:
        expected = np.asarray(image.convert("RGB").resize((150, 100), Image.BICUBIC))
    np.testing.assert_array_equal(batch[0], expected.astype(np.float32))
    with Image.open(io.BytesIO(jpeg)) as image:
        bilinear = np.asarray(image.convert("RGB").resize((150, 100), Image.BILINEAR))
    assert not np.array_equal(bilinear, expected)  # the filter choice is visible


def test_integer_dtype_rounds_half_to_even_and_clips() -> None:
    # Values 0..255 halved: 0.5, 1.5, 2.5 round to 0, 2, 2; INT8 clips 127.5 to 127.
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    spec = ImageSpec(feeds="x", color="L", layout="NHW", scale=0.5, dtype="INT8")

    batch = ImageDecoder(spec).decode([encode(gray)])

    expected = np.clip(np.round(gray / 2.0), -128, 127).astype(np.int8)
    assert batch.dtype == np.int8
    np.testing.assert_array_equal(batch[0], expected)


def test_integer_dtype_clips_into_range_without_overflow() -> None:
    # 255 * 1e8 is far past int32; float32(2**31 - 1) rounds up to 2**31, which would wrap.
    white = np.full((2, 2), 255, dtype=np.uint8)
    spec = ImageSpec(feeds="x", color="L", layout="NHW", scale=1e8, dtype="INT32")

    batch = ImageDecoder(spec).decode([encode(white)])

    assert batch.dtype == np.int32
    assert (batch > np.iinfo(np.int32).max - 256).all()


def test_fp16_output() -> None:
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    spec = ImageSpec(feeds="x", color="L", layout="NCHW", dtype="FP16")

    batch = ImageDecoder(spec).decode([encode(gray)])

    assert batch.dtype == np.float16
    assert batch.shape == (1, 1, 8, 8)
    np.testing.assert_allclose(batch[0, 0], gray / 255.0, rtol=1e-3)


def test_grayscale_source_becomes_three_equal_channels() -> None:
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    spec = ImageSpec(feeds="x", scale=1.0, layout="NHWC", dtype="UINT8")

    batch = ImageDecoder(spec).decode([encode(gray)])

    np.testing.assert_array_equal(batch[0], np.repeat(gray[:, :, None], 3, axis=2))


def test_exif_orientation_is_applied() -> None:
    # GIVEN a 2x3 image stored with Orientation 6 (display it rotated 90 degrees clockwise)
    gray = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40
    exif = Image.Exif()
    exif[0x0112] = 6
    spec = ImageSpec(feeds="x", color="L", layout="NHW", scale=1.0, dtype="UINT8")

    batch = ImageDecoder(spec).decode([encode(gray, exif=exif)])

    # THEN the model sees it upright: 3 rows, 2 columns
    np.testing.assert_array_equal(batch[0], np.rot90(gray, k=-1))


def test_digits_round_trip_through_png() -> None:
    # GIVEN a few 8x8 digits (0..16) rendered to 8-bit PNGs
    digits = sklearn.datasets.load_digits()
    pngs = [encode(np.rint(image * 255 / 16).astype(np.uint8)) for image in digits.images[:12]]
    spec = ImageSpec(feeds="x", color="L", layout="NF", scale=16 / 255, dtype="FP32")

    # WHEN they are decoded
    batch = ImageDecoder(spec).decode(pngs)

    # THEN the features come back within the 8-bit rounding (half a step: 16/255/2 = 0.031)
    assert batch.shape == (12, 64)
    np.testing.assert_allclose(batch, digits.data[:12], rtol=0, atol=0.04)
    assert spec.tensor_shape() is None  # no resize: clients send 8x8


def test_inverted_digits_with_invert() -> None:
    # Dark ink on light paper, as a photographed digit is.
    digits = sklearn.datasets.load_digits()
    pngs = [
        encode(255 - np.rint(image * 255 / 16).astype(np.uint8)) for image in digits.images[:12]
    ]
    spec = ImageSpec(feeds="x", color="L", layout="NHW", invert=True, scale=16 / 255)

    batch = ImageDecoder(spec).decode(pngs)

    assert batch.shape == (12, 8, 8)
    np.testing.assert_allclose(batch, digits.images[:12], rtol=0, atol=0.04)


# --- bad input: our words, the image's index, 4xx ------------------------------------------


def decode_error(spec: ImageSpec, images: list[Any], error: type[Exception]) -> str:
    with pytest.raises(error) as caught:
        ImageDecoder(spec).decode(images)
    message = str(caught.value)
    assert not any(word in message for word in PILLOW_WORDS)
    return message


def test_random_bytes_are_refused() -> None:
    noise = np.random.default_rng(7).bytes(1000)

    message = decode_error(ImageSpec(feeds="x"), [noise], InvalidInputError)

    assert message == "image #0 cannot be decoded as PNG or JPEG"


def test_truncated_png_names_its_index() -> None:
    # Pillow reads the header of half a PNG fine; the pixels fail.
    whole = encode(np.asarray(Image.open(PHOTOS / "china.jpg")))
    good = encode(np.zeros((427, 640, 3), dtype=np.uint8))

    message = decode_error(
        ImageSpec(feeds="x"), [good, whole[: len(whole) // 2]], InvalidInputError
    )

    assert message.startswith("image #1 cannot be decoded as PNG or JPEG")


@pytest.mark.parametrize("fmt", ["GIF", "BMP"])
def test_encodings_not_declared_are_refused(fmt: str) -> None:
    data = encode(np.full((4, 4, 3), 9, dtype=np.uint8), fmt)

    message = decode_error(ImageSpec(feeds="x"), [data], InvalidInputError)

    assert message == f"image #0 is a {fmt} image; this model accepts PNG or JPEG"
    # The same bytes decode once the declaration accepts the encoding: the refusal above is
    # the declaration's, not a broken file.
    accepting = ImageSpec(feeds="x", formats=("PNG", fmt), scale=1.0, dtype="UINT8")
    np.testing.assert_array_equal(ImageDecoder(accepting).decode([data])[0], 9)


def test_decompression_bomb_is_refused_from_the_header_fast() -> None:
    # GIVEN a PNG of a few hundred bytes declaring 100000x100000 pixels (10 GB of gray)
    bomb = header_only_png(100_000, 100_000)
    assert len(bomb) < 300
    decoder = ImageDecoder(ImageSpec(feeds="x"))

    # WHEN it is decoded
    started = time.perf_counter()
    with pytest.raises(PayloadTooLargeError) as caught:
        decoder.decode([bomb])

    # THEN it is refused before any pixel is allocated
    assert time.perf_counter() - started < 1.0
    assert caught.value.status == 413
    assert caught.value.message.startswith("image #0 declares more than ")
    assert caught.value.message.endswith("; the limit is 16777216")


def test_image_over_max_pixels_reports_its_size() -> None:
    # 5000x5000 is under Pillow's own limit: the declaration's limit decides, from the header.
    message = decode_error(
        ImageSpec(feeds="x"), [header_only_png(5000, 5000)], PayloadTooLargeError
    )
    assert message == "image #0 declares 5000x5000 = 25000000 pixels; the limit is 16777216"

    photo = photo_bytes()[0]
    message = decode_error(ImageSpec(feeds="x", max_pixels=1000), [photo], PayloadTooLargeError)
    assert message == "image #0 declares 640x427 = 273280 pixels; the limit is 1000"


def test_pillow_bomb_warning_raised_as_error_is_a_413() -> None:
    # A process running with -W error turns Pillow's warning into an exception at open.
    pixels = Image.MAX_IMAGE_PIXELS or 89_478_485
    side = int((pixels * 1.5) ** 0.5)  # over Pillow's warning limit, under its error limit
    spec = ImageSpec(feeds="x", max_pixels=MAX_PIXELS)  # the most a declaration may set
    assert pixels > MAX_PIXELS  # so Pillow's warning never refuses what a declaration allows

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        message = decode_error(spec, [header_only_png(side, side)], PayloadTooLargeError)

    assert message.startswith("image #0 declares more than ")


def test_images_of_different_sizes_need_resize_or_crop() -> None:
    small = encode(np.zeros((8, 8), dtype=np.uint8))
    large = encode(np.zeros((9, 8), dtype=np.uint8))

    message = decode_error(ImageSpec(feeds="x", color="L"), [small, large], InvalidInputError)

    assert message.startswith("image #1 is 9x8 after processing but image #0 is 8x8")
    assert "resize or crop" in message
    resized = ImageSpec(feeds="x", color="L", resize=(4, 4))
    assert ImageDecoder(resized).decode([small, large]).shape == (2, 1, 4, 4)


def test_image_smaller_than_the_crop_is_refused() -> None:
    tiny = encode(np.zeros((4, 6), dtype=np.uint8))

    message = decode_error(ImageSpec(feeds="x", crop=(5, 5)), [tiny], InvalidInputError)

    assert message.startswith("image #0 is 4x6 after resizing, smaller than the model's 5x5")


def test_sixteen_bit_samples_are_refused() -> None:
    # Pillow would clip them to 255 instead of scaling: the model would see a white image.
    wide = encode(np.full((4, 4), 4000, dtype=np.uint16))

    message = decode_error(ImageSpec(feeds="x"), [wide], InvalidInputError)

    assert message.startswith("image #0 has samples wider than 8 bits")


@pytest.mark.parametrize(
    ("images", "fragment"),
    [
        ([], "holds no images"),
        ([b""], "image #0 is empty"),
        (["iVBORw0KGgo="], "image #0 is not binary data"),
    ],
)
def test_empty_and_non_binary_input(images: list[Any], fragment: str) -> None:
    with pytest.raises(InvalidInputError, match=fragment) as caught:
        ImageDecoder(ImageSpec(feeds="x")).decode(images)
    assert caught.value.status == 400


def test_decoder_refuses_a_pillow_without_the_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features, "check", lambda name: name != "jpg")

    with pytest.raises(ValueError, match=r"cannot decode \['JPEG'\]"):
        ImageDecoder(ImageSpec(feeds="x"))
    ImageDecoder(ImageSpec(feeds="x", formats=("PNG",)))


def test_import_loads_neither_pillow_nor_numpy() -> None:
    code = (
        "import sys, onnxkit.processing.image; "
        "print(sorted(m for m in ('PIL', 'numpy') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(onnxkit.__file__).parents[1])}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.strip() == "[]"


# --- the declaration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "error", "fragment"),
    [
        ({}, ValueError, "feeds"),
        ({"feeds": "x", "colour": "L"}, ValueError, r"unknown keys \['colour'\]"),
        ({"feeds": ""}, TypeError, "feeds must be a non-empty string"),
        ({"feeds": "x", "layout": "CHW"}, ValueError, "layout 'CHW'"),
        ({"feeds": "x", "layout": "NHW"}, ValueError, "NHW has no channel axis"),
        ({"feeds": "x", "color": "RGBA"}, ValueError, "color 'RGBA'"),
        ({"feeds": "x", "mean": [0.5, 0.5]}, ValueError, "mean has 2 values"),
        ({"feeds": "x", "color": "L", "std": [1, 1, 1]}, ValueError, "std has 3 values"),
        ({"feeds": "x", "std": [0]}, ValueError, "std .* must be positive"),
        ({"feeds": "x", "mean": ["0.5"]}, TypeError, "mean must hold numbers"),
        ({"feeds": "x", "mean": [float("nan")]}, ValueError, "finite"),
        ({"feeds": "x", "mean": []}, TypeError, "non-empty list"),
        ({"feeds": "x", "resize": [224, 224], "resize_shorter": 256}, ValueError, "not both"),
        ({"feeds": "x", "resize": [0, 224]}, ValueError, "resize must be positive"),
        ({"feeds": "x", "resize": [224]}, TypeError, r"\[height, width\]"),
        ({"feeds": "x", "resize": [224.0, 224]}, TypeError, "must be an integer"),
        ({"feeds": "x", "resize_shorter": -1}, ValueError, "resize_shorter must be positive"),
        ({"feeds": "x", "resize_shorter": True}, TypeError, "must be an integer"),
        ({"feeds": "x", "crop": [300, 300], "resize": [256, 256]}, ValueError, "larger than"),
        ({"feeds": "x", "crop": [300, 400], "resize_shorter": 256}, ValueError, "cannot fit"),
        ({"feeds": "x", "formats": ["PNG", "PSD"]}, ValueError, "format 'PSD'"),
        ({"feeds": "x", "formats": ["png"]}, ValueError, "format 'png'"),
        ({"feeds": "x", "formats": "PNG"}, TypeError, "formats must be a list"),
        ({"feeds": "x", "formats": []}, TypeError, "formats must be a non-empty list"),
        ({"feeds": "x", "formats": ["PNG", "PNG"]}, ValueError, "repeat"),
        ({"feeds": "x", "interpolation": "area"}, ValueError, "interpolation 'area'"),
        ({"feeds": "x", "dtype": "FLOAT"}, ValueError, "dtype 'FLOAT'"),
        ({"feeds": "x", "dtype": "BOOL"}, ValueError, "dtype 'BOOL'"),
        ({"feeds": "x", "max_pixels": 0}, ValueError, "max_pixels must be positive"),
        ({"feeds": "x", "scale": 0}, ValueError, "scale must be a positive"),
        ({"feeds": "x", "scale": "1/255"}, TypeError, "scale must hold numbers"),
        ({"feeds": "x", "invert": 1}, TypeError, "invert must be true or false"),
    ],
)
def test_from_dict_refuses(data: dict[str, Any], error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        ImageSpec.from_dict(data)


def test_from_dict_refuses_a_non_object() -> None:
    with pytest.raises(TypeError, match="must be an object"):
        ImageSpec.from_dict(["feeds", "x"])  # type: ignore[arg-type]


def test_json_round_trip_keeps_every_field() -> None:
    spec = ImageSpec(
        feeds="pixel_values",
        input="photo",
        formats=("JPEG", "PNG", "WEBP"),
        max_pixels=4_000_000,
        color="RGB",
        resize_shorter=256,
        crop=(224, 224),
        interpolation="bicubic",
        layout="NHWC",
        invert=False,
        scale=1 / 255,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        dtype="FP16",
    )

    data = json.loads(json.dumps(spec.to_dict()))

    assert ImageSpec.from_dict(data) == spec
    assert data["crop"] == [224, 224]
    assert data["resize"] is None  # written out, so a later default cannot change its meaning
    assert set(data) == set(ImageSpec.from_dict({"feeds": "x"}).to_dict())
    assert spec.files == ()


def test_from_dict_defaults() -> None:
    spec = ImageSpec.from_dict({"feeds": "x", "mean": [0], "std": [1]})

    assert spec == ImageSpec(feeds="x")
    assert spec.input == "image"
    assert spec.formats == ("PNG", "JPEG")
    assert spec.max_pixels == 16_777_216


@pytest.mark.parametrize(
    ("fields", "shape"),
    [
        ({"resize": (32, 48)}, (-1, 3, 32, 48)),
        ({"resize": (32, 48), "layout": "NHWC"}, (-1, 32, 48, 3)),
        ({"resize_shorter": 256, "crop": (224, 200)}, (-1, 3, 224, 200)),
        ({"crop": (28, 28), "color": "L", "layout": "NHW"}, (-1, 28, 28)),
        ({"resize": (8, 8), "color": "L", "layout": "NF"}, (-1, 64)),
        ({"resize": (2, 5), "layout": "NF"}, (-1, 30)),
        ({"resize_shorter": 256}, None),
        ({}, None),
    ],
)
def test_tensor_shape(fields: dict[str, Any], shape: tuple[int, ...] | None) -> None:
    assert ImageSpec(feeds="x", **fields).tensor_shape() == shape


def test_check_input_accepts_matching_and_dynamic_dims() -> None:
    spec = imagenet()

    spec.check_input(TensorSpec("pixel_values", "FP32", (-1, 3, 224, 224)))
    spec.check_input(TensorSpec("pixel_values", "FP32", (1, 3, 224, 224)))  # batch not compared
    spec.check_input(TensorSpec("pixel_values", "FP32", (-1, 3, -1, -1)))
    free = ImageSpec(feeds="x", color="L", layout="NF", scale=16 / 255)
    free.check_input(TensorSpec("x", "FP32", (-1, 64)))  # clients send 8x8 images


@pytest.mark.parametrize(
    ("spec", "tensor", "fragment"),
    [
        (imagenet(), TensorSpec("input", "FP32", (-1, 3, 224, 224)), "checked against"),
        (imagenet(), TensorSpec("pixel_values", "FP16", (-1, 3, 224, 224)), "takes FP16"),
        (imagenet(), TensorSpec("pixel_values", "FP32", (-1, 224, 224)), "4 dimensions"),
        (imagenet(), TensorSpec("pixel_values", "FP32", (-1, 1, 224, 224)), "dimension 1"),
        (imagenet(), TensorSpec("pixel_values", "FP32", (-1, 3, 256, 224)), "dimension 2"),
        (
            imagenet(layout="NHWC"),
            TensorSpec("pixel_values", "FP32", (-1, 224, 224, 1)),
            "dimension 3",
        ),
        (ImageSpec(feeds="x"), TensorSpec("x", "FP32", (-1, 1, -1, -1)), "dimension 1"),
        (ImageSpec(feeds="x", layout="NF"), TensorSpec("x", "FP32", (-1, 64)), "whole number"),
    ],
)
def test_check_input_refuses(spec: ImageSpec, tensor: TensorSpec, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        spec.check_input(tensor)


def test_a_batch_is_bounded_by_max_pixels_summed_from_the_headers() -> None:
    # GIVEN 4x4 images (16 pixels each) and a limit of 40 pixels
    from io import BytesIO

    from PIL import Image

    from onnxkit.errors import PayloadTooLargeError as TooLarge

    buffer = BytesIO()
    Image.new("L", (4, 4)).save(buffer, format="PNG")
    decoder = ImageDecoder(ImageSpec(feeds="x", color="L", max_pixels=40, layout="NHW"))

    # THEN two fit (32 pixels), a third is refused as a whole request (48 > 40)
    assert decoder.decode([buffer.getvalue()] * 2).shape == (2, 4, 4)
    with pytest.raises(TooLarge, match=r"up to #2 declare 48 pixels.*fewer or smaller images"):
        decoder.decode([buffer.getvalue()] * 3)
