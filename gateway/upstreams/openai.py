"""Any OpenAI-compatible server (OpenAI, vLLM, Ollama, LiteLLM, …): the model list has
no prices, so the configured ones (``[upstream.prices]``) are the only price source;
usage has tokens only, and a streamed usage chunk comes only when asked for."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.upstreams.base import Model, Upstream


class OpenAICompatible(Upstream):
    kind = "openai"

    def parse_models(self, body: bytes) -> list[Model]:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ValueError("model list is not JSON") from exc
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list):
            raise ValueError("model list has no 'data' array")
        configured = self.settings.prices
        models = []
        for entry in data:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                continue
            price = configured.get(entry["id"])
            models.append(Model(
                entry["id"],
                None if price is None else price.price,
                None if price is None else price.max_completion_tokens,
                entry,
            ))
        return models

    def prepare(self, body: dict[str, Any], *, stream: bool, max_tokens: int) -> None:
        if stream:
            options = body.get("stream_options")
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}), "include_usage": True
            }
        # ``max_completion_tokens`` supersedes ``max_tokens`` at OpenAI (it counts
        # reasoning tokens, and OpenAI's reasoning models refuse ``max_tokens``): a request
        # that uses it keeps it; otherwise ``max_tokens``, which every server reads.
        if "max_completion_tokens" in body:
            body.pop("max_tokens", None)
            body["max_completion_tokens"] = max_tokens
        else:
            body["max_tokens"] = max_tokens
