"""A non-streamed completion: the whole answer read, metered, and kept for delivery.

Nothing reaches the client before the answer is complete *and its charge committed*
(the chat handler sends :attr:`Outcome.body` after settling). A client that leaves while
the upstream works does not stop the request: providers bill a non-streamed request in
full once started (OpenRouter: "for non-streaming requests … you will be billed for the
complete response"), so the gateway reads the answer to its end and charges exactly
what it cost, and only the delivery is dropped.
"""

from __future__ import annotations

import asyncio

import httpx
import orjson

from gateway.errors import UpstreamError
from gateway.metering import Price
from gateway.relay.outcome import Outcome
from gateway.relay.stream import generation_id_of
from gateway.sse import token_bound
from gateway.upstreams.base import Upstream
from gateway.upstreams.errors import error_in_body, mapped_transport_errors

RESPONSE_BODY_LIMIT = 32 * 1024 * 1024


async def complete(
    *, upstream: Upstream, body: bytes, price: Price, prompt_tokens: int, model: str,
    api_key: str | None = None,
) -> Outcome:
    """Fetch and meter one answer; raises GatewayError when the upstream refused it."""
    outcome = Outcome(model=model)
    response, raw = await _fetch(upstream, body, api_key=api_key)
    funded_by_user = api_key is not None
    if response.status_code != 200:
        raise upstream.error(response.status_code, raw, response.headers,
                             funded_by_user=funded_by_user)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError("The upstream sent an unusable response.") from None
    outcome.generation_id = generation_id_of(response.headers) or (
        _id_of(doc) if isinstance(doc, dict) else None
    )
    if not isinstance(doc, dict) or "choices" not in doc:
        status = error_in_body(raw)
        if status is None:
            raise UpstreamError("The upstream sent an unusable response.")
        # An error the upstream met while generating (answered 200, as OpenRouter
        # does): it may have billed the work done, so the request is charged like a
        # stream that broke (the upstream's record where it keeps one, else the bound
        # of the prompt), and the client gets the error.
        outcome.error = upstream.error(status, raw, response.headers,
                                       funded_by_user=funded_by_user)
        outcome.status, outcome.http_status = "upstream_error", outcome.error.status
        outcome.error_code = outcome.error.code
        outcome.set_cost(cost=price.cost_nano(prompt_tokens, 0), source="estimate",
                         prompt_tokens=prompt_tokens, completion_tokens=0)
        outcome.estimate_only = True
        return outcome
    usage = doc.get("usage")
    if isinstance(usage, dict):
        cost = upstream.usage(usage, price)
        outcome.set_cost(cost=cost.cost_nano, source=cost.source,
                         prompt_tokens=cost.prompt_tokens,
                         completion_tokens=cost.completion_tokens)
    else:
        # No usage reported: the bound of the prompt and of the text in the answer (in
        # whatever JSON spelling), until the upstream's record says better where it
        # keeps one.
        completion = token_bound(raw)
        outcome.set_cost(cost=price.cost_nano(prompt_tokens, completion), source="estimate",
                         prompt_tokens=prompt_tokens, completion_tokens=completion)
        outcome.estimate_only = True
    outcome.body = raw
    return outcome


def _id_of(doc: dict[str, object]) -> str | None:
    value = doc.get("id")
    if isinstance(value, str) and value.startswith("gen-") and len(value) <= 256:
        return value
    return None


async def _fetch(upstream: Upstream, body: bytes, *, api_key: str | None
                 ) -> tuple[httpx.Response, bytes]:
    settings = upstream.settings
    response = await upstream.open_chat(body, accept="application/json", api_key=api_key)
    try:
        with mapped_transport_errors("reading the response"):
            chunks: list[bytes] = []
            size = 0
            async with asyncio.timeout(settings.idle_timeout_s) as idle:
                loop = asyncio.get_running_loop()
                async for chunk in response.aiter_raw():
                    idle.reschedule(loop.time() + settings.idle_timeout_s)
                    size += len(chunk)
                    if size > RESPONSE_BODY_LIMIT:
                        raise UpstreamError("The upstream's response is too large.")
                    chunks.append(chunk)
    finally:
        # On cancellation too: closing an unread response drops the upstream
        # connection, and the upstream stops generating.
        await response.aclose()
    return response, b"".join(chunks)
