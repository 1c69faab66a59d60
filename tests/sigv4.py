"""S3's check of a presigned (SigV4 query-string) URL, written from AWS's documentation.

moto does not check presigned URLs: moto 5.2.6 stores a PUT of 6 bytes sent to a URL signed
for 5, and one whose signature was tampered with. This is the check S3 itself makes
("Authenticating requests: using query parameters", AWS Signature Version 4), so a test can
ask whether S3 would store a given request, independently of botocore, which signed the URL.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import parse_qsl, quote, urlsplit


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _encode(text: str) -> str:
    return quote(text, safe="-_.~")


def s3_accepts(url: str, method: str, headers: Mapping[str, str], *, secret_key: str) -> bool:
    """Whether S3 would accept ``method url`` sent with ``headers`` (the request as sent:
    its ``Content-Length`` is the size of the body that follows), the URL signed with the
    credentials whose secret is ``secret_key``.

    Every header the URL names in ``X-Amz-SignedHeaders`` must be sent with the value signed;
    the payload itself is not signed (``UNSIGNED-PAYLOAD``), its length is.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    params = dict(query)
    if params.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
        return False  # SigV2 signs no Content-Length: never good enough for an upload
    sent = {name.lower(): value for name, value in headers.items()}
    sent.setdefault("host", parts.netloc)
    signed = params["X-Amz-SignedHeaders"].split(";")
    if any(name not in sent for name in signed):
        return False
    canonical_query = "&".join(
        f"{_encode(key)}={_encode(value)}"
        for key, value in sorted(query)
        if key != "X-Amz-Signature"
    )
    canonical_headers = "".join(f"{name}:{' '.join(sent[name].split())}\n" for name in signed)
    canonical_request = "\n".join(
        [
            method,
            parts.path or "/",
            canonical_query,
            canonical_headers,
            ";".join(signed),
            "UNSIGNED-PAYLOAD",
        ]
    )
    _, date, region, service, terminal = params["X-Amz-Credential"].split("/")
    scope = f"{date}/{region}/{service}/{terminal}"
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            params["X-Amz-Date"],
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = _hmac(f"AWS4{secret_key}".encode(), date)
    for part in (region, service, terminal):
        key = _hmac(key, part)
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature, params.get("X-Amz-Signature", ""))
