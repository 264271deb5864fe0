"""The ASGI application: routing, request validation, and the non-streamed completion."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qs

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.fake_upstream import wire
from gateway.fake_upstream.catalog import AUTO_ROUTES_TO, MODELS_BODY, find_model
from gateway.fake_upstream.knobs import KnobError, parse_knobs
from gateway.fake_upstream.settings import FakeUpstreamSettings
from gateway.fake_upstream.stream import HANG_S, ClientWatch, Outcome, Plan, stream_completion

__all__ = ["MAX_BODY_BYTES", "MAX_GENERATIONS", "create_app"]

MAX_BODY_BYTES: Final = 16 * 1024 * 1024
MAX_GENERATIONS: Final = 10_000

_JSON: Final = (b"content-type", b"application/json")
_SSE_HEADERS: Final = (
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"access-control-allow-origin", b"*"),
)
_NOT_FOUND: Final = wire.error_body(404, "Not Found")
_NO_CREDENTIALS: Final = wire.error_body(401, "No cookie auth credentials found")
_BAD_KEY: Final = wire.error_body(401, "User not found.")
_NOT_JSON: Final = wire.error_body(
    400, "Input must have at least 1 token.", {"provider_name": None}
)
_NO_MESSAGES: Final = wire.error_body(400, 'Input required: specify "prompt" or "messages"')
_TOO_LARGE: Final = wire.error_body(413, "Request body too large")
_HEALTH: Final = b'{"status":"ok","in_flight":%d}'


class _BodyTooLarge(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Generation:
    plan: Plan
    outcome: Outcome
    streamed: bool
    started: float
    ended: float

    def as_json(self) -> bytes:
        head, sent = self.plan.head, self.outcome.sent
        completion = sent + self.outcome.reasoning
        cost = wire.json_number(
            wire.cost_of(
                model_id=self.plan.model_id, prompt=self.plan.prompt_tokens, completion=completion
            )
        )
        elapsed_ms = round((self.ended - self.started) * 1000)
        return orjson.dumps(
            {
                "data": {
                    "id": head.id,
                    "upstream_id": "chatcmpl-" + head.id[-20:],
                    "total_cost": cost,
                    "cache_discount": None,
                    "upstream_inference_cost": None,
                    "created_at": datetime.fromtimestamp(head.created, UTC).isoformat(),
                    "model": head.model,
                    "app_id": None,
                    "streamed": self.streamed,
                    "cancelled": self.outcome.cancelled,
                    "provider_name": head.provider,
                    "latency": elapsed_ms,
                    "moderation_latency": None,
                    "generation_time": elapsed_ms,
                    "finish_reason": self.outcome.finish,
                    "native_finish_reason": self.outcome.finish,
                    "tokens_prompt": self.plan.prompt_tokens,
                    "tokens_completion": completion,
                    "native_tokens_prompt": self.plan.prompt_tokens,
                    "native_tokens_completion": completion,
                    "native_tokens_completion_images": 0,
                    "native_tokens_reasoning": self.outcome.reasoning,
                    "native_tokens_cached": 0,
                    "num_media_prompt": None,
                    "num_media_completion": None,
                    "num_search_results": None,
                    "origin": "",
                    "usage": cost,
                    "is_byok": False,
                    "api_type": "completions",
                }
            }
        )


async def _respond(
    send: Send, status: int, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON, (b"content-length", b"%d" % len(body)), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if the client left first."""
    parts: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        part: bytes = message.get("body", b"")
        size += len(part)
        if size > MAX_BODY_BYTES:
            raise _BodyTooLarge
        parts.append(part)
        more = message.get("more_body", False)
    return b"".join(parts)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class _FakeUpstream:
    """One server's state: the settings, recent generations, the last request seen."""

    def __init__(self, settings: FakeUpstreamSettings) -> None:
        self._settings = settings
        self._generations: OrderedDict[str, _Generation] = OrderedDict()
        self._last_request: tuple[list[tuple[bytes, bytes]], Any] = ([], None)
        self._in_flight = 0
        self._routes: dict[tuple[str, str], Callable[[Scope, Receive, Send], Awaitable[None]]] = {
            ("POST", "/api/v1/chat/completions"): self._chat,
            ("GET", "/api/v1/models"): self._models,
            ("GET", "/api/v1/generation"): self._generation,
            ("GET", "/api/v1/_last_request"): self._last,
            ("GET", "/healthz"): self._health,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self._routes.get((scope["method"], scope["path"]))
            if handler is None:
                await _respond(send, 404, _NOT_FOUND)
            else:
                await handler(scope, receive, send)
        elif scope["type"] == "lifespan":
            if (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
                await receive()
            await send({"type": "lifespan.shutdown.complete"})

    def _auth_error(self, scope: Scope) -> bytes | None:
        key = _bearer(scope)
        if key is None:
            return _NO_CREDENTIALS
        if self._settings.require_key is not None and key != self._settings.require_key:
            return _BAD_KEY
        return None

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _respond(send, 200, MODELS_BODY, ((b"access-control-allow-origin", b"*"),))

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _respond(send, 200, _HEALTH % self._in_flight)

    async def _last(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_headers, body = self._last_request
        headers: dict[str, str] = {}
        for name, value in raw_headers:
            key, text = name.decode("latin-1").lower(), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        await _respond(send, 200, orjson.dumps({"headers": headers, "body": body}))

    async def _generation(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (error := self._auth_error(scope)) is not None:
            await _respond(send, 401, error)
            return
        ids = parse_qs(scope["query_string"].decode("latin-1")).get("id", [])
        if not ids:
            await _respond(send, 400, wire.error_body(400, "Missing required parameter: id"))
            return
        found = self._generations.get(ids[0])
        if found is None:
            await _respond(send, 404, wire.error_body(404, f"Generation {ids[0]} not found"))
            return
        await _respond(send, 200, found.as_json())

    def _record(self, generation: _Generation) -> None:
        if len(self._generations) >= MAX_GENERATIONS:
            self._generations.popitem(last=False)
        self._generations[generation.plan.head.id] = generation

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._in_flight += 1
        watch = ClientWatch(receive)
        try:
            await self._chat_inner(scope, receive, send, watch)
        finally:
            watch.close()
            self._in_flight -= 1

    async def _chat_inner(
        self, scope: Scope, receive: Receive, send: Send, watch: ClientWatch
    ) -> None:
        started = time.monotonic()
        try:
            body = await _read_body(receive)
        except _BodyTooLarge:
            await _respond(send, 413, _TOO_LARGE)
            return
        if body is None:
            return
        try:
            request: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            request = None
        # Kept as received (encoded only when asked for) so that recording costs nothing.
        self._last_request = (scope["headers"], request)
        if (error := self._auth_error(scope)) is not None:
            await _respond(send, 401, error)
            return
        if not isinstance(request, dict):
            await _respond(send, 400, _NOT_JSON)
            return
        plan_or_error = self._plan(request)
        if isinstance(plan_or_error, bytes):
            await _respond(send, 400, plan_or_error)
            return
        plan, k = plan_or_error, plan_or_error.knobs
        if k.fault == "status":
            await self._status_error(plan, send)
            return
        if k.fault == "hang":
            if not await watch.pause(HANG_S):
                await _respond(send, 408, wire.error_body(408, "Request timed out"))
            return
        streamed = request.get("stream") is True
        if streamed:
            outcome = await stream_completion(plan, send, watch)
        else:
            outcome = await self._complete(plan, send, watch)
        self._record(
            _Generation(
                plan=plan,
                outcome=outcome,
                streamed=streamed,
                started=started,
                ended=time.monotonic(),
            )
        )

    def _plan(self, request: dict[str, Any]) -> Plan | bytes:
        """Decide the whole response up front, or return the body of a 400."""
        prompt = wire.prompt_tokens(request.get("messages"))
        if prompt is None:
            return _NO_MESSAGES
        model_id = request.get("model")
        model = find_model(model_id) if isinstance(model_id, str) else None
        if model is None:
            return wire.error_body(400, f"{model_id} is not a valid model ID")
        try:
            knobs = parse_knobs(request.get("fake"), settings=self._settings)
        except KnobError as exc:
            return wire.error_body(400, str(exc))
        chunks, finish = knobs.chunks, "stop"
        for name in ("max_tokens", "max_completion_tokens"):
            cap = request.get(name)
            if isinstance(cap, int) and not isinstance(cap, bool) and 0 <= cap < chunks:
                chunks, finish = cap, "length"
        created = int(time.time())
        head = wire.Head(
            id=wire.new_generation_id(created),
            created=created,
            model=AUTO_ROUTES_TO if model.id == "openrouter/auto" else model.id,
            provider=model.provider_name,
            fingerprint="fp_" + model.canonical_slug.encode().hex()[:10],
        )
        return Plan(
            head=head,
            knobs=knobs,
            model_id=model.id,
            prompt_tokens=prompt,
            chunks=chunks,
            finish=finish,
            headers=[*_SSE_HEADERS, (b"x-generation-id", head.id.encode())],
        )

    async def _status_error(self, plan: Plan, send: Send) -> None:
        k = plan.knobs
        headers: tuple[tuple[bytes, bytes], ...] = ((b"x-generation-id", plan.head.id.encode()),)
        if k.status == 429:
            headers += ((b"retry-after", b"%d" % k.retry_after),)
        body = wire.status_error_body(
            k.status, model=plan.head.model, provider=plan.head.provider, message=k.message
        )
        await _respond(send, k.status, body, headers)

    async def _complete(self, plan: Plan, send: Send, watch: ClientWatch) -> Outcome:
        k = plan.knobs
        delay = (k.ttft_ms + k.gap_ms * max(plan.chunks - 1, 0)) / 1000
        if delay > 0 and await watch.pause(delay):
            return Outcome(sent=0, reasoning=0, finish=None, cancelled=True)
        headers = ((b"x-generation-id", plan.head.id.encode()),)
        if k.fault == "mid_stream_error":
            # Once a provider has answered, OpenRouter reports its failure inside a 200.
            message = k.message or "Provider disconnected unexpectedly"
            body = orjson.dumps({"error": {"code": k.error_code, "message": message}})
            await _respond(send, 200, body, headers)
            return Outcome(sent=0, reasoning=0, finish="error", cancelled=False)
        reasoning = k.hidden_tokens if k.fault == "extra_reasoning" else 0
        completion = plan.chunks + reasoning
        cost = wire.cost_of(
            model_id=plan.model_id, prompt=plan.prompt_tokens, completion=completion
        )
        body = wire.completion_body(
            plan.head,
            content=k.chunk_text * plan.chunks,
            finish=plan.finish,
            prompt=plan.prompt_tokens,
            completion=completion,
            reasoning=reasoning,
            cost=None if k.fault == "usage_without_cost" else cost,
            include_usage=k.fault != "no_usage",
        )
        await _respond(send, 200, body, headers)
        return Outcome(sent=plan.chunks, reasoning=reasoning, finish=plan.finish, cancelled=False)


def create_app(settings: FakeUpstreamSettings) -> ASGIApp:
    """A new simulated OpenRouter; each app keeps its own generations and last request."""
    return _FakeUpstream(settings)
