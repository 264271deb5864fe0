"""OpenRouter's record of each generation, as `GET /api/v1/generation?id=` answers it.

A record is readable only a moment after its generation ended (OpenRouter answers 404
for a few seconds; the fake for `generation_delay_ms`, 1 s by default), and, for a
provider that keeps generating after an abort, only after that provider would have
finished. It says what was billed: `total_cost` (USD) for the completion tokens actually
generated, `cancelled` when the client left or the connection broke first, and
`finish_reason` `"error"` for a generation that failed mid-stream.

The store keeps the last `MAX_GENERATIONS` records, oldest out first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final

from gateway.fake_upstream.encoding import Encoding, dumps
from gateway.fake_upstream.wire import json_number

__all__ = ["MAX_GENERATIONS", "Generation", "GenerationStore"]

MAX_GENERATIONS: Final = 10_000


@dataclass(frozen=True, slots=True)
class Generation:
    """One finished generation and what it was billed."""

    id: str
    created: int
    model: str
    provider: str
    router: str | None
    streamed: bool
    cancelled: bool
    finish: str | None
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cost: Decimal
    latency_ms: int
    generation_ms: int
    external_user: str | None
    encoding: Encoding
    available_at: float
    # The account the generation was billed to (:meth:`Accounts.account_of`): only that
    # account's keys can read its record.
    account: str

    def as_json(self) -> bytes:
        """The `{"data": {...}}` body, with OpenRouter's documented fields."""
        cost = json_number(self.cost)
        return dumps(
            {
                "data": {
                    "id": self.id,
                    "upstream_id": "chatcmpl-" + self.id[-20:],
                    "total_cost": cost,
                    "cache_discount": None,
                    "upstream_inference_cost": None,
                    "created_at": datetime.fromtimestamp(self.created, UTC).isoformat(),
                    "model": self.model,
                    "app_id": None,
                    "streamed": self.streamed,
                    "cancelled": self.cancelled,
                    "provider_name": self.provider,
                    "latency": self.latency_ms,
                    "moderation_latency": None,
                    "generation_time": self.generation_ms,
                    "finish_reason": self.finish,
                    "native_finish_reason": self.finish,
                    "tokens_prompt": self.prompt_tokens,
                    "tokens_completion": self.completion_tokens,
                    "native_tokens_prompt": self.prompt_tokens,
                    "native_tokens_completion": self.completion_tokens,
                    "native_tokens_completion_images": 0,
                    "native_tokens_reasoning": self.reasoning_tokens,
                    "native_tokens_cached": 0,
                    "num_media_prompt": None,
                    "num_input_audio_prompt": None,
                    "num_media_completion": None,
                    "num_search_results": None,
                    "origin": "",
                    "usage": cost,
                    "is_byok": False,
                    "external_user": self.external_user,
                    "api_type": "completions",
                    "router": self.router,
                }
            },
            self.encoding,
        )


class GenerationStore:
    """The recent generations by id, each readable from its `available_at` on."""

    __slots__ = ("_records",)

    def __init__(self) -> None:
        self._records: OrderedDict[str, Generation] = OrderedDict()

    def add(self, generation: Generation) -> None:
        """Keep `generation`, dropping the oldest past `MAX_GENERATIONS`."""
        if len(self._records) >= MAX_GENERATIONS:
            self._records.popitem(last=False)
        self._records[generation.id] = generation

    def get(self, generation_id: str, *, now: float) -> Generation | None:
        """The record, or None while it is unknown or not yet readable."""
        found = self._records.get(generation_id)
        if found is None or now < found.available_at:
            return None
        return found
