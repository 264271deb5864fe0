"""The simulated OpenRouter's wire format, errors, faults and timing, over loopback."""

from __future__ import annotations

import argparse
import json
import re
import time
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from gateway.fake_upstream import (
    MODELS,
    FakeUpstreamSettings,
    add_arguments,
    price_of,
    settings_from_args,
)

from .helpers import (
    COMMENT,
    DONE,
    HELLO_PROMPT_TOKENS,
    KEY,
    MINI_COMPLETION,
    MINI_PROMPT,
    Upstream,
    generation,
    read_into,
    wait_idle,
)
from .helpers import chat as _request
from .helpers import data as _json
from .helpers import events as _events
from .helpers import stream as _stream

pytestmark = pytest.mark.e2e

GEN_ID = re.compile(r"gen-\d+-[A-Za-z0-9]{20}")


# --- the normal stream, byte by byte ------------------------------------------------


def test_stream_wire_format(client: httpx.Client) -> None:
    with client.stream("POST", "/chat/completions", json=_request()) as response:
        raw = response.read()
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    generation_id = response.headers["x-generation-id"]
    assert GEN_ID.fullmatch(generation_id)
    assert b"\r" not in raw
    assert raw.startswith(COMMENT + b"\n\n")
    assert raw.endswith(DONE + b"\n\n")
    assert b'"cost":0.0000129,' in raw

    events = _events(raw)
    assert events[0] == COMMENT
    assert events[-1] == DONE
    chunks = [_json(e) for e in events[1:-1]]
    content, (finish, usage_chunk) = chunks[:-2], chunks[-2:]
    assert len(content) == 20
    for chunk in chunks:
        assert chunk["id"] == generation_id
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == "openai/gpt-4o-mini"
        assert chunk["provider"] == "OpenAI"
        assert isinstance(chunk["created"], int)
        assert chunk["system_fingerprint"].startswith("fp_")
    for chunk in content:
        assert chunk["choices"] == [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": "tok "},
                "finish_reason": None,
                "native_finish_reason": None,
                "logprobs": None,
            }
        ]
    (choice,) = finish["choices"]
    assert choice["delta"] == {"role": "assistant", "content": ""}
    assert (choice["finish_reason"], choice["native_finish_reason"]) == ("stop", "stop")
    assert "usage" not in finish

    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert usage["prompt_tokens"] == HELLO_PROMPT_TOKENS
    assert usage["completion_tokens"] == 20
    assert usage["total_tokens"] == HELLO_PROMPT_TOKENS + 20
    assert usage["cost"] == HELLO_PROMPT_TOKENS * MINI_PROMPT + 20 * MINI_COMPLETION
    assert usage["is_byok"] is False
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert "upstream_inference_cost" in usage["cost_details"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0


def test_usage_chunk_can_repeat_the_finish_choice(client: httpx.Client) -> None:
    _, events = _stream(client, _request(usage_with_choice=True, chunks=2))
    usage_chunk = _json(events[-2])
    assert usage_chunk["usage"]["completion_tokens"] == 2
    (choice,) = usage_chunk["choices"]
    assert choice["finish_reason"] == "stop"


def test_stream_without_processing_comments(client: httpx.Client) -> None:
    _, events = _stream(client, _request(processing_comments=False, chunks=1))
    assert events[0].startswith(b"data: {")
    assert COMMENT not in b"".join(events)


def test_chunk_text_and_multibyte_prompt_tokens(client: httpx.Client) -> None:
    body = _request(chunks=3, chunk_text="héllo ")
    body["messages"] = [
        {"role": "system", "content": "héllo"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "abcd"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
    ]
    _, events = _stream(client, body)
    texts = [_json(e)["choices"][0]["delta"]["content"] for e in events[1:4]]
    assert texts == ["héllo "] * 3
    # 6 + 4 bytes of text → ceil(10 / 4) = 3, plus 3 for each of the two messages.
    assert _json(events[-2])["usage"]["prompt_tokens"] == 9


@pytest.mark.parametrize(
    ("stream", "cap_name"),
    [
        pytest.param(True, "max_tokens", id="stream-max_tokens"),
        pytest.param(True, "max_completion_tokens", id="stream-max_completion_tokens"),
        pytest.param(False, "max_tokens", id="json-max_tokens"),
    ],
)
def test_max_tokens_cuts_with_length(client: httpx.Client, stream: bool, cap_name: str) -> None:
    body = _request(stream=stream)
    body[cap_name] = 5
    if stream:
        _, events = _stream(client, body)
        assert sum(b'"content":"tok "' in e for e in events) == 5
        assert _json(events[-3])["choices"][0]["finish_reason"] == "length"
        assert _json(events[-2])["usage"]["completion_tokens"] == 5
    else:
        data = client.post("/chat/completions", json=body).json()
        assert data["choices"][0]["finish_reason"] == "length"
        assert data["choices"][0]["message"]["content"] == "tok " * 5
        assert data["usage"]["completion_tokens"] == 5


def test_non_stream_body(client: httpx.Client) -> None:
    response = client.post("/chat/completions", json=_request(stream=False, chunks=4))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    data = json.loads(response.content, parse_float=Decimal)
    assert data["id"] == response.headers["x-generation-id"]
    assert data["object"] == "chat.completion"
    assert data["model"] == "openai/gpt-4o-mini"
    assert data["provider"] == "OpenAI"
    (choice,) = data["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "tok " * 4
    assert (choice["finish_reason"], choice["native_finish_reason"]) == ("stop", "stop")
    assert data["usage"]["completion_tokens"] == 4
    assert data["usage"]["cost"] == HELLO_PROMPT_TOKENS * MINI_PROMPT + 4 * MINI_COMPLETION


def test_auto_router_bills_the_routed_model(client: httpx.Client) -> None:
    _, events = _stream(client, _request(model="openrouter/auto", chunks=2))
    usage_chunk = _json(events[-2])
    assert usage_chunk["model"] == "openai/gpt-4o-mini"
    assert usage_chunk["usage"]["cost"] == HELLO_PROMPT_TOKENS * MINI_PROMPT + 2 * MINI_COMPLETION


def test_free_model_costs_zero(client: httpx.Client) -> None:
    _, events = _stream(client, _request(model="meta-llama/llama-3.1-8b-instruct:free"))
    assert _json(events[-2])["usage"]["cost"] == 0


# --- models ----------------------------------------------------------------------


def test_models_list_has_string_prices(client: httpx.Client) -> None:
    response = client.get("/models", headers={"authorization": ""})
    assert response.status_code == 200
    models = {m["id"]: m for m in response.json()["data"]}
    assert [m.id for m in MODELS] == list(models)
    expected = {
        "openai/gpt-4o-mini": ("0.00000015", "0.0000006"),
        "anthropic/claude-3.5-sonnet": ("0.000003", "0.000015"),
        "meta-llama/llama-3.1-8b-instruct:free": ("0", "0"),
        "openrouter/auto": ("-1", "-1"),
    }
    for model_id, prices in expected.items():
        pricing = models[model_id]["pricing"]
        assert (pricing["prompt"], pricing["completion"]) == prices
        assert price_of(model_id) == prices
    for model in models.values():
        assert set(model) >= {
            "id",
            "canonical_slug",
            "name",
            "created",
            "description",
            "context_length",
            "architecture",
            "pricing",
            "top_provider",
            "per_request_limits",
            "supported_parameters",
        }
        for field in ("prompt", "completion", "request", "image", "web_search"):
            assert isinstance(model["pricing"][field], str)
        assert isinstance(model["pricing"]["internal_reasoning"], str)
    with pytest.raises(KeyError):
        price_of("nobody/nothing")


# --- errors before the response ----------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "body", "status", "message"),
    [
        pytest.param(
            {"authorization": ""},
            _request(),
            401,
            "No cookie auth credentials found",
            id="no-key",
        ),
        pytest.param({}, _request(model="nobody/nothing"), 400, None, id="unknown-model"),
        pytest.param(
            {},
            {"model": "openai/gpt-4o-mini"},
            400,
            'Input required: specify "prompt" or "messages"',
            id="no-messages",
        ),
        pytest.param({}, _request(tempo=3), 400, "fake.tempo is not a known knob", id="typo"),
        pytest.param({}, _request(chunks=-1), 400, None, id="bad-knob-value"),
    ],
)
def test_request_errors(
    client: httpx.Client, headers: dict[str, str], body: Any, status: int, message: str | None
) -> None:
    response = client.post("/chat/completions", json=body, headers=headers)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == status
    if message is not None:
        assert error["message"] == message
    if body.get("model") == "nobody/nothing":
        assert error["message"] == "nobody/nothing is not a valid model ID"


def test_malformed_json(client: httpx.Client) -> None:
    response = client.post(
        "/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 400


def test_unknown_path_is_openrouter_404(client: httpx.Client) -> None:
    response = client.get("/nothing/here")
    assert response.status_code == 404
    assert response.json() == {"error": {"message": "Not Found", "code": 404}}


@pytest.mark.parametrize(
    "status",
    [
        pytest.param(401, id="401"),
        pytest.param(402, id="402"),
        pytest.param(403, id="403"),
        pytest.param(429, id="429"),
        pytest.param(500, id="500"),
        pytest.param(502, id="502"),
        pytest.param(503, id="503"),
    ],
)
@pytest.mark.parametrize(
    "stream", [pytest.param(True, id="stream"), pytest.param(False, id="json")]
)
def test_status_fault(client: httpx.Client, status: int, stream: bool) -> None:
    response = client.post(
        "/chat/completions", json=_request(stream=stream, fault="status", status=status)
    )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == status
    assert isinstance(error["message"], str)
    assert error["message"]
    assert ("retry-after" in response.headers) == (status == 429)
    if status == 429:
        assert response.headers["retry-after"] == "1"
        assert error["metadata"]["error_type"] == "rate_limit_exceeded"
    if status == 402:
        assert error["message"].startswith("Insufficient credits")


def test_429_retry_after_and_message_knobs(client: httpx.Client) -> None:
    body = _request(fault="status", status=429, retry_after=30, message="slow down")
    response = client.post("/chat/completions", json=body)
    assert response.headers["retry-after"] == "30"
    assert response.json()["error"]["message"] == "slow down"


def test_required_key(keyed_upstream: Upstream) -> None:
    url = f"{keyed_upstream.api}/chat/completions"
    right = httpx.post(url, json=_request(stream=False), headers={"authorization": f"Bearer {KEY}"})
    assert right.status_code == 200
    wrong = httpx.post(url, json=_request(stream=False), headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json() == {"error": {"message": "User not found.", "code": 401}}
    missing = httpx.post(url, json=_request(stream=False))
    assert missing.status_code == 401


# --- faults during the stream ------------------------------------------------------


def test_reset_breaks_the_chunked_body(client: httpx.Client, upstream: Upstream) -> None:
    received = bytearray()
    body = _request(fault="reset", fault_after=3, generation_delay_ms=0)
    with client.stream("POST", "/chat/completions", json=body) as response:
        generation_id = response.headers["x-generation-id"]
        with pytest.raises(httpx.RemoteProtocolError):
            read_into(response, received)
    assert received.count(b'"content":"tok "') == 3
    assert DONE not in received
    wait_idle(upstream)
    record = generation(client, generation_id)
    assert record["cancelled"] is True
    assert record["tokens_completion"] == 3


def test_hang_sends_nothing_and_ends_when_the_client_leaves(
    client: httpx.Client, upstream: Upstream
) -> None:
    for stream in (True, False):
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            client.post(
                "/chat/completions", json=_request(stream=stream, fault="hang"), timeout=0.5
            )
        assert time.monotonic() - started >= 0.48
        wait_idle(upstream)


def test_hang_mid_stream_goes_silent(client: httpx.Client, upstream: Upstream) -> None:
    received = bytearray()
    body = _request(fault="hang_mid_stream", fault_after=2)
    timeout = httpx.Timeout(10, read=1)
    with (
        client.stream("POST", "/chat/completions", json=body, timeout=timeout) as response,
        pytest.raises(httpx.ReadTimeout),
    ):
        read_into(response, received)
    assert received.count(b'"content":"tok "') == 2
    assert b'"finish_reason":"stop"' not in received
    wait_idle(upstream)


def test_malformed_event_then_the_stream_goes_on(client: httpx.Client) -> None:
    _, events = _stream(client, _request(fault="malformed", fault_after=1, chunks=4))
    assert events[2] == b'data: {"id": "gen-x", "choi'
    assert [e for e in events if b'"content":"tok "' in e] == events[1:2] + events[3:6]
    assert events[-1] == DONE
    assert _json(events[-2])["usage"]["completion_tokens"] == 4


def test_no_usage(client: httpx.Client) -> None:
    _, events = _stream(client, _request(fault="no_usage", chunks=2))
    assert b'"usage"' not in b"".join(events)
    assert _json(events[-2])["choices"][0]["finish_reason"] == "stop"
    assert events[-1] == DONE


@pytest.mark.parametrize(
    "code", [pytest.param(502, id="int-code"), pytest.param("server_error", id="string-code")]
)
def test_mid_stream_error(client: httpx.Client, code: int | str) -> None:
    body = _request(fault="mid_stream_error", fault_after=3, error_code=code, message="gone")
    response, events = _stream(client, body)
    assert response.status_code == 200
    assert sum(b'"content":"tok "' in e for e in events) == 3
    assert events[-1] == DONE
    chunk = _json(events[-2])
    assert chunk["error"]["code"] == code
    assert chunk["error"]["message"] == "gone"
    assert chunk["choices"][0]["finish_reason"] == "error"
    assert chunk["object"] == "chat.completion.chunk"
    assert b'"usage"' not in b"".join(events)


def test_usage_without_cost(client: httpx.Client) -> None:
    _, events = _stream(client, _request(fault="usage_without_cost", chunks=3))
    usage = _json(events[-2])["usage"]
    assert usage["completion_tokens"] == 3
    assert usage["prompt_tokens"] == HELLO_PROMPT_TOKENS
    assert "cost" not in usage


def test_extra_reasoning_bills_unstreamed_tokens(client: httpx.Client) -> None:
    _, events = _stream(client, _request(fault="extra_reasoning", hidden_tokens=50, chunks=4))
    assert sum(b'"content":"tok "' in e for e in events) == 4
    usage = _json(events[-2])["usage"]
    assert usage["completion_tokens"] == 54
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 50
    assert usage["cost"] == HELLO_PROMPT_TOKENS * MINI_PROMPT + 54 * MINI_COMPLETION


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        pytest.param("no_usage", lambda d: "usage" not in d, id="no_usage"),
        pytest.param(
            "usage_without_cost",
            lambda d: "cost" not in d["usage"] and d["usage"]["completion_tokens"] == 20,
            id="usage_without_cost",
        ),
        pytest.param(
            "extra_reasoning",
            lambda d: d["usage"]["completion_tokens_details"]["reasoning_tokens"] == 64,
            id="extra_reasoning",
        ),
        pytest.param(
            "mid_stream_error",
            lambda d: d["error"]["code"] == 502 and "choices" not in d,
            id="mid_stream_error",
        ),
    ],
)
def test_non_stream_faults(client: httpx.Client, fault: str, check: Any) -> None:
    response = client.post("/chat/completions", json=_request(stream=False, fault=fault))
    assert response.status_code == 200
    assert check(response.json())


# --- timing ------------------------------------------------------------------------


def test_ttft_comments_and_gaps(client: httpx.Client) -> None:
    body = _request(ttft_ms=300, comment_interval_ms=100, gap_ms=100, chunks=3)
    arrivals: list[tuple[float, bytes]] = []
    buffer = b""
    started = time.monotonic()
    with client.stream("POST", "/chat/completions", json=body) as response:
        for part in response.iter_raw():
            buffer += part
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                arrivals.append((time.monotonic() - started, event))
    content_times = [t for t, e in arrivals if b'"content":"tok "' in e]
    comments_before = [t for t, e in arrivals if e == COMMENT and t <= content_times[0]]
    assert len(content_times) == 3
    assert len(comments_before) >= 3
    # The knobs are lower bounds on the schedule; arrival times are read in this
    # process, so allow for timer granularity and the first chunk being read late.
    assert content_times[0] >= 0.28
    assert content_times[2] - content_times[0] >= 0.15
    assert arrivals[-1][1] == DONE


def test_non_stream_honours_ttft(client: httpx.Client) -> None:
    started = time.monotonic()
    response = client.post("/chat/completions", json=_request(stream=False, ttft_ms=300))
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.28


def test_last_request_shows_what_was_forwarded(client: httpx.Client) -> None:
    body = _request(stream=False, chunks=1)
    client.post("/chat/completions", json=body, headers={"X-Title": "Shop", "HTTP-Referer": "x"})
    seen = client.get("/_last_request").json()
    assert seen["body"] == body
    assert seen["headers"]["x-title"] == "Shop"
    assert seen["headers"]["http-referer"] == "x"
    assert seen["headers"]["authorization"] == f"Bearer {KEY}"


def test_openai_sdk_streams_from_it(upstream: Upstream) -> None:
    with openai.OpenAI(base_url=upstream.api, api_key="x", max_retries=0) as sdk:
        stream = sdk.chat.completions.create(
            model="openai/gpt-4o-mini",
            messages=[{"role": "user", "content": "hello world"}],
            stream=True,
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "tok " * 20
        usage = chunks[-1].usage
        assert usage is not None
        assert usage.completion_tokens == 20
        assert usage.prompt_tokens == HELLO_PROMPT_TOKENS
        assert (usage.model_extra or {})["cost"] == pytest.approx(0.0000129)

        with pytest.raises(openai.APIError):
            for _ in sdk.chat.completions.create(
                model="openai/gpt-4o-mini",
                messages=[{"role": "user", "content": "hello world"}],
                stream=True,
                extra_body={"fake": {"fault": "mid_stream_error"}},
            ):
                pass


# --- settings and flags -------------------------------------------------------------


def test_flags_become_settings() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = parser.parse_args([])
    assert (defaults.host, defaults.port) == ("127.0.0.1", 8788)
    assert settings_from_args(defaults) == FakeUpstreamSettings()
    ns = parser.parse_args(
        ["--ttft-ms", "5", "--gap-ms", "1.5", "--chunks", "3", "--require-key", "k",
         "--encoding", "spaced", "--generation-delay-ms", "0", "--default-credits-usd", "2.5",
         "--model-encoding", "openai/o3-mini=reordered"]
    )
    assert settings_from_args(ns) == FakeUpstreamSettings(
        ttft_ms=5,
        gap_ms=1.5,
        chunks=3,
        require_key="k",
        encoding="spaced",
        generation_delay_ms=0,
        default_credits_usd=2.5,
        model_encodings=(("openai/o3-mini", "reordered"),),
    )
    for wrong in (["--encoding", "pretty"], ["--model-encoding", "openai/o3-mini"]):
        with pytest.raises(SystemExit):
            parser.parse_args(wrong)
    with pytest.raises(SystemExit):
        parser.parse_args(["--gap-ms", "-1"])
    with pytest.raises(ValueError, match="chunks"):
        FakeUpstreamSettings(chunks=-1)
