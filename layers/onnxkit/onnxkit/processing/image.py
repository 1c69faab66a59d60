"""Image preprocessing declared with a model: encoded PNG/JPEG bytes in, a pixel tensor out.

:class:`ImageSpec` is the declaration (data only, stored in the manifest and versioned with the
model); :class:`ImageDecoder` applies it. Pillow decodes, once every image of the request has
been opened and the pixels they declare (and would hold after resizing) have been summed from
their headers and checked against ``max_pixels``; the rest is numpy, in the order torchvision's
``Resize``, ``CenterCrop``, ``ToTensor`` and ``Normalize`` use, so a model trained behind those
gets the same numbers.

This module imports neither Pillow nor numpy: a manifest's declaration can be read and checked
without them (the cold start reads the manifest before numpy is imported); the decoder imports
both when it is built.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from onnxkit.datatypes import BY_NAME
from onnxkit.errors import InvalidInputError, PayloadTooLargeError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from onnxkit.manifest import TensorSpec

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
"""Encodings a declaration may accept (Pillow's format names)."""

COLORS = {"L": 1, "RGB": 3}
"""Color modes and their channel counts."""

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box")
LAYOUTS = ("NCHW", "NHWC", "NHW", "NF")

_RANKS = {"NCHW": 4, "NHWC": 4, "NHW": 3, "NF": 2}

MAX_SIDE = 8192
"""The longest side a declaration may resize or crop to."""

MAX_PIXELS = MAX_SIDE * MAX_SIDE
"""The largest ``max_pixels`` a declaration may set: 67,108,864, an 8192x8192 image (under
Pillow's own decompression-bomb limit, so that limit never refuses what a declaration allows)."""

# The Pillow feature each encoding needs beyond its pure-Python plugin; a build without it
# would fail every request with that encoding, so the decoder refuses to start instead.
_FEATURES = {"PNG": "zlib", "JPEG": "jpg", "WEBP": "webp"}

# Leading bytes of the encodings clients send most, used only to tell a client which encoding
# it sent when that one is not accepted; decoding is Pillow's alone.
_SIGNATURES = (
    ("PNG", b"\x89PNG\r\n\x1a\n"),
    ("JPEG", b"\xff\xd8\xff"),
    ("GIF", b"GIF87a"),
    ("GIF", b"GIF89a"),
    ("BMP", b"BM"),
    ("TIFF", b"II*\x00"),
    ("TIFF", b"MM\x00*"),
)

# Sample modes wider than 8 bits: Pillow's conversion to L or RGB clips them at 255 instead of
# scaling, which would hand the model a white image without a word.
_WIDE_MODES = ("I", "F")


@dataclass(frozen=True)
class ImageSpec:
    """How a model's image input is made from encoded images (PNG or JPEG bytes).

    Every field is checked when the spec is built, so an invalid declaration never reaches a
    request. The pixel math runs in this order: decode, apply the EXIF orientation, convert to
    ``color``, resize, center crop, invert, scale, ``(x - mean) / std``, layout, cast.

    Attributes:
        feeds: The model input the pixels go to.
        input: The public BYTES input clients send encoded images to.
        formats: Accepted encodings (Pillow's format names, from :data:`FORMATS`).
        max_pixels: The pixels one request may decode: width * height summed over its
            images, read from their headers before any pixel is decoded. The pixels they hold
            after resizing are summed against it too, before any is resized. At most
            :data:`MAX_PIXELS`.
        color: ``"L"`` (grayscale) or ``"RGB"``.
        resize: Exact ``(height, width)`` to resize to; each side at most :data:`MAX_SIDE`,
            height * width at most ``max_pixels``.
        resize_shorter: Resize so the shorter side is this long, keeping the aspect ratio
            (the longer side truncated, as torchvision does); exclusive with ``resize``; at
            most :data:`MAX_SIDE`, its square at most ``max_pixels``.
        crop: Center crop ``(height, width)``, after resizing; bounded as ``resize`` is.
        interpolation: One of :data:`INTERPOLATIONS` (Pillow's filters of those names).
        layout: ``"NCHW"``, ``"NHWC"``, ``"NHW"`` (``color`` L only) or ``"NF"`` (flat:
            ``[N, H * W * C]``, row-major over height, width, channels).
        invert: Use ``255 - value`` before scaling (dark ink on light paper).
        scale: Factor applied to the 0..255 values (``1 / 255`` gives 0..1).
        mean: Subtracted after scaling: one value per channel, or one for all.
        std: Divides after the mean: one positive value per channel, or one for all.
        dtype: The v2 datatype of the model input (``FP32``, ``FP16``, ``UINT8``...); integer
            types get rounded values, clipped into their range.

    Raises:
        TypeError: A field has the wrong type (on construction).
        ValueError: A field's value is invalid or disagrees with another (on construction).
    """

    feeds: str
    input: str = "image"
    formats: tuple[str, ...] = ("PNG", "JPEG")
    max_pixels: int = 16_777_216
    color: str = "RGB"
    resize: tuple[int, int] | None = None
    resize_shorter: int | None = None
    crop: tuple[int, int] | None = None
    interpolation: str = "bilinear"
    layout: str = "NCHW"
    invert: bool = False
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    dtype: str = "FP32"

    def __post_init__(self) -> None:
        for name in ("feeds", "input"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise TypeError(f"image processing: {name} must be a non-empty string")
        self._check_formats()
        _positive_int("max_pixels", self.max_pixels)
        if self.max_pixels > MAX_PIXELS:
            raise ValueError(
                f"image processing: max_pixels {self.max_pixels} must be at most {MAX_PIXELS} "
                f"({MAX_SIDE}x{MAX_SIDE})"
            )
        if self.color not in COLORS:
            raise ValueError(
                f"image processing: color {self.color!r} is not one of {tuple(COLORS)}"
            )
        self._check_geometry()
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"image processing: interpolation {self.interpolation!r} is not one of "
                f"{INTERPOLATIONS}"
            )
        if self.layout not in LAYOUTS:
            raise ValueError(f"image processing: layout {self.layout!r} is not one of {LAYOUTS}")
        if self.layout == "NHW" and self.color != "L":
            raise ValueError(
                "image processing: layout NHW has no channel axis, so it needs color 'L'; "
                "use NCHW or NHWC for RGB"
            )
        if not isinstance(self.invert, bool):
            raise TypeError("image processing: invert must be true or false")
        if not _is_real(self.scale) or not math.isfinite(self.scale) or self.scale <= 0:
            raise ValueError(
                f"image processing: scale must be a positive finite number, not {self.scale!r}"
            )
        self._check_normalization()
        datatype = BY_NAME.get(self.dtype) if isinstance(self.dtype, str) else None
        if datatype is None or not (datatype.is_float or datatype.is_integer):
            numeric = tuple(name for name in BY_NAME if name != "BOOL")
            raise ValueError(f"image processing: dtype {self.dtype!r} is not one of {numeric}")

    def _check_formats(self) -> None:
        if not isinstance(self.formats, tuple) or not self.formats:
            raise TypeError("image processing: formats must be a non-empty list of names")
        for name in self.formats:
            if name not in FORMATS:
                raise ValueError(
                    f"image processing: format {name!r} is not one of {FORMATS} "
                    "(Pillow's names, upper case)"
                )
        if len(set(self.formats)) != len(self.formats):
            raise ValueError(f"image processing: formats {list(self.formats)} repeat a name")

    def _check_geometry(self) -> None:
        # Bounded here, when the manifest is read: a request allocates what these ask for, and
        # a 67-byte PNG resized to 100000x100000 would ask Pillow for 10 GB.
        if self.resize is not None:
            self._check_size("resize", self.resize)
        if self.resize_shorter is not None:
            short = self.resize_shorter
            _positive_int("resize_shorter", short)
            if short > MAX_SIDE:
                raise ValueError(
                    f"image processing: resize_shorter {short} must be at most {MAX_SIDE}"
                )
            if short * short > self.max_pixels:
                raise ValueError(
                    f"image processing: resize_shorter {short} makes at least {short * short} "
                    f"pixels per image, over max_pixels {self.max_pixels} (the pixels one "
                    "request may hold)"
                )
            if self.resize is not None:
                raise ValueError(
                    "image processing: give resize (exact size) or resize_shorter "
                    "(aspect kept), not both"
                )
        if self.crop is None:
            return
        self._check_size("crop", self.crop)
        crop_h, crop_w = self.crop
        # A crop that can fit no resized image would fail every request: refuse it here.
        if self.resize is not None and (crop_h > self.resize[0] or crop_w > self.resize[1]):
            raise ValueError(
                f"image processing: crop {crop_h}x{crop_w} is larger than resize "
                f"{self.resize[0]}x{self.resize[1]}"
            )
        if self.resize_shorter is not None and min(crop_h, crop_w) > self.resize_shorter:
            raise ValueError(
                f"image processing: crop {crop_h}x{crop_w} cannot fit an image whose shorter "
                f"side is resized to {self.resize_shorter}"
            )

    def _check_size(self, name: str, value: Any) -> None:
        _size(name, value)
        height, width = value
        if height > MAX_SIDE or width > MAX_SIDE:
            raise ValueError(
                f"image processing: {name} {height}x{width}: each side must be at most {MAX_SIDE}"
            )
        if height * width > self.max_pixels:
            raise ValueError(
                f"image processing: {name} {height}x{width} makes {height * width} pixels per "
                f"image, over max_pixels {self.max_pixels} (the pixels one request may hold)"
            )

    def _check_normalization(self) -> None:
        channels = self.channels
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or not values:
                raise TypeError(f"image processing: {name} must be a non-empty list of numbers")
            if not all(_is_real(v) and math.isfinite(v) for v in values):
                raise ValueError(f"image processing: {name} {list(values)} must be finite numbers")
            if len(values) not in (1, channels):
                raise ValueError(
                    f"image processing: {name} has {len(values)} values; color {self.color} "
                    f"takes 1 (for every channel) or {channels} (one per channel)"
                )
        if any(v <= 0 for v in self.std):
            raise ValueError(f"image processing: std {list(self.std)} must be positive")

    @property
    def channels(self) -> int:
        """Channels per pixel: 1 for L, 3 for RGB."""
        return COLORS[self.color]

    @property
    def files(self) -> tuple[str, ...]:
        """Files the declaration needs beside the model: none."""
        return ()

    def output_size(self) -> tuple[int, int] | None:
        """The ``(height, width)`` every image ends at, or None when it follows the image."""
        if self.crop is not None:
            return self.crop
        return self.resize

    def tensor_shape(self) -> tuple[int, ...] | None:
        """The model input's shape this declaration produces, batch first as -1.

        Returns:
            For example ``(-1, 3, 224, 224)``; None when the output size is not fixed
            (neither ``resize`` nor ``crop`` given: images keep their own size).
        """
        size = self.output_size()
        if size is None:
            return None
        height, width = size
        return {
            "NCHW": (-1, self.channels, height, width),
            "NHWC": (-1, height, width, self.channels),
            "NHW": (-1, height, width),
            "NF": (-1, height * width * self.channels),
        }[self.layout]

    def check_input(self, spec: TensorSpec) -> None:
        """Check that the model input this declaration feeds takes what it produces.

        The batch dimension is not compared (it is the number of images in a request). When
        the output size is not fixed, the model's static height and width are not compared
        either: they say which size clients must send.

        Args:
            spec: The model input named by ``feeds``, from the manifest's signature.

        Raises:
            ValueError: The name, datatype, rank or a static dimension disagrees.
        """
        where = f"image processing feeds model input {self.feeds!r}"
        if spec.name != self.feeds:
            raise ValueError(f"{where} but was checked against input {spec.name!r}")
        if spec.datatype != self.dtype:
            raise ValueError(
                f"{where} with {self.dtype} but the model takes {spec.datatype}; "
                f"declare dtype {spec.datatype!r}"
            )
        rank = _RANKS[self.layout]
        if len(spec.shape) != rank:
            raise ValueError(
                f"{where} with layout {self.layout} ({rank} dimensions) but the model's input "
                f"has shape {list(spec.shape)}"
            )
        expected = self.tensor_shape()
        if expected is None:
            # Only the channel axis is known; an NF model's feature count must hold whole pixels.
            expected = {
                "NCHW": (-1, self.channels, -1, -1),
                "NHWC": (-1, -1, -1, self.channels),
                "NHW": (-1, -1, -1),
                "NF": (-1, -1),
            }[self.layout]
            if self.layout == "NF" and spec.shape[1] > 0 and spec.shape[1] % self.channels:
                raise ValueError(
                    f"{where}: its {spec.shape[1]} features are not a whole number of "
                    f"{self.color} pixels ({self.channels} values each)"
                )
        for axis, (ours, theirs) in enumerate(zip(expected, spec.shape, strict=True)):
            if axis and ours > 0 and theirs > 0 and ours != theirs:
                raise ValueError(
                    f"{where} with shape {list(expected)} but the model's input has shape "
                    f"{list(spec.shape)} (dimension {axis} differs)"
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON form: every field, defaults included.

        Defaults are written out so a stored declaration keeps its meaning if a later onnxkit
        changes a default.
        """
        data: dict[str, Any] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            data[field.name] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageSpec:
        """Build from the JSON form, validating every field.

        Lists become tuples; missing fields take their defaults (``feeds`` is required).

        Args:
            data: The declaration, as stored in a manifest.

        Raises:
            TypeError: The declaration or a field has the wrong type.
            ValueError: A field's value is invalid, a key is unknown or ``feeds`` is missing.
        """
        if not isinstance(data, Mapping):
            raise TypeError("image processing must be an object")
        known = {field.name for field in fields(cls)}
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise ValueError(
                f"image processing: unknown keys {unknown}; the keys are {sorted(known)}"
            )
        if "feeds" not in data:
            raise ValueError("image processing: feeds (the model input to fill) is required")
        values = dict(data)
        for name in ("formats", "resize", "crop", "mean", "std"):
            if name in values and values[name] is not None:
                values[name] = _tuple(name, values[name])
        for name in ("mean", "std"):
            if values.get(name) is not None:
                values[name] = tuple(_number(name, v) for v in values[name])
        if "scale" in values:
            values["scale"] = _number("scale", values["scale"])
        return cls(**values)


class ImageDecoder:
    """Applies an :class:`ImageSpec` to a batch of encoded images.

    Built once per model (at init), used for every request. Stateless after construction,
    so one decoder serves concurrent requests.
    """

    def __init__(self, spec: ImageSpec) -> None:
        """Import Pillow and numpy and resolve the declaration's filter and constants.

        Args:
            spec: The model's image declaration.

        Raises:
            ValueError: This Pillow build cannot decode one of ``spec.formats``.
        """
        # Imported here, not with the module: only a model that declares images pays for them.
        import numpy as np
        from PIL import Image, ImageOps, features

        missing = [f for f in spec.formats if f in _FEATURES and not features.check(_FEATURES[f])]
        if missing:
            raise ValueError(f"this Pillow build cannot decode {missing}; install a full Pillow")
        self.spec = spec
        self._np = np
        self._image = Image
        self._exif_transpose = ImageOps.exif_transpose
        # Pillow's own bomb check; its warning too, for a process that turns warnings into errors.
        self._bomb_errors = (Image.DecompressionBombError, Image.DecompressionBombWarning)
        self._resample = Image.Resampling[spec.interpolation.upper()]
        self._mean = np.asarray(spec.mean, dtype=np.float32)
        self._std = np.asarray(spec.std, dtype=np.float32)
        self._dtype = BY_NAME[spec.dtype].numpy
        self._accepted = _either(spec.formats)

    def decode(self, images: Sequence[bytes]) -> np.ndarray:
        """Decode a batch of encoded images into the model input.

        Every image is opened (its header read) and the request's budgets checked before any
        pixel is decoded: the pixels the headers declare, and those the images would hold after
        resizing, each summed over the request, at most ``max_pixels``.

        Args:
            images: One encoded image (PNG or JPEG bytes...) per batch item.

        Returns:
            ``[N, ...]`` in the declared layout and dtype, C-contiguous.

        Raises:
            InvalidInputError: The batch is empty; an item is empty, not bytes, not an accepted
                encoding, damaged, or smaller than the crop; or the images end at different
                sizes.
            PayloadTooLargeError: An image declares more pixels than ``max_pixels``, the
                images of the request do together, or they would after resizing.
        """
        if len(images) == 0:
            raise InvalidInputError(f"{self.spec.input!r} holds no images; send at least one")
        arrays: list[np.ndarray] = []
        with contextlib.ExitStack() as opened:
            headers = self._open_all(images, opened)
            for index, image in enumerate(headers):
                pixels = self._pixels(index, image)
                if arrays and pixels.shape != arrays[0].shape:
                    raise InvalidInputError(
                        f"image #{index} is {_hw(pixels)} after processing but image #0 is "
                        f"{_hw(arrays[0])}; send images of one size in a request, or use a model "
                        "whose image processing declares resize or crop"
                    )
                arrays.append(pixels)
        return self._tensor(self._np.stack(arrays))

    def _open_all(self, images: Sequence[bytes], opened: contextlib.ExitStack) -> list[Image.Image]:
        """Open every image (headers only) and check the request's budgets from the headers.

        Raises:
            InvalidInputError: An item is empty, not bytes or not an accepted encoding.
            PayloadTooLargeError: A budget is passed; no pixel has been decoded yet.
        """
        spec = self.spec
        limit = spec.max_pixels
        headers: list[Image.Image] = []
        declared = held = 0
        for index, data in enumerate(images):
            image = opened.enter_context(self._open(index, self._bytes(index, data)))
            width, height = image.size
            # Image.open read only the header: refusing here allocates no pixel.
            if width * height > limit:
                raise PayloadTooLargeError(
                    f"image #{index} declares {width}x{height} = {width * height} pixels; "
                    f"the limit is {limit}"
                )
            # Summed over the request: a few hundred highly compressed large images, each under
            # the limit, fit in one body and would cost seconds of CPU to decode.
            declared += width * height
            if declared > limit:
                raise PayloadTooLargeError(
                    f"the images up to #{index} declare {declared} pixels; the limit for one "
                    f"request is {limit}: send fewer or smaller images per request"
                )
            resized = math.prod(self._resized_size(width, height))
            # Only resize_shorter can pass it alone (the declaration bounds an exact resize):
            # an image 1 pixel wide would grow its longer side without bound.
            if resized > limit:
                raise PayloadTooLargeError(
                    f"image #{index} is {width}x{height}: resized to a shorter side of "
                    f"{spec.resize_shorter} it would hold {resized} pixels; the limit is {limit}"
                )
            # The resized images are all held until the batch is stacked (a crop is a view).
            held += resized
            if held > limit:
                raise PayloadTooLargeError(
                    f"the images up to #{index} hold {held} pixels after resizing; the limit "
                    f"for one request is {limit}: send fewer images per request"
                )
            headers.append(image)
        return headers

    def _bytes(self, index: int, data: Any) -> bytes | bytearray | memoryview:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidInputError(
                f"image #{index} is not binary data; send the encoded {self._accepted} bytes"
            )
        if len(data) == 0:
            raise InvalidInputError(f"image #{index} is empty")
        return data

    def _pixels(self, index: int, image: Image.Image) -> np.ndarray:
        """One opened image as uint8 ``(H, W, C)``, oriented, converted, resized and cropped."""
        spec = self.spec
        try:
            image.load()
            if image.mode.startswith(_WIDE_MODES):
                raise InvalidInputError(
                    f"image #{index} has samples wider than 8 bits ({image.mode}); "
                    "send an 8-bit image"
                )
            upright = self._exif_transpose(image)
            converted = upright.convert(spec.color)
        except InvalidInputError:
            raise
        except self._bomb_errors as exc:
            raise self._bomb(index) from exc
        # Pillow raises OSError, SyntaxError, ValueError, struct.error, zlib.error... for
        # damaged data; all of them are the client's bytes, never our fault.
        except Exception as exc:
            raise InvalidInputError(
                f"image #{index} cannot be decoded as {self._accepted}: its data is "
                "damaged or incomplete"
            ) from exc
        finally:
            # Frees the decoded pixels now: the opened images stay listed until the batch ends.
            image.close()
        resized = self._resize(converted)
        array = self._np.asarray(resized, dtype=self._np.uint8)
        if array.ndim == 2:
            array = array[:, :, None]
        return self._crop(index, array)

    def _open(self, index: int, data: bytes | bytearray | memoryview) -> Image.Image:
        """Identify the image and read its header (Pillow decodes no pixel here)."""
        spec = self.spec
        try:
            # formats= keeps every other decoder from ever seeing the bytes.
            return self._image.open(io.BytesIO(data), formats=list(spec.formats))
        except self._bomb_errors as exc:
            # Pillow's own bomb check (its global limit) ran before ours could.
            raise self._bomb(index) from exc
        except Exception as exc:
            sent = _sniff(bytes(data[:16]))
            if sent is not None and sent not in spec.formats:
                raise InvalidInputError(
                    f"image #{index} is a {sent} image; this model accepts {self._accepted}"
                ) from exc
            raise InvalidInputError(
                f"image #{index} cannot be decoded as {self._accepted}"
            ) from exc

    def _bomb(self, index: int) -> PayloadTooLargeError:
        limit = self._image.MAX_IMAGE_PIXELS
        over = f"more than {limit} pixels" if limit else "too many pixels"
        return PayloadTooLargeError(
            f"image #{index} declares {over}; the limit is {self.spec.max_pixels}"
        )

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        """The ``(width, height)`` an image of this size is resized to (its own: no resize).

        The same count whichever way the EXIF orientation turns the image, so the header's
        size gives the budget.
        """
        spec = self.spec
        if spec.resize is not None:
            return spec.resize[1], spec.resize[0]
        if spec.resize_shorter is None:
            return width, height
        # torchvision's Resize(int): the shorter side exact, the longer one truncated.
        short = spec.resize_shorter
        if width <= height:
            return short, int(short * height / width)
        return int(short * width / height), short

    def _resize(self, image: Image.Image) -> Image.Image:
        if self.spec.resize is None and self.spec.resize_shorter is None:
            return image
        return image.resize(self._resized_size(image.width, image.height), self._resample)

    def _crop(self, index: int, array: np.ndarray) -> np.ndarray:
        if self.spec.crop is None:
            return array
        crop_h, crop_w = self.spec.crop
        height, width = array.shape[:2]
        if crop_h > height or crop_w > width:
            raise InvalidInputError(
                f"image #{index} is {height}x{width} after resizing, smaller than the model's "
                f"{crop_h}x{crop_w} center crop; send a larger image"
            )
        # torchvision's CenterCrop offsets: Python's round, half to even.
        top = round((height - crop_h) / 2.0)
        left = round((width - crop_w) / 2.0)
        return array[top : top + crop_h, left : left + crop_w]

    def _tensor(self, batch: np.ndarray) -> np.ndarray:
        """Scale, normalize, lay out and cast a uint8 ``(N, H, W, C)`` batch."""
        np = self._np
        spec = self.spec
        values = batch.astype(np.float32)
        if spec.invert:
            np.subtract(np.float32(255), values, out=values)
        values *= np.float32(spec.scale)
        values -= self._mean
        values /= self._std
        if spec.layout == "NCHW":
            values = values.transpose(0, 3, 1, 2)
        elif spec.layout == "NHW":
            values = values[..., 0]
        elif spec.layout == "NF":
            values = values.reshape(len(values), -1)
        if self._dtype.kind in "iu":
            low, high = _clip_bounds(np, self._dtype)
            values = np.clip(np.rint(values), low, high)
        return np.ascontiguousarray(values, dtype=self._dtype)


def _is_real(value: Any) -> bool:
    # bool is an int to Python, never a number to a declaration.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"image processing: {name} must be an integer, not {value!r}")
    if value <= 0:
        raise ValueError(f"image processing: {name} must be positive, not {value}")


def _size(name: str, value: Any) -> None:
    if not isinstance(value, tuple) or len(value) != 2:
        raise TypeError(f"image processing: {name} must be [height, width]")
    for side in value:
        _positive_int(name, side)


def _tuple(name: str, value: Any) -> tuple[Any, ...]:
    # A string is a sequence too; "PNG" must not become ("P", "N", "G").
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise TypeError(f"image processing: {name} must be a list, not {value!r}")
    return tuple(value)


def _number(name: str, value: Any) -> float:
    if not _is_real(value):
        raise TypeError(f"image processing: {name} must hold numbers, not {value!r}")
    return float(value)


def _either(names: Sequence[str]) -> str:
    """``PNG or JPEG``; ``PNG, JPEG or GIF``."""
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " or " + names[-1]


def _sniff(prefix: bytes) -> str | None:
    if prefix[:4] == b"RIFF" and prefix[8:12] == b"WEBP":
        return "WEBP"
    return next((name for name, magic in _SIGNATURES if prefix.startswith(magic)), None)


def _hw(array: np.ndarray) -> str:
    return f"{array.shape[0]}x{array.shape[1]}"


def _clip_bounds(numpy: Any, dtype: np.dtype) -> tuple[Any, Any]:
    """The float32 bounds that cast into ``dtype`` without overflow.

    ``float32(2**31 - 1)`` rounds up to ``2**31``, which overflows int32: step below it.
    """
    info = numpy.iinfo(dtype)
    low, high = numpy.float32(info.min), numpy.float32(info.max)
    if int(high) > info.max:
        high = numpy.nextafter(high, numpy.float32(0))
    return low, high
