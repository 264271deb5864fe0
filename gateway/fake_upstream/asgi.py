"""Plain-ASGI helpers of the simulated upstream: whole responses, bodies, the bearer key."""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qs

from starlette.types import Receive, Scope, Send

__all__ = [
    "JSON",
    "MAX_BODY_BYTES",
    "BodyTooLarge",
    "Headers",
    "bearer",
    "query",
    "read_body",
    "respond",
]

MAX_BODY_BYTES: Final = 16 * 1024 * 1024
JSON: Final = (b"content-type", b"application/json")

Headers = tuple[tuple[bytes, bytes], ...]


class BodyTooLarge(Exception):
    """The request body passed `MAX_BODY_BYTES`."""


async def respond(
    send: Send,
    status: int,
    body: bytes,
    headers: Headers = (),
    *,
    content_type: tuple[bytes, bytes] = JSON,
) -> None:
    """Send a whole response with a content length."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [content_type, (b"content-length", b"%d" % len(body)), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive, limit: int = MAX_BODY_BYTES) -> bytes | None:
    """The whole request body, or None if the client left first."""
    parts: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        part: bytes = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise BodyTooLarge
        parts.append(part)
        more = message.get("more_body", False)
    return b"".join(parts)


def bearer(scope: Scope) -> str | None:
    """The request's `Authorization: Bearer` key, or None."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def query(scope: Scope, name: str) -> str | None:
    """The first value of query parameter `name`, or None."""
    values = parse_qs(scope["query_string"].decode("latin-1")).get(name)
    return values[0] if values else None
