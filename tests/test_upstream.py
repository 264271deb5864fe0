"""What the gateway sends upstream for a chat completion, at the transport."""

from __future__ import annotations

import aiohttp
import httpx
import pytest

from gateway.config import UpstreamSettings
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.upstream import Upstream, generation_id_of, mapped_transport_errors


async def test_chat_requests_carry_the_operator_key_and_no_cookie_or_redirect() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:  # the first user's answer sets a cookie and points elsewhere
            return httpx.Response(
                307, headers={"set-cookie": "session=for-user-one; Path=/",
                              "location": "https://elsewhere.example/"},
            )
        return httpx.Response(200, json={"choices": []})

    upstream = Upstream(UpstreamSettings(base_url="https://up.example/api/v1", api_key="sk-op"))
    await upstream.client.aclose()
    upstream.transport = httpx.MockTransport(answer)
    first = await upstream.open_chat(b'{"model":"m"}', accept="text/event-stream")
    second = await upstream.open_chat(b'{"model":"m"}', accept="application/json")
    await first.aclose()
    await second.aclose()

    assert first.status_code == 307  # passed on, not followed
    assert len(seen) == 2
    for request, accept in zip(seen, ("text/event-stream", "application/json"), strict=True):
        assert request.url == "https://up.example/api/v1/chat/completions"
        assert request.headers["authorization"] == "Bearer sk-op"
        assert request.headers["accept"] == accept
        assert request.headers["content-type"] == "application/json"
        assert request.headers["content-length"] == "13"
        assert request.headers["user-agent"].startswith("wattfare/")
        assert "cookie" not in request.headers


@pytest.mark.parametrize(
    ("cause", "expected"),
    [
        (aiohttp.ServerDisconnectedError(), UpstreamError),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), UpstreamError),
        (aiohttp.ServerTimeoutError("read timed out"), UpstreamTimeout),
        (None, UpstreamTimeout),
    ],
)
def test_a_closed_connection_is_an_upstream_error_not_a_timeout(
    cause: BaseException | None, expected: type[Exception]
) -> None:
    # httpx-aiohttp raises ConnectTimeout for every aiohttp connection error.
    with pytest.raises(expected), mapped_transport_errors("waiting for the response"):
        raise httpx.ConnectTimeout("mapped") from cause


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b"gen-1764000000-abcDEF123", "gen-1764000000-abcDEF123", id="usual"),
        pytest.param("gén-1".encode(), None, id="utf-8"),
        pytest.param(b"gen-\xe9", None, id="latin-1"),
        pytest.param(b"gen-\x01", None, id="control"),
        pytest.param(b"g" * 257, None, id="too-long"),
        pytest.param(b"", None, id="empty"),
    ],
)
def test_only_a_printable_generation_id_is_passed_on(raw: bytes, expected: str | None) -> None:
    headers = httpx.Headers([(b"x-generation-id", raw)])
    assert generation_id_of(headers) == expected
    assert generation_id_of(httpx.Headers()) is None
