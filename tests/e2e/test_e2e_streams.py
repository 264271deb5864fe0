"""Streams over real sockets: events reach the client while the upstream is still
generating; a client that leaves stops the upstream; a revocation cuts an open stream."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import httpx
import openai
import pytest

from gateway.tokens import mint_session_token

from .harness import (
    MODEL,
    AppKeys,
    BackgroundStream,
    FakeUpstream,
    Gateway,
    assert_consistent,
    chat_body,
    fake_cost_nano,
    fake_prompt_tokens,
    is_content,
    iter_events,
    ledger,
    secret_headers,
    wait_until,
)

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"
COMMENT = b": OPENROUTER PROCESSING"


def generation(fake: FakeUpstream, generation_id: str) -> dict[str, Any]:
    """The upstream's own record of a generation (cancelled or not, tokens produced).

    Like OpenRouter's, it answers 404 for a moment after the generation ends.
    """
    def lookup() -> httpx.Response:
        return httpx.get(
            f"{fake.api}/generation", params={"id": generation_id},
            headers={"Authorization": "Bearer sk-or-v1-e2e"}, timeout=5,
        )

    assert wait_until(lambda: lookup().status_code == 200, timeout=10, interval=0.1)
    data: dict[str, Any] = lookup().json()["data"]
    return data


@pytest.fixture
def idle_upstream(fake: FakeUpstream) -> FakeUpstream:
    """The upstream with no request open, so ``in_flight`` counts this test's only."""
    assert wait_until(lambda: fake.in_flight() == 0, timeout=5), "a request was left open"
    return fake


# -- unbuffered ------------------------------------------------------------------------

GAP_S = 0.2
TTFT_S = 0.4


def _arrivals_raw(gateway: Gateway, app: AppKeys, user_id: str) -> tuple[float, list[float]]:
    body = chat_body("hi", chunks=5, gap_ms=GAP_S * 1000, ttft_ms=TTFT_S * 1000)
    comment_at = 0.0
    content_at: list[float] = []
    with httpx.stream("POST", gateway.url + CHAT, json=body,
                      headers=secret_headers(app, user_id), timeout=20) as response:
        assert response.status_code == 200
        for at, event in iter_events(response):
            if event.startswith(COMMENT) and not comment_at:
                comment_at = at
            elif is_content(event):
                content_at.append(at)
    return comment_at, content_at


def _arrivals_sdk(gateway: Gateway, app: AppKeys, user_id: str) -> tuple[float, list[float]]:
    started = time.monotonic()
    content_at: list[float] = []
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=app.secret_key, max_retries=0,
                       timeout=20, default_headers={"Wattfare-User": user_id}) as sdk:
        stream = sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True,
            extra_body={"fake": {"chunks": 5, "gap_ms": GAP_S * 1000,
                                 "ttft_ms": TTFT_S * 1000}},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                content_at.append(time.monotonic())
    # The SDK hides comments; the request's start stands in for the comment's arrival.
    return started, content_at


@pytest.mark.parametrize(
    "arrivals",
    [pytest.param(_arrivals_raw, id="httpx"), pytest.param(_arrivals_sdk, id="openai-sdk")],
)
def test_events_arrive_as_they_are_generated(
    gateway: Gateway, app: AppKeys, user_id: str, arrivals: Any
) -> None:
    """With 200 ms between upstream chunks, the client's arrival times are spread the same
    way: a buffering proxy would deliver them all at once at the end."""
    first_at, content_at = arrivals(gateway, app, user_id)
    assert len(content_at) == 5
    assert first_at and content_at[0] - first_at >= TTFT_S * 0.75
    assert content_at[-1] - content_at[0] >= 3 * GAP_S
    gaps = [b - a for a, b in itertools.pairwise(content_at)]
    assert sum(g >= GAP_S / 2 for g in gaps) >= 3, gaps
    assert_consistent(gateway.db)


# -- client disconnect ------------------------------------------------------------------


def test_client_disconnect_stops_the_upstream_and_charges(
    gateway: Gateway, idle_upstream: FakeUpstream, app: AppKeys, user_id: str
) -> None:
    fake = idle_upstream
    body = chat_body("hi", chunks=50, gap_ms=100)  # 5 s if nobody stops it
    read = 0
    with httpx.stream("POST", gateway.url + CHAT, json=body,
                      headers=secret_headers(app, user_id), timeout=20) as response:
        assert response.status_code == 200
        generation_id = response.headers["x-generation-id"]
        for _, event in iter_events(response):
            read += is_content(event)
            if read == 3:
                assert fake.in_flight() == 1
                break
        # Leaving the block closes the connection mid-stream.
    left_at = time.monotonic()
    assert wait_until(lambda: fake.in_flight() == 0, timeout=3), "upstream still generating"
    assert time.monotonic() - left_at < 2.5  # well before the 4.7 s the stream had left

    record = generation(fake, generation_id)
    assert record["cancelled"] is True
    assert 3 <= record["tokens_completion"] < 50
    assert wait_until(lambda: len(ledger(gateway.db, user_id)) == 1, timeout=5)
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    assert row.status == "client_disconnected"
    assert row.cost_nano >= fake_cost_nano(prompt_tokens=fake_prompt_tokens("hi"),
                                           completion_tokens=3)


