"""uvicorn's httptools protocol with the limits it lacks, and JSON bodies on its own refusals."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from onnxkit.codecs import encode_json
from onnxkit.errors import (
    InvalidInputError,
    OnnxkitError,
    OverloadedError,
    RequestTimeoutError,
    error_body,
)
from onnxkit.routes import JSON

MAX_URL_BYTES = 8 * 1024
MAX_HEADERS = 100
MAX_HEADER_BYTES = 64 * 1024


class HardenedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits it lacks, and JSON on its own refusals.

    - A client must send a request's headers within ``header_timeout`` seconds of connecting
      (or of its first byte, on a kept-alive connection), may not pause longer than that
      between the chunks of a body, and must send the whole body within ``body_timeout``
      seconds of its headers; then it gets 408 and the connection is closed. Without the
      total, a body trickled a byte at a time would re-arm the pause deadline forever.
    - A worker holds at most ``max_connections`` connections. Past the cap, an idle kept-alive
      connection is closed to make way; if none is idle, the new connection gets 503
      ``overloaded`` and is closed, before it sends anything.
    - The URL is capped at :data:`MAX_URL_BYTES`, headers at :data:`MAX_HEADERS` and
      :data:`MAX_HEADER_BYTES` in all; beyond, 400 and close.

    The parsing itself (framing, Content-Length and chunk checks) is httptools'.

    uvicorn's own ``limit_concurrency`` is not used for the cap: it counts idle kept-alive
    connections without closing any (so a client that parks that many idle connections turns
    everyone away), refuses ``/ping`` alike, and answers in plain text.
    """

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._header_timeout = float(getattr(config, "header_timeout", 10.0))
        self._body_timeout = float(getattr(config, "body_timeout", 30.0))
        self._max_connections: int | None = getattr(config, "max_connections", None)
        self._body_due = 0.0  # loop time the body must be in by (0: no body being read)
        self._url_bytes = self._header_count = self._header_bytes = 0

    def _arm(self) -> None:
        self._disarm()
        delay = self._header_timeout
        if self._body_due:
            delay = min(delay, self._body_due - self.loop.time())
        self._deadline = self.loop.call_later(delay, self._timed_out)

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
        cap = self._max_connections
        if cap is not None and len(self.connections) > cap and not self._close_an_idle_one():
            self._refuse(
                OverloadedError(
                    f"this worker holds its limit of {cap} connections; retry shortly",
                    headers={"Retry-After": "1"},
                )
            )
            return
        self._arm()

    def _close_an_idle_one(self) -> bool:
        """Close a kept-alive connection waiting for its next request; False if none is."""
        for other in self.connections:
            # uvicorn arms its keep-alive timer once a response is complete and cancels it on
            # the next byte: armed means idle between requests. A client that reuses it finds
            # it closed, as after the keep-alive timeout, and reconnects.
            if (
                other is not self
                and getattr(other, "timeout_keep_alive_task", None) is not None
                and not other.transport.is_closing()
            ):
                other.transport.close()
                return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._url_bytes = self._header_count = self._header_bytes = 0
        self._body_due = 0.0
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
            # A body follows: it may not stall, nor take longer than body_timeout in all.
            self._body_due = self.loop.time() + self._body_timeout
            self._arm()

    def on_body(self, body: bytes) -> None:
        self._arm()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self._body_due = 0.0
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        self._refuse(InvalidInputError(f"malformed HTTP request: {msg}", code="bad_request"))

    def _refuse(self, error: OnnxkitError) -> None:
        """Answer ``error`` in our JSON error body and close: the stream cannot be trusted."""
        status, payload, headers = error_body(error)
        body = encode_json(payload)
        extra = "".join(f"{name.lower()}: {value}\r\n" for name, value in headers.items())
        head = (
            f"HTTP/1.1 {status.value} {status.phrase}\r\ncontent-type: {JSON}\r\n"
            f"content-length: {len(body)}\r\n{extra}connection: close\r\n\r\n"
        )
        self.transport.write(head.encode("ascii") + body)
        self.transport.close()
