"""Prices and estimates: integers, rounded up, upper bounds."""

from __future__ import annotations

import pytest

from gateway.metering import Price, prompt_token_bound
from gateway.money import pico_per_token, usd_to_nano


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


def test_prompt_bound_counts_every_byte_and_part() -> None:
    text = "héllo wörld " * 10
    body = {"messages": [{"role": "user", "content": text}]}
    assert prompt_token_bound(body) >= len(text.encode())
    parts = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}]}]}
    assert prompt_token_bound(parts) > 8192
    tools = {"messages": [{"role": "user", "content": "x"}], "tools": [{"name": "f" * 100}]}
    assert prompt_token_bound(tools) > 100


def test_usd_amounts_share_one_range_and_rounding() -> None:
    assert usd_to_nano(0.1) == 100_000_000
    assert usd_to_nano(1e9) == 10**18
    for bad in (-0.01, 1e9 + 1, float("nan"), True, "1"):
        with pytest.raises(ValueError, match="must be a number"):
            usd_to_nano(bad)
