"""Small ASGI response helpers shared by the raw handlers and the routes."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.types import Message, Receive, Scope, Send

from gateway.errors import GatewayError, InvalidRequest, RequestTooLarge
from gateway.observability import record_of

JSON = b"application/json"


class ClientGone(Exception):
    """The client disconnected before the request was read."""


class DisconnectWatch:
    """Cancels the current task when the client disconnects, while ``armed``.

    Once the request body is read, the next ASGI message can only say the client left;
    uvicorn's ``send()`` says nothing of it. The task that is cancelled checks ``gone``
    to tell this cancellation from any other, and calls ``uncancel()``.
    """

    __slots__ = ("_closed", "_receive", "_watcher", "armed", "gone", "task")

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.armed = True
        self.gone = False
        self._closed = False
        self._receive = receive
        self._watcher = self._listen()

    def _listen(self) -> asyncio.Future[Message]:
        # The receive() call itself is the watching task, with a callback (no coroutine
        # of its own kept for the whole stream).
        watcher = asyncio.ensure_future(self._receive())
        watcher.add_done_callback(self._received)
        return watcher

    def _received(self, watcher: asyncio.Future[Message]) -> None:
        if self._closed or watcher.cancelled() or watcher.exception() is not None:
            return
        if watcher.result()["type"] != "http.disconnect":
            self._watcher = self._listen()
            return
        self.gone = True
        if self.armed:
            self.task.cancel()

    def close(self) -> None:
        self.armed = False
        self._closed = True
        self._watcher.cancel()


async def send_bytes(
    send: Send,
    *,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    headers: dict[str, str] | None = None,
) -> None:
    raw = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if headers:
        raw.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(scope: Scope, send: Send, exc: GatewayError) -> None:
    """Render ``exc`` in the OpenAI error shape and note its code for the access log."""
    record_of(scope).code = exc.code
    await send_bytes(send, status=exc.status, body=exc.body(), headers=exc.headers)


async def read_body(receive: Receive, *, limit: int, declared: int | None) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes as early as possible."""
    if declared is not None and declared > limit:
        raise RequestTooLarge(f"Request body exceeds {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"Request body exceeds {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object, or ``invalid_request_error``."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body
