"""The simulated model catalog: a fixed tuple of OpenRouter-shaped model entries.

Prices are USD per token, as decimal strings, exactly as `GET /api/v1/models` lists them.
`openrouter/auto` is priced `"-1"` (OpenRouter's way of saying "depends on the model it
picks"); the fake routes it to `AUTO_ROUTES_TO` and reports that model in responses.

Two behaviours per model follow OpenRouter's documentation:
- `cancellable`: whether aborting a stream stops the provider and its bill. OpenRouter
  lists OpenAI, Anthropic and others as supporting it; AWS Bedrock, Groq, Google (AI
  Studio), Mistral and others do not: their generation runs to its end and is billed in
  full. Here the Google, Groq and Mistral models are not cancellable.
- `reasoning_tokens`: hidden reasoning tokens spent before the content, billed as
  completion tokens (`completion_tokens_details.reasoning_tokens`) and counted within
  `max_tokens`, as OpenAI's reasoning models count them.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import orjson

__all__ = [
    "AUTO_ROUTES_TO",
    "MODELS",
    "MODELS_BODY",
    "OPENAI_MODELS",
    "OPENAI_MODELS_BODY",
    "Model",
    "Pricing",
    "billing_prices",
    "find_model",
    "price_of",
    "routed",
]


@dataclass(frozen=True, slots=True)
class Pricing:
    """USD per unit, as OpenRouter writes them: decimal strings, `"0"` when free."""

    prompt: str
    completion: str
    request: str = "0"
    image: str = "0"
    web_search: str = "0"
    internal_reasoning: str = "0"
    input_cache_read: str | None = None
    input_cache_write: str | None = None

    def as_json(self) -> dict[str, str]:
        """The `pricing` object of the models list (cache prices only when offered)."""
        out = {
            "prompt": self.prompt,
            "completion": self.completion,
            "request": self.request,
            "image": self.image,
            "web_search": self.web_search,
            "internal_reasoning": self.internal_reasoning,
        }
        if self.input_cache_read is not None:
            out["input_cache_read"] = self.input_cache_read
        if self.input_cache_write is not None:
            out["input_cache_write"] = self.input_cache_write
        return out


@dataclass(frozen=True, slots=True)
class Model:
    """One entry of the models list, plus the provider name the fake reports for it."""

    id: str
    canonical_slug: str
    name: str
    created: int
    description: str
    context_length: int
    modality: str
    input_modalities: tuple[str, ...]
    tokenizer: str
    pricing: Pricing
    max_completion_tokens: int | None
    is_moderated: bool
    supported_parameters: tuple[str, ...]
    provider_name: str
    hugging_face_id: str | None = None
    cancellable: bool = True
    reasoning_tokens: int = 0

    @property
    def owned_by(self) -> str:
        """The `owned_by` of an OpenAI-style model list: the id's organisation part."""
        return self.id.partition("/")[0]

    def as_json(self) -> dict[str, Any]:
        """The object `GET /api/v1/models` returns for this model."""
        return {
            "id": self.id,
            "canonical_slug": self.canonical_slug,
            "hugging_face_id": self.hugging_face_id,
            "name": self.name,
            "created": self.created,
            "description": self.description,
            "context_length": self.context_length,
            "architecture": {
                "modality": self.modality,
                "input_modalities": list(self.input_modalities),
                "output_modalities": ["text"],
                "tokenizer": self.tokenizer,
                "instruct_type": None,
            },
            "pricing": self.pricing.as_json(),
            "top_provider": {
                "context_length": None if self.id == "openrouter/auto" else self.context_length,
                "max_completion_tokens": self.max_completion_tokens,
                "is_moderated": self.is_moderated,
            },
            "per_request_limits": None,
            "supported_parameters": list(self.supported_parameters),
            "default_parameters": {},
        }


_COMMON_PARAMS = ("max_tokens", "temperature", "top_p", "stop", "seed", "response_format")
_TOOL_PARAMS = ("tools", "tool_choice")
_REASONING_PARAMS = ("reasoning", "include_reasoning", "max_completion_tokens")

