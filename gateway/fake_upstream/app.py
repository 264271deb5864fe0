"""The ASGI application: routing, request validation, and the non-streamed completion."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.fake_upstream import admin, wire
from gateway.fake_upstream.accounts import Accounts, to_nano, usd_of
from gateway.fake_upstream.asgi import BodyTooLarge, bearer, query, read_body, respond
from gateway.fake_upstream.catalog import MODELS_BODY, OPENAI_MODELS_BODY
from gateway.fake_upstream.generations import Generation, GenerationStore
from gateway.fake_upstream.oauth import OAuth
from gateway.fake_upstream.openai_wire import openai_error
from gateway.fake_upstream.planning import CORS, plan_request
from gateway.fake_upstream.settings import FakeUpstreamSettings
from gateway.fake_upstream.stream import HANG_S, ClientWatch, Outcome, Plan, stream_completion

__all__ = ["create_app"]

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

_NOT_FOUND: Final = wire.error_body(404, "Not Found")
_NO_CREDENTIALS: Final = wire.error_body(401, "No cookie auth credentials found")
_BAD_KEY: Final = wire.error_body(401, "User not found.")
_NOT_JSON: Final = wire.error_body(
    400, "Input must have at least 1 token.", {"provider_name": None}
)
_TOO_LARGE: Final = wire.error_body(413, "Request body too large")
_HEALTH: Final = b'{"status":"ok","in_flight":%d}'
_OPENAI_NO_KEY: Final = openai_error(
    401,
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
)
_OPENAI_BAD_KEY: Final = openai_error(
    401, "Incorrect API key provided.", code="invalid_api_key"
)
_OPENAI_NOT_JSON: Final = openai_error(
    400, "We could not parse the JSON body of your request.", code="invalid_json"
)


class _FakeUpstream:
    """One server's state: the settings, generations, accounts, the last request seen."""

    def __init__(self, settings: FakeUpstreamSettings) -> None:
        self._settings = settings
        self._generations = GenerationStore()
        self._accounts = Accounts(
            default_credits_nano=usd_of(settings.default_credits_usd)
        )
        self._oauth = OAuth(self._accounts)
        self._last_request: tuple[list[tuple[bytes, bytes]], Any] = ([], None)
        self._in_flight = 0
        self._routes: dict[tuple[str, str], Handler] = {
            ("POST", "/api/v1/chat/completions"): self._chat,
            ("GET", "/api/v1/models"): self._models,
            ("GET", "/api/v1/generation"): self._generation,
            ("GET", "/api/v1/key"): self._key,
            ("POST", "/api/v1/auth/keys"): self._oauth.exchange,
            ("GET", "/api/v1/_last_request"): self._last,
            ("GET", "/auth"): self._oauth.page,
            ("POST", "/auth/decision"): self._oauth.decide,
            ("POST", "/v1/chat/completions"): self._chat,
            ("GET", "/v1/models"): self._openai_models,
            ("GET", "/v1/_last_request"): self._last,
            ("GET", "/_fake/ledger"): self._ledger,
            ("POST", "/_fake/person"): self._admin_person,
            ("POST", "/_fake/key"): self._admin_key,
            ("GET", "/healthz"): self._health,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self._routes.get((scope["method"], scope["path"]))
            if handler is None:
                await respond(send, 404, _NOT_FOUND)
            else:
                await handler(scope, receive, send)
        elif scope["type"] == "lifespan":
            if (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
                await receive()
            await send({"type": "lifespan.shutdown.complete"})

    def _key_accepted(self, key: str) -> bool:
        issued = self._accounts.issued(key)
        if issued is not None:
            return not issued.revoked
        return self._settings.require_key is None or key == self._settings.require_key

    def _auth_error(self, key: str | None) -> bytes | None:
        if key is None:
            return _NO_CREDENTIALS
        return None if self._key_accepted(key) else _BAD_KEY

    def _openai_auth_error(self, key: str | None) -> bytes | None:
        # A local OpenAI-compatible server (vLLM, Ollama) needs no key unless given one.
        if key is None:
            return None if self._settings.require_key is None else _OPENAI_NO_KEY
        return None if self._key_accepted(key) else _OPENAI_BAD_KEY

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, MODELS_BODY, (CORS,))

    async def _openai_models(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, OPENAI_MODELS_BODY)

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, _HEALTH % self._in_flight)

    async def _last(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_headers, body = self._last_request
        headers: dict[str, str] = {}
        for name, value in raw_headers:
            key, text = name.decode("latin-1").lower(), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        await respond(send, 200, orjson.dumps({"headers": headers, "body": body}))

    async def _generation(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = bearer(scope)
        if (error := self._auth_error(key)) is not None or key is None:
            await respond(send, 401, error or _NO_CREDENTIALS)
            return
        generation_id = query(scope, "id")
        if generation_id is None:
            await respond(send, 400, wire.error_body(400, "Missing required parameter: id"))
            return
        self._accounts.looked_up(key)
        found = self._generations.get(generation_id, now=time.monotonic())
        # A generation is its account's: another account's key learns nothing of it.
        if found is None or found.account != self._accounts.account_of(key):
            body = wire.error_body(404, f"Generation {generation_id} not found")
            await respond(send, 404, body)
            return
        await respond(send, 200, found.as_json())

    async def _key(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = bearer(scope)
        if (error := self._auth_error(key)) is not None or key is None:
            await respond(send, 401, error or _NO_CREDENTIALS)
            return
        await respond(send, 200, self._accounts.key_json(key))

    async def _ledger(self, scope: Scope, receive: Receive, send: Send) -> None:
        generation_id = query(scope, "id")
        if generation_id is None:
            await respond(send, 200, self._accounts.ledger_json(query(scope, "key")))
            return
        found = self._accounts.bill_json(generation_id)
        if found is None:
            await respond(send, 404, wire.error_body(404, f"No bill for {generation_id}"))
            return
        await respond(send, 200, found)

    async def _admin_person(self, scope: Scope, receive: Receive, send: Send) -> None:
        await admin.set_person(self._accounts, receive, send)

    async def _admin_key(self, scope: Scope, receive: Receive, send: Send) -> None:
        await admin.set_key(self._accounts, receive, send)

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
        openai = scope["path"].startswith("/v1/")
        try:
            body = await read_body(receive)
        except BodyTooLarge:
            too_large = openai_error(413, "Request body too large") if openai else _TOO_LARGE
            await respond(send, 413, too_large)
            return
        if body is None:
            return
        try:
            request: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            request = None
        # Kept as received (encoded only when asked for) so that recording costs nothing.
        self._last_request = (scope["headers"], request)
        key = bearer(scope)
        error = self._openai_auth_error(key) if openai else self._auth_error(key)
        if error is not None:
            await respond(send, 401, error)
            return
        if not isinstance(request, dict):
            await respond(send, 400, _OPENAI_NOT_JSON if openai else _NOT_JSON)
            return
        plan_or_error = plan_request(
            request,
            key=key or "",
            openai=openai,
            settings=self._settings,
            accounts=self._accounts,
        )
        if isinstance(plan_or_error, tuple):
            await respond(send, *plan_or_error)
            return
        plan, k = plan_or_error, plan_or_error.knobs
        if k.fault == "status":
            await self._status_error(plan, send)
            return
        if k.fault == "hang":
            if not await watch.pause(HANG_S):
                await respond(send, 408, plan.writer.status_error(408, "Request timed out"))
            return
        streamed = request.get("stream") is True
        if streamed:
            outcome = await stream_completion(plan, send, watch)
        else:
            outcome = await self._complete(plan, send, watch)
        self._record(plan, outcome, request, streamed=streamed, started=started, openai=openai)

    def _record(
        self,
        plan: Plan,
        outcome: Outcome,
        request: dict[str, Any],
        *,
        streamed: bool,
        started: float,
        openai: bool,
    ) -> None:
        """Bill the generation and, for OpenRouter's paths, keep its record."""
        cost = wire.cost_of(
            model_id=plan.model_id, prompt=plan.prompt_tokens, completion=outcome.completion
        )
        self._accounts.bill(plan.key, to_nano(cost), plan.head.id)
        if openai:
            return
        ended = time.monotonic()
        elapsed_ms = round((ended - started + outcome.tail_s) * 1000)
        user = request.get("user")
        model_id = request.get("model")
        self._generations.add(
            Generation(
                id=plan.head.id,
                created=plan.head.created,
                model=plan.head.model,
                provider=plan.head.provider,
                router=model_id if model_id == "openrouter/auto" else None,
                streamed=streamed,
                cancelled=outcome.cancelled,
                finish=outcome.finish,
                prompt_tokens=plan.prompt_tokens,
                completion_tokens=outcome.completion,
                reasoning_tokens=outcome.reasoning,
                cost=cost,
                latency_ms=elapsed_ms,
                generation_ms=elapsed_ms,
                external_user=user if isinstance(user, str) else None,
                encoding=plan.knobs.encoding,
                available_at=ended + outcome.tail_s + plan.knobs.generation_delay_ms / 1000,
                account=self._accounts.account_of(plan.key),
            )
        )

    async def _status_error(self, plan: Plan, send: Send) -> None:
        k = plan.knobs
        headers: tuple[tuple[bytes, bytes], ...] = (plan.headers[-1],)
        if k.status == 429:
            headers += ((b"retry-after", b"%d" % k.retry_after),)
        await respond(send, k.status, plan.writer.status_error(k.status, k.message), headers)

    async def _complete(self, plan: Plan, send: Send, watch: ClientWatch) -> Outcome:
        k = plan.knobs
        delay = (k.ttft_ms + k.gap_ms * max(plan.chunks - 1, 0)) / 1000
        waited_from = time.monotonic()
        if delay > 0 and await watch.pause(delay):
            # A non-streamed request cannot be cancelled: it runs on, billed in full.
            rest = max(0.0, delay - (time.monotonic() - waited_from))
            return plan.full(cancelled=True, tail_s=rest)
        headers = (plan.headers[-1],)
        if k.fault == "mid_stream_error":
            message = k.message or "Provider disconnected unexpectedly"
            body = plan.writer.body_error(code=k.error_code, message=message)
            await respond(send, 200, body, headers)
            return Outcome(sent=0, completion=0, reasoning=0, finish="error", cancelled=False)
        outcome = plan.full(cancelled=False)
        cost = wire.cost_of(
            model_id=plan.model_id, prompt=plan.prompt_tokens, completion=outcome.completion
        )
        body = plan.writer.body(
            content=k.chunk_text * plan.chunks,
            finish=plan.finish,
            prompt=plan.prompt_tokens,
            completion=outcome.completion,
            reasoning=outcome.reasoning,
            cost=None if k.fault == "usage_without_cost" else cost,
            include_usage=plan.include_usage,
        )
        await respond(send, 200, body, headers)
        return outcome


def create_app(settings: FakeUpstreamSettings) -> ASGIApp:
    """A new simulated upstream; each app keeps its own generations, accounts and ledger."""
    return _FakeUpstream(settings)
