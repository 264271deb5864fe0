"""The streaming relay: upstream SSE bytes to the client as they arrive, metered.

Per read from the upstream the relay forwards every *complete* event in one ASGI message,
byte for byte; an event split across reads waits for its end (a fraction of an event,
useless to a client, is the only thing ever held back). The one event it drops is a
usage-only chunk the client did not ask for. Metering is :class:`gateway.relay.meter.Meter`.

The relay never settles: :meth:`Relay.stream` pumps until the upstream is done (or a
reason to stop) and returns the :class:`Outcome` with the :class:`Tail` still to send;
the chat handler settles, then :meth:`Relay.finish` sends the end of the stream, so a
client that has seen ``[DONE]`` finds its charge committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import cast

import httpx
import orjson
from starlette.types import Send

from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.http import DisconnectWatch
from gateway.live import LiveStreams, StreamFlag
from gateway.metering import Price
from gateway.money import nano_to_usd
from gateway.observability import Metrics
from gateway.relay.idle import IdleTimer, IdleTimers
from gateway.relay.meter import End, Extender, Meter, cap_reached, unusable
from gateway.relay.outcome import Outcome
from gateway.store.base import Hold
from gateway.upstreams.base import Upstream
from gateway.upstreams.errors import (
    ERROR_BODY_LIMIT,
    error_in_body,
    mapped_transport_errors,
    stream_failure,
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
class StreamJob:
    """One admitted streamed request: who (the live-stream key), what it holds, its price
    and prompt bound, where it goes, and the body for the upstream (emptied once sent)."""

    key: tuple[str, str]
    hold: Hold
    price: Price
    prompt_tokens: int
    model: str
    upstream: Upstream
    body: bytes
    api_key: str | None = None
    strip_usage: bool = False
    lowered_bound: int | None = None


@dataclass(slots=True)
class Tail:
    """What is left to send once the stream's charge is settled: the upstream's own end
    (``[DONE]`` and after), or the gateway's error tail; nothing when the client left."""

    end: End | None
    final: bytes


def generation_id_of(headers: httpx.Headers) -> str | None:
    """The upstream's ``X-Generation-Id``, when it is one the gateway can pass on as a
    header and keep in the ledger (printable ASCII); else None."""
    value: str | None = headers.get("x-generation-id")
    if value and len(value) <= 256 and value.isascii() and value.isprintable():
        return value
    return None


