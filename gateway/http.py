"""Small ASGI helpers shared by both gateways: bounded body reading, responses, errors."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

from lending.commands import ErrorBody, ErrorDetail

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

JSON = msgspec.json.Encoder()
log = logging.getLogger("lendcore.http")


class BodyTooLarge(Exception):
    pass


class HttpError(Exception):
    """An error response; raised anywhere in a handler, rendered once at the top."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s

    def body(self) -> bytes:
        return JSON.encode(ErrorBody(ErrorDetail(self.code, self.message, self.field)))

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.retry_after_s is None:
            return []
        return [(b"retry-after", str(self.retry_after_s).encode())]


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, refusing early (by Content-Length) or mid-stream past `limit`."""
    for name, value in scope["headers"]:
        # A longer number than the limit's is over it (and int() refuses > 4,300 digits).
        too_long = len(value) > len(str(limit))
        if name == b"content-length" and value.isdigit() and (too_long or int(value) > limit):
            raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def header_map(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


async def respond(
    send: Send, status: int, body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = b"application/json",
) -> None:
    all_headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if headers:
        all_headers.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


async def respond_error(send: Send, error: HttpError) -> None:
    await respond(send, error.status, error.body(), error.headers())


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


AsgiCall = Callable[[Any, Scope, Receive, Send], Awaitable[None]]


def answers_bugs_with_the_envelope(call: AsgiCall) -> AsgiCall:
    """Decorate an ASGI app's `__call__` so that an unexpected exception (a bug) is answered
    500 `internal_error` in the error envelope, never with the server's plain-text 500. It
    is logged with its traceback; the response says nothing about it. An exception after the
    response started cannot be answered any more: it propagates to the server as before."""

    @functools.wraps(call)
    async def guarded(app: Any, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await call(app, scope, receive, tracking_send)
        except Exception:
            if scope["type"] != "http" or started:
                raise
            # Only the path's first two segments: the rest may be a clear ID number or
            # phone (DELETE /ops/blacklist/id_number/…), which is never logged.
            prefix = "/".join(scope["path"].split("/")[:3])
            log.exception("unexpected error in %s %s/…", scope["method"], prefix)
            await respond_error(send, HttpError(500, "internal_error", "internal error"))

    return guarded
