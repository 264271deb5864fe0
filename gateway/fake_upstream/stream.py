"""The streamed chat completion, its waits, and the faults that strike mid-stream."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Final

from starlette.types import Receive, Send

from gateway.fake_upstream import wire
from gateway.fake_upstream.knobs import Knobs

__all__ = ["HANG_S", "ClientWatch", "Outcome", "Plan", "stream_completion"]

HANG_S: Final = 600.0
"""The longest any fault keeps a request open."""

_MID_STREAM_FAULTS: Final = frozenset({"reset", "hang_mid_stream", "malformed", "mid_stream_error"})


class ClientWatch:
    """Notices the client going away, so that waits end early and hangs are cancellable.

    The request body has been read before any wait, so the next ASGI `receive()` can only
    be `http.disconnect`: either the client left, or the response completed. The watching
    task is started lazily, at the first wait, so requests that never wait cost nothing.
    """

    __slots__ = ("_gone", "_receive", "_task")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._gone = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def gone(self) -> bool:
        """Whether the client is known to have disconnected."""
        return self._gone.is_set()

    async def pause(self, seconds: float) -> bool:
        """Wait up to `seconds`; return True (at once) if the client disconnected."""
        if self._task is None:
            self._task = asyncio.create_task(self._watch())
        try:
            async with asyncio.timeout(seconds):
                await self._gone.wait()
        except TimeoutError:
            return False
        return True

    async def _watch(self) -> None:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self._gone.set()

    def close(self) -> None:
        """Stop watching; call when the request is done."""
        if self._task is not None:
            self._task.cancel()


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a generation produced and was billed: the basis of its record and its bill.

    `completion` counts every billed completion token (content and hidden reasoning);
    `tail_s` is how long a provider that cannot cancel keeps generating after an abort.
    """

    sent: int
    completion: int
    reasoning: int
    finish: str | None
    cancelled: bool
    tail_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Plan:
    """What one chat completion request will produce, decided before the first byte.

    `chunks` content tokens follow `reasoning` hidden reasoning tokens, together within
    the request's bound; `extra_reasoning` (a fault) bills more hidden tokens past it.
    """

    head: wire.Head
    knobs: Knobs
    writer: wire.Writer
    model_id: str
    prompt_tokens: int
    chunks: int
    reasoning: int
    finish: str
    headers: list[tuple[bytes, bytes]]
    comments: bool
    include_usage: bool
    cancellable: bool
    key: str

    @property
    def extra_reasoning(self) -> int:
        """Hidden tokens billed past the bound by the `extra_reasoning` fault."""
        return self.knobs.hidden_tokens if self.knobs.fault == "extra_reasoning" else 0

    def full(self, *, cancelled: bool, tail_s: float = 0.0) -> Outcome:
        """The whole planned generation, as billed when it ran to its end."""
        reasoning = self.reasoning + self.extra_reasoning
        return Outcome(
            sent=self.chunks,
            completion=self.chunks + reasoning,
            reasoning=reasoning,
            finish=self.finish,
            cancelled=cancelled,
            tail_s=tail_s,
        )

    def aborted(self, sent: int, *, reasoned: bool) -> Outcome:
        """The outcome of an abort after `sent` content chunks (`reasoned`: past the wait).

        A cancellable provider stops and bills what it generated; one that cannot cancel
        runs to its end, billed in full, for the time the rest would have taken.
        """
        if not self.cancellable:
            k = self.knobs
            rest = (self.chunks - sent) * k.gap_ms + (0 if reasoned else k.ttft_ms)
            full = self.full(cancelled=True, tail_s=rest / 1000)
            return Outcome(
                sent=sent,
                completion=full.completion,
                reasoning=full.reasoning,
                finish=full.finish,
                cancelled=True,
                tail_s=full.tail_s,
            )
        reasoning = self.reasoning if reasoned else 0
        return Outcome(
            sent=sent, completion=sent + reasoning, reasoning=reasoning, finish=None, cancelled=True
        )


async def _send_event(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def _first_token_wait(plan: Plan, send: Send, watch: ClientWatch) -> bool:
    """Wait the time to first token, with keep-alive comments; True if the client left."""
    k = plan.knobs
    remaining = k.ttft_ms / 1000
    if plan.comments:
        interval = k.comment_interval_ms / 1000
        while remaining > interval:
            if await watch.pause(interval):
                return True
            await _send_event(send, wire.COMMENT)
            remaining -= interval
    return remaining > 0 and await watch.pause(remaining)


async def stream_completion(plan: Plan, send: Send, watch: ClientWatch) -> Outcome:
    """Stream the completion, or as much of it as the request's fault allows."""
    k, writer = plan.knobs, plan.writer
    await send({"type": "http.response.start", "status": 200, "headers": plan.headers})
    if plan.comments:
        await _send_event(send, wire.COMMENT)
    if await _first_token_wait(plan, send, watch):
        return plan.aborted(0, reasoned=False)
    if (first := writer.first()) is not None:
        await _send_event(send, first)

    content = writer.content(k.chunk_text)
    gap = k.gap_ms / 1000
    fault_at = min(k.fault_after, plan.chunks) if k.fault in _MID_STREAM_FAULTS else -1
    for sent in range(plan.chunks + 1):  # `sent` content chunks are out at the top
        if sent == fault_at:
            if k.fault == "malformed":
                await _send_event(send, wire.MALFORMED)
            elif k.fault == "mid_stream_error":
                message = k.message or "Provider disconnected unexpectedly"
                await _send_event(send, writer.stream_error(code=k.error_code, message=message))
                await send({"type": "http.response.body", "body": wire.DONE})
                return Outcome(
                    sent=sent,
                    completion=sent + plan.reasoning,
                    reasoning=plan.reasoning,
                    finish="error",
                    cancelled=False,
                )
            else:
                if k.fault == "hang_mid_stream":
                    await watch.pause(HANG_S)
                # Returning before the last body message makes uvicorn close the
                # connection: the client sees a chunked body that never ends.
                return plan.aborted(sent, reasoned=True)
        if sent == plan.chunks:
            break
        if sent and gap > 0 and await watch.pause(gap):
            return plan.aborted(sent, reasoned=True)
        await _send_event(send, content)

    outcome = plan.full(cancelled=False)
    await _send_event(send, writer.finish(plan.finish))
    if plan.include_usage:
        cost = wire.cost_of(
            model_id=plan.model_id, prompt=plan.prompt_tokens, completion=outcome.completion
        )
        usage = writer.usage(
            prompt=plan.prompt_tokens,
            completion=outcome.completion,
            reasoning=outcome.reasoning,
            cost=None if k.fault == "usage_without_cost" else cost,
            finish=plan.finish,
        )
        await _send_event(send, usage)
    gone = watch.gone  # read before the last message, which ends the watch itself
    await send({"type": "http.response.body", "body": wire.DONE})
    return replace(outcome, cancelled=True) if gone else outcome
