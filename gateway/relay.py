"""The streaming relay: upstream SSE bytes to the client as they arrive, metered.

Per read from the upstream the relay forwards every *complete* event in one ASGI message,
byte for byte; an event split across reads waits for its end (a fraction of an event,
useless to a client, is the only thing ever held back). Per event it adds an upper bound
of the tokens it carries to a running estimate and compares it with the hold: an integer
compare. When the estimate outgrows the hold the hold is extended in the store; when the
cap cannot cover it, or the connection is revoked, the upstream request is stopped and the
stream ends with an error event, a usage chunk with what was charged, and ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import httpx
import orjson
from starlette.types import Receive, Scope, Send

from gateway.auth import Principal
from gateway.errors import (
    ConnectionRevoked,
    GatewayError,
    SpendCapReached,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.http import DisconnectWatch
from gateway.live import StreamFlag
from gateway.metering import Price, nano_to_usd, usage_cost_nano
from gateway.observability import RequestRecord
from gateway.sse import DONE, first_rare, token_bound, well_formed
from gateway.state import GatewayState
from gateway.store.base import Hold, Store
from gateway.upstream import (
    ERROR_BODY_LIMIT,
    error_from_upstream,
    error_in_body,
    generation_id_of,
    mapped_transport_errors,
)

log = logging.getLogger("wattfare.relay")

# After [DONE] the body's end is due at once; an upstream that keeps the connection open
# past this is not waited for.
AFTER_DONE_S = 0.25
# An event longer than this without a blank line is not SSE from a sane upstream.
MAX_PENDING_EVENT = 4 * 1024 * 1024
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


@dataclass(slots=True)
class StreamResult:
    """How a request went and what it cost: becomes the ledger row."""

    model: str
    cost_nano: int = 0
    cost_source: str = "estimate"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: str = "ok"
    http_status: int = 200
    error_code: str | None = None
    generation_id: str | None = None
    estimate_only: bool = False
    settled: bool = False
    charged_nano: int = 0

    def set_cost(
        self, *, cost: int, source: str, prompt_tokens: int, completion_tokens: int
    ) -> None:
        self.cost_nano = cost
        self.cost_source = source
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens


class _End(Exception):
    """Ends the pump early: why, and the error the client is told."""

    def __init__(self, status: str, error: GatewayError) -> None:
        super().__init__(status)
        self.status = status
        self.error = error


Settle = Callable[["StreamJob", StreamResult], Awaitable[int]]


@dataclass(slots=True)
class StreamJob:
    """One admitted streamed request, as the proxy hands it over: who, what it holds, its
    price and prompt bound, the body for the upstream (emptied once sent), and how to
    settle it (``settle(job, result)``: one callable for every request, not a closure
    per stream)."""

    principal: Principal
    hold: Hold
    price: Price
    prompt_tokens: int
    model: str
    body: bytes
    settle: Settle
    record: RequestRecord
    started: float


class Relay:
    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self._idle: _IdleTimers | None = None

    def _idle_timers(self, loop: asyncio.AbstractEventLoop) -> _IdleTimers:
        if self._idle is None or self._idle.loop is not loop:
            self._idle = _IdleTimers(loop)
        return self._idle

    async def run(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        job: StreamJob,
    ) -> StreamResult:
        """Relay one stream. Raises GatewayError only before the response has started."""
        watch = DisconnectWatch(receive)
        try:
            return await self._run(send, job, watch=watch)
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            # Gone before the upstream answered: nothing was generated for anyone.
            watch.task.uncancel()
            result = StreamResult(
                model=job.model, status="client_disconnected", http_status=499
            )
            result.charged_nano = await job.settle(job, result)
            result.settled = True
            return result
        finally:
            watch.close()

    async def _run(
        self,
        send: Send,
        job: StreamJob,
        *,
        watch: DisconnectWatch,
    ) -> StreamResult:
        response = await self.state.upstream.open_chat(job.body, accept="text/event-stream")
        job.body = b""  # sent: a stream that lasts minutes does not keep the prompt
        if response.status_code != 200 or not response.headers.get(
            "content-type", ""
        ).startswith("text/event-stream"):
            await self._refuse(response)

        result = StreamResult(
            model=job.model, generation_id=generation_id_of(response.headers)
        )
        # Only the byte stream is needed from here on. Dropping the response object also
        # drops the request object, both header sets and the request body for as long as
        # the stream lasts.
        stream = cast(httpx.AsyncByteStream, response.stream)
        del response
        assert job.principal.user_id is not None
        key = (job.principal.app.id, job.principal.user_id)
        live, metrics = self.state.live, self.state.metrics
        meter = _Meter(
            price=job.price, prompt_tokens=job.prompt_tokens, hold=job.hold,
            store=self.state.store,
            extend_tokens=self.state.settings.metering.extend_tokens,
        )
        flag = live.open(key)
        metrics.open_streams.inc()
        end: _End | None = None
        try:
            try:
                # The head's headers are built in the call: no local keeps them (and the
                # request id the access log adds) for the life of the stream.
                await send({"type": "http.response.start", "status": 200,
                            "headers": _sse_headers(result.generation_id)})
                await self._pump(stream, send, flag=flag, meter=meter, result=result)
            except _End as stop:
                end = stop
            except asyncio.CancelledError:
                if not watch.gone:
                    raise
                watch.task.uncancel()
                end = _End("client_disconnected", UpstreamError("client disconnected"))
            finally:
                watch.armed = False
                live.close(key, flag)
                metrics.open_streams.dec()
        finally:
            # Closing an unfinished response drops the upstream connection: the
            # upstream stops generating.
            with contextlib.suppress(Exception):
                await stream.aclose()

        if end is not None:
            result.status = end.status
            if end.status != "client_disconnected":
                result.error_code = end.error.code
        if not meter.saw_usage:
            result.estimate_only = True
            meter.charge_estimate(result)
        metrics.stream_ends.labels(result.status).inc()
        result.charged_nano = await job.settle(job, result)
        result.settled = True
        if end is None:
            await send({"type": "http.response.body", "body": meter.final, "more_body": False})
        elif end.status != "client_disconnected":
            tail = end.error.sse_event() + self._usage_event(result) + b"data: [DONE]\n\n"
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        return result

    async def _refuse(self, response: httpx.Response) -> None:
        """The upstream answered with an error (or not with a stream): raise it."""
        try:
            with mapped_transport_errors("reading the error"):
                async with asyncio.timeout(self.state.upstream.settings.idle_timeout_s):
                    raw = b""
                    async for chunk in response.aiter_raw():
                        raw += chunk
                        if len(raw) > ERROR_BODY_LIMIT:
                            break
        finally:
            await response.aclose()
        status = response.status_code
        if status == 200:
            in_body = error_in_body(raw)
            if in_body is None:
                raise UpstreamError("The upstream did not answer with a stream.")
            status = in_body
        raise error_from_upstream(status, raw[:ERROR_BODY_LIMIT], response.headers)

    def _usage_event(self, result: StreamResult) -> bytes:
        return (
            b"data: "
            + orjson.dumps({
                "id": result.generation_id or "",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": result.model,
                "choices": [],
                "usage": {
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "total_tokens": result.prompt_tokens + result.completion_tokens,
                    "cost": nano_to_usd(result.charged_nano),
                },
            })
            + b"\n\n"
        )

    async def _pump(
        self,
        stream: httpx.AsyncByteStream,
        send: Send,
        *,
        flag: StreamFlag,
        meter: _Meter,
        result: StreamResult,
    ) -> None:
        """Forward events until ``[DONE]`` (returns) or a reason to stop (raises _End)."""
        idle_s = self.state.upstream.settings.idle_timeout_s
        checkpoint_s = self.state.settings.metering.checkpoint_interval_s
        loop = asyncio.get_running_loop()
        pending = b""
        next_checkpoint = loop.time() + checkpoint_s
        idle = _IdleTimer(self._idle_timers(loop), idle_s)
        try:
            try:
                # The transport's byte stream itself: httpx's aiter_raw() would only
                # wrap each read in two more generator layers.
                async for chunk in stream:
                    now = idle.last = loop.time()
                    buf = pending + chunk if pending else chunk
                    last = buf.rfind(b"\n\n")
                    if last == -1:
                        if len(buf) > MAX_PENDING_EVENT:
                            raise _End("upstream_error", _unusable())
                        pending = buf
                        continue
                    cut = last + 2
                    pending = buf[cut:]
                    forward_to = await meter.scan(buf, cut, flag=flag, result=result)
                    if forward_to < cut:
                        if forward_to:
                            await send({"type": "http.response.body",
                                        "body": buf[:forward_to], "more_body": True})
                        assert meter.stop is not None
                        raise meter.stop
                    if meter.done:
                        # Everything before [DONE] goes at once; [DONE] itself waits for
                        # the settlement and leaves with the end of the response, so a
                        # client that has seen it finds its charge committed.
                        start = 0
                        if meter.done_at >= 0:
                            start, meter.done_at = meter.done_at, -1
                            idle.shorten(AFTER_DONE_S)
                            if start:
                                await send({"type": "http.response.body",
                                            "body": buf[:start], "more_body": True})
                        meter.final += buf[start:cut]
                        continue
                    await send({"type": "http.response.body", "body": buf[:cut] if pending else buf,
                                "more_body": True})
                    # A client slow to take the bytes is not the upstream being silent.
                    idle.last = loop.time()
                    if now >= next_checkpoint:
                        next_checkpoint = now + checkpoint_s
                        await meter.extend(0)
            except asyncio.CancelledError:
                if not idle.fired:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                raise TimeoutError from None
            finally:
                idle.stop()
        except TimeoutError:
            if meter.done:
                return  # [DONE] arrived; only the end of the body did not
            raise _End(
                "upstream_timeout",
                UpstreamTimeout(f"The upstream sent nothing for {idle_s:g} s."),
            ) from None
        except _End:
            raise
        except Exception as exc:  # transport errors, mapped by httpx or not
            if meter.done:
                return
            log.warning("upstream stream broke: %r", exc)
            raise _End(
                "upstream_error", UpstreamError("The upstream connection was lost mid-stream.")
            ) from None
        if not meter.done:
            raise _End("upstream_error", UpstreamError("The upstream ended the stream early."))


class _IdleTimers:
    """The idle deadlines of every stream of one event loop, on one loop timer.

    A stream stores the time of its latest chunk in its :class:`_IdleTimer` (no timer
    work per chunk, and no timer object per stream). The one timer is due at the
    earliest deadline any stream could have: when it fires, it cancels the streams
    silent for their whole period and re-arms for the earliest deadline of the others.
    Chunks only move deadlines later, so the timer is never late; a stream that starts
    or shortens its period re-arms it earlier when needed.
    """

    __slots__ = ("due", "handle", "loop", "timers")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.timers: set[_IdleTimer] = set()
        self.handle: asyncio.TimerHandle | None = None
        self.due = math.inf

    def add(self, timer: _IdleTimer) -> None:
        self.timers.add(timer)
        self.arm(timer.last + timer.idle_s)

    def discard(self, timer: _IdleTimer) -> None:
        self.timers.discard(timer)
        if not self.timers and self.handle is not None:
            self.handle.cancel()
            self.handle, self.due = None, math.inf

    def arm(self, due: float) -> None:
        if due < self.due:
            if self.handle is not None:
                self.handle.cancel()
            self.due = due
            self.handle = self.loop.call_at(due, self._sweep)

    def _sweep(self) -> None:
        self.handle, self.due = None, math.inf
        now = self.loop.time()
        silent: list[_IdleTimer] = []
        soonest = math.inf
        for timer in self.timers:
            due = timer.last + timer.idle_s
            if now >= due:
                silent.append(timer)
            elif due < soonest:
                soonest = due
        for timer in silent:
            self.timers.discard(timer)
            timer.fired = True
            timer.task.cancel()
        if soonest < math.inf:
            self.arm(soonest)


class _IdleTimer:
    """Cancels the stream's task once nothing has arrived for ``idle_s``: the relay
    stores the time of each chunk in ``last``; :class:`_IdleTimers` does the rest."""

    __slots__ = ("fired", "idle_s", "last", "task", "timers")

    def __init__(self, timers: _IdleTimers, idle_s: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.timers, self.task, self.idle_s = timers, task, idle_s
        self.fired = False
        self.last = timers.loop.time()
        timers.add(self)

    def shorten(self, idle_s: float) -> None:
        """From now on, give up after ``idle_s`` of silence."""
        self.idle_s = idle_s
        self.last = self.timers.loop.time()
        self.timers.arm(self.last + idle_s)

    def stop(self) -> None:
        self.timers.discard(self)


class _Meter:
    """The running estimate of one stream, checked against its hold."""

    __slots__ = (
        "completion_pico", "completion_tokens", "covered", "done", "done_at", "extend_nano",
        "final", "hold", "hold_nano", "price", "prompt_nano", "prompt_tokens", "saw_usage",
        "stop", "store",
    )

    def __init__(
        self, *, price: Price, prompt_tokens: int, hold: Hold, store: Store, extend_tokens: int
    ) -> None:
        self.price = price
        self.prompt_tokens = prompt_tokens
        self.prompt_nano = price.cost_nano(prompt_tokens, 0)
        self.completion_pico = price.completion
        self.completion_tokens = 0
        self.hold = hold
        self.hold_nano = hold.amount_nano
        self.store = store
        self.extend_nano = price.cost_nano(0, extend_tokens)
        self.saw_usage = False
        self.done = False
        self.final = b""  # [DONE] and what follows it, sent after settlement
        self.done_at = -1  # where [DONE] starts in the read being scanned
        self.covered = self._covered_tokens()
        self.stop: _End | None = None

    def estimate_nano(self) -> int:
        return self.prompt_nano + -(-self.completion_tokens * self.completion_pico // 1000)

    def charge_estimate(self, result: StreamResult) -> None:
        # Our own over-count is not the upstream's report: it is charged up to the hold
        # and never booked as the operator's excess.
        result.set_cost(
            cost=min(self.estimate_nano(), self.hold_nano), source="estimate",
            prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
        )

    async def extend(self, needed: int) -> bool:
        """Grow the hold by at least ``needed`` (a block at a time) and checkpoint the
        estimate; False if the connection was revoked meanwhile."""
        extension = await self.store.extend(
            self.hold.id, add_nano=max(needed, self.extend_nano) if needed else 0,
            used_nano=self.estimate_nano(),
        )
        self.hold_nano += extension.granted_nano
        self.covered = self._covered_tokens()
        return not extension.revoked

    def _covered_tokens(self) -> int:
        """The most completion tokens the hold pays for, on top of the prompt."""
        if self.completion_pico <= 0:
            return 1 << 62
        return (self.hold_nano - self.prompt_nano) * 1000 // self.completion_pico

    async def scan(self, buf: bytes, end: int, *, flag: StreamFlag, result: StreamResult) -> int:
        """Meter the events in ``buf[:end]``; the offset up to which they may be forwarded.

        The run of events before the first rare one (usage, error, ``[DONE]``) is metered
        as a whole when the hold covers all of it and it is well formed: one bound, one
        compare. Otherwise, and for the rest, event by event, so a cut lands exactly
        between the last covered event and the first uncovered one. (Nothing can revoke
        the stream while this runs without awaiting, so one flag check covers the run.)
        """
        if flag.revoked:
            self.stop = _End("cut_revoked", _revoked())
            return 0
        pos = 0
        run_end = first_rare(buf, end)
        if run_end:
            tokens = token_bound(buf, 0, run_end)
            if (
                self.saw_usage or self.completion_tokens + tokens <= self.covered
            ) and well_formed(buf, 0, run_end):
                self.completion_tokens += tokens
                pos = run_end
        if pos == end:
            return end
        return await self._scan_events(buf, pos, end, flag=flag, result=result)

    async def _scan_events(
        self, buf: bytes, pos: int, end: int, *, flag: StreamFlag, result: StreamResult
    ) -> int:
        while pos < end:
            nxt = buf.find(b"\n\n", pos, end)
            if flag.revoked:
                self.stop = _End("cut_revoked", _revoked())
                return pos
            if buf.startswith(b"data: ", pos):
                payload = buf[pos + 6:nxt]
                if payload == DONE:
                    if not self.done:
                        self.done, self.done_at = True, pos
                elif not payload or payload[0] != 0x7B or payload[-1] != 0x7D:
                    self.stop = _End("upstream_error", _unusable())
                    return pos
                else:
                    self.completion_tokens += token_bound(payload)
                    # Cheap supersets of the rare cases; _read_rare parses to be sure.
                    if b'"usage"' in payload or b'"error"' in payload:
                        self._read_rare(payload, result)
                    if self.completion_tokens > self.covered and not self.saw_usage:
                        estimate = self.estimate_nano()
                        if not await self.extend(estimate - self.hold_nano) or flag.revoked:
                            self.stop = _End("cut_revoked", _revoked())
                            return pos
                        if estimate > self.hold_nano:
                            self.stop = _End("cut_cap", SpendCapReached(
                                "This user's monthly spending cap for this app is reached."
                            ))
                            return pos
            pos = nxt + 2
        return end

    def _read_rare(self, payload: bytes, result: StreamResult) -> None:
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(doc, dict):
            return
        if isinstance(doc.get("error"), dict):
            result.status = "upstream_error"
            result.error_code = UpstreamError.code
        usage = doc.get("usage")
        if isinstance(usage, dict):
            cost, source, p, c = usage_cost_nano(usage, self.price)
            result.set_cost(cost=cost, source=source, prompt_tokens=p, completion_tokens=c)
            self.saw_usage = True


def _sse_headers(generation_id: str | None) -> list[tuple[bytes, bytes]]:
    headers = list(SSE_HEADERS)
    if generation_id:
        headers.append((b"x-generation-id", generation_id.encode()))
    return headers


def _revoked() -> ConnectionRevoked:
    return ConnectionRevoked("The connection was revoked.")


def _unusable() -> UpstreamError:
    return UpstreamError("The upstream sent an unusable chunk.")
