"""The OpenAI-compatible mode under `/v1`, as OpenAI, vLLM and Ollama serve it."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from gateway.fake_upstream import MODELS

from .helpers import (
    DONE,
    HELLO_PROMPT_TOKENS,
    KEY,
    MINI,
    Upstream,
    billed_nano,
    chat,
    data,
    nano,
    stream,
)
from .test_generations import mini_cost

pytestmark = pytest.mark.e2e


def test_models_list_has_no_prices(openai_client: httpx.Client) -> None:
    listed = openai_client.get("/models").json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == [m.id for m in MODELS if m.id != "openrouter/auto"]
    for entry in listed["data"]:
        assert set(entry) == {"id", "object", "created", "owned_by"}
        assert entry["object"] == "model"
        assert isinstance(entry["created"], int)
    assert listed["data"][0]["owned_by"] == "openai"


def _content_chunks(evs: list[bytes]) -> list[Any]:
    return [data(e) for e in evs if e != DONE]


def test_stream_without_include_usage_has_no_usage_at_all(openai_client: httpx.Client) -> None:
    response, evs = stream(openai_client, chat(chunks=3))
    assert response.headers["content-type"] == "text/event-stream"
    assert "x-generation-id" not in response.headers
    assert response.headers["x-request-id"].startswith("req_")
    assert evs[-1] == DONE
    assert not any(e.startswith(b":") for e in evs)
    chunks = _content_chunks(evs)
    assert all("usage" not in c for c in chunks)
    first, *content, last = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert [c["choices"][0]["delta"] for c in content] == [{"content": "tok "}] * 3
    assert last["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    ]
    for chunk in chunks:
        assert chunk["id"].startswith("chatcmpl-")
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == MINI
        assert "provider" not in chunk
    # include_usage false is the same as not asking.
    body = chat(chunks=3)
    body["stream_options"] = {"include_usage": False}
    _, evs = stream(openai_client, body)
    assert b'"usage"' not in b"".join(evs)


def test_stream_with_include_usage(openai_client: httpx.Client) -> None:
    body = chat(chunks=4)
    body["stream_options"] = {"include_usage": True}
    _, evs = stream(openai_client, body)
    *chunks, usage_chunk = _content_chunks(evs)
    assert all(c["usage"] is None for c in chunks)
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": HELLO_PROMPT_TOKENS,
        "completion_tokens": 4,
        "total_tokens": HELLO_PROMPT_TOKENS + 4,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def test_non_streamed_body_has_tokens_only(openai_client: httpx.Client) -> None:
    answer = openai_client.post("/chat/completions", json=chat(stream=False, chunks=2)).json()
    assert answer["object"] == "chat.completion"
    (choice,) = answer["choices"]
    assert choice["message"]["content"] == "tok tok "
    assert choice["finish_reason"] == "stop"
    assert answer["usage"]["completion_tokens"] == 2
    assert "cost" not in answer["usage"]


@pytest.mark.parametrize(
    ("bounds", "openai_tokens", "openrouter_tokens"),
    [
        pytest.param({"max_tokens": 2, "max_completion_tokens": 5}, 5, 2, id="both"),
        pytest.param({"max_tokens": 3}, 3, 3, id="max_tokens"),
        pytest.param({"max_completion_tokens": 4}, 4, 4, id="max_completion_tokens"),
    ],
)
def test_max_completion_tokens_supersedes_max_tokens(
    openai_client: httpx.Client,
    client: httpx.Client,
    bounds: dict[str, int],
    openai_tokens: int,
    openrouter_tokens: int,
) -> None:
    for dialect, tokens in ((openai_client, openai_tokens), (client, openrouter_tokens)):
        answer = dialect.post("/chat/completions", json={**chat(stream=False), **bounds}).json()
        assert answer["usage"]["completion_tokens"] == tokens
        assert answer["choices"][0]["finish_reason"] == "length"


def test_errors_have_openais_shape(openai_client: httpx.Client) -> None:
    unknown = openai_client.post("/chat/completions", json=chat(model="nobody/nothing"))
    assert unknown.status_code == 404
    assert unknown.json() == {
        "error": {
            "message": "The model `nobody/nothing` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    }
    router = openai_client.post("/chat/completions", json=chat(model="openrouter/auto"))
    assert router.status_code == 404
    no_messages = openai_client.post("/chat/completions", json={"model": MINI})
    assert no_messages.status_code == 400
    assert no_messages.json()["error"]["param"] == "messages"
    not_json = openai_client.post("/chat/completions", content=b"{")
    assert not_json.status_code == 400
    limited = openai_client.post("/chat/completions", json=chat(fault="status", status=429))
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert set(limited.json()["error"]) == {"message", "type", "param", "code"}


def test_a_keyed_server_wants_the_key_on_v1_too(keyed_upstream: Upstream) -> None:
    url = f"{keyed_upstream.openai}/chat/completions"
    assert httpx.post(url, json=chat(stream=False)).status_code == 401
    wrong = httpx.post(url, json=chat(stream=False), headers={"authorization": "Bearer no"})
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    right = httpx.post(url, json=chat(stream=False), headers={"authorization": f"Bearer {KEY}"})
    assert right.status_code == 200


def test_bills_the_ledger_at_the_catalog_price(upstream: Upstream) -> None:
    key = "sk-local-vllm-billing"
    response = httpx.post(
        f"{upstream.openai}/chat/completions",
        json=chat(stream=False, chunks=3),
        headers={"authorization": f"Bearer {key}"},
    )
    assert response.status_code == 200
    assert billed_nano(upstream.root, key) == nano(mini_cost(3))


def test_openai_sdk_quick_start_loop_and_usage(upstream: Upstream) -> None:
    messages: Any = [{"role": "user", "content": "hello world"}]
    with openai.OpenAI(base_url=upstream.openai, api_key="unused", max_retries=0) as sdk:
        # The SDK's quick-start loop reads choices[0] of every chunk.
        text = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in sdk.chat.completions.create(model=MINI, messages=messages, stream=True)
        )
        assert text == "tok " * 20
        chunks = list(
            sdk.chat.completions.create(
                model=MINI,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                max_completion_tokens=7,
            )
        )
        usage = chunks[-1].usage
        assert usage is not None
        assert (usage.prompt_tokens, usage.completion_tokens) == (HELLO_PROMPT_TOKENS, 7)
        assert chunks[-2].choices[0].finish_reason == "length"
        with pytest.raises(openai.APIError):
            for _ in sdk.chat.completions.create(
                model=MINI,
                messages=messages,
                stream=True,
                extra_body={"fake": {"fault": "mid_stream_error"}},
            ):
                pass
