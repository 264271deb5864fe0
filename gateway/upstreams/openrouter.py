"""OpenRouter: prices in the model list, ``usage.cost`` in every answer, and a record of
each generation (``GET /api/v1/generation?id=``) for streams that end without usage."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from gateway.metering import Price
from gateway.money import pico_per_token, reported_usd_to_nano
from gateway.upstreams.base import Generation, Model, Upstream, Usage, _tokens
from gateway.upstreams.errors import error_message


def _price(pricing: Any) -> Price | None:
    pricing = pricing if isinstance(pricing, dict) else {}
    prompt = pico_per_token(pricing.get("prompt", "0"))
    completion = pico_per_token(pricing.get("completion", "0"))
    request = pico_per_token(pricing.get("request", "0")) or 0
    if prompt is None or completion is None:
        return None
    return Price(prompt, completion, request)


def _max_completion(entry: dict[str, Any]) -> int | None:
    top = entry.get("top_provider")
    for value in (
        top.get("max_completion_tokens") if isinstance(top, dict) else None,
        top.get("context_length") if isinstance(top, dict) else None,
        entry.get("context_length"),
    ):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


class OpenRouter(Upstream):
    kind = "openrouter"
    keeps_records = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.generation_url = httpx.URL(self.settings.base_url + "/generation")

    def parse_models(self, body: bytes) -> list[Model]:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ValueError("model list is not JSON") from exc
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list):
            raise ValueError("model list has no 'data' array")
        entries = [e for e in data if isinstance(e, dict) and isinstance(e.get("id"), str)]
        listed = {e["id"]: _price(e.get("pricing")) for e in entries}
        ceiling = Price(0, 0, 0)
        for price in listed.values():
            if price is not None:
                ceiling = ceiling.max(price)
        configured = self.settings.prices
        models = []
        for entry in entries:
            model_id = entry["id"]
            override = configured.get(model_id)
            # A router whose price depends on the model it picks is held at the ceiling.
            price = override.price if override else (listed[model_id] or ceiling)
            limit = (override.max_completion_tokens if override else None) or _max_completion(
                entry
            )
            models.append(Model(model_id, price, limit, entry))
        return models

    def prepare(self, body: dict[str, Any], *, stream: bool, max_tokens: int) -> None:
        usage = body.get("usage")
        body["usage"] = {**(usage if isinstance(usage, dict) else {}), "include": True}
        if stream:
            options = body.get("stream_options")
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}), "include_usage": True
            }
        # OpenRouter reads either; one bound, the smaller, goes.
        body.pop("max_completion_tokens", None)
        body["max_tokens"] = max_tokens

    def usage(self, usage: dict[str, Any], price: Price) -> Usage:
        cost = reported_usd_to_nano(usage.get("cost"))
        if cost is None:
            return super().usage(usage, price)
        return Usage(cost, "upstream", _tokens(usage, "prompt_tokens"),
                     _tokens(usage, "completion_tokens"))

    async def generation(self, generation_id: str, *, api_key: str | None = None
                         ) -> Generation | None:
        status, body, headers = await self.get_json(
            self.generation_url, params={"id": generation_id}, api_key=api_key,
            phase="generation record",
        )
        if status == 404:
            return None  # not recorded yet: it appears a moment after the end
        if status != 200:
            raise self.error(status, body, headers)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
        data = doc.get("data") if isinstance(doc, dict) else None
        cost = reported_usd_to_nano(data.get("total_cost")) if isinstance(data, dict) else None
        if not isinstance(data, dict) or cost is None:
            raise ValueError(f"unusable generation record: {error_message(body) or body[:200]!r}")
        return Generation(
            cost_nano=cost,
            prompt_tokens=_tokens(data, "tokens_prompt") or _tokens(data, "native_tokens_prompt"),
            completion_tokens=_tokens(data, "tokens_completion")
            or _tokens(data, "native_tokens_completion"),
        )
