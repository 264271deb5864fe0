"""The OpenAI-compatible dialect: the bytes OpenAI, vLLM and Ollama send under `/v1`.

As OpenAI's API reference describes chat completions:
- Chunks are `{"id": "chatcmpl-…", "object": "chat.completion.chunk", "created", "model",
  "service_tier", "system_fingerprint", "choices": [{"index": 0, "delta", "logprobs",
  "finish_reason"}]}`. The first delta is `{"role": "assistant", "content": "",
  "refusal": null}`; content deltas carry `content` only; the finish chunk's delta is `{}`.
- Usage has tokens only (no cost): `{prompt_tokens, completion_tokens, total_tokens,
  prompt_tokens_details {cached_tokens, audio_tokens}, completion_tokens_details
  {reasoning_tokens, audio_tokens, accepted_prediction_tokens,
  rejected_prediction_tokens}}`. A stream carries it only when the request asks with
  `stream_options: {"include_usage": true}`: then every chunk has `"usage": null` and one
  more chunk, `"choices": []` with the usage, comes before `data: [DONE]`.
- Errors are `{"error": {"message", "type", "param", "code"}}` with the HTTP status; an
  error after the stream started is one `data: {"error": {...}}` event.
- No SSE comments, and no `X-Generation-Id` (OpenAI names a request in `x-request-id`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

from gateway.fake_upstream.encoding import Encoding, dumps
from gateway.fake_upstream.wire import Head

__all__ = ["OpenAIWriter", "openai_error"]

_TYPES: Final = {
    401: "invalid_request_error",
    402: "insufficient_quota",
    429: "requests",
}
_MESSAGES: Final = {
    400: "Invalid request.",
    401: "Incorrect API key provided. You can find your API key at "
    "https://platform.openai.com/account/api-keys.",
    402: "You exceeded your current quota, please check your plan and billing details.",
    403: "You are not allowed to sample from this model.",
    404: "The model `{model}` does not exist or you do not have access to it.",
    408: "Request timed out.",
    429: "Rate limit reached for requests.",
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The engine is currently overloaded, please try again later.",
}
_CODES: Final = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}


def openai_error(
    status: int,
    message: str,
    *,
    code: str | int | None = None,
    param: str | None = None,
    encoding: Encoding = "compact",
) -> bytes:
    """OpenAI's error body for HTTP `status`."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    error = {"message": message, "type": kind, "param": param, "code": code}
    return dumps({"error": error}, encoding)


def _usage(*, prompt: int, completion: int, reasoning: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


class OpenAIWriter:
    """OpenAI's chunks and bodies for one completion; `include_usage` as the request asked."""

    __slots__ = ("_encoding", "_head", "_include_usage")

    def __init__(self, head: Head, encoding: Encoding, *, include_usage: bool) -> None:
        self._head = head
        self._encoding: Encoding = encoding
        self._include_usage = include_usage

    def _fields(self, obj: str) -> dict[str, Any]:
        head = self._head
        return {
            "id": head.id,
            "object": obj,
            "created": head.created,
            "model": head.model,
            "service_tier": "default",
            "system_fingerprint": head.fingerprint,
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> bytes:
        chunk = self._fields("chat.completion.chunk")
        chunk["choices"] = [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        ]
        if self._include_usage:
            chunk["usage"] = None
        return b"data: " + dumps(chunk, self._encoding) + b"\n\n"

    def first(self) -> bytes | None:
        return self._chunk({"role": "assistant", "content": "", "refusal": None}, None)

    def content(self, text: str) -> bytes:
        return self._chunk({"content": text}, None)

    def finish(self, reason: str) -> bytes:
        return self._chunk({}, reason)

    def usage(
        self, *, prompt: int, completion: int, reasoning: int, cost: Decimal | None, finish: str
    ) -> bytes:
        chunk = self._fields("chat.completion.chunk")
        chunk["choices"] = []
        chunk["usage"] = _usage(prompt=prompt, completion=completion, reasoning=reasoning)
        return b"data: " + dumps(chunk, self._encoding) + b"\n\n"

    def stream_error(self, *, code: int | str, message: str) -> bytes:
        error = {"message": message, "type": "server_error", "param": None, "code": code}
        return b"data: " + dumps({"error": error}, self._encoding) + b"\n\n"

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
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": finish,
            }
        ]
        if include_usage:
            body["usage"] = _usage(prompt=prompt, completion=completion, reasoning=reasoning)
        return dumps(body, self._encoding)

    def body_error(self, *, code: int | str, message: str) -> bytes:
        return openai_error(500, message, code=code, encoding=self._encoding)

    def status_error(self, status: int, message: str | None) -> bytes:
        text = message or _MESSAGES.get(status, "The server had an error.")
        text = text.replace("{model}", self._head.model)
        return openai_error(status, text, code=_CODES.get(status), encoding=self._encoding)
