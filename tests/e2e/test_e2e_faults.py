"""Upstream failures, before and during a stream, as the client sees them and as the
ledger records them."""

from __future__ import annotations

import threading
import time
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
    secret_headers,
    settled_nano,
    wait_until,
)

pytestmark = pytest.mark.e2e

NANO = 1_000_000_000
CHAT = "/v1/chat/completions"
FIRST_BYTE_TIMEOUT_S = 2.0  # GatewayConfig's default, which this module keeps
IDLE_TIMEOUT_S = 2.0


def post(gateway: Gateway, headers: dict[str, str], body: dict[str, Any]) -> httpx.Response:
    return httpx.post(gateway.url + CHAT, json=body, headers=headers, timeout=30)


def content_of(payloads: list[Any]) -> str:
    return "".join(
        p["choices"][0]["delta"].get("content") or ""
        for p in payloads
        if isinstance(p, dict) and p.get("choices") and "error" not in p
    )


def assert_gateway_tail(payloads: list[Any], code: str) -> int:
    """The end the gateway writes when it stops a stream: its error event, a usage chunk
    with what was charged, ``[DONE]``. Returns the charge in nano-USD."""
    assert len(payloads) >= 3
    error, usage_chunk, done = payloads[-3:]
    assert error == {"error": {"message": error["error"]["message"], "type": "api_error",
                               "code": code, "param": None}}
    assert usage_chunk["object"] == "chat.completion.chunk"
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert done == "[DONE]"
    assert not any(isinstance(p, dict) and "error" in p for p in payloads[:-3])
    charged: int = round(usage["cost"] * NANO)
    return charged


def wait_idle(fake: FakeUpstream) -> None:
    assert wait_until(lambda: fake.in_flight() == 0, timeout=5), "upstream request left open"


# -- failures before the response starts ------------------------------------------------

STATUS_FAULTS = [
    pytest.param(401, 502, "upstream_error", ("User not found",), id="401-operator-key"),
    pytest.param(402, 502, "upstream_error", ("Insufficient credits", "openrouter.ai"),
                 id="402-operator-credit"),
    pytest.param(403, 502, "upstream_error", ("moderation", "violence"), id="403-moderation"),
    pytest.param(429, 429, "rate_limited", (), id="429"),
    pytest.param(500, 502, "upstream_error", (), id="500"),
    pytest.param(502, 502, "upstream_error", (), id="502"),
    pytest.param(503, 502, "upstream_error", (), id="503"),
    pytest.param(408, 504, "upstream_timeout", (), id="408"),
    pytest.param(400, 400, "invalid_request", (), id="400"),
    pytest.param(413, 413, "request_too_large", (), id="413"),
]


@pytest.mark.parametrize("stream", [pytest.param(True, id="stream"),
                                    pytest.param(False, id="json")])
@pytest.mark.parametrize(("upstream_status", "status", "code", "hidden"), STATUS_FAULTS)
def test_upstream_status(
    gateway: Gateway,
    fake: FakeUpstream,
    app: AppKeys,
    user_id: str,
    stream: bool,
    upstream_status: int,
    status: int,
    code: str,
    hidden: tuple[str, ...],
) -> None:
    fault: dict[str, Any] = {"fault": "status", "status": upstream_status}
    if upstream_status == 429:
        fault["retry_after"] = 7
    response = post(gateway, secret_headers(app, user_id),
                    chat_body("hi", stream=stream, **fault))
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    for secret in hidden:
        assert secret.lower() not in response.text.lower()
    if upstream_status == 429:
        assert response.headers["retry-after"] == "7"
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    assert (row.status, row.http_status, row.error_code, row.cost_nano) == (
        "failed", status, code, 0,
    )


@pytest.mark.parametrize("stream", [pytest.param(True, id="stream"),
                                    pytest.param(False, id="json")])
def test_upstream_hangs_before_headers(
    gateway: Gateway, fake: FakeUpstream, app: AppKeys, user_id: str, stream: bool
) -> None:
    started = time.monotonic()
    response = post(gateway, secret_headers(app, user_id),
                    chat_body("hi", stream=stream, fault="hang"))
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert FIRST_BYTE_TIMEOUT_S * 0.9 <= elapsed <= FIRST_BYTE_TIMEOUT_S + 2
    wait_idle(fake)
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    assert (row.status, row.error_code, row.cost_nano) == ("failed", "upstream_timeout", 0)


