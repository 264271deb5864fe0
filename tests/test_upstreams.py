"""The upstream seam: each kind's model list and prices, body rewrites, usage, generation
records and error mapping, and the routing of a model to its upstream."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import aiohttp
import httpx
import orjson
import pytest

from gateway.config import ConfiguredPrice, UpstreamSettings, settings_from_mapping
from gateway.errors import FundingUnavailable, ModelNotFound, UpstreamError, UpstreamTimeout
from gateway.metering import Price
from gateway.relay import generation_id_of
from gateway.upstreams import Upstreams
from gateway.upstreams.errors import error_from_status, mapped_transport_errors, stream_failure

OPENROUTER_MODELS = {"data": [
    {"id": "a/cheap", "pricing": {"prompt": "0.00000015", "completion": "0.0000006"},
     "context_length": 128000, "top_provider": {"max_completion_tokens": 16384}},
    {"id": "b/dear", "pricing": {"prompt": "0.000003", "completion": "0.000015",
                                 "request": "0.001"}, "context_length": 200000},
    {"id": "openrouter/auto", "pricing": {"prompt": "-1", "completion": "-1"}},
    {"id": "c/free:free", "pricing": {"prompt": "0", "completion": "0"}},
]}
OPENAI_MODELS = {"object": "list", "data": [
    {"id": "llama-3.1-8b-instruct", "object": "model", "created": 1, "owned_by": "vllm"},
    {"id": "qwen-unpriced", "object": "model", "created": 1, "owned_by": "vllm"},
]}

Handler = Callable[[httpx.Request], httpx.Response]


def upstreams(handler: Handler, raw_config: dict[str, object] | None = None) -> Upstreams:
    settings = settings_from_mapping(raw_config or {}, environ={"OPENROUTER_API_KEY": "sk-op"})
    return Upstreams(settings.upstreams, transport=httpx.MockTransport(handler))


def serve(models: Mapping[str, object]) -> tuple[Handler, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json=models)
        return httpx.Response(200, json={"choices": []})

    return answer, seen


async def test_openrouter_prices_variants_routers_and_completion_limits() -> None:
    ups = upstreams(serve(OPENROUTER_MODELS)[0])
    cheap = await ups.route("a/cheap")
    assert cheap.model.price == Price(150_000, 600_000)
    assert cheap.model.max_completion_tokens == 16384
    assert (await ups.route("a/cheap:nitro")).model.price == Price(150_000, 600_000)
    assert (await ups.route("b/dear")).model.max_completion_tokens == 200000
    assert (await ups.route("c/free:free")).model.price == Price(0, 0)
    # A router is held at the dearest listed price.
    auto = await ups.route("openrouter/auto")
    assert auto.model.price == Price(3_000_000, 15_000_000, 1_000_000_000)
    with pytest.raises(ModelNotFound, match="not offered"):
        await ups.route("nope/nope")
    await ups.aclose()


async def test_a_configured_price_overrides_the_list() -> None:
    ups = upstreams(serve(OPENROUTER_MODELS)[0], {"upstream": {"prices": {
        "a/cheap": {"prompt": 1.0, "completion": 2.0, "max_completion_tokens": 100}}}})
    route = await ups.route("a/cheap")
    assert route.model.price == Price(1_000_000, 2_000_000)
    assert route.model.max_completion_tokens == 100
    await ups.aclose()


async def test_an_openai_upstream_prices_only_what_is_configured() -> None:
    ups = upstreams(serve(OPENAI_MODELS)[0], {"upstream": {
        "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "",
        "prices": {"llama-3.1-8b-instruct": {"prompt": 0.05, "completion": 0.10}},
    }})
    route = await ups.route("llama-3.1-8b-instruct")
    assert route.upstream.kind == "openai"
    assert route.model.price == Price(50_000, 100_000)
    with pytest.raises(ModelNotFound, match="has no price"):
        await ups.route("qwen-unpriced")
    listing = await ups.listing()
    assert [e["id"] for e in listing] == ["llama-3.1-8b-instruct"]
    assert listing[0]["pricing"] == {"prompt": "0.00000005", "completion": "0.0000001",
                                     "request": "0"}
    await ups.aclose()


async def test_models_route_to_the_upstream_that_claims_them() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "local.test":
            return httpx.Response(200, json=OPENAI_MODELS)
        return httpx.Response(200, json=OPENROUTER_MODELS)

    ups = upstreams(answer, {"upstreams": {"local": {
        "kind": "openai", "base_url": "http://local.test/v1", "api_key_env": "",
        "models": ["llama-*"],
        "prices": {"llama-3.1-8b-instruct": {"prompt": 0, "completion": 0}},
    }}})
    assert (await ups.route("llama-3.1-8b-instruct")).upstream.name == "local"
    assert (await ups.route("a/cheap")).upstream.name == "default"
    ids = [e["id"] for e in await ups.listing()]
    assert "llama-3.1-8b-instruct" in ids and "a/cheap" in ids
    await ups.aclose()


async def test_chat_requests_carry_the_funder_key_and_no_cookie_or_redirect() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:  # the first user's answer sets a cookie and points elsewhere
            return httpx.Response(
                307, headers={"set-cookie": "session=for-user-one; Path=/",
                              "location": "https://elsewhere.example/"},
            )
        return httpx.Response(200, json={"choices": []})

    ups = upstreams(answer, {"upstream": {"base_url": "https://up.example/api/v1"}})
    up = ups.default
    first = await up.open_chat(b'{"model":"m"}', accept="text/event-stream")
    second = await up.open_chat(b'{"model":"m"}', accept="application/json")
    third = await up.open_chat(b'{"model":"m"}', accept="application/json", api_key="sk-user")
    for response in (first, second, third):
        await response.aclose()
    assert first.status_code == 307  # passed on, not followed
    for request, accept in zip(seen[:2], ("text/event-stream", "application/json"),
                               strict=True):
        assert request.url == "https://up.example/api/v1/chat/completions"
        assert request.headers["authorization"] == "Bearer sk-op"
        assert request.headers["accept"] == accept
        assert request.headers["content-type"] == "application/json"
        assert request.headers["content-length"] == "13"
        assert request.headers["user-agent"].startswith("wattfare/")
        assert "cookie" not in request.headers
    assert seen[2].headers["authorization"] == "Bearer sk-user"
    await ups.aclose()


async def test_body_rewrites_per_kind() -> None:
    ups = upstreams(serve(OPENROUTER_MODELS)[0], {"upstreams": {"local": {
        "kind": "openai", "base_url": "http://local.test/v1", "api_key_env": "",
        "models": ["l*"]}}})
    body: dict[str, object] = {"stream_options": {"include_usage": False},
                               "max_completion_tokens": 900}
    ups.default.prepare(body, stream=True, max_tokens=100)
    assert body == {"stream_options": {"include_usage": True}, "usage": {"include": True},
                    "max_tokens": 100}
    local = ups.by_name("local")
    assert local is not None
    plain: dict[str, object] = {}
    local.prepare(plain, stream=False, max_tokens=50)
    assert plain == {"max_tokens": 50}
    reasoning: dict[str, object] = {"max_completion_tokens": 900, "max_tokens": 900}
    local.prepare(reasoning, stream=True, max_tokens=50)
    assert reasoning == {"max_completion_tokens": 50, "stream_options": {"include_usage": True}}
    await ups.aclose()


async def test_usage_is_the_upstream_cost_or_tokens_times_price() -> None:
    ups = upstreams(serve(OPENROUTER_MODELS)[0], {"upstreams": {"local": {
        "kind": "openai", "base_url": "http://local.test/v1", "api_key_env": "",
        "models": ["l*"]}}})
    price = Price(150_000, 600_000)
    with_cost = {"prompt_tokens": 4, "completion_tokens": 3, "cost": 0.0000024}
    got = ups.default.usage(with_cost, price)
    assert (got.cost_nano, got.source) == (2400, "upstream")
    got = ups.default.usage({"prompt_tokens": 4, "completion_tokens": 3}, price)
    assert (got.cost_nano, got.source) == (2400, "tokens")
    local = ups.by_name("local")
    assert local is not None
    # An OpenAI-compatible server's figures are tokens; a stray cost is not its own.
    got = local.usage({**with_cost, "cost": 99.0}, price)
    assert (got.cost_nano, got.source) == (2400, "tokens")
    bad = ups.default.usage({"prompt_tokens": -1, "cost": "x"}, price)
    assert (bad.cost_nano, bad.prompt_tokens) == (0, 0)
    await ups.aclose()


async def test_generation_records_are_read_and_missing_ones_are_none() -> None:
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        if request.url.params["id"] == "gen-late":
            return httpx.Response(404, json={"error": {"message": "not found"}})
        return httpx.Response(200, json={"data": {
            "id": "gen-1", "total_cost": 0.000123, "tokens_prompt": 10,
            "tokens_completion": 20}})

    ups = upstreams(answer, {"upstream": {"base_url": "https://up.example/api/v1"}})
    record = await ups.default.generation("gen-1")
    assert record is not None
    assert (record.cost_nano, record.prompt_tokens, record.completion_tokens) == (123_000, 10, 20)
    assert await ups.default.generation("gen-late") is None
    assert asked[0] == "https://up.example/api/v1/generation?id=gen-1"
    await ups.aclose()


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
    # Mid-stream, the same mapping decides.
    exc = httpx.ConnectTimeout("mapped")
    exc.__cause__ = cause
    assert isinstance(stream_failure(exc), expected)


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


def test_unusable_model_lists_are_value_errors() -> None:
    ups = upstreams(serve(OPENROUTER_MODELS)[0])
    for body in (b"[]", b"{", b'{"data": 1}'):
        with pytest.raises(ValueError):  # noqa: PT011
            ups.default.parse_models(body)
    assert orjson.loads(b"{}") == {}


def test_configured_price_units() -> None:
    settings = settings_from_mapping({"upstream": {"prices": {
        "m": {"prompt": 0.15, "completion": 0.6, "request": 0.001}}}})
    assert settings.upstream.prices["m"] == ConfiguredPrice(Price(150_000, 600_000,
                                                                  1_000_000_000))
    assert UpstreamSettings().kind == "openrouter"


@pytest.mark.parametrize(
    ("status", "message", "reason"),
    [
        pytest.param(402, "Insufficient credits", "out_of_credit", id="402"),
        pytest.param(403, "Key limit exceeded (total limit)", "key_limit", id="403-limit"),
        pytest.param(401, "User not found.", "key_revoked", id="401"),
    ],
)
def test_a_persons_key_refused_is_funding_unavailable(
    status: int, message: str, reason: str
) -> None:
    body = orjson.dumps({"error": {"code": status, "message": message}})
    error = error_from_status(status, body, httpx.Headers(), funded_by_user=True)
    assert isinstance(error, FundingUnavailable) and error.reason == reason
    assert error.code == "funding_unavailable" and error.status == 403
    # The operator's own key refused is the operator's problem: 502, no details.
    operator = error_from_status(status, body, httpx.Headers())
    assert isinstance(operator, UpstreamError) and message not in operator.message


def test_a_403_that_is_not_a_key_limit_stays_the_upstreams() -> None:
    body = orjson.dumps({"error": {"code": 403, "message": "Input flagged by moderation"}})
    error = error_from_status(403, body, httpx.Headers(), funded_by_user=True)
    assert isinstance(error, UpstreamError)
