"""Chat completions through a real gateway, with the official ``openai`` SDK as the client:
streamed and not, usage and cost, the bytes relayed unchanged, and the SDK's typed
exception for every error code."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from gateway.keys import generate_key_pair
from gateway.tokens import mint_session_token
from wattfare import Wattfare

from .harness import (
    MODEL,
    AppKeys,
    FakeUpstream,
    Gateway,
    assert_consistent,
    chat_body,
    data_events,
    events_of,
    fake_cost_nano,
    fake_prompt_tokens,
    ledger,
    secret_headers,
    settled_nano,
    without_ids,
)

pytestmark = pytest.mark.e2e

NANO = 1_000_000_000


@pytest.fixture(scope="module")
def live_app(gateway: Gateway) -> AppKeys:
    return gateway.create_app("live-shop", live=True)


def usage_cost_nano(usage: Any) -> int:
    """``usage.cost`` (an extra field OpenRouter adds) as nano-USD."""
    extra = usage.model_extra or {}
    return round(float(extra["cost"]) * NANO)


def test_streamed_completion(client: openai.OpenAI, gateway: Gateway, user_id: str) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello there"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"fake": {"chunks": 5, "chunk_text": "hi "}},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "hi " * 5
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    prompt = fake_prompt_tokens("hello there")
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, 5)
    expected = fake_cost_nano(prompt_tokens=prompt, completion_tokens=5)
    assert usage_cost_nano(usage) == expected

    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    assert (row.status, row.http_status, row.error_code) == ("ok", 200, None)
    assert (row.cost_nano, row.cost_source, row.operator_nano) == (expected, "upstream", 0)
    assert (row.prompt_tokens, row.completion_tokens) == (prompt, 5)


def test_non_streamed_completion(client: openai.OpenAI, gateway: Gateway, user_id: str) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello there"}],
        extra_body={"fake": {"chunks": 7, "chunk_text": "ok "}},
    )
    assert completion.choices[0].message.content == "ok " * 7
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    prompt = fake_prompt_tokens("hello there")
    expected = fake_cost_nano(prompt_tokens=prompt, completion_tokens=7)
    assert usage_cost_nano(completion.usage) == expected

    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    assert (row.status, row.cost_nano, row.cost_source) == ("ok", expected, "upstream")
    assert settled_nano(gateway.db, user_id) == expected


def test_server_sdk_session_client(gateway: Gateway, app: AppKeys, user_id: str) -> None:
    """The Python server SDK mints a session locally; the gateway meters it against the
    cap the session asked for, and ``GET /v1/connection`` reports the spend."""
    user = Wattfare(app.secret_key, base_url=gateway.url).user(user_id, monthly_usd=1.5)
    with user.openai(max_retries=0, timeout=20) as sdk:
        completion = sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hey"}],
            extra_body={"fake": {"chunks": 3}},
        )
    assert completion.usage is not None
    cost = usage_cost_nano(completion.usage)
    assert cost == fake_cost_nano(prompt_tokens=fake_prompt_tokens("hey"), completion_tokens=3)

    response = httpx.get(
        f"{gateway.url}/v1/connection", headers=secret_headers(app, user_id), timeout=10
    )
    assert response.status_code == 200
    doc = response.json()
    assert (doc["status"], doc["monthly_cap_usd"]) == ("connected", 1.5)
    assert round(doc["spent_usd"] * NANO) == cost
    assert round(doc["remaining_usd"] * NANO) == round(1.5 * NANO) - cost
    assert_consistent(gateway.db)


def test_sessions_endpoint_token_works(gateway: Gateway, app: AppKeys, user_id: str) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/sessions",
        headers={"Authorization": f"Bearer {app.secret_key}"},
        json={"user_id": user_id, "request_limit": {"monthly_usd": 2}},
        timeout=10,
    )
    assert response.status_code == 200
    doc = response.json()
    assert doc["user_id"] == user_id
    assert 590 <= doc["expires_at"] - time.time() <= 601
    with openai.OpenAI(
        base_url=gateway.url + "/v1", api_key=doc["token"], max_retries=0, timeout=20
    ) as sdk:
        completion = sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}]
        )
    assert completion.choices[0].message.content
    connection = httpx.get(
        f"{gateway.url}/v1/connection",
        headers={"Authorization": f"Bearer {doc['token']}"},
        timeout=10,
    ).json()
    assert connection["monthly_cap_usd"] == 2
    assert connection["spent_usd"] > 0
    assert_consistent(gateway.db)


def test_the_sdk_quick_start_loop_sees_no_usage_chunk_it_did_not_ask_for(
    client: openai.OpenAI, gateway: Gateway, user_id: str
) -> None:
    """OpenAI's own quick-start reads ``chunk.choices[0]`` of every chunk: without
    ``stream_options.include_usage`` no usage-only chunk may reach it, though the gateway
    asked the upstream for usage and charged by it."""
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello there"}],
        stream=True,
        extra_body={"fake": {"chunks": 3, "chunk_text": "hi "}},
    )
    text = ""
    for chunk in stream:
        text += chunk.choices[0].delta.content or ""
        assert chunk.usage is None
    assert text == "hi " * 3
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    prompt = fake_prompt_tokens("hello there")
    assert (row.cost_source, row.completion_tokens) == ("upstream", 3)
    assert row.cost_nano == fake_cost_nano(prompt_tokens=prompt, completion_tokens=3)


def test_stream_bytes_are_relayed_unchanged(
    gateway: Gateway, fake: FakeUpstream, app: AppKeys, user_id: str
) -> None:
    """Through the gateway and straight from the upstream, a request gets the same bytes
    (comments included), except for the per-generation id and timestamp."""
    body = {**chat_body("same bytes please", chunks=4, chunk_text="Ünïcödé \\\"q\" "),
            "stream_options": {"include_usage": True}}
    via = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers=secret_headers(app, user_id),
        timeout=20,
    )
    direct = httpx.post(
        f"{fake.api}/chat/completions",
        json=body,
        headers={"Authorization": "Bearer sk-or-v1-e2e"},
        timeout=20,
    )
    assert via.status_code == direct.status_code == 200
    assert via.headers["content-type"].startswith("text/event-stream")
    assert via.content.startswith(b": OPENROUTER PROCESSING\n\n")
    assert len(events_of(via.content)) == len(events_of(direct.content)) == 8
    assert without_ids(via.content) == without_ids(direct.content)
    payloads = data_events(via.content)
    assert payloads[-1] == "[DONE]"
    assert via.headers["x-generation-id"] == payloads[0]["id"]
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    assert row.status == "ok" and row.cost_nano > 0


# -- the SDK's typed exceptions -----------------------------------------------------------


@dataclass(frozen=True)
class Ctx:
    gateway: Gateway
    app: AppKeys
    live_app: AppKeys
    user_id: str

    def sdk(self, api_key: str, *, secret: bool = False) -> openai.OpenAI:
        headers = {"Wattfare-User": self.user_id} if secret else None
        return openai.OpenAI(
            base_url=self.gateway.url + "/v1",
            api_key=api_key,
            max_retries=0,
            timeout=20,
            default_headers=headers,
        )

    def complete(self, api_key: str, *, secret: bool = False, **kwargs: Any) -> None:
        request: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
        }
        request.update(kwargs)
        with self.sdk(api_key, secret=secret) as sdk:
            sdk.chat.completions.create(**request)

    def as_user(self, **kwargs: Any) -> None:
        self.complete(self.app.secret_key, secret=True, **kwargs)


def _revoked_first(ctx: Ctx) -> None:
    ctx.as_user()
    response = httpx.delete(
        f"{ctx.gateway.url}/v1/connection",
        headers=secret_headers(ctx.app, ctx.user_id),
        timeout=10,
    )
    assert response.status_code == 200 and response.json()["status"] == "revoked"
    ctx.as_user()


Case = Callable[[Ctx], None]
CASES = [
    pytest.param(
        lambda c: c.complete("sk_test_" + "A" * 43),
        openai.AuthenticationError, 401, "invalid_api_key", id="unknown-secret-key",
    ),
    pytest.param(
        lambda c: c.complete(
            mint_session_token(generate_key_pair("test").secret_key, c.user_id).token
        ),
        openai.AuthenticationError, 401, "invalid_session", id="token-of-unknown-app",
    ),
    pytest.param(
        lambda c: c.complete(
            mint_session_token(c.app.secret_key, c.user_id, now=time.time() - 700).token
        ),
        openai.AuthenticationError, 401, "session_expired", id="expired-token",
    ),
    pytest.param(
        lambda c: c.complete(c.live_app.secret_key, secret=True),
        openai.PermissionDeniedError, 403, "not_connected", id="live-app-not-connected",
    ),
    pytest.param(
        _revoked_first,
        openai.PermissionDeniedError, 403, "connection_revoked", id="revoked",
    ),
    pytest.param(
        lambda c: c.complete(mint_session_token(c.app.secret_key, c.user_id, monthly_usd=0).token),
        openai.APIStatusError, 402, "spend_cap_reached", id="zero-cap",
    ),
    pytest.param(
        lambda c: c.as_user(messages=[]),
        openai.BadRequestError, 400, "invalid_request", id="empty-messages",
    ),
    pytest.param(
        lambda c: c.as_user(model="nobody/no-such-model"),
        openai.NotFoundError, 404, "model_not_found", id="unknown-model",
    ),
    pytest.param(
        lambda c: c.as_user(messages=[{"role": "user", "content": "x" * 4096}]),
        openai.APIStatusError, 413, "request_too_large", id="body-too-large",
    ),
    pytest.param(
        lambda c: c.as_user(extra_body={"fake": {"fault": "status", "status": 429}}),
        openai.RateLimitError, 429, "rate_limited", id="upstream-429",
    ),
    pytest.param(
        lambda c: c.as_user(extra_body={"fake": {"fault": "status", "status": 500}}),
        openai.InternalServerError, 502, "upstream_error", id="upstream-500",
    ),
    pytest.param(
        lambda c: c.as_user(extra_body={"fake": {"fault": "hang"}}),
        openai.InternalServerError, 504, "upstream_timeout", id="upstream-hang",
    ),
]


@pytest.mark.parametrize(("call", "exc_type", "status", "code"), CASES)
def test_sdk_raises_typed_errors(
    gateway: Gateway,
    app: AppKeys,
    live_app: AppKeys,
    user_id: str,
    call: Case,
    exc_type: type[openai.APIStatusError],
    status: int,
    code: str,
) -> None:
    with pytest.raises(exc_type) as caught:
        call(Ctx(gateway=gateway, app=app, live_app=live_app, user_id=user_id))
    exc = caught.value
    assert exc.status_code == status
    assert exc.code == code
    assert isinstance(exc.body, dict)
    assert set(exc.body) == {"message", "type", "code", "param"}
    assert exc.body["message"]
    if status == 429:
        assert exc.response.headers["retry-after"] == "1"
    assert_consistent(gateway.db)
    assert all(row.cost_nano == 0 for row in ledger(gateway.db, user_id)
               if row.status != "ok")


def test_upstream_sees_the_operator_not_the_caller(
    gateway: Gateway, fake: FakeUpstream, app: AppKeys, user_id: str
) -> None:
    """The caller's credentials and user id never leave the gateway: the upstream gets
    the operator's key, an opaque user hash, and the request to report usage."""
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={**chat_body("forwarded?"), "stream_options": {"include_obfuscation": False}},
        headers={**secret_headers(app, user_id), "X-Custom": "private", "Cookie": "a=b"},
        timeout=20,
    )
    assert response.status_code == 200
    seen = httpx.get(f"{fake.api}/_last_request", timeout=5).json()
    headers, body = seen["headers"], seen["body"]
    assert headers["authorization"] == "Bearer sk-or-v1-e2e"
    assert not {"wattfare-user", "x-custom", "cookie"} & set(headers)
    assert app.secret_key not in str(seen) and user_id not in str(seen)
    assert body["messages"] == [{"role": "user", "content": "forwarded?"}]
    assert body["user"].startswith("wf_")
    assert body["usage"] == {"include": True}
    assert body["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert_consistent(gateway.db)
