"""OpenRouter's bytes: SSE events, response bodies, error bodies, the fake tokenizer.

Everything a stream repeats is encoded once per request (the content chunk of a stream is
one `bytes` object sent N times), so the fake spends no CPU per chunk. Every body and
event is written in the request's JSON encoding (`encoding.py`).

The fake tokenizer, documented so that tests elsewhere can predict the numbers:
- prompt_tokens = ceil(UTF-8 bytes of every message's `content` string, and of the `text`
  of its `{"type": "text"}` parts, / 4) + 3 per message;
- every content chunk is one completion token; completion_tokens = content chunks plus
  the hidden reasoning tokens (a reasoning model's, or the `extra_reasoning` fault's);
- cost = prompt_tokens × prompt price + completion_tokens × completion price, exact in
  `Decimal`, emitted as a JSON number with exactly those digits, in the notation
  JavaScript (and so OpenRouter) prints: `0.0000027`, but `1.5e-7` below 1e-6.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Protocol

from gateway.fake_upstream.catalog import billing_prices
from gateway.fake_upstream.encoding import Encoding, Number, dumps

__all__ = [
    "COMMENT",
    "DONE",
    "MALFORMED",
    "Head",
    "OpenRouterWriter",
    "Writer",
    "cost_of",
    "error_body",
    "json_number",
    "new_generation_id",
    "prompt_tokens",
]

COMMENT: Final = b": OPENROUTER PROCESSING\n\n"
DONE: Final = b"data: [DONE]\n\n"
MALFORMED: Final = b'data: {"id": "gen-x", "choi\n\n'

_ID_ALPHABET: Final = string.ascii_letters + string.digits
_TOKENS_PER_MESSAGE: Final = 3


@dataclass(frozen=True, slots=True)
class Head:
    """The fields every chunk of one generation repeats."""

    id: str
    created: int
    model: str
    provider: str
    fingerprint: str


def new_generation_id(created: int) -> str:
    """An id of OpenRouter's form, `gen-<unix seconds>-<20 letters and digits>`."""
    return f"gen-{created}-{random_id(20)}"


def random_id(length: int) -> str:
    """`length` random letters and digits (not secret: ids, not keys)."""
    return "".join(random.choices(_ID_ALPHABET, k=length))


