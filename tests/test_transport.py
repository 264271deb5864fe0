"""The upstream transport against a real HTTP server on loopback (aiohttp's own)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import httpx
import pytest
from aiohttp import web

from gateway.errors import UpstreamError
from gateway.transport import FastAiohttpTransport, ResponseStream
from gateway.upstreams.errors import mapped_transport_errors


@dataclass
class Server:
    base: str
    seen: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    # Set when a streamed response's connection went away before its end.
    cut: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    box: list[Server] = []

    async def echo(request: web.Request) -> web.Response:
        box[0].seen.append((request.path, dict(request.headers), await request.read()))
        return web.json_response({"ok": True}, headers={"x-generation-id": "gen-1"})

    async def stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        try:
            for i in range(int(request.query.get("n", "3"))):
                await response.write(b"data: {\"i\":%d}\n\n" % i)
                await asyncio.sleep(float(request.query.get("gap", "0")))
        except (ConnectionResetError, asyncio.CancelledError):
            box[0].cut.set()
            raise
        await response.write_eof()
        return response

    async def drop(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: {}\n\n")
        assert request.transport is not None
        request.transport.close()  # mid-body, no terminating chunk
        return response

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_get("/echo", echo)
    app.router.add_post("/stream", stream)
    app.router.add_post("/drop", drop)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    box.append(Server(base=f"http://127.0.0.1:{port}"))
    try:
        yield box[0]
    finally:
        await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = FastAiohttpTransport()
    async with httpx.AsyncClient(transport=transport, timeout=5.0) as c:
        yield c


async def test_a_request_carries_its_headers_and_body(
    server: Server, client: httpx.AsyncClient
) -> None:
    response = await client.post(
        server.base + "/echo", content=b'{"model":"m"}',
        headers={"Authorization": "Bearer sk-op", "Content-Type": "application/json"},
    )
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert response.headers["x-generation-id"] == "gen-1"
    assert response.reason_phrase == "OK"
    path, headers, body = server.seen[0]
    assert (path, body) == ("/echo", b'{"model":"m"}')
    assert headers["Authorization"] == "Bearer sk-op"
    assert headers["Content-Length"] == "13"


async def test_repeated_requests_share_header_strings_and_urls(
    server: Server, client: httpx.AsyncClient
) -> None:
    transport = client._transport
    assert isinstance(transport, FastAiohttpTransport)
    for n in range(3):
        response = await client.post(
            server.base + "/echo", content=b"x" * n, headers={"Authorization": "Bearer sk-op"}
        )
        assert response.status_code == 200
    assert [seen[2] for seen in server.seen] == [b"", b"x", b"xx"]
    assert transport._strings[b"Bearer sk-op"] == "Bearer sk-op"
    assert list(transport._urls) == [server.base + "/echo"]
    assert len(transport._timeouts) == 1


async def test_a_get_without_a_body_and_a_streamed_upload_both_go_through(
    server: Server, client: httpx.AsyncClient
) -> None:
    assert (await client.get(server.base + "/echo")).status_code == 200

    async def upload() -> AsyncIterator[bytes]:
        yield b"part-1,"
        yield b"part-2"

    # A body httpx has not read: the parent transport's path.
    response = await client.post(server.base + "/echo", content=upload())
    assert response.status_code == 200
    assert [seen[2] for seen in server.seen] == [b"", b"part-1,part-2"]


async def test_a_stream_is_read_as_it_arrives_and_closes_cleanly(
    server: Server, client: httpx.AsyncClient
) -> None:
    transport = client._transport
    request = client.build_request("POST", server.base + "/stream?n=5", content=b"{}")
    response = await transport.handle_async_request(request)  # as the chat route calls it
    assert isinstance(response.stream, ResponseStream)
    body = b"".join([chunk async for chunk in response.stream])
    await response.aclose()
    assert body == b"".join(b"data: {\"i\":%d}\n\n" % i for i in range(5))
    assert not server.cut.is_set()


async def test_closing_an_unfinished_stream_drops_the_connection(
    server: Server, client: httpx.AsyncClient
) -> None:
    async with client.stream(
        "POST", server.base + "/stream?n=1000&gap=0.01", content=b"{}"
    ) as response:
        async for chunk in response.aiter_raw():
            assert chunk.startswith(b"data: ")
            break
    # The upstream sees the connection go: that is what stops its generation.
    await asyncio.wait_for(server.cut.wait(), timeout=5)


async def test_a_connection_lost_mid_body_is_an_httpx_transport_error(
    server: Server, client: httpx.AsyncClient
) -> None:
    async with client.stream("POST", server.base + "/drop", content=b"{}") as response:
        with pytest.raises(httpx.TransportError):
            async for _ in response.aiter_raw():
                pass


async def test_a_refused_connection_maps_as_the_parent_maps_it(
    client: httpx.AsyncClient,
) -> None:
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    # httpx-aiohttp calls every aiohttp connection error ConnectTimeout, keeping the
    # cause; the gateway tells a refusal from a timeout by that cause.
    with pytest.raises(httpx.TransportError) as caught:
        await client.post("http://127.0.0.1:1/echo", content=b"{}")
    assert isinstance(caught.value.__cause__, aiohttp.ClientConnectorError)
    with pytest.raises(UpstreamError), mapped_transport_errors("connecting"):
        raise caught.value
