"""``POST /v1/chat/completions``: admit, relay, settle — three steps, top to bottom.

A plain ASGI handler (the hot path):

1. **admit**: credential → principal (cached verification); the body read (bounded),
   checked, routed to its upstream and priced; the upstream body rewritten (usage asked
   for, ``max_tokens`` bounded by what the hold pays for) and encoded; whose key pays
   resolved (:mod:`gateway.funding`); then, and only then, a *hold* reserved in the
   store for that funder (one transaction, which also re-checks the app's key version
   and the connection). Whatever is refused before the hold leaves nothing behind;
   nothing after it can be refused without the settle step.
2. **relay**: the upstream request (the caller's headers are never forwarded), streamed
   (:mod:`gateway.relay.stream`) or read whole (:mod:`gateway.relay.complete`); it
   returns an :class:`Outcome` and never touches money.
3. **settle**: one call (:mod:`gateway.settlement`) for every request, whatever happened
   — charged, released, or left for the upstream's record — and only then the end of the
   stream, or the non-streamed answer, goes to the client.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from gateway.auth import ONE_USER_HEADER, CredentialKind, Principal
from gateway.errors import (
    ConnectionRevoked,
    FundingUnavailable,
    GatewayError,
    InternalError,
    InvalidApiKey,
    InvalidRequest,
    InvalidSession,
    MethodNotAllowed,
    NotConnected,
    SpendCapReached,
)
from gateway.funding.funder import OPERATOR, Funding
from gateway.http import ClientGone, DisconnectWatch, json_object, read_body, send_bytes, send_error
from gateway.metering import Price, prompt_token_bound
from gateway.observability import RequestRecord, record_of
from gateway.relay import Outcome, Relay, StreamJob, Tail, complete
from gateway.settlement import Settler
from gateway.state import GatewayState
from gateway.store.base import (
    CapReached,
    Hold,
    HoldRequest,
    NoConnection,
    Revoked,
    StaleCredential,
)
from gateway.upstreams import Upstream

log = logging.getLogger("wattfare.proxy")

ALLOWED: frozenset[CredentialKind] = frozenset({"session", "secret"})


@dataclass(slots=True)
class ChatRequest:
    body: dict[str, Any]
    model: str
    stream: bool
    max_tokens: int | None
    # What the client asked of ``stream_options.include_usage``.
    wants_usage: bool


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
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    return ChatRequest(body=body, model=model, stream=stream, max_tokens=max_tokens,
                       wants_usage=wants_usage)


def user_hash(app_id: str, user_id: str) -> str:
    """A stable, opaque stand-in for the app's user id, sent upstream as ``user``."""
    return "wf_" + hashlib.sha256(f"{app_id}\x00{user_id}".encode()).hexdigest()[:32]


def encode(body: dict[str, Any]) -> bytes:
    """The upstream body, exactly sized (orjson's bytes keep a 4 KB buffer, held for the
    whole stream); a body orjson cannot write (nested deeper than it writes) is the
    caller's error."""
    try:
        return bytes(memoryview(orjson.dumps(body)))
    except orjson.JSONEncodeError as exc:
        raise InvalidRequest(f"The request body cannot be forwarded: {exc}.") from None


@dataclass(slots=True)
class Admitted:
    """A request that holds money: everything the relay and the settle step need."""

    principal: Principal
    hold: Hold
    upstream: Upstream
    price: Price
    prompt_tokens: int
    model: str
    stream: bool
    payload: bytes
    strip_usage: bool
    bound: int
    # The parsed body, kept only until the bound is fitted to the hold.
    body: dict[str, Any] | None
    funding: Funding = OPERATOR
    lowered_bound: int | None = None