# -- failures in the middle of a stream -------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "code", "status"),
    [
        pytest.param("reset", "upstream_error", "upstream_error", id="reset"),
        pytest.param("malformed", "upstream_error", "upstream_error", id="malformed-chunk"),
        pytest.param("hang_mid_stream", "upstream_timeout", "upstream_timeout",
                     id="hang-mid-stream"),
    ],
)
def test_stream_broken_mid_way(
    gateway: Gateway,
    fake: FakeUpstream,
    app: AppKeys,
    user_id: str,
    fault: str,
    code: str,
    status: str,
) -> None:
    started = time.monotonic()
    response = post(gateway, secret_headers(app, user_id),
                    chat_body("hi", chunks=10, fault=fault, fault_after=3, chunk_text="abc"))
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert b'"choi\n' not in response.content  # a broken chunk is never forwarded
    payloads = data_events(response.content)
    assert content_of(payloads) == "abc" * 3
    charged = assert_gateway_tail(payloads, code)
    if fault == "hang_mid_stream":
        assert IDLE_TIMEOUT_S * 0.9 <= elapsed <= IDLE_TIMEOUT_S + 2
    wait_idle(fake)
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    assert (row.status, row.http_status, row.error_code) == (status, 200, code)
    # What was generated is charged: the upstream's own record of the generation, looked
    # up after the end; the tail told the client the most it could be (the estimate).
    assert row.cost_source == "generation"
    true_cost = fake_cost_nano(prompt_tokens=fake_prompt_tokens("hi"),
                               completion_tokens=row.completion_tokens)
    assert row.completion_tokens >= 3
    assert row.cost_nano == true_cost <= charged


def test_a_silent_stream_is_cut_while_a_slow_one_beside_it_goes_on(
    gateway: Gateway, fake: FakeUpstream, app: AppKeys, user_id: str
) -> None:
    """Idle deadlines share one timer: each stream is judged by its own silence."""
    slow_user = user_id + "-slow"
    results: dict[str, httpx.Response] = {}

    def run(name: str, user: str, body: dict[str, Any]) -> None:
        results[name] = post(gateway, secret_headers(app, user), body)

    # The slow stream lasts longer than the idle timeout, with every gap well inside it.
    slow = threading.Thread(target=run, args=("slow", slow_user, chat_body(
        "hi", chunks=6, gap_ms=IDLE_TIMEOUT_S * 1000 / 3, chunk_text="abc")))
    silent = threading.Thread(target=run, args=("silent", user_id, chat_body(
        "hi", chunks=10, fault="hang_mid_stream", fault_after=3, chunk_text="abc")))
    slow.start()
    silent.start()
    slow.join(timeout=30)
    silent.join(timeout=30)

    assert content_of(data_events(results["slow"].content)) == "abc" * 6
    assert data_events(results["slow"].content)[-1] == "[DONE]"
    assert_gateway_tail(data_events(results["silent"].content), "upstream_timeout")
    wait_idle(fake)
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, slow_user)
    assert (row.status, row.error_code) == ("ok", None)
    [row] = ledger(gateway.db, user_id)
    assert (row.status, row.error_code) == ("upstream_timeout", "upstream_timeout")


def test_sdk_raises_on_a_broken_stream(
    client: openai.OpenAI, gateway: Gateway, user_id: str
) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_body={"fake": {"chunks": 10, "fault": "reset", "fault_after": 2}},
    )
    seen: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        read_content(stream, seen)
    assert caught.value.code == "upstream_error"
    assert "".join(seen) == "tok " * 2
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    assert row.status == "upstream_error" and row.cost_nano > 0


def test_mid_stream_error_is_relayed_as_it_came(
    gateway: Gateway, fake: FakeUpstream, app: AppKeys, user_id: str
) -> None:
    body = chat_body("hi", chunks=10, fault="mid_stream_error", fault_after=2,
                     message="Provider went away")
    response = post(gateway, secret_headers(app, user_id), body)
    assert response.status_code == 200
    payloads = data_events(response.content)
    assert content_of(payloads) == "tok " * 2
    *_, error_chunk, done = payloads
    assert done == "[DONE]"
    assert error_chunk["error"] == {"code": 502, "message": "Provider went away",
                                    "metadata": {"error_type": "provider_unavailable"}}
    assert error_chunk["choices"][0]["finish_reason"] == "error"
    # Only the upstream's error event: the gateway adds none of its own.
    assert sum(1 for p in payloads if isinstance(p, dict) and "error" in p) == 1
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    assert (row.status, row.error_code) == ("upstream_error", "upstream_error")
    true_cost = fake_cost_nano(prompt_tokens=fake_prompt_tokens("hi"), completion_tokens=2)
    assert row.cost_nano >= true_cost > 0


def test_non_streamed_error_body_is_an_upstream_error(
    gateway: Gateway, app: AppKeys, user_id: str
) -> None:
    response = post(gateway, secret_headers(app, user_id),
                    chat_body("hi", stream=False, fault="mid_stream_error"))
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"
    assert_consistent(gateway.db, timeout=20)
    [row] = ledger(gateway.db, user_id)
    # The upstream had started, and billed the prompt: so is the user, to its record.
    assert (row.status, row.error_code, row.cost_source) == (
        "upstream_error", "upstream_error", "generation")
    assert row.cost_nano == fake_cost_nano(prompt_tokens=fake_prompt_tokens("hi"),
                                           completion_tokens=row.completion_tokens)