# -- revocation -------------------------------------------------------------------------


@pytest.mark.parametrize("credential", [pytest.param("session", id="session-token"),
                                        pytest.param("secret", id="secret-key")])
def test_revocation_cuts_an_open_stream(
    gateway: Gateway, idle_upstream: FakeUpstream, app: AppKeys, user_id: str, credential: str
) -> None:
    """Revoked while it streams, a stream ends with the ``connection_revoked`` event
    within one upstream chunk (300 ms apart here)."""
    fake = idle_upstream
    if credential == "session":
        token = mint_session_token(app.secret_key, user_id, monthly_usd=1).token
        headers = {"Authorization": f"Bearer {token}"}
    else:
        headers = secret_headers(app, user_id)
    stream = BackgroundStream(gateway.url + CHAT, headers=headers,
                              body=chat_body("hi", chunks=40, gap_ms=300))
    try:
        assert stream.wait_for_content(3, timeout=10)
        deleted = httpx.delete(gateway.url + "/v1/connection",
                               headers=secret_headers(app, user_id), timeout=10)
        revoked_at = time.monotonic()
        assert deleted.status_code == 200
        assert deleted.json()["status"] == "revoked"
    finally:
        stream.join(timeout=20)

    assert stream.status == 200
    after = stream.after(revoked_at)
    late_content = sum(is_content(e) for e in after)
    assert late_content <= 1, f"{late_content} chunks after the revocation"
    error_at, error = next((at, e) for at, e in stream.events if b'"error"' in e)
    assert b'"code":"connection_revoked"' in error
    assert error_at - revoked_at < 0.3 + 0.5
    assert after[-1] == b"data: [DONE]"
    assert b'"choices":[]' in after[-2] and b'"usage"' in after[-2]

    assert wait_until(lambda: fake.in_flight() == 0, timeout=3)
    first = next(e for _, e in stream.events if e.startswith(b"data: {"))
    generation_id = json.loads(first[6:])["id"]
    assert generation(fake, generation_id)["cancelled"] is True
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    assert (row.status, row.error_code) == ("cut_revoked", "connection_revoked")
    assert row.cost_nano > 0

def test_client_leaving_a_non_streamed_request_is_charged_what_the_upstream_billed(
    gateway: Gateway, idle_upstream: FakeUpstream, app: AppKeys, user_id: str
) -> None:
    """Providers bill a non-streamed request in full once started, whoever waits for it:
    a client that leaves does not stop it, and the gateway charges exactly what the
    upstream billed rather than leave it to the operator."""
    fake = idle_upstream
    body = chat_body("hi", stream=False, chunks=20, ttft_ms=1000)  # 1 s to answer
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway.url + CHAT, json=body, headers=secret_headers(app, user_id),
                   timeout=httpx.Timeout(10, read=0.3))
    assert wait_until(lambda: len(ledger(gateway.db, user_id)) == 1, timeout=5)
    assert wait_until(lambda: fake.in_flight() == 0, timeout=3)
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    expected = fake_cost_nano(prompt_tokens=fake_prompt_tokens("hi"), completion_tokens=20)
    assert (row.status, row.http_status, row.cost_source) == (
        "client_disconnected", 499, "upstream")
    assert row.cost_nano == expected


def test_client_leaving_before_the_upstream_answers(
    gateway: Gateway, idle_upstream: FakeUpstream, app: AppKeys, user_id: str
) -> None:
    fake = idle_upstream
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway.url + CHAT, json=chat_body("hi", fault="hang"),
                   headers=secret_headers(app, user_id), timeout=httpx.Timeout(10, read=0.3))
    left_at = time.monotonic()
    assert wait_until(lambda: fake.in_flight() == 0, timeout=3)
    assert time.monotonic() - left_at < 1.2  # not the 2 s first-byte timeout (1.7 s on)
    assert wait_until(lambda: len(ledger(gateway.db, user_id)) == 1, timeout=5)
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    assert (row.status, row.http_status, row.cost_nano) == ("client_disconnected", 499, 0)


def test_keep_alive_comments_are_relayed_and_keep_the_stream_open(
    gateway: Gateway, app: AppKeys, user_id: str
) -> None:
    """3 s to the first token, longer than the 2 s idle timeout: the upstream's
    ``: OPENROUTER PROCESSING`` comments every 0.5 s reach the client as they come and
    count as activity."""
    body = chat_body("hi", chunks=3, ttft_ms=3000, comment_interval_ms=500)
    comments: list[float] = []
    contents = 0
    with httpx.stream("POST", gateway.url + CHAT, json=body,
                      headers=secret_headers(app, user_id), timeout=20) as response:
        assert response.status_code == 200
        for at, event in iter_events(response):
            if event.startswith(COMMENT):
                comments.append(at)
            contents += is_content(event)
            last = event
    assert len(comments) >= 5
    assert comments[-1] - comments[0] >= 2.0
    assert contents == 3 and last == b"data: [DONE]"
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    assert row.status == "ok"
