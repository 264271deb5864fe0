"""Prices and estimates: integers, rounded up, upper bounds."""

from __future__ import annotations

import orjson
import pytest

from gateway.fake_upstream import MODELS
from gateway.metering import Catalog, Price, pico_per_token, prompt_token_bound, usage_cost_nano


def catalog() -> Catalog:
    body = orjson.dumps({"data": [
        {"id": "a/cheap", "pricing": {"prompt": "0.00000015", "completion": "0.0000006"}},
        {"id": "b/dear", "pricing": {"prompt": "0.000003", "completion": "0.000015",
                                     "request": "0.001"}},
        {"id": "openrouter/auto", "pricing": {"prompt": "-1", "completion": "-1"}},
        {"id": "c/free:free", "pricing": {"prompt": "0", "completion": "0"}},
    ]})
    return Catalog.parse(body)


@pytest.mark.parametrize(
    ("text", "pico"),
    [
        pytest.param("0.00000015", 150_000, id="gpt-4o-mini"),
        pytest.param("0.000000000001", 1, id="one-pico"),
        pytest.param("0.0000000000001", 1, id="below-a-pico-rounds-up"),
        pytest.param("0", 0, id="free"),
        pytest.param("-1", None, id="variable"),
        pytest.param("abc", None, id="garbage"),
    ],
)
def test_price_strings(text: str, pico: int | None) -> None:
    assert pico_per_token(text) == pico


def test_costs_round_up_to_whole_nano() -> None:
    price = Price(prompt=150_000, completion=600_000)
    assert price.cost_nano(1, 0) == 150
    assert Price(prompt=1, completion=0).cost_nano(1, 0) == 1
    assert price.cost_nano(10, 20) == 1500 + 12000
    assert price.tokens_for(12000) == 20
    assert Price(0, 0).tokens_for(1) > 1_000_000


def test_catalog_prices_variants_and_routers() -> None:
    c = catalog()
    assert c.price_of("a/cheap") == Price(150_000, 600_000)
    assert c.price_of("a/cheap:nitro") == Price(150_000, 600_000)
    assert c.price_of("c/free:free") == Price(0, 0)
    assert c.price_of("nope/nope") is None
    # A router is held at the dearest listed price.
    assert c.price_of("openrouter/auto") == Price(3_000_000, 15_000_000, 1_000_000_000)


def test_the_simulated_upstream_catalog_parses() -> None:
    body = orjson.dumps({"data": [{"id": m.id, "pricing": {
        "prompt": m.pricing.prompt, "completion": m.pricing.completion}} for m in MODELS]})
    c = Catalog.parse(body)
    assert c.price_of("openai/gpt-4o-mini") == Price(150_000, 600_000)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[]", id="array"),
        pytest.param(b"{", id="broken"),
        pytest.param(b'{"data": 1}', id="no-list"),
    ],
)
def test_unusable_catalogs(body: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        Catalog.parse(body)


def test_prompt_bound_counts_every_byte_and_part() -> None:
    text = "héllo wörld " * 10
    body = {"messages": [{"role": "user", "content": text}]}
    assert prompt_token_bound(body) >= len(text.encode())
    parts = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}]}]}
    assert prompt_token_bound(parts) > 8192
    tools = {"messages": [{"role": "user", "content": "x"}], "tools": [{"name": "f" * 100}]}
    assert prompt_token_bound(tools) > 100


def test_usage_cost_prefers_the_upstream_cost() -> None:
    price = Price(150_000, 600_000)
    assert usage_cost_nano({"prompt_tokens": 4, "completion_tokens": 3, "cost": 0.0000024},
                           price) == (2400, "upstream", 4, 3)
    assert usage_cost_nano({"prompt_tokens": 4, "completion_tokens": 3}, price) == (
        2400, "tokens", 4, 3)
    assert usage_cost_nano({"prompt_tokens": -1, "cost": "x"}, price) == (0, "tokens", 0, 0)