@pytest.mark.parametrize("stream", [pytest.param(True, id="stream"),
                                    pytest.param(False, id="json")])
def test_missing_usage_is_charged_the_upstreams_record(
    gateway: Gateway, app: AppKeys, user_id: str, stream: bool
) -> None:
    response = post(gateway, secret_headers(app, user_id),
                    chat_body("hi", stream=stream, chunks=5, fault="no_usage"))
    assert response.status_code == 200
    if stream:
        payloads = data_events(response.content)
        assert payloads[-1] == "[DONE]"
        assert not any(isinstance(p, dict) and "usage" in p for p in payloads)
        assert content_of(payloads) == "tok " * 5
    else:
        assert "usage" not in response.json()
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    # Nothing reported in the answer: the charge is the upstream's record of the
    # generation, looked up after the end.
    assert (row.status, row.cost_source) == ("ok", "generation")
    true_cost = fake_cost_nano(prompt_tokens=fake_prompt_tokens("hi"), completion_tokens=5)
    assert row.cost_nano == true_cost


def test_usage_chunk_repeating_the_finish_choice(
    gateway: Gateway, app: AppKeys, user_id: str
) -> None:
    """Recent OpenRouter streams repeat the finish choice in the usage chunk."""
    response = post(gateway, secret_headers(app, user_id),
                    chat_body("hi", chunks=4, usage_with_choice=True))
    assert response.status_code == 200
    usage_chunk = data_events(response.content)[-2]
    assert usage_chunk["choices"][0]["finish_reason"] == "stop"
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    expected = fake_cost_nano(prompt_tokens=fake_prompt_tokens("hi"), completion_tokens=4)
    assert round(usage_chunk["usage"]["cost"] * NANO) == expected
    assert (row.status, row.cost_source, row.cost_nano) == ("ok", "upstream", expected)


@pytest.mark.parametrize("stream", [pytest.param(True, id="stream"),
                                    pytest.param(False, id="json")])
def test_usage_without_cost_is_priced_from_tokens(
    gateway: Gateway, app: AppKeys, user_id: str, stream: bool
) -> None:
    response = post(gateway, secret_headers(app, user_id),
                    chat_body("hi", stream=stream, chunks=6, fault="usage_without_cost"))
    assert response.status_code == 200
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    expected = fake_cost_nano(prompt_tokens=fake_prompt_tokens("hi"), completion_tokens=6)
    assert (row.status, row.cost_source, row.cost_nano) == ("ok", "tokens", expected)


def _session(app: AppKeys, user_id: str, monthly_usd: float) -> dict[str, str]:
    token = mint_session_token(app.secret_key, user_id, monthly_usd=monthly_usd).token
    return {"Authorization": f"Bearer {token}"}


def test_hidden_reasoning_within_the_cap_is_charged(
    gateway: Gateway, app: AppKeys, user_id: str
) -> None:
    response = post(gateway, _session(app, user_id, 1.0),
                    {**chat_body("hi", chunks=3, fault="extra_reasoning", hidden_tokens=500),
                     "stream_options": {"include_usage": True}})
    assert response.status_code == 200
    usage = data_events(response.content)[-2]["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 500
    expected = fake_cost_nano(prompt_tokens=fake_prompt_tokens("hi"), completion_tokens=503)
    assert round(usage["cost"] * NANO) == expected
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    assert (row.cost_nano, row.upstream_cost_nano, row.operator_nano) == (expected, expected, 0)


def test_hidden_reasoning_beyond_the_cap_is_the_operators(
    gateway: Gateway, app: AppKeys, user_id: str
) -> None:
    """The stream's visible text fits the cap; the unstreamed reasoning the upstream
    bills afterwards does not. The user pays up to the cap, the operator the rest."""
    cap_nano = 20_000  # $0.00002: 3 one-byte chunks fit, 1,000 hidden tokens ($0.0006) do not
    response = post(gateway, _session(app, user_id, cap_nano / NANO),
                    chat_body("hi", chunks=3, chunk_text="a", fault="extra_reasoning",
                              hidden_tokens=1000))
    assert response.status_code == 200
    payloads = data_events(response.content)
    assert content_of(payloads) == "aaa"
    upstream_cost = fake_cost_nano(prompt_tokens=fake_prompt_tokens("hi"), completion_tokens=1003)
    assert upstream_cost > cap_nano
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    assert row.cost_nano == cap_nano
    assert row.upstream_cost_nano == upstream_cost
    assert row.operator_nano == upstream_cost - cap_nano
    assert settled_nano(gateway.db, user_id) == cap_nano
    metrics = httpx.get(gateway.url + "/metrics", timeout=10).text
    excess = [line for line in metrics.splitlines()
              if line.startswith("wattfare_operator_excess_usd_total ")]
    assert excess and float(excess[0].split()[1]) > 0
