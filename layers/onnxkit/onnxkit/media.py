"""Media types: what an inference body may be, and where its binary tensors start.

A body is v2 JSON, JSON followed by binary tensors (``application/octet-stream`` with the
``Inference-Header-Content-Length`` header, or through SageMaker, which passes no custom
header, ``application/vnd.sagemaker-triton.binary+json;json-header-size=N``), or for a model
with processing one input (a sentence, an image). Media types are parsed with mimeparse.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import mimeparse

from onnxkit.errors import UnsupportedMediaTypeError

JSON_CONTENT_TYPES = ("application/json", "application/x-json", "text/json")
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"
"""The Content-Type of a binary reply, and one more a binary request may carry."""

SAGEMAKER_BINARY_CONTENT_TYPE = "application/vnd.sagemaker-triton.binary+json"
"""The binary extension through SageMaker's InvokeEndpoint, which passes no custom header: the
JSON part's length travels as the media type's ``json-header-size`` parameter instead (the
convention of Triton's SageMaker server and its clients), both ways."""
JSON_HEADER_SIZE = "json-header-size"
BINARY_CONTENT_TYPES = (BINARY_CONTENT_TYPE, SAGEMAKER_BINARY_CONTENT_TYPE)
HEADER_LENGTH = "inference-header-content-length"
"""The binary extension's request header (lower-case, as edges look headers up): the byte
length of the body's JSON part."""
REPLY_HEADER_LENGTH = "Inference-Header-Content-Length"
"""The same header on a binary reply, spelled as Triton sends it."""


def check_content_type(
    content_type: str | None, *, binary: bool = False, bare: Sequence[str] = ()
) -> None:
    """Accept JSON media types; no Content-Type, or curl's default form type, is read as JSON.

    Args:
        content_type: The request's Content-Type header, if any.
        binary: Binary tensors may follow the JSON: ``application/octet-stream`` (with the
            ``Inference-Header-Content-Length`` header) and SageMaker's
            ``application/vnd.sagemaker-triton.binary+json`` are accepted too.
        bare: Media types of bodies that are one input (a sentence, an image), accepted too.

    Raises:
        UnsupportedMediaTypeError: Any other media type (the message names the accepted ones).
    """
    if not content_type or not content_type.strip():
        return
    media = media_type(content_type)
    if media in JSON_CONTENT_TYPES or media == "application/x-www-form-urlencoded":
        # curl -d without -H sends form-urlencoded; its body is still our JSON.
        return
    if (binary and media in BINARY_CONTENT_TYPES) or media in bare:
        return
    accepted = [f"{JSON_CONTENT_TYPE} (the Open Inference Protocol v2 JSON form)"]
    if binary:
        accepted.append(
            f"{BINARY_CONTENT_TYPE} with Inference-Header-Content-Length (binary tensors)"
        )
    if bare:
        accepted.append(f"to a model published with processing, {', '.join(bare)}")
    listed = ", ".join(accepted[:-1]) + " or " + accepted[-1] if len(accepted) > 1 else accepted[0]
    raise UnsupportedMediaTypeError(f"Content-Type {media!r} is not supported; send {listed}")


def binary_header_length(content_type: str | None, header: str | None) -> str | None:
    """Where the JSON part of a body ends: the ``Inference-Header-Content-Length`` header, or
    through SageMaker (which passes no custom header) the media type's ``json-header-size``.

    Returns:
        The length as sent (checked by :func:`split_body`), or None: the body is all JSON.
    """
    if header is not None or not content_type:
        return header
    if media_type(content_type) != SAGEMAKER_BINARY_CONTENT_TYPE:
        return None
    return media_parameter(content_type, JSON_HEADER_SIZE)


def media_parameter(content_type: str, name: str) -> str | None:
    """One parameter of a Content-Type value (``json-header-size=123``), or None."""
    try:
        _, _, parameters = mimeparse.parse_mime_type(content_type)
    except (mimeparse.MimeTypeParseException, ValueError):
        return None
    value = parameters.get(name)
    return None if value is None else str(value)


@functools.lru_cache(maxsize=256)  # clients repeat their headers: parse each value once
def media_type(content_type: str) -> str:
    """``type/subtype`` of a Content-Type value, lower-case (the value itself if unparsable)."""
    try:
        kind, subtype, _ = mimeparse.parse_mime_type(content_type)
        return f"{kind}/{subtype}".strip().lower()
    except (mimeparse.MimeTypeParseException, ValueError):
        return content_type.strip()
