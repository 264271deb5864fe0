"""The same proxy over httpx's own transport (``[upstream] transport = "httpx"``): streamed
and whole answers relayed unchanged, a broken stream ended cleanly, every charge booked."""

from __future__ import annotations

import httpx
import openai
import pytest

from .harness import (
    MODEL,
    AppKeys,
    FakeUpstream,
    Gateway,
    GatewayConfig,
    assert_consistent,
    chat_body,
    fake_cost_nano,
    fake_prompt_tokens,
    ledger,
    read_content,
    secret_headers,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gateway_config() -> GatewayConfig:
    return GatewayConfig(transport="httpx")


def test_a_stream_over_httpx_transport_is_relayed_and_charged(
    client: openai.OpenAI, gateway: Gateway, user_id: str
) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_body={"fake": {"chunks": 5}},
    )
    seen: list[str] = []
    read_content(stream, seen)
    assert "".join(seen) == "tok " * 5
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    assert (row.status, row.cost_source) == ("ok", "upstream")
    assert row.cost_nano == fake_cost_nano(
        prompt_tokens=fake_prompt_tokens("hi"), completion_tokens=5
    )


def test_a_whole_answer_over_httpx_transport(
    client: openai.OpenAI, gateway: Gateway, user_id: str
) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}],
        extra_body={"fake": {"chunks": 3}},
    )
    assert completion.choices[0].message.content == "tok " * 3
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    assert row.status == "ok" and row.cost_nano > 0


def test_a_reset_stream_over_httpx_transport_ends_cleanly(
    gateway: Gateway, fake: FakeUpstream, app: AppKeys, user_id: str
) -> None:
    body = chat_body("hi", chunks=10, fault="reset", fault_after=2)
    response = httpx.post(gateway.url + "/v1/chat/completions", json=body,
                          headers=secret_headers(app, user_id), timeout=20)
    assert response.status_code == 200
    assert b'"code":"upstream_error"' in response.content
    assert response.content.endswith(b"data: [DONE]\n\n")
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    assert row.status == "upstream_error" and row.cost_nano > 0
