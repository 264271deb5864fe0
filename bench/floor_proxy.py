"""The floors: bare passthroughs, no auth and no metering.

Each forwards ``POST /v1/chat/completions`` to the upstream and relays the response bytes
as they arrive. Whatever the gateway costs beyond such a process is the price of auth and
metering; what the process costs beyond the direct path is the price of Python, uvicorn,
the framework and the HTTP client.

Two shapes:

- ``--framework starlette``: the textbook Starlette proxy, one ``Route`` whose endpoint
  returns a ``StreamingResponse`` over the upstream's byte iterator and closes the
  upstream response in a background task. This is the "bare Starlette passthrough" the
  throughput targets are set against.
- ``--framework asgi``: the same relay with no framework at all, stricter still: the
  floor of uvicorn and the HTTP client alone.

Run: ``python -m bench.floor_proxy --upstream http://127.0.0.1:N/api/v1 --port M
--client aiohttp --framework starlette`` (uvicorn, uvloop + httptools, one worker).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal, Protocol

import aiohttp
import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ClientKind = Literal["httpx", "aiohttp", "httpx-aiohttp"]
CLIENT_KINDS: tuple[ClientKind, ...] = ("httpx", "aiohttp", "httpx-aiohttp")
Framework = Literal["starlette", "asgi"]
FRAMEWORKS: tuple[Framework, ...] = ("starlette", "asgi")

_PATH = "/v1/chat/completions"
_NOT_FOUND = b'{"error":{"message":"not found","type":"invalid_request_error","code":"not_found"}}'
_BAD_GATEWAY = b'{"error":{"message":"upstream failed","type":"api_error","code":"upstream_error"}}'


class Upstream(Protocol):
    """One HTTP client's way of opening a streamed upstream response."""

    def open(
        self, body: bytes, content_type: bytes
    ) -> AbstractAsyncContextManager[tuple[int, bytes, AsyncIterator[bytes]]]: ...

    async def close(self) -> None: ...


class AiohttpUpstream:
    def __init__(self, url: str, headers: dict[str, str]) -> None:
        # limit=0: no pool cap, so the floor never queues where a real proxy would not.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            auto_decompress=False,
        )
        self._url = url
        self._headers = headers

    @asynccontextmanager
    async def open(
        self, body: bytes, content_type: bytes
    ) -> AsyncIterator[tuple[int, bytes, AsyncIterator[bytes]]]:
        headers = {**self._headers, "Content-Type": content_type.decode("latin-1")}
        async with self._session.post(self._url, data=body, headers=headers) as resp:
            ctype = resp.headers.get("Content-Type", "application/json").encode("latin-1")
            yield resp.status, ctype, resp.content.iter_any()

    async def close(self) -> None:
        await self._session.close()


class HttpxUpstream:
    def __init__(self, url: str, headers: dict[str, str], *, over_aiohttp: bool) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=1000)
        timeout = httpx.Timeout(None, connect=5.0)
        if over_aiohttp:
            from httpx_aiohttp import AiohttpTransport

            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
            )
            transport = AiohttpTransport(client=session)
            self._client = httpx.AsyncClient(transport=transport, timeout=timeout)
        else:
            self._client = httpx.AsyncClient(limits=limits, timeout=timeout)
        self._url = url
        self._headers = headers

    @asynccontextmanager
    async def open(
        self, body: bytes, content_type: bytes
    ) -> AsyncIterator[tuple[int, bytes, AsyncIterator[bytes]]]:
        headers = {**self._headers, "Content-Type": content_type.decode("latin-1")}
        request = self._client.build_request("POST", self._url, content=body, headers=headers)
        resp = await self._client.send(request, stream=True)
        try:
            ctype = resp.headers.get("Content-Type", "application/json").encode("latin-1")
            yield resp.status_code, ctype, resp.aiter_raw()
        finally:
            await resp.aclose()

    async def close(self) -> None:
        await self._client.aclose()


def make_upstream(kind: ClientKind, base_url: str, api_key: str) -> Upstream:
    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"}
    if kind == "aiohttp":
        return AiohttpUpstream(url, headers)
    return HttpxUpstream(url, headers, over_aiohttp=kind == "httpx-aiohttp")


class FloorProxy:
    """The ASGI app; the upstream client lives from lifespan start to lifespan end."""

    def __init__(self, *, kind: ClientKind, base_url: str, api_key: str) -> None:
        self._kind = kind
        self._base_url = base_url
        self._api_key = api_key
        self._upstream: Upstream | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # The client must be created inside the running loop (aiohttp insists).
                self._upstream = make_upstream(self._kind, self._base_url, self._api_key)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._upstream is not None:
                    await self._upstream.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST" or scope["path"] != _PATH or self._upstream is None:
            await _reply(send, 404, _NOT_FOUND)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        content_type = b"application/json"
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
        # Once the body is read, receive() only returns on disconnect: racing it against
        # the relay is how an ASGI app learns that the client left (uvicorn's send() is
        # silent after a disconnect), so the upstream request stops with the client.
        relay = asyncio.ensure_future(
            self._relay(self._upstream, b"".join(chunks), content_type, send)
        )
        watch = asyncio.ensure_future(receive())
        done, _ = await asyncio.wait((relay, watch), return_when=asyncio.FIRST_COMPLETED)
        if relay in done:
            watch.cancel()
            relay.result()
        else:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay

    @staticmethod
    async def _relay(upstream: Upstream, body: bytes, content_type: bytes, send: Send) -> None:
        started = False
        try:
            async with upstream.open(body, content_type) as (status, ctype, it):
                await send({
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"content-type", ctype)],
                })
                started = True
                async for data in it:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
        except (aiohttp.ClientError, httpx.HTTPError, OSError):
            if not started:
                await _reply(send, 502, _BAD_GATEWAY)
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def starlette_app(*, kind: ClientKind, base_url: str, api_key: str) -> Starlette:
    """The bare Starlette passthrough: a route, a ``StreamingResponse``, nothing else."""
    upstream: Upstream | None = None

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        nonlocal upstream
        upstream = make_upstream(kind, base_url, api_key)  # inside the running loop
        try:
            yield
        finally:
            await upstream.close()

    async def chat(request: Request) -> Response:
        assert upstream is not None
        body = await request.body()
        content_type = request.headers.get("content-type", "application/json").encode()
        opened = upstream.open(body, content_type)
        try:
            status, ctype, it = await opened.__aenter__()
        except (aiohttp.ClientError, httpx.HTTPError, OSError):
            return Response(_BAD_GATEWAY, status_code=502, media_type="application/json")
        return StreamingResponse(
            it, status_code=status, media_type=ctype.decode("latin-1"),
            background=BackgroundTask(opened.__aexit__, None, None, None),
        )

    return Starlette(routes=[Route(_PATH, chat, methods=["POST"])], lifespan=lifespan)


async def _reply(send: Send, status: int, body: bytes) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json")],
    })
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_proxy", description=__doc__)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://H:N/api/v1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client", choices=CLIENT_KINDS, default="aiohttp")
    parser.add_argument("--framework", choices=FRAMEWORKS, default="starlette")
    args = parser.parse_args(argv)
    api_key = os.environ.get("OPENROUTER_API_KEY", "sk-or-bench")
    app: Starlette | FloorProxy
    if args.framework == "starlette":
        app = starlette_app(kind=args.client, base_url=args.upstream, api_key=api_key)
    else:
        app = FloorProxy(kind=args.client, base_url=args.upstream, api_key=api_key)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        workers=1,
        access_log=False,
        log_level="warning",
        lifespan="on",
    )


if __name__ == "__main__":
    main()