def prompt_tokens(messages: object) -> int | None:
    """Fake-tokenize a `messages` array; None when it is not a non-empty list of objects."""
    if not isinstance(messages, list) or not messages:
        return None
    size = 0
    for message in messages:
        if not isinstance(message, dict):
            return None
        content = message.get("content")
        if isinstance(content, str):
            size += len(content.encode())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text":
                    text = part.get("text")
                    if isinstance(text, str):
                        size += len(text.encode())
    return -(-size // 4) + _TOKENS_PER_MESSAGE * len(messages)


def cost_of(*, model_id: str, prompt: int, completion: int) -> Decimal:
    """The exact USD cost of a generation at the catalog's prices."""
    prompt_price, completion_price = billing_prices(model_id)
    return prompt * prompt_price + completion * completion_price


def json_number(value: Decimal) -> Number:
    """`value` as a JSON number, written the way JavaScript's `String(number)` writes it."""
    value = value.normalize()
    if value == 0:
        return Number("0")
    exponent = value.adjusted()
    if -7 < exponent < 21:
        return Number(format(value, "f"))
    sign, digits, _ = value.as_tuple()
    mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
    return Number(f"{'-' if sign else ''}{mantissa}e{exponent:+d}")


class Writer(Protocol):
    """The bytes of one request's response, in one dialect (OpenRouter's or OpenAI's)."""

    def first(self) -> bytes | None:
        """An event sent before the first content chunk, if the dialect has one."""

    def content(self, text: str) -> bytes:
        """One content chunk (sent once per completion token)."""

    def finish(self, reason: str) -> bytes:
        """The chunk that carries `finish_reason`."""

    def usage(
        self, *, prompt: int, completion: int, reasoning: int, cost: Decimal | None, finish: str
    ) -> bytes:
        """The trailing usage chunk (`cost` None: tokens only)."""

    def stream_error(self, *, code: int | str, message: str) -> bytes:
        """The event of an error after the stream started."""

    def body(
        self,
        *,
        content: str,
        finish: str,
        prompt: int,
        completion: int,
        reasoning: int,
        cost: Decimal | None,
        include_usage: bool,
    ) -> bytes:
        """The non-streamed `chat.completion` body."""

    def body_error(self, *, code: int | str, message: str) -> bytes:
        """A 200 body that reports the provider's failure after it answered."""

    def status_error(self, status: int, message: str | None) -> bytes:
        """The body of an error answered with HTTP `status` before the response."""


_ERROR_TYPES: Final = {
    400: "invalid_request",
    401: "authentication",
    402: "payment_required",
    403: "content_policy_violation",
    404: "not_found",
    408: "timeout",
    413: "payload_too_large",
    429: "rate_limit_exceeded",
    502: "provider_unavailable",
    503: "provider_unavailable",
}

_STATUS_MESSAGES: Final = {
    400: "Provider returned error",
    401: "User not found.",
    402: "Insufficient credits. Add more using https://openrouter.ai/settings/credits",
    403: '{model} requires moderation on {provider}. Your input was flagged for "violence".',
    404: "No endpoints found for {model}.",
    408: "Request timed out",
    429: "Rate limit exceeded",
    500: "Internal Server Error",
    502: "Provider returned error",
    503: "No allowed providers are available for the selected model.",
}


def error_body(
    code: int,
    message: str,
    metadata: dict[str, Any] | None = None,
    encoding: Encoding = "compact",
) -> bytes:
    """OpenRouter's error body: `{"error": {"message", "code", "metadata"?}}`."""
    error: dict[str, Any] = {"message": message, "code": code}
    if metadata is not None:
        error["metadata"] = metadata
    return dumps({"error": error}, encoding)


def _choice(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "index": 0,
        "delta": delta,
        "finish_reason": finish,
        "native_finish_reason": finish,
        "logprobs": None,
    }


def _usage(*, prompt: int, completion: int, reasoning: int, cost: Decimal | None) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cost is not None:
        usage["cost"] = json_number(cost)
    usage["is_byok"] = False
    usage["prompt_tokens_details"] = {
        "cached_tokens": 0,
        "cache_write_tokens": 0,
        "audio_tokens": 0,
        "video_tokens": 0,
    }
    if cost is not None:
        # Non-BYOK: OpenRouter bills the request itself; the upstream costs are BYOK-only.
        usage["cost_details"] = {
            "upstream_inference_cost": None,
            "upstream_inference_prompt_cost": 0,
            "upstream_inference_completions_cost": 0,
        }
    usage["completion_tokens_details"] = {
        "reasoning_tokens": reasoning,
        "image_tokens": 0,
        "audio_tokens": 0,
    }
    return usage


class OpenRouterWriter:
    """OpenRouter's chunks and bodies for one generation.

    `usage_with_choice` makes the usage chunk repeat the finish choice (as recent recorded
    OpenRouter streams do) instead of OpenAI's `choices: []`.
    """

    __slots__ = ("_encoding", "_head", "_usage_with_choice")

    def __init__(self, head: Head, encoding: Encoding, *, usage_with_choice: bool) -> None:
        self._head = head
        self._encoding: Encoding = encoding
        self._usage_with_choice = usage_with_choice

    def _fields(self, obj: str) -> dict[str, Any]:
        head = self._head
        return {
            "id": head.id,
            "object": obj,
            "created": head.created,
            "model": head.model,
            "provider": head.provider,
            "system_fingerprint": head.fingerprint,
        }

    def _sse(self, obj: dict[str, Any]) -> bytes:
        return b"data: " + dumps(obj, self._encoding) + b"\n\n"

    def first(self) -> bytes | None:
        return None

    def content(self, text: str) -> bytes:
        # OpenRouter repeats `role` in every delta, so all content chunks are alike.
        chunk = self._fields("chat.completion.chunk")
        chunk["choices"] = [_choice({"role": "assistant", "content": text}, None)]
        return self._sse(chunk)

    def finish(self, reason: str) -> bytes:
        chunk = self._fields("chat.completion.chunk")
        chunk["choices"] = [_choice({"role": "assistant", "content": ""}, reason)]
        return self._sse(chunk)

    def usage(
        self, *, prompt: int, completion: int, reasoning: int, cost: Decimal | None, finish: str
    ) -> bytes:
        chunk = self._fields("chat.completion.chunk")
        chunk["choices"] = (
            [_choice({"role": "assistant", "content": ""}, finish)]
            if self._usage_with_choice
            else []
        )
        chunk["usage"] = _usage(
            prompt=prompt, completion=completion, reasoning=reasoning, cost=cost
        )
        return self._sse(chunk)

    def stream_error(self, *, code: int | str, message: str) -> bytes:
        # OpenRouter's mid-stream error: a top-level `error` and `finish_reason: "error"`.
        chunk = self._fields("chat.completion.chunk")
        del chunk["system_fingerprint"]
        error: dict[str, Any] = {"code": code, "message": message}
        if isinstance(code, int):
            error["metadata"] = {"error_type": _ERROR_TYPES.get(code, "server")}
        chunk["error"] = error
        chunk["choices"] = [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]
        return self._sse(chunk)

    def body(
        self,
        *,
        content: str,
        finish: str,
        prompt: int,
        completion: int,
        reasoning: int,
        cost: Decimal | None,
        include_usage: bool,
    ) -> bytes:
        body = self._fields("chat.completion")
        body["choices"] = [
            {
                "logprobs": None,
                "finish_reason": finish,
                "native_finish_reason": finish,
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": None,
                    "reasoning": None,
                },
            }
        ]
        if include_usage:
            body["usage"] = _usage(
                prompt=prompt, completion=completion, reasoning=reasoning, cost=cost
            )
        return dumps(body, self._encoding)

    def body_error(self, *, code: int | str, message: str) -> bytes:
        # Once a provider has answered, OpenRouter reports its failure inside a 200.
        return dumps({"error": {"code": code, "message": message}}, self._encoding)

    def status_error(self, status: int, message: str | None) -> bytes:
        head = self._head
        text = message or _STATUS_MESSAGES.get(status, "Provider returned error")
        text = text.replace("{model}", head.model).replace("{provider}", head.provider)
        metadata: dict[str, Any] | None = None
        if status == 403:
            metadata = {
                "reasons": ["violence"],
                "flagged_input": "...",
                "provider_name": head.provider,
                "model_slug": head.model,
            }
        elif status in (429, 502, 503):
            metadata = {"error_type": _ERROR_TYPES[status], "provider_name": head.provider}
        return error_body(status, text, metadata, self._encoding)
