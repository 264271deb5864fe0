"""Prices and estimates: how much to hold before a request.

A price is integer pico-USD per token (see :mod:`gateway.money`), and every cost is
rounded *up* to whole nano-USD, so an estimate never undercounts. Where prices come from
(the upstream's model list, or the configuration) is each upstream kind's business
(:mod:`gateway.upstreams`).

Prompt estimates count UTF-8 bytes of the text (each token decodes to at least one byte),
plus a generous bound per message and per image, so they are upper bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.money import PICO_PER_NANO, PICO_PER_USD

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

    def as_pricing(self) -> dict[str, str]:
        """As a model list's ``pricing`` object: USD per token, as strings."""
        return {
            "prompt": _usd_string(self.prompt), "completion": _usd_string(self.completion),
            "request": _usd_string(self.request),
        }

    def max(self, other: Price) -> Price:
        return Price(
            prompt=max(self.prompt, other.prompt),
            completion=max(self.completion, other.completion),
            request=max(self.request, other.request),
        )


def _usd_string(pico: int) -> str:
    whole, frac = divmod(pico, PICO_PER_USD)
    return f"{whole}.{frac:012d}".rstrip("0").rstrip(".") if frac else str(whole)


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
