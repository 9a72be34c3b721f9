"""Small ASGI helpers shared by both gateways: bounded body reading, responses, errors."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import msgspec

from lending.commands import ErrorBody, ErrorDetail

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

JSON = msgspec.json.Encoder()
# msgspec says where: "... - at `$.applicant.phone`", and for unknown or missing keys also
# which: "Object contains unknown field `x` - at `$.applicant`".
_PATH = re.compile(r"at `\$\.?([^`]*)`")
_KEY = re.compile(r"(?:unknown|required) field `([^`]+)`")


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


def invalid(exc: msgspec.DecodeError | msgspec.ValidationError | ValueError) -> HttpError:
    message = str(exc)
    path_match, key_match = _PATH.search(message), _KEY.search(message)
    parts = [m.group(1) for m in (path_match, key_match) if m and m.group(1)]
    return HttpError(400, "invalid_request", message, ".".join(parts) or None)


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, refusing early (by Content-Length) or mid-stream past `limit`."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
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


def query_params(scope: Scope) -> dict[str, list[str]]:
    """The query string as name → values; blank values kept (`?shard=` is an error, not
    "every shard")."""
    return parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)


def choice_param(
    query: dict[str, list[str]], name: str, allowed: tuple[str, ...]
) -> str | None:
    """An optional parameter restricted to `allowed`: None when absent or blank."""
    value = query.get(name, [""])[0] or None
    if value is not None and value not in allowed:
        raise HttpError(400, "invalid_request", f"{name} must be one of {', '.join(allowed)}",
                        name)
    return value
