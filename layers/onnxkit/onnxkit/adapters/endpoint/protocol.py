"""uvicorn's httptools protocol with the limits it lacks, and JSON bodies on its own refusals."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from onnxkit.codecs import encode_json
from onnxkit.errors import InvalidInputError, OnnxkitError, RequestTimeoutError, error_body
from onnxkit.routes import JSON

MAX_URL_BYTES = 8 * 1024
MAX_HEADERS = 100
MAX_HEADER_BYTES = 64 * 1024


class HardenedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits it lacks, and JSON on its own refusals.

    - A client must send a request's headers within ``header_timeout`` seconds of connecting
      (or of its first byte, on a kept-alive connection), and may not pause longer than that
      between the chunks of a body; then it gets 408 and the connection is closed.
    - The URL is capped at :data:`MAX_URL_BYTES`, headers at :data:`MAX_HEADERS` and
      :data:`MAX_HEADER_BYTES` in all; beyond, 400 and close.

    The parsing itself (framing, Content-Length and chunk checks) is httptools'.
    """

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._header_timeout = float(getattr(config, "header_timeout", 10.0))
        self._url_bytes = self._header_count = self._header_bytes = 0

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self._header_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self._refuse(RequestTimeoutError("the request did not arrive in time"))

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._url_bytes = self._header_count = self._header_bytes = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > MAX_URL_BYTES:
            raise ValueError("URL too long")  # httptools turns it into a parser error: 400
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_bytes += len(name) + len(value)
        if self._header_count > MAX_HEADERS or self._header_bytes > MAX_HEADER_BYTES:
            raise ValueError("too many or too large headers")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if not self.parser.should_upgrade() and self.cycle is not None and self.cycle.more_body:
            self._arm()  # a body follows: it may not stall either

    def on_body(self, body: bytes) -> None:
        self._arm()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        self._refuse(InvalidInputError(f"malformed HTTP request: {msg}", code="bad_request"))

    def _refuse(self, error: OnnxkitError) -> None:
        """Answer ``error`` in our JSON error body and close: the stream cannot be trusted."""
        status, payload, _ = error_body(error)
        body = encode_json(payload)
        head = (
            f"HTTP/1.1 {status.value} {status.phrase}\r\ncontent-type: {JSON}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode("ascii") + body)
        self.transport.close()
