"""Pricing and estimates: how much to hold before a request, and what it cost after.

Prices come from the upstream's model list as strings of USD per token. Inside they are
integers of pico-USD per token (OpenRouter's cheapest prices are fractions of a nano-USD
per token), and every cost is rounded *up* to whole nano-USD, so an estimate never
undercounts.

Prompt estimates count UTF-8 bytes of the text (each token decodes to at least one byte),
plus a generous bound per message and per image, so they are upper bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

PICO_PER_NANO = 1000
PER_MESSAGE_TOKENS = 8
BASE_PROMPT_TOKENS = 16
# Image and audio parts are billed by the provider's own rules; this bounds them.
MEDIA_PART_TOKENS = 8192


@dataclass(frozen=True, slots=True)
class Price:
    """Pico-USD per prompt token, per completion token, and per request."""

    prompt: int
    completion: int
    request: int = 0

    def cost_nano(self, prompt_tokens: int, completion_tokens: int) -> int:
        pico = self.prompt * prompt_tokens + self.completion * completion_tokens + self.request
        return -(-pico // PICO_PER_NANO)  # ceiling division

    def tokens_for(self, nano: int) -> int:
        """How many completion tokens ``nano`` pays for (large when they are free)."""
        if self.completion <= 0:
            return 1 << 30
        return max(0, nano * PICO_PER_NANO // self.completion)

    def max(self, other: Price) -> Price:
        return Price(
            prompt=max(self.prompt, other.prompt),
            completion=max(self.completion, other.completion),
            request=max(self.request, other.request),
        )


def pico_per_token(value: Any) -> int | None:
    """A price string such as ``"0.00000015"`` as pico-USD; None if variable (negative)."""
    try:
        usd = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    if not usd.is_finite() or usd < 0:
        return None
    return math.ceil(usd * 1_000_000_000_000)


@dataclass(frozen=True, slots=True)
class Catalog:
    """The upstream's model list: the raw body (served as is) and parsed prices."""

    body: bytes
    prices: dict[str, Price]
    ceiling: Price

    @classmethod
    def parse(cls, body: bytes) -> Catalog:
        """Raises ValueError if ``body`` is not a model list."""
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ValueError("model list is not JSON") from exc
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list):
            raise ValueError("model list has no 'data' array")
        prices: dict[str, Price] = {}
        variable: list[str] = []
        for entry in data:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                continue
            pricing = entry.get("pricing")
            pricing = pricing if isinstance(pricing, dict) else {}
            prompt = pico_per_token(pricing.get("prompt", "0"))
            completion = pico_per_token(pricing.get("completion", "0"))
            request = pico_per_token(pricing.get("request", "0")) or 0
            if prompt is None or completion is None:
                variable.append(entry["id"])
                continue
            prices[entry["id"]] = Price(prompt, completion, request)
        ceiling = Price(0, 0, 0)
        for price in prices.values():
            ceiling = ceiling.max(price)
        # A router whose price depends on the model it picks is held at the ceiling.
        for model_id in variable:
            prices[model_id] = ceiling
        return cls(body=body, prices=prices, ceiling=ceiling)

    def price_of(self, model: str) -> Price | None:
        """The price of ``model`` (``model:variant`` falls back to ``model``), or None."""
        price = self.prices.get(model)
        if price is None and ":" in model:
            price = self.prices.get(model.rsplit(":", 1)[0])
        return price


def _text_bytes(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode("utf-8"))
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                total += _text_bytes(part.get("text"))
            elif isinstance(part, dict):
                total += MEDIA_PART_TOKENS
            else:
                total += len(orjson.dumps(part))
        return total
    return len(orjson.dumps(content))


def prompt_token_bound(body: dict[str, Any]) -> int:
    """An upper bound on the prompt tokens of a chat completion request."""
    total = BASE_PROMPT_TOKENS
    for message in body.get("messages") or ():
        total += PER_MESSAGE_TOKENS
        if isinstance(message, dict):
            total += _text_bytes(message.get("content"))
            for key in ("name", "tool_calls", "tool_call_id", "function_call"):
                if key in message:
                    total += len(orjson.dumps(message[key]))
    for key in ("tools", "functions", "response_format", "tool_choice"):
        if key in body:
            total += len(orjson.dumps(body[key]))
    return total


def usage_cost_nano(usage: dict[str, Any], price: Price) -> tuple[int, str, int, int]:
    """(cost in nano-USD, where it came from, prompt tokens, completion tokens).

    The upstream's ``usage.cost`` (USD) is the charge; without it, tokens × price.
    """
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    prompt_tokens = prompt if isinstance(prompt, int) and prompt >= 0 else 0
    completion_tokens = completion if isinstance(completion, int) and completion >= 0 else 0
    cost = usage.get("cost")
    if isinstance(cost, (int, float)) and not isinstance(cost, bool) and math.isfinite(cost):
        nano = math.ceil(Decimal(repr(cost)) * 1_000_000_000)
        return max(0, nano), "upstream", prompt_tokens, completion_tokens
    by_tokens = price.cost_nano(prompt_tokens, completion_tokens)
    return by_tokens, "tokens", prompt_tokens, completion_tokens


def nano_to_usd(nano: int) -> float:
    """Nano-USD as a USD number, for the API edge only."""
    return nano / 1_000_000_000