MODELS: tuple[Model, ...] = (
    Model(
        id="openai/gpt-4o-mini",
        canonical_slug="openai/gpt-4o-mini",
        name="OpenAI: GPT-4o-mini",
        created=1721260800,
        description="GPT-4o mini is OpenAI's small, affordable multimodal model.",
        context_length=128000,
        modality="text+image->text",
        input_modalities=("text", "image", "file"),
        tokenizer="GPT",
        pricing=Pricing(
            prompt="0.00000015",
            completion="0.0000006",
            image="0.000217",
            input_cache_read="0.000000075",
        ),
        max_completion_tokens=16384,
        is_moderated=True,
        supported_parameters=(*_COMMON_PARAMS, *_TOOL_PARAMS, "logprobs", "top_logprobs"),
        provider_name="OpenAI",
    ),
    Model(
        id="anthropic/claude-3.5-sonnet",
        canonical_slug="anthropic/claude-3.5-sonnet",
        name="Anthropic: Claude 3.5 Sonnet",
        created=1729555200,
        description="Claude 3.5 Sonnet: strong at coding, data science and visual processing.",
        context_length=200000,
        modality="text+image->text",
        input_modalities=("text", "image", "file"),
        tokenizer="Claude",
        pricing=Pricing(
            prompt="0.000003",
            completion="0.000015",
            image="0.0048",
            input_cache_read="0.0000003",
            input_cache_write="0.00000375",
        ),
        max_completion_tokens=8192,
        is_moderated=True,
        supported_parameters=(*_COMMON_PARAMS, *_TOOL_PARAMS, "top_k"),
        provider_name="Anthropic",
    ),
    Model(
        id="openai/o3-mini",
        canonical_slug="openai/o3-mini-2025-01-31",
        name="OpenAI: o3 Mini",
        created=1738351721,
        description="o3-mini is a cost-efficient reasoning model; its reasoning is billed, unseen.",
        context_length=200000,
        modality="text->text",
        input_modalities=("text", "file"),
        tokenizer="GPT",
        pricing=Pricing(
            prompt="0.0000011",
            completion="0.0000044",
            input_cache_read="0.00000055",
        ),
        max_completion_tokens=100000,
        is_moderated=True,
        supported_parameters=(*_COMMON_PARAMS, *_TOOL_PARAMS, *_REASONING_PARAMS),
        provider_name="OpenAI",
        reasoning_tokens=64,
    ),
    Model(
        id="google/gemini-2.0-flash-001",
        canonical_slug="google/gemini-2.0-flash-001",
        name="Google: Gemini 2.0 Flash",
        created=1738769413,
        description="Gemini 2.0 Flash: fast time to first token and a 1M-token context.",
        context_length=1048576,
        modality="text+image->text",
        input_modalities=("text", "image", "file", "audio", "video"),
        tokenizer="Gemini",
        pricing=Pricing(
            prompt="0.0000001",
            completion="0.0000004",
            image="0.0000258",
            input_cache_read="0.000000025",
            input_cache_write="0.0000001833",
        ),
        max_completion_tokens=8192,
        is_moderated=False,
        supported_parameters=(*_COMMON_PARAMS, *_TOOL_PARAMS),
        provider_name="Google AI Studio",
        cancellable=False,
    ),
    Model(
        id="mistralai/mistral-small-3.1-24b-instruct",
        canonical_slug="mistralai/mistral-small-3.1-24b-instruct-2503",
        hugging_face_id="mistralai/Mistral-Small-3.1-24B-Instruct-2503",
        name="Mistral: Mistral Small 3.1 24B",
        created=1742238937,
        description="Mistral Small 3.1: a 24B model served by Mistral, which cannot cancel.",
        context_length=131072,
        modality="text+image->text",
        input_modalities=("text", "image"),
        tokenizer="Mistral",
        pricing=Pricing(prompt="0.0000001", completion="0.0000003"),
        max_completion_tokens=32768,
        is_moderated=False,
        supported_parameters=(*_COMMON_PARAMS, *_TOOL_PARAMS),
        provider_name="Mistral",
        cancellable=False,
    ),
    Model(
        id="meta-llama/llama-3.3-70b-instruct",
        canonical_slug="meta-llama/llama-3.3-70b-instruct",
        hugging_face_id="meta-llama/Llama-3.3-70B-Instruct",
        name="Meta: Llama 3.3 70B Instruct",
        created=1733506137,
        description="Meta's 70B instruct model, served by Groq, which cannot cancel.",
        context_length=131072,
        modality="text->text",
        input_modalities=("text",),
        tokenizer="Llama3",
        pricing=Pricing(prompt="0.00000059", completion="0.00000079"),
        max_completion_tokens=32768,
        is_moderated=False,
        supported_parameters=(*_COMMON_PARAMS, *_TOOL_PARAMS),
        provider_name="Groq",
        cancellable=False,
    ),
    Model(
        id="meta-llama/llama-3.1-8b-instruct:free",
        canonical_slug="meta-llama/llama-3.1-8b-instruct",
        hugging_face_id="meta-llama/Meta-Llama-3.1-8B-Instruct",
        name="Meta: Llama 3.1 8B Instruct (free)",
        created=1721692800,
        description="Meta's 8B instruct model, served free of charge with rate limits.",
        context_length=131072,
        modality="text->text",
        input_modalities=("text",),
        tokenizer="Llama3",
        pricing=Pricing(prompt="0", completion="0"),
        max_completion_tokens=4096,
        is_moderated=False,
        supported_parameters=_COMMON_PARAMS,
        provider_name="Chutes",
    ),
    Model(
        id="openrouter/auto",
        canonical_slug="openrouter/auto",
        name="Auto Router",
        created=1699401600,
        description="The Auto Router picks a model for your prompt; you pay that model's price.",
        context_length=2000000,
        modality="text+image->text",
        input_modalities=("text", "image"),
        tokenizer="Router",
        pricing=Pricing(prompt="-1", completion="-1", request="-1", image="-1"),
        max_completion_tokens=None,
        is_moderated=False,
        supported_parameters=(*_COMMON_PARAMS, *_TOOL_PARAMS),
        provider_name="OpenAI",
    ),
)

