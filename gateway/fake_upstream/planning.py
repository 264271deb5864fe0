"""Deciding a chat completion before its first byte: model, bounds, reasoning, dialect."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Final

from gateway.fake_upstream import wire
from gateway.fake_upstream.accounts import Accounts, to_nano
from gateway.fake_upstream.catalog import billing_prices, find_model, routed
from gateway.fake_upstream.knobs import KnobError, parse_knobs
from gateway.fake_upstream.openai_wire import OpenAIWriter, openai_error
from gateway.fake_upstream.settings import FakeUpstreamSettings
from gateway.fake_upstream.stream import Plan

__all__ = ["CORS", "plan_request"]

CORS: Final = (b"access-control-allow-origin", b"*")
_NO_MESSAGES: Final = wire.error_body(400, 'Input required: specify "prompt" or "messages"')
_OPENAI_NO_MESSAGES: Final = openai_error(
    400,
    "Missing required parameter: 'messages'.",
    code="missing_required_parameter",
    param="messages",
)


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def plan_request(
    request: dict[str, Any],
    *,
    key: str,
    openai: bool,
    settings: FakeUpstreamSettings,
    accounts: Accounts,
) -> Plan | tuple[int, bytes]:
    """Decide the whole response up front, or return the status and body of a refusal."""
    prompt = wire.prompt_tokens(request.get("messages"))
    if prompt is None:
        return 400, _OPENAI_NO_MESSAGES if openai else _NO_MESSAGES
    model_id = request.get("model")
    model = find_model(model_id) if isinstance(model_id, str) else None
    if model is None or (openai and model.id == "openrouter/auto"):
        if openai:
            message = f"The model `{model_id}` does not exist or you do not have access to it."
            return 404, openai_error(404, message, code="model_not_found")
        return 400, wire.error_body(400, f"{model_id} is not a valid model ID")
    try:
        knobs = parse_knobs(request.get("fake"), settings=settings)
    except KnobError as exc:
        if openai:
            return 400, openai_error(400, str(exc), param="fake")
        return 400, wire.error_body(400, str(exc))
    if settings.model_encodings:
        raw = request.get("fake")
        if not (isinstance(raw, dict) and "encoding" in raw):
            for encoded_model, encoding in settings.model_encodings:
                if encoded_model == model.id:
                    knobs = replace(knobs, encoding=encoding)
    engine = routed(model)
    max_tokens = _int_or_none(request.get("max_tokens"))
    max_completion = _int_or_none(request.get("max_completion_tokens"))
    if openai:
        # OpenAI: max_completion_tokens supersedes the deprecated max_tokens.
        bound = max_completion if max_completion is not None else max_tokens
    else:
        bounds = [b for b in (max_tokens, max_completion) if b is not None]
        bound = min(bounds) if bounds else None
    if engine.max_completion_tokens is not None:
        # No provider writes past its model's largest completion.
        most = engine.max_completion_tokens
        bound = most if bound is None else min(bound, most)
    reasoning = engine.reasoning_tokens
    if knobs.reasoning_tokens is not None:
        reasoning = knobs.reasoning_tokens
    chunks, finish = knobs.chunks, "stop"
    if bound is not None and reasoning + chunks > bound:
        reasoning = min(reasoning, bound)
        chunks, finish = bound - reasoning, "length"
    if accounts.issued(key) is not None:
        # A person's key: refused unless their credits cover the worst case.
        prompt_price, completion_price = billing_prices(engine.id)
        refusal = accounts.refusal(
            key,
            bound=bound if bound is not None else chunks + reasoning,
            prompt_nano=to_nano(prompt * prompt_price),
            completion_price_nano=to_nano(completion_price),
        )
        if refusal is not None:
            if openai:
                return refusal.status, openai_error(refusal.status, refusal.message)
            return refusal.status, wire.error_body(refusal.status, refusal.message)
    created = int(time.time())
    fingerprint = "fp_" + model.canonical_slug.encode().hex()[:10]
    writer: wire.Writer
    if openai:
        head = wire.Head(
            id="chatcmpl-" + wire.random_id(29),
            created=created,
            model=model.id,
            provider=model.provider_name,
            fingerprint=fingerprint,
        )
        options = request.get("stream_options")
        asked = isinstance(options, dict) and options.get("include_usage") is True
        include_usage = asked or request.get("stream") is not True
        writer = OpenAIWriter(head, knobs.encoding, include_usage=asked)
        headers = [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-cache"),
            (b"x-request-id", b"req_" + head.id[-24:].encode()),
        ]
    else:
        head = wire.Head(
            id=wire.new_generation_id(created),
            created=created,
            model=engine.id,
            provider=engine.provider_name,
            fingerprint=fingerprint,
        )
        include_usage = True
        writer = wire.OpenRouterWriter(
            head, knobs.encoding, usage_with_choice=knobs.usage_with_choice
        )
        headers = [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-cache"),
            CORS,
            (b"x-generation-id", head.id.encode()),
        ]
    return Plan(
        head=head,
        knobs=knobs,
        writer=writer,
        model_id=engine.id,
        prompt_tokens=prompt,
        chunks=chunks,
        reasoning=reasoning,
        finish=finish,
        headers=headers,
        comments=knobs.processing_comments and not openai,
        include_usage=include_usage and knobs.fault != "no_usage",
        cancellable=knobs.cancellable if knobs.cancellable is not None else engine.cancellable,
        key=key,
    )
