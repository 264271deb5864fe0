"""The monthly cap: refused up front, cut mid-stream, and never overspent by concurrent
requests.

Prices used below (the simulated catalog and the gateway's documented bounds), for
``openai/gpt-4o-mini`` at $0.15 per million prompt tokens and $0.60 per million
completion tokens, i.e. 150 and 600 nano-USD per token:

- the gateway's prompt bound for one message "hi" is 16 (base) + 8 (per message) + 2
  (UTF-8 bytes) = 26 tokens = 3,900 nano-USD; the upstream bills it as 4 tokens = 600;
- the smallest admissible hold adds 16 completion tokens (``min_completion_tokens``):
  3,900 + 9,600 = 13,500 nano-USD;
- while streaming, a chunk is bounded by the UTF-8 bytes of its text: "tok " counts 4
  tokens (2,400 nano-USD), "a" counts 1 (600), though the upstream bills each as 1.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest

from gateway.tokens import mint_session_token

from .harness import (
    MODEL,
    AppKeys,
    FakeUpstream,
    Gateway,
    assert_consistent,
    chat_body,
    data_events,
    fake_cost_nano,
    fake_prompt_tokens,
    ledger,
    read_content,
    settled_nano,
    wait_until,
)

pytestmark = pytest.mark.e2e

NANO = 1_000_000_000
CHAT = "/v1/chat/completions"
PROMPT_BOUND_NANO = 3_900
MIN_HOLD_NANO = 13_500
TOK_CHUNK_NANO = 2_400


def session(app: AppKeys, user_id: str, cap_nano: int) -> dict[str, str]:
    token = mint_session_token(app.secret_key, user_id, monthly_usd=cap_nano / NANO).token
    return {"Authorization": f"Bearer {token}"}


def post(gateway: Gateway, headers: dict[str, str], body: dict[str, Any]) -> httpx.Response:
    return httpx.post(gateway.url + CHAT, json=body, headers=headers, timeout=30)


def contents(payloads: list[Any]) -> list[str]:
    return [
        p["choices"][0]["delta"]["content"]
        for p in payloads
        if isinstance(p, dict) and p.get("choices") and p["choices"][0]["delta"].get("content")
    ]


def is_cap_tail(payloads: list[Any]) -> bool:
    """Ends as API.md says a cut stream ends: the error, a usage chunk, ``[DONE]``."""
    if len(payloads) < 3:
        return False
    error, usage_chunk, done = payloads[-3:]
    return (
        isinstance(error, dict)
        and error.get("error", {}).get("code") == "spend_cap_reached"
        and isinstance(usage_chunk, dict)
        and usage_chunk.get("choices") == []
        and isinstance(usage_chunk.get("usage", {}).get("cost"), float | int)
        and done == "[DONE]"
    )


@pytest.mark.parametrize(
    ("cap_nano", "admitted"),
    [
        pytest.param(0, False, id="zero-cap"),
        pytest.param(MIN_HOLD_NANO - 1, False, id="one-nano-short-of-the-minimum"),
        pytest.param(MIN_HOLD_NANO, True, id="exactly-the-minimum"),
    ],
)
def test_admission_before_any_upstream_call(
    gateway: Gateway,
    fake: FakeUpstream,
    app: AppKeys,
    user_id: str,
    cap_nano: int,
    admitted: bool,
) -> None:
    before = fake.last_request()
    response = post(gateway, session(app, user_id, cap_nano), chat_body("hi", chunks=3))
    if admitted:
        assert response.status_code == 200
        assert fake.last_request()["user"] != (before or {}).get("user")
        assert contents(data_events(response.content)) == ["tok "] * 3
    else:
        assert response.status_code == 402
        assert response.json()["error"]["code"] == "spend_cap_reached"
        assert fake.last_request() == before
    assert_consistent(gateway.db)
    assert len(ledger(gateway.db, user_id)) == (1 if admitted else 0)


def test_stream_is_cut_at_the_cap(
    gateway: Gateway, fake: FakeUpstream, app: AppKeys, user_id: str
) -> None:
    cap = 20_000
    # 3,900 + 6 × 2,400 = 18,300 fits; a 7th "tok " chunk would reach 20,700.
    fits = (cap - PROMPT_BOUND_NANO) // TOK_CHUNK_NANO
    headers = session(app, user_id, cap)
    response = post(gateway, headers, chat_body("hi", chunks=40, gap_ms=5))
    assert response.status_code == 200
    payloads = data_events(response.content)
    assert contents(payloads) == ["tok "] * fits
    assert is_cap_tail(payloads), payloads[-3:]
    error, usage_chunk, _ = payloads[-3:]
    assert error["error"]["type"] and error["error"]["message"]
    charged = round(usage_chunk["usage"]["cost"] * NANO)
    assert wait_until(lambda: fake.in_flight() == 0, timeout=5), "upstream not stopped"

    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    assert (row.status, row.error_code) == ("cut_cap", "spend_cap_reached")
    # The tail said the most it would cost (the estimate); the charge is the upstream's
    # own record of the generation, looked up after the end.
    assert row.cost_source == "generation"
    assert row.operator_nano == 0
    true_cost = fake_cost_nano(prompt_tokens=fake_prompt_tokens("hi"),
                               completion_tokens=row.completion_tokens)
    assert row.cost_nano == true_cost
    assert row.completion_tokens >= fits
    assert row.cost_nano <= charged <= cap
    assert settled_nano(gateway.db, user_id) == row.cost_nano

    # What the upstream did not bill is the user's again.
    conn = httpx.get(f"{gateway.url}/v1/connection", headers=headers, timeout=10).json()
    assert round(conn["remaining_usd"] * NANO) == cap - row.cost_nano


def test_a_stream_stopped_at_the_bound_lowered_to_fit_ends_as_a_cut(
    gateway: Gateway, fake: FakeUpstream, app: AppKeys, user_id: str
) -> None:
    """The gateway lowers ``max_tokens`` to what the cap pays for; the upstream stops
    there (one-byte tokens: the running estimate never cuts first), and the stream ends
    with the cap tail, charged the upstream's own figure."""
    cap = 20_000
    covered = (cap - PROMPT_BOUND_NANO) * 1000 // 600_000  # 26 tokens at 600 pico each
    headers = session(app, user_id, cap)
    response = post(gateway, headers, chat_body("hi", chunks=40, chunk_text="a"))
    assert response.status_code == 200
    assert fake.last_request()["max_tokens"] == covered
    payloads = data_events(response.content)
    assert contents(payloads) == ["a"] * covered
    assert is_cap_tail(payloads), payloads[-3:]
    assert payloads[-3]["error"]["code"] == "spend_cap_reached"
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    expected = fake_cost_nano(prompt_tokens=fake_prompt_tokens("hi"), completion_tokens=covered)
    assert (row.status, row.error_code, row.cost_source) == (
        "cut_cap", "spend_cap_reached", "upstream")
    assert row.cost_nano == expected == round(payloads[-2]["usage"]["cost"] * NANO)
    assert row.operator_nano == 0