class ChatCompletions:
    """The ASGI handler for ``/v1/chat/completions``."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        metering = state.settings.metering
        self.relay = Relay(
            store=state.store, live=state.live, metrics=state.metrics,
            extend_tokens=metering.extend_tokens,
            checkpoint_interval_s=metering.checkpoint_interval_s,
        )
        self.settler = Settler(state.store, state.metrics)
        # Requests of this process that hold money right now: reconciliation leaves
        # their holds alone (any other hold of this process is an orphan).
        self.in_flight: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        record = record_of(scope)
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed("Use POST for chat completions.")
            await self._handle(scope, receive, send, record)
        except GatewayError as exc:
            if record.status == 0:
                await send_error(scope, send, exc)
        except ClientGone:
            record.code = "client_disconnected"
            record.status = 499
        except Exception:
            log.exception("chat completion failed (request %s)", record.request_id)
            if record.status == 0:
                await send_error(scope, send, InternalError("The gateway failed unexpectedly."))

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, record: RequestRecord
    ) -> None:
        admitted = await self._admit(scope, receive, record)
        started = time.perf_counter()
        self.in_flight.add(record.request_id)
        try:
            await self._relay_and_settle(admitted, scope, receive, send, record, started)
        finally:
            self.in_flight.discard(record.request_id)

    async def _relay_and_settle(
        self, admitted: Admitted, scope: Scope, receive: Receive, send: Send,
        record: RequestRecord, started: float,
    ) -> None:
        watch = DisconnectWatch(receive)
        tail: Tail | None = None
        refusal: GatewayError | None = None
        funding = admitted.funding
        try:
            try:
                self._fit(admitted)
                if admitted.stream:
                    outcome, tail = await self.relay.stream(send, self._job(admitted),
                                                            watch=watch)
                else:
                    watch.armed = False  # a non-streamed request runs to its end
                    outcome = await complete(
                        upstream=admitted.upstream, body=admitted.payload,
                        price=admitted.price, prompt_tokens=admitted.prompt_tokens,
                        model=admitted.model, api_key=funding.key,
                    )
                    if watch.gone:
                        outcome.status, outcome.http_status = "client_disconnected", 499
            except GatewayError as exc:
                # Refused before anything was relayed: nothing to charge.
                refusal = exc
                outcome = Outcome(model=admitted.model, status="failed",
                                  http_status=exc.status, error_code=exc.code)
        except BaseException:
            # Cancelled (the server shutting down) or a bug, with the upstream perhaps
            # at work: what it billed is unknown here, so the hold is left to
            # reconciliation, which charges the generation's record (its id is kept with
            # the hold) or the last checkpoint once the request is no longer in flight.
            log.warning("request %s ended abnormally; its hold is left to reconciliation",
                        record.request_id)
            raise
        finally:
            watch.close()
        settled = await asyncio.shield(self._settle(admitted, outcome, record, started))
        record.cost_nano = settled
        record.code = outcome.error_code
        if isinstance(refusal, FundingUnavailable) and refusal.reason != "none":
            await self.state.funder.refused(funding, refusal.reason)
        elif refusal is None and funding.problem is not None:
            await self.state.funder.worked(funding)
        if refusal is not None:
            raise refusal
        if outcome.error is not None:
            raise outcome.error
        if outcome.http_status == 499:
            record.status, record.code = 499, "client_disconnected"
        elif tail is not None:
            await self.relay.finish(send, outcome, tail, charged_nano=settled)
        else:
            headers = {"x-generation-id": outcome.generation_id} if outcome.generation_id else None
            await send_bytes(send, status=200, body=outcome.body, headers=headers)

    async def _settle(
        self, admitted: Admitted, outcome: Outcome, record: RequestRecord, started: float
    ) -> int:
        return await self.settler.settle(
            admitted.hold, outcome, record=record, started=started,
            upstream=admitted.upstream,
        )

    @staticmethod
    def _job(admitted: Admitted) -> StreamJob:
        principal = admitted.principal
        assert principal.user_id is not None
        job = StreamJob(
            key=(principal.app.id, principal.user_id), hold=admitted.hold,
            price=admitted.price, prompt_tokens=admitted.prompt_tokens, model=admitted.model,
            upstream=admitted.upstream, body=admitted.payload, api_key=admitted.funding.key,
            strip_usage=admitted.strip_usage, lowered_bound=admitted.lowered_bound,
        )
        admitted.payload = b""  # the relay lets go of it once sent
        return job

    # -- 1. admit -------------------------------------------------------------------------

    async def _principal(self, scope: Scope) -> tuple[Principal, int | None]:
        authorization = user = None
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"wattfare-user":
                if user is not None:
                    raise InvalidRequest(ONE_USER_HEADER, param="Wattfare-User")
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

    async def _admit(self, scope: Scope, receive: Receive, record: RequestRecord) -> Admitted:
        state = self.state
        principal, declared = await self._principal(scope)
        assert principal.user_id is not None
        record.app_id, record.user_id = principal.app.id, principal.user_id
        raw = await read_body(receive, limit=state.settings.server.max_body_bytes,
                              declared=declared)
        req = parse_chat_request(raw)
        del raw
        record.model = req.model
        route = await state.upstreams.route(req.model)
        upstream, price = route.upstream, route.model.price
        assert price is not None
        largest = route.model.max_completion_tokens
        for fallback in req.body.get("models") or ():
            other = await state.upstreams.route(fallback, param="models")
            if other.upstream is not upstream:
                raise InvalidRequest(
                    f"The fallback model '{fallback}' is served by another upstream.",
                    param="models",
                )
            assert other.model.price is not None
            price = price.max(other.model.price)
            if other.model.max_completion_tokens is not None:
                largest = max(largest or 0, other.model.max_completion_tokens)

        metering = state.settings.metering
        prompt_tokens = prompt_token_bound(req.body)
        # The completion is held in full: what the request asks for, else the model's
        # largest completion (the model list says it), else the configured default.
        largest = largest or metering.default_max_tokens
        bound = min(req.max_tokens, largest) if req.max_tokens else largest
        body = req.body
        body["user"] = user_hash(principal.app.id, principal.user_id)
        upstream.prepare(body, stream=req.stream, max_tokens=bound)
        payload = encode(body)  # every refusal of the body comes before the hold

        # Funding before the hold, so the hold records who pays (whoever settles or looks
        # it up later, after a crash or on another node, uses the same funder), and a
        # refusal to fund leaves nothing behind.
        funding = await self._fund(principal, upstream)
        hold = await self._reserve(
            principal, record=record,
            want=price.cost_nano(prompt_tokens, bound),
            minimum=price.cost_nano(prompt_tokens, metering.min_completion_tokens),
            model=req.model, funded_by=funding.funded_by,
        )
        return Admitted(
            principal=principal, hold=hold, upstream=upstream, price=price,
            prompt_tokens=prompt_tokens, model=req.model, stream=req.stream,
            payload=payload, strip_usage=req.stream and not req.wants_usage,
            bound=bound, body=body, funding=funding,
        )

    async def _fund(self, principal: Principal, upstream: Upstream) -> Funding:
        """Whose key pays (:mod:`gateway.funding`): the operator's, or the person's own.
        Costs no store round trip where only the operator pays, one read otherwise."""
        assert principal.user_id is not None
        app = principal.app
        try:
            return await self.state.funder.resolve(
                app_id=app.id, user_id=principal.user_id, mode=app.mode,
                upstream_kind=upstream.kind,
            )
        except FundingUnavailable as exc:
            if exc.reason == "none":
                # Nobody to pay: but a person who never connected, or whose connection
                # was revoked, hears that first, as the hold's refusal would say it (the
                # app's next step differs). A read on this refusal's path only.
                conn = await self.state.store.connection(app.id, principal.user_id)
                if conn is None and app.mode != "test":
                    raise _not_connected() from None
                if conn is not None and conn.status == "revoked":
                    raise _revoked() from None
            raise

    @staticmethod
    def _fit(admitted: Admitted) -> None:
        """Never ask the upstream for more than the hold pays for: if less than the
        whole completion fitted in the hold, the bound comes down to what did."""
        body, admitted.body = admitted.body, None
        price = admitted.price
        covered = price.tokens_for(
            admitted.hold.amount_nano - price.cost_nano(admitted.prompt_tokens, 0)
        )
        if covered < admitted.bound and body is not None:
            admitted.lowered_bound = max(1, covered)
            admitted.upstream.prepare(body, stream=admitted.stream,
                                      max_tokens=admitted.lowered_bound)
            admitted.payload = encode(body)

    async def _reserve(
        self, principal: Principal, *, record: RequestRecord, want: int, minimum: int,
        model: str, funded_by: str,
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
                    funded_by=funded_by,
                )
            )
        except StaleCredential:
            if principal.kind == "secret":
                raise InvalidApiKey("Unknown or rolled secret key.") from None
            raise InvalidSession("Session token names an unknown or rolled app.") from None
        except NoConnection:
            raise _not_connected() from None
        except Revoked:
            raise _revoked() from None
        except CapReached as exc:
            raise SpendCapReached(
                "This user's monthly AI budget is used up."
                if exc.budget
                else "This user's monthly spending cap for this app is reached."
            ) from None


def _not_connected() -> NotConnected:
    return NotConnected("This user has not connected an AI budget to this app yet.")


def _revoked() -> ConnectionRevoked:
    return ConnectionRevoked("This user's connection to this app was revoked.")