AUTO_ROUTES_TO = "openai/gpt-4o-mini"

_BY_ID: MappingProxyType[str, Model] = MappingProxyType({m.id: m for m in MODELS})

MODELS_BODY: bytes = orjson.dumps({"data": [m.as_json() for m in MODELS]})
"""The pre-encoded body of `GET /api/v1/models`."""

OPENAI_MODELS: tuple[Model, ...] = tuple(m for m in MODELS if m.id != "openrouter/auto")
"""What the OpenAI-compatible mode serves: the catalog without OpenRouter's router."""

OPENAI_MODELS_BODY: bytes = orjson.dumps(
    {
        "object": "list",
        "data": [
            {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by}
            for m in OPENAI_MODELS
        ],
    }
)
"""The pre-encoded body of `GET /v1/models`: OpenAI's list shape, with no prices."""


def find_model(model_id: str) -> Model | None:
    """The catalog entry for `model_id`, or None when OpenRouter would call it invalid."""
    return _BY_ID.get(model_id)


def price_of(model_id: str) -> tuple[str, str]:
    """`(prompt, completion)` USD-per-token price strings of a listed model.

    Raises `KeyError` for a model the catalog does not list.
    """
    pricing = _BY_ID[model_id].pricing
    return pricing.prompt, pricing.completion


def routed(model: Model) -> Model:
    """The model that generates (and is billed) for a request naming `model`."""
    return _BY_ID[AUTO_ROUTES_TO] if model.id == "openrouter/auto" else model


def billing_prices(model_id: str) -> tuple[Decimal, Decimal]:
    """The prices a request for `model_id` is actually billed at (auto → its route)."""
    return _BILLING[model_id]


_BILLING: MappingProxyType[str, tuple[Decimal, Decimal]] = MappingProxyType(
    {
        m.id: (Decimal(routed(m).pricing.prompt), Decimal(routed(m).pricing.completion))
        for m in MODELS
    }
)