def test_sdk_raises_on_the_cap_event(gateway: Gateway, app: AppKeys, user_id: str) -> None:
    token = mint_session_token(app.secret_key, user_id, monthly_usd=20_000 / NANO).token
    seen: list[str] = []
    with openai.OpenAI(
        base_url=gateway.url + "/v1", api_key=token, max_retries=0, timeout=20
    ) as sdk:
        stream = sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True,
            extra_body={"fake": {"chunks": 40}},
        )
        with pytest.raises(openai.APIError) as caught:
            read_content(stream, seen)
    assert caught.value.code == "spend_cap_reached"
    assert "".join(seen) == "tok " * 6
    assert_consistent(gateway.db)
    assert settled_nano(gateway.db, user_id) <= 20_000


# -- concurrency --------------------------------------------------------------------------

STREAMS = 100
CHUNKS = 20
# Every request asks for max_tokens=20. For one whose chunks are "a" the gateway holds an
# upper bound of its cost: the prompt bound (3,900) + 20 completion tokens × 600 = 15,900
# nano-USD, while the upstream bills 4 × 150 + 20 × 600 = 12,600. The cap fits ten such
# holds exactly, so about ten streams run at once and the rest are refused up front.
# Every other request streams "tok " chunks instead, which the gateway's running estimate
# counts as 4 tokens each: after 5 chunks it outgrows its hold and must extend it, racing
# the other streams for what is left of the cap, or be cut. Arrivals are spread over
# ~0.6 s so that settlements (each "a" stream frees 3,300) interleave with admissions.
HOLD_NANO = PROMPT_BOUND_NANO + CHUNKS * 600
CAP_NANO = 10 * HOLD_NANO
TEXTS = ("a", "tok ")