class Relay:
    def __init__(
        self, *, store: Extender, live: LiveStreams, metrics: Metrics, extend_tokens: int,
        checkpoint_interval_s: float,
    ) -> None:
        self.store = store
        self.live = live
        self.metrics = metrics
        self.extend_tokens = extend_tokens
        self.checkpoint_interval_s = checkpoint_interval_s
        self._idle: IdleTimers | None = None

    def _note_generation(self, hold_id: str, generation_id: str) -> None:
        """Keep the generation's id with the hold, off the stream's path (queued with the
        store's next commit; the stream does not wait for it): should the process die
        mid-stream, reconciliation looks the generation up by it."""
        try:
            noted = self.store.note_generation(hold_id, generation_id)
        except Exception as exc:  # the store closing: the hold is settled all the same
            log.warning("could not keep a generation id with its hold: %r", exc)
            return
        noted.add_done_callback(_noted)

    def _idle_timers(self, loop: asyncio.AbstractEventLoop) -> IdleTimers:
        if self._idle is None or self._idle.loop is not loop:
            self._idle = IdleTimers(loop)
        return self._idle

    async def stream(
        self, send: Send, job: StreamJob, *, watch: DisconnectWatch
    ) -> tuple[Outcome, Tail]:
        """Relay one stream up to its end. Raises GatewayError only before the response
        has started."""
        try:
            return await self._stream(send, job, watch=watch)
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            # Gone before the upstream answered: nothing was generated for anyone.
            watch.task.uncancel()
            outcome = Outcome(model=job.model, status="client_disconnected", http_status=499)
            return outcome, Tail(None, b"")

    async def _stream(
        self, send: Send, job: StreamJob, *, watch: DisconnectWatch
    ) -> tuple[Outcome, Tail]:
        upstream = job.upstream
        response = await upstream.open_chat(
            job.body, accept="text/event-stream", api_key=job.api_key
        )
        job.body = b""  # sent: a stream that lasts minutes does not keep the prompt
        if response.status_code != 200 or not response.headers.get(
            "content-type", ""
        ).startswith("text/event-stream"):
            await self._refuse(response, upstream, funded_by_user=job.api_key is not None)

        outcome = Outcome(model=job.model, generation_id=generation_id_of(response.headers))
        # Only the byte stream is needed from here on. Dropping the response object also
        # drops the request object, both header sets and the request body for as long as
        # the stream lasts.
        stream = cast(httpx.AsyncByteStream, response.stream)
        del response
        meter = Meter(
            price=job.price, prompt_tokens=job.prompt_tokens, hold=job.hold,
            store=self.store, extend_tokens=self.extend_tokens, upstream=upstream,
            strip_usage=job.strip_usage, lowered_bound=job.lowered_bound,
        )
        live, metrics = self.live, self.metrics
        flag = live.open(job.key)
        metrics.open_streams.inc()
        end: End | None = None
        try:
            try:
                # The head's headers are built in the call: no local keeps them (and the
                # request id the access log adds) for the life of the stream.
                await send({"type": "http.response.start", "status": 200,
                            "headers": _sse_headers(outcome.generation_id)})
                if outcome.generation_id is not None:
                    # Right after the head (which the store's thread would otherwise
                    # compete with for the interpreter).
                    self._note_generation(job.hold.id, outcome.generation_id)
                await self._pump(stream, send, flag=flag, meter=meter, outcome=outcome,
                                 idle_s=upstream.settings.idle_timeout_s)
            except End as stop:
                end = stop
            except asyncio.CancelledError:
                if not watch.gone:
                    raise
                watch.task.uncancel()
                end = End("client_disconnected", UpstreamError("client disconnected"))
            finally:
                watch.armed = False
                live.close(job.key, flag)
                metrics.open_streams.dec()
        finally:
            # Closing an unfinished response drops the upstream connection: the
            # upstream stops generating.
            with contextlib.suppress(Exception):
                await stream.aclose()

        if end is None and outcome.hit_lowered_bound:
            # The upstream stopped at the bound the gateway lowered to fit the cap: the
            # stream ends as a cut at the cap does (its own usage chunk was held back).
            end = End("cut_cap", cap_reached())
        if end is not None:
            outcome.status = end.status
            if end.status == "client_disconnected":
                outcome.http_status = 499
            else:
                outcome.error_code = end.error.code
        if not meter.saw_usage:
            meter.charge_estimate(outcome)
        metrics.stream_ends.labels(outcome.status).inc()
        return outcome, Tail(end, meter.final)

    async def finish(self, send: Send, outcome: Outcome, tail: Tail, *, charged_nano: int
                     ) -> None:
        """Send the end of a settled stream."""
        end = tail.end
        if end is None:
            await send({"type": "http.response.body", "body": tail.final, "more_body": False})
        elif end.status != "client_disconnected":
            body = end.error.sse_event() + _usage_event(outcome, charged_nano) + b"data: [DONE]\n\n"
            await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _refuse(self, response: httpx.Response, upstream: Upstream, *,
                      funded_by_user: bool) -> None:
        """The upstream answered with an error (or not with a stream): raise it."""
        try:
            with mapped_transport_errors("reading the error"):
                async with asyncio.timeout(upstream.settings.idle_timeout_s):
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
        raise upstream.error(status, raw, response.headers, funded_by_user=funded_by_user)

    async def _pump(
        self,
        stream: httpx.AsyncByteStream,
        send: Send,
        *,
        flag: StreamFlag,
        meter: Meter,
        outcome: Outcome,
        idle_s: float,
    ) -> None:
        """Forward events until ``[DONE]`` (returns) or a reason to stop (raises End)."""
        checkpoint_s = self.checkpoint_interval_s
        loop = asyncio.get_running_loop()
        pending = b""
        next_checkpoint = loop.time() + checkpoint_s
        idle = IdleTimer(self._idle_timers(loop), idle_s)
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
                            raise End("upstream_error", unusable())
                        pending = buf
                        continue
                    cut = last + 2
                    pending = buf[cut:]
                    forward_to = await meter.scan(buf, cut, flag=flag, outcome=outcome)
                    if meter.skip is not None:
                        buf, cut, forward_to = _without(buf, meter, cut, forward_to)
                    if forward_to < cut:
                        if forward_to:
                            await send({"type": "http.response.body",
                                        "body": buf[:forward_to], "more_body": True})
                        assert meter.stop is not None
                        raise meter.stop
                    if meter.done:
                        # Everything before [DONE] goes at once; [DONE] itself waits for
                        # the settlement and leaves with the end of the response.
                        start = 0
                        if meter.done_at >= 0:
                            start, meter.done_at = meter.done_at, -1
                            idle.shorten(AFTER_DONE_S)
                            if start:
                                await send({"type": "http.response.body",
                                            "body": buf[:start], "more_body": True})
                        meter.final += buf[start:cut]
                        continue
                    if cut:
                        await send({"type": "http.response.body",
                                    "body": buf[:cut] if len(buf) != cut else buf,
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
            raise End(
                "upstream_timeout",
                UpstreamTimeout(f"The upstream sent nothing for {idle_s:g} s."),
            ) from None
        except End:
            raise
        except Exception as exc:  # transport errors, mapped in the one place
            if meter.done:
                return
            error = stream_failure(exc)
            raise End(
                "upstream_timeout" if isinstance(error, UpstreamTimeout) else "upstream_error",
                error,
            ) from None
        if not meter.done:
            raise End("upstream_error", UpstreamError("The upstream ended the stream early."))


def _noted(noted: asyncio.Future[None]) -> None:
    if not noted.cancelled() and noted.exception() is not None:
        log.warning("could not keep a generation id with its hold: %r", noted.exception())


def _without(buf: bytes, meter: Meter, cut: int, forward_to: int) -> tuple[bytes, int, int]:
    """``buf`` less the spans the meter dropped, with ``cut``, ``forward_to`` and the
    meter's ``[DONE]`` offset moved to match (rare: a usage chunk the client did not ask
    for)."""
    assert meter.skip is not None
    spans, meter.skip = meter.skip, None
    parts: list[bytes] = []
    last = 0
    removed_before_cut = removed_before_forward = removed_before_done = 0
    for start, stop in spans:
        parts.append(buf[last:start])
        size = stop - start
        if stop <= cut:
            removed_before_cut += size
        if stop <= forward_to:
            removed_before_forward += size
        if meter.done_at >= 0 and stop <= meter.done_at:
            removed_before_done += size
        last = stop
    parts.append(buf[last:])
    if meter.done_at >= 0:
        meter.done_at -= removed_before_done
    return b"".join(parts), cut - removed_before_cut, forward_to - removed_before_forward


def _usage_event(outcome: Outcome, charged_nano: int) -> bytes:
    return (
        b"data: "
        + orjson.dumps({
            "id": outcome.generation_id or "",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": outcome.model,
            "choices": [],
            "usage": {
                "prompt_tokens": outcome.prompt_tokens,
                "completion_tokens": outcome.completion_tokens,
                "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
                "cost": nano_to_usd(charged_nano),
            },
        })
        + b"\n\n"
    )


def _sse_headers(generation_id: str | None) -> list[tuple[bytes, bytes]]:
    headers = list(SSE_HEADERS)
    if generation_id:
        headers.append((b"x-generation-id", generation_id.encode()))
    return headers

