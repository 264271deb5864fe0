"""`GET /api/v1/generation`: its delay, and what completed, aborted, errored and reasoning
generations were billed, as the record and the ledger both say."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import httpx
import pytest

from gateway.fake_upstream import FakeUpstreamSettings, create_app
from gateway.fake_upstream import generations as fake_generations

from .helpers import (
    HELLO_PROMPT_TOKENS,
    MINI_COMPLETION,
    MINI_PROMPT,
    Upstream,
    billed_nano,
    chat,
    data,
    generation,
    leave_after_first_content,
    nano,
    read_into,
    stream,
    wait_idle,
)

pytestmark = pytest.mark.e2e

O3_PROMPT, O3_COMPLETION = Decimal("0.0000011"), Decimal("0.0000044")
DOCUMENTED_FIELDS = {
    "id", "upstream_id", "total_cost", "cache_discount", "upstream_inference_cost",
    "created_at", "model", "app_id", "streamed", "cancelled", "provider_name", "latency",
    "moderation_latency", "generation_time", "finish_reason", "native_finish_reason",
    "tokens_prompt", "tokens_completion", "native_tokens_prompt", "native_tokens_completion",
    "native_tokens_completion_images", "native_tokens_reasoning", "native_tokens_cached",
    "num_media_prompt", "num_input_audio_prompt", "num_media_completion", "num_search_results",
    "origin", "usage", "is_byok", "external_user", "api_type", "router",
}


def mini_cost(completion: int) -> Decimal:
    return HELLO_PROMPT_TOKENS * MINI_PROMPT + completion * MINI_COMPLETION


def wait_readable(client: httpx.Client, generation_id: str, timeout: float = 5) -> float:
    """Seconds until the record answers 200 (404 until then)."""
    started = time.monotonic()
    while True:
        response = client.get("/generation", params={"id": generation_id})
        if response.status_code == 200:
            return time.monotonic() - started
        assert response.status_code == 404
        assert time.monotonic() - started < timeout, "the record never became readable"
        time.sleep(0.05)


def test_completed_generation_record(client: httpx.Client) -> None:
    body = chat(chunks=7, generation_delay_ms=0)
    body["user"] = "shopper-1"
    response, evs = stream(client, body)
    usage = data(evs[-2])["usage"]
    record = generation(client, response.headers["x-generation-id"])
    assert set(record) >= DOCUMENTED_FIELDS
    assert record["id"] == response.headers["x-generation-id"]
    assert (record["model"], record["provider_name"]) == ("openai/gpt-4o-mini", "OpenAI")
    assert record["tokens_prompt"] == usage["prompt_tokens"] == HELLO_PROMPT_TOKENS
    assert record["tokens_completion"] == 7
    assert record["total_cost"] == record["usage"] == usage["cost"] == mini_cost(7)
    assert (record["streamed"], record["cancelled"]) == (True, False)
    assert (record["finish_reason"], record["native_finish_reason"]) == ("stop", "stop")
    assert record["external_user"] == "shopper-1"
    assert record["router"] is None
    assert record["is_byok"] is False


def test_record_answers_404_for_a_moment_after_the_end(client: httpx.Client) -> None:
    # The server's default delay (1 s), then a per-request one.
    for delay_ms, body in ((1000, chat(chunks=1)), (300, chat(chunks=1, generation_delay_ms=300))):
        response, _ = stream(client, body)
        generation_id = response.headers["x-generation-id"]
        early = client.get("/generation", params={"id": generation_id})
        assert early.status_code == 404
        assert early.json()["error"]["message"] == f"Generation {generation_id} not found"
        # A lower bound only: the record is not readable before the delay has passed.
        assert wait_readable(client, generation_id) >= delay_ms / 1000 - 0.1


def test_a_generation_is_readable_only_by_its_accounts_keys(
    client: httpx.Client, upstream: Upstream
) -> None:
    """A person's key (issued through the PKCE flow) and the operator's key are different
    accounts: each reads its own generations only, and the ledger counts the look-ups."""
    person = "user_" + "p" * 27
    made = httpx.post(f"{upstream.root}/_fake/key", timeout=5, json={"user_id": person})
    assert made.status_code == 201, made.text
    theirs_key = made.json()["key"]
    with keyed(client, theirs_key) as theirs:
        response, _ = stream(theirs, chat(chunks=3, generation_delay_ms=0))
        generation_id = response.headers["x-generation-id"]
        assert generation(theirs, generation_id)["tokens_completion"] == 3
    operators = client.get("/generation", params={"id": generation_id})
    assert operators.status_code == 404
    assert operators.json()["error"]["message"] == f"Generation {generation_id} not found"
    own, _ = stream(client, chat(chunks=2, generation_delay_ms=0))
    with keyed(client, theirs_key) as theirs:
        hidden = theirs.get("/generation", params={"id": own.headers["x-generation-id"]})
        assert hidden.status_code == 404
    entry = httpx.get(f"{upstream.root}/_fake/ledger", params={"key": theirs_key},
                      timeout=5).json()
    assert (entry["requests"], entry["lookups"], entry["user_id"]) == (1, 2, person)


def test_lookup_errors(client: httpx.Client) -> None:
    missing = client.get("/generation", params={"id": "gen-0-nothing"})
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "Generation gen-0-nothing not found"
    assert client.get("/generation").status_code == 400
    anonymous = client.get("/generation", params={"id": "x"}, headers={"authorization": ""})
    assert anonymous.status_code == 401


def test_aborted_stream_bills_what_a_cancellable_provider_made(
    client: httpx.Client, upstream: Upstream
) -> None:
    key = "sk-or-v1-abort-cancellable"
    body = chat(gap_ms=150, chunks=40, generation_delay_ms=0)
    generation_id = _leave(client, body, key)
    wait_idle(upstream)
    with keyed(client, key) as theirs:
        record = generation(theirs, generation_id)
    assert record["cancelled"] is True
    assert record["finish_reason"] is None
    made = record["tokens_completion"]
    assert 1 <= made < 40
    assert record["total_cost"] == mini_cost(made)
    assert billed_nano(upstream.root, key) == nano(mini_cost(made))


def keyed(client: httpx.Client, key: str) -> httpx.Client:
    """A client of the same upstream with another key (another account's)."""
    return httpx.Client(
        base_url=str(client.base_url), headers={"authorization": f"Bearer {key}"}, timeout=10
    )


def _leave(client: httpx.Client, body: object, key: str) -> str:
    with keyed(client, key) as theirs:
        return leave_after_first_content(theirs, body)


@pytest.mark.parametrize(
    ("model", "knobs"),
    [
        pytest.param("google/gemini-2.0-flash-001", {}, id="google-ai-studio"),
        pytest.param("mistralai/mistral-small-3.1-24b-instruct", {}, id="mistral"),
        pytest.param("openai/gpt-4o-mini", {"cancellable": False}, id="knob"),
    ],
)
def test_aborted_stream_bills_in_full_where_the_provider_cannot_cancel(
    client: httpx.Client, upstream: Upstream, model: str, knobs: dict[str, Any]
) -> None:
    key = f"sk-or-v1-no-cancel-{model.replace('/', '-')}-{len(knobs)}"
    body = chat(model=model, gap_ms=50, chunks=12, generation_delay_ms=0, **knobs)
    generation_id = _leave(client, body, key)
    left_at = time.monotonic()
    wait_idle(upstream)
    with keyed(client, key) as theirs:
        # The provider runs on to its end (11 more gaps of 50 ms) before the record appears.
        assert theirs.get("/generation", params={"id": generation_id}).status_code == 404
        wait_readable(theirs, generation_id)
        assert time.monotonic() - left_at >= 0.4
        record = generation(theirs, generation_id)
    assert record["cancelled"] is True
    assert record["tokens_completion"] == 12
    assert record["finish_reason"] == "stop"
    assert billed_nano(upstream.root, key) == nano(record["total_cost"])
    assert record["total_cost"] > 0


def test_mid_stream_error_is_recorded_with_what_was_made(
    client: httpx.Client, upstream: Upstream
) -> None:
    key = "sk-or-v1-errored"
    body = chat(fault="mid_stream_error", fault_after=3, generation_delay_ms=0)
    with httpx.Client(
        base_url=upstream.api, headers={"authorization": f"Bearer {key}"}, timeout=10
    ) as theirs:
        response, evs = stream(theirs, body)
        record = generation(theirs, response.headers["x-generation-id"])
    assert b'"usage"' not in b"".join(evs)
    assert (record["finish_reason"], record["cancelled"]) == ("error", False)
    assert record["tokens_completion"] == 3
    assert record["total_cost"] == mini_cost(3)
    assert billed_nano(upstream.root, key) == nano(mini_cost(3))


def test_reset_stream_has_no_usage_and_bills_what_was_sent(
    client: httpx.Client, upstream: Upstream
) -> None:
    body = chat(fault="reset", fault_after=4, generation_delay_ms=0)
    received = bytearray()
    with client.stream("POST", "/chat/completions", json=body) as response:
        generation_id = response.headers["x-generation-id"]
        with pytest.raises(httpx.RemoteProtocolError):
            read_into(response, received)
    assert b'"usage"' not in received
    wait_idle(upstream)
    assert generation(client, generation_id)["total_cost"] == mini_cost(4)


def test_non_streamed_request_left_early_runs_on_and_bills_in_full(
    client: httpx.Client, upstream: Upstream
) -> None:
    key = "sk-or-v1-left-json"
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{upstream.api}/chat/completions",
            json=chat(stream=False, chunks=5, ttft_ms=1500, generation_delay_ms=0),
            headers={"authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(5, read=0.2),
        )
    wait_idle(upstream)
    assert billed_nano(upstream.root, key) == nano(mini_cost(5))


@pytest.mark.parametrize(
    ("max_tokens", "reasoning", "content", "finish"),
    [
        pytest.param(None, 64, 20, "stop", id="unbounded"),
        pytest.param(70, 64, 6, "length", id="bound-cuts-content"),
        pytest.param(30, 30, 0, "length", id="bound-cuts-reasoning"),
    ],
)
@pytest.mark.parametrize(
    "streamed", [pytest.param(True, id="stream"), pytest.param(False, id="json")]
)
def test_reasoning_model_counts_hidden_tokens_within_max_tokens(
    client: httpx.Client,
    max_tokens: int | None,
    reasoning: int,
    content: int,
    finish: str,
    streamed: bool,
) -> None:
    body = chat(stream=streamed, model="openai/o3-mini", generation_delay_ms=0)
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if streamed:
        response, evs = stream(client, body)
        assert sum(b'"content":"tok "' in e for e in evs) == content
        assert data(evs[-3])["choices"][0]["finish_reason"] == finish
        usage = data(evs[-2])["usage"]
    else:
        response = client.post("/chat/completions", json=body)
        answer = json.loads(response.content, parse_float=Decimal)
        assert answer["choices"][0]["message"]["content"] == "tok " * content
        assert answer["choices"][0]["finish_reason"] == finish
        usage = answer["usage"]
    assert usage["completion_tokens"] == reasoning + content
    assert usage["completion_tokens_details"]["reasoning_tokens"] == reasoning
    assert usage["cost"] == HELLO_PROMPT_TOKENS * O3_PROMPT + (reasoning + content) * O3_COMPLETION
    record = generation(client, response.headers["x-generation-id"])
    assert record["native_tokens_reasoning"] == reasoning
    assert record["total_cost"] == usage["cost"]


def test_reasoning_knob_and_the_models_own_bound(client: httpx.Client) -> None:
    _, evs = stream(client, chat(reasoning_tokens=5, chunks=3))
    usage = data(evs[-2])["usage"]
    assert usage["completion_tokens"] == 8
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 5
    # No request is answered past the model's largest completion (4,096 for this one).
    _, evs = stream(client, chat(model="meta-llama/llama-3.1-8b-instruct:free", chunks=5000))
    assert data(evs[-2])["usage"]["completion_tokens"] == 4096
    assert data(evs[-3])["choices"][0]["finish_reason"] == "length"


async def test_generations_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fake_generations, "MAX_GENERATIONS", 3)
    settings = FakeUpstreamSettings(chunks=1, generation_delay_ms=0)
    transport = httpx.ASGITransport(app=create_app(settings))
    headers = {"authorization": "Bearer x"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://fake/api/v1", headers=headers
    ) as c:
        ids = []
        for _ in range(4):
            response = await c.post("/chat/completions", json=chat(stream=False))
            ids.append(response.headers["x-generation-id"])
        found = [(await c.get("/generation", params={"id": i})).status_code for i in ids]
    assert found == [404, 200, 200, 200]