async def test_concurrent_streams_never_overspend(
    gateway: Gateway, fake: FakeUpstream, app: AppKeys, user_id: str
) -> None:
    headers = session(app, user_id, CAP_NANO)
    limits = httpx.Limits(max_connections=STREAMS, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60, limits=limits) as http:

        async def one(i: int) -> tuple[str, int, bytes]:
            text = TEXTS[i % 2]
            body = {**chat_body("hi", chunks=CHUNKS, chunk_text=text, gap_ms=20),
                    "max_tokens": CHUNKS, "stream_options": {"include_usage": True}}
            await asyncio.sleep((i % 20) * 0.03)
            response = await http.post(CHAT, json=body, headers=headers)
            return text, response.status_code, response.content

        results = await asyncio.gather(*(one(i) for i in range(STREAMS)))

    refused = completed = cut = 0
    charged_seen = 0
    for text, status, content in results:
        if status == 402:
            assert b'"spend_cap_reached"' in content
            refused += 1
            continue
        assert status == 200, content[:500]
        payloads = data_events(content)
        if is_cap_tail(payloads):
            cut += 1
            assert set(contents(payloads)) <= {text}
            charged_seen += round(payloads[-2]["usage"]["cost"] * NANO)
            continue
        # Otherwise it completed normally: all its text, the upstream's usage, [DONE].
        assert "".join(contents(payloads)) == text * CHUNKS
        assert payloads[-1] == "[DONE]" and payloads[-2]["choices"] == []
        assert not any(isinstance(p, dict) and "error" in p for p in payloads)
        charged_seen += round(payloads[-2]["usage"]["cost"] * NANO)
        completed += 1
    mix = {"refused": refused, "completed": completed, "cut": cut}
    assert refused + completed + cut == STREAMS
    assert completed >= 5 and cut >= 1 and refused >= STREAMS // 2, mix

    assert_consistent(gateway.db)
    rows = ledger(gateway.db, user_id)
    assert len(rows) == completed + cut
    total = settled_nano(gateway.db, user_id)
    assert total == sum(r.cost_nano for r in rows)
    # A cut stream's tail says the most it will cost; its charge is the upstream's record.
    assert total <= charged_seen
    assert all(r.cost_source == ("upstream" if r.status == "ok" else "generation")
               for r in rows)
    assert total <= CAP_NANO, mix
    assert sum(r.status == "ok" for r in rows) == completed
    assert sum(r.status == "cut_cap" for r in rows) == cut
    assert wait_until(lambda: fake.in_flight() == 0, timeout=5)


def test_non_streamed_request_asks_for_no_more_than_the_cap_pays(
    gateway: Gateway, fake: FakeUpstream, app: AppKeys, user_id: str
) -> None:
    """A finished answer cannot be cut, so the gateway lowers ``max_tokens`` to what the
    hold covers: (20,000 - 3,900) / 600 = 26 tokens of the 40 the upstream would send."""
    cap = 20_000
    response = post(gateway, session(app, user_id, cap),
                    {**chat_body("hi", stream=False, chunks=40), "max_tokens": 1000})
    assert response.status_code == 200
    doc = response.json()
    assert fake.last_request()["max_tokens"] == 26
    assert doc["choices"][0]["finish_reason"] == "length"
    assert doc["usage"]["completion_tokens"] == 26
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    expected = fake_cost_nano(prompt_tokens=fake_prompt_tokens("hi"), completion_tokens=26)
    assert row.cost_nano == expected <= cap
