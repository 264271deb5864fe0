"""``POST /v1/chat/completions``: authenticate, admit against the cap, forward, settle.

A plain ASGI handler (the hot path). The order of work per request:

1. credential → principal (cached token verification);
2. body read (bounded) and checked;
3. price from the cached model list, prompt estimate, a *hold* reserved in the store
   (one transaction, which also re-checks the app's key version and the connection);
4. upstream request with the operator's key; the caller's headers are never forwarded;
5. the response relayed (streamed: :mod:`gateway.relay`; otherwise read and returned
   unchanged);
6. the hold settled to the actual cost and one ledger row written, whatever happened.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from starlette.types import Receive, Scope, Send

from gateway.auth import CredentialKind, Principal
from gateway.errors import (
    ConnectionRevoked,
    GatewayError,
    InternalError,
    InvalidApiKey,
    InvalidRequest,
    InvalidSession,
    MethodNotAllowed,
    ModelNotFound,
    NotConnected,
    SpendCapReached,
    UpstreamError,
)
from gateway.http import (
    ClientGone,
    DisconnectWatch,
    json_object,
    read_body,
    send_bytes,
    send_error,
)
from gateway.metering import Price, prompt_token_bound, usage_cost_nano
from gateway.observability import RequestRecord, record_of
from gateway.relay import Relay, StreamJob, StreamResult
from gateway.state import GatewayState
from gateway.store.base import (
    CapReached,
    Hold,
    HoldRequest,
    NoConnection,
    Revoked,
    Settlement,
    StaleCredential,
)
from gateway.upstream import (
    ERROR_BODY_LIMIT,
    error_from_upstream,
    error_in_body,
    generation_id_of,
    mapped_transport_errors,
)

log = logging.getLogger("wattfare.proxy")

ALLOWED: frozenset[CredentialKind] = frozenset({"session", "secret"})
RESPONSE_BODY_LIMIT = 32 * 1024 * 1024


@dataclass(slots=True)
class ChatRequest:
    body: dict[str, Any]
    model: str
    stream: bool
    max_tokens: int | None


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Check the fields the gateway relies on; the rest is the upstream's to judge."""
    body = json_object(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > 256:
        raise InvalidRequest("'model' must be a non-empty string.", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(
                "Each message must be an object with a string 'role'.", param="messages"
            )
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    max_tokens: int | None = None
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequest(f"'{key}' must be a positive integer.", param=key)
        max_tokens = value if max_tokens is None else min(max_tokens, value)
    fallbacks = body.get("models")
    if fallbacks is not None and (
        not isinstance(fallbacks, list) or not all(isinstance(m, str) for m in fallbacks)
    ):
        raise InvalidRequest("'models' must be an array of model ids.", param="models")
    return ChatRequest(body=body, model=model, stream=stream, max_tokens=max_tokens)


def user_hash(app_id: str, user_id: str) -> str:
    """A stable, opaque stand-in for the app's user id, sent upstream as ``user``."""
    return "wf_" + hashlib.sha256(f"{app_id}\x00{user_id}".encode()).hexdigest()[:32]


class ChatCompletions:
    """The ASGI handler for ``/v1/chat/completions``."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.relay = Relay(state)
        self._settle_job = self._settle_stream  # bound once, shared by every stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        record = record_of(scope)
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed("Use POST for chat completions.")
            await self._handle(scope, receive, send, record)
        except GatewayError as exc:
            await send_error(scope, send, exc)
        except ClientGone:
            record.code = "client_disconnected"
            record.status = 499
        except Exception:
            log.exception("chat completion failed (request %s)", record.request_id)
            if record.status == 0:
                await send_error(scope, send, InternalError("The gateway failed unexpectedly."))

    async def _principal(self, scope: Scope) -> tuple[Principal, int | None]:
        authorization = user = None
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"wattfare-user":
                try:
                    user = value.decode("utf-8")
                except UnicodeDecodeError:
                    raise InvalidRequest(
                        "Header 'Wattfare-User' must be UTF-8.", param="Wattfare-User"
                    ) from None
            elif name == b"content-length" and value.isdigit():
                declared = int(value)
        principal = await self.state.auth.authenticate(authorization, user, allow=ALLOWED)
        if principal.user_id is None:
            raise InvalidRequest(
                "A secret key must name the user in the 'Wattfare-User' header.",
                param="Wattfare-User",
            )
        return principal, declared

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, record: RequestRecord
    ) -> None:
        state = self.state
        principal, declared = await self._principal(scope)
        assert principal.user_id is not None
        record.app_id, record.user_id = principal.app.id, principal.user_id
        limit = state.settings.server.max_body_bytes
        raw = await read_body(receive, limit=limit, declared=declared)
        req = parse_chat_request(raw)
        record.model = req.model
        catalog = await state.upstream.catalog()
        price = catalog.price_of(req.model)
        if price is None:
            raise ModelNotFound(f"The model '{req.model}' is not offered.", param="model")
        for fallback in req.body.get("models") or ():
            other = catalog.price_of(fallback)
            if other is None:
                raise ModelNotFound(f"The model '{fallback}' is not offered.", param="models")
            price = price.max(other)

        metering = state.settings.metering
        prompt_tokens = prompt_token_bound(req.body)
        prompt_nano = price.cost_nano(prompt_tokens, 0)
        budget = req.max_tokens or metering.default_max_tokens
        hold = await self._reserve(
            principal,
            record=record,
            want=price.cost_nano(prompt_tokens, budget),
            minimum=price.cost_nano(prompt_tokens, metering.min_completion_tokens),
            model=req.model,
        )
        body = req.body
        body["user"] = user_hash(principal.app.id, principal.user_id)
        usage = body.get("usage")
        body["usage"] = {**(usage if isinstance(usage, dict) else {}), "include": True}
        if req.stream:
            options = body.get("stream_options")
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}), "include_usage": True
            }
        else:
            # A finished body cannot be cut, so a non-streamed request asks the upstream
            # for no more tokens than its hold pays for.
            covered = price.tokens_for(hold.amount_nano - prompt_nano)
            if covered < budget:
                body["max_tokens"] = max(1, covered)
                body.pop("max_completion_tokens", None)

        # Exactly sized: orjson's bytes keep a 4 KB buffer, held for the whole stream.
        payload = bytes(memoryview(orjson.dumps(body)))
        # Neither the caller's bytes nor their parsed form are needed from here on; a
        # stream can last minutes, so its frame does not keep them.
        model, stream = req.model, req.stream
        del raw, body, req
        started = time.perf_counter()
        try:
            if stream:
                job = StreamJob(
                    principal=principal, hold=hold, price=price, prompt_tokens=prompt_tokens,
                    model=model, body=payload, settle=self._settle_job, record=record,
                    started=started,
                )
                del payload  # the relay lets go of it once sent
                result = await self.relay.run(scope, receive, send, job)
            else:
                result = await self._complete(receive, send, body=payload,
                                              price=price, prompt_tokens=prompt_tokens,
                                              model=model)
        except GatewayError as exc:
            # Refused before anything was relayed: nothing to charge.
            await asyncio.shield(self._release(
                hold, record=record, started=started, status=exc.status, code=exc.code
            ))
            raise
        except BaseException:
            await asyncio.shield(self._release(
                hold, record=record, started=started, status=500, code=InternalError.code
            ))
            raise
        record.code = result.error_code
        record.cost_nano = (
            result.charged_nano
            if result.settled
            else await self._settle(hold, result, record=record, started=started)
        )
        if result.http_status == 499:
            record.status, record.code = 499, "client_disconnected"

    async def _reserve(
        self, principal: Principal, *, record: RequestRecord, want: int, minimum: int, model: str
    ) -> Hold:
        assert principal.user_id is not None
        app = principal.app
        metering = self.state.settings.metering
        try:
            return await self.state.store.reserve(
                HoldRequest(
                    request_id=record.request_id,
                    app_id=app.id,
                    user_id=principal.user_id,
                    key_version=app.key_version,
                    model=model,
                    want_nano=want,
                    min_nano=minimum,
                    auto_connect=app.mode == "test",
                    requested_cap_nano=principal.requested_cap_nano,
                    default_cap_nano=metering.default_monthly_nano,
                )
            )
        except StaleCredential:
            if principal.kind == "secret":
                raise InvalidApiKey("Unknown or rolled secret key.") from None
            raise InvalidSession("Session token names an unknown or rolled app.") from None
        except NoConnection:
            raise NotConnected(
                "This user has not connected an AI budget to this app yet."
            ) from None
        except Revoked:
            raise ConnectionRevoked("This user's connection to this app was revoked.") from None
        except CapReached as exc:
            raise SpendCapReached(
                "This user's monthly AI budget is used up."
                if exc.budget
                else "This user's monthly spending cap for this app is reached."
            ) from None

    async def _complete(
        self,
        receive: Receive,
        send: Send,
        *,
        body: bytes,
        price: Price,
        prompt_tokens: int,
        model: str,
    ) -> StreamResult:
        """A non-streamed completion: read the whole answer, meter it, return it as is.

        Nothing reaches the client before the answer is complete, so a client that leaves
        meanwhile ends the wait: the upstream request is dropped (which stops it) and, as
        for a stream whose client leaves before the upstream answers, nothing is charged.
        """
        result = StreamResult(model=model)
        fetched = await self._fetch_unless_gone(receive, body)
        if fetched is None:
            result.status, result.http_status = "client_disconnected", 499
            return result
        response, raw = fetched
        if response.status_code != 200:
            raise error_from_upstream(
                response.status_code, raw[:ERROR_BODY_LIMIT], response.headers
            )
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError("The upstream sent an unusable response.") from None
        if not isinstance(doc, dict) or "choices" not in doc:
            status = error_in_body(raw)
            if status is not None:
                raise error_from_upstream(status, raw[:ERROR_BODY_LIMIT], response.headers)
            raise UpstreamError("The upstream sent an unusable response.")
        usage = doc.get("usage")
        if isinstance(usage, dict):
            cost, source, p, c = usage_cost_nano(usage, price)
            result.set_cost(cost=cost, source=source, prompt_tokens=p, completion_tokens=c)
        else:
            # No usage reported: charge the bound (the hold caps it).
            result.set_cost(
                cost=price.cost_nano(prompt_tokens, 0), source="estimate",
                prompt_tokens=prompt_tokens, completion_tokens=0,
            )
            result.estimate_only = True
        result.generation_id = generation_id_of(response.headers)
        headers = {"x-generation-id": result.generation_id} if result.generation_id else None
        await send_bytes(send, status=200, body=raw, headers=headers)
        return result

    async def _fetch_unless_gone(
        self, receive: Receive, body: bytes
    ) -> tuple[httpx.Response, bytes] | None:
        """The upstream's whole response, or None if the client disconnected first."""
        watch = DisconnectWatch(receive)
        try:
            return await self._fetch(body)
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            watch.task.uncancel()
            return None
        finally:
            watch.close()

    async def _fetch(self, body: bytes) -> tuple[httpx.Response, bytes]:
        settings = self.state.upstream.settings
        response = await self.state.upstream.open_chat(body, accept="application/json")
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

    async def _settle_stream(self, job: StreamJob, result: StreamResult) -> int:
        return await self._settle(job.hold, result, record=job.record, started=job.started)

    async def _settle(
        self, hold: Hold, result: StreamResult, *, record: RequestRecord, started: float
    ) -> int:
        charge = await self.state.store.settle(
            Settlement(
                hold_id=hold.id,
                request_id=record.request_id,
                model=result.model,
                cost_nano=result.cost_nano,
                cost_source=result.cost_source,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                status=result.status,
                http_status=result.http_status,
                error_code=result.error_code,
                ttfb_ms=None if record.ttfb is None else record.ttfb * 1000,
                duration_ms=(time.perf_counter() - started) * 1000,
                generation_id=result.generation_id,
            )
        )
        if charge is None:
            return 0
        metrics = self.state.metrics
        if charge.charged_nano:
            metrics.spend.inc(charge.charged_nano / 1e9)
        if charge.operator_nano:
            metrics.operator_excess.inc(charge.operator_nano / 1e9)
        return charge.charged_nano

    async def _release(
        self, hold: Hold, *, record: RequestRecord, started: float, status: int, code: str
    ) -> None:
        """Settle a request that failed before it produced anything: no charge."""
        result = StreamResult(model=record.model or "")
        result.status = "failed"
        result.http_status = status
        result.error_code = code
        try:
            await self._settle(hold, result, record=record, started=started)
        except Exception:
            log.exception("could not release hold %s; it will be reconciled", hold.id)
