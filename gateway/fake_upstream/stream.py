"""The streamed chat completion, its waits, and the faults that strike mid-stream."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
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
class Plan:
    """What one chat completion request will produce, decided before the first byte."""

    head: wire.Head
    knobs: Knobs
    model_id: str
    prompt_tokens: int
    chunks: int
    finish: str
    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a generation produced: the basis of its `/generation` record."""

    sent: int
    reasoning: int
    finish: str | None
    cancelled: bool


async def _send_event(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def _first_token_wait(plan: Plan, send: Send, watch: ClientWatch) -> bool:
    """Wait the time to first token, with keep-alive comments; True if the client left."""
    k = plan.knobs
    remaining = k.ttft_ms / 1000
    if k.processing_comments:
        interval = k.comment_interval_ms / 1000
        while remaining > interval:
            if await watch.pause(interval):
                return True
            await _send_event(send, wire.COMMENT)
            remaining -= interval
    return remaining > 0 and await watch.pause(remaining)


async def stream_completion(plan: Plan, send: Send, watch: ClientWatch) -> Outcome:
    """Stream the completion, or as much of it as the request's fault allows."""
    k = plan.knobs
    await send({"type": "http.response.start", "status": 200, "headers": plan.headers})
    if k.processing_comments:
        await _send_event(send, wire.COMMENT)
    if await _first_token_wait(plan, send, watch):
        return Outcome(sent=0, reasoning=0, finish=None, cancelled=True)

    content = wire.stream_content_event(plan.head, k.chunk_text)
    gap = k.gap_ms / 1000
    fault_at = min(k.fault_after, plan.chunks) if k.fault in _MID_STREAM_FAULTS else -1
    sent = 0
    for i in range(plan.chunks + 1):
        if i == fault_at:
            if k.fault == "malformed":
                await _send_event(send, wire.MALFORMED)
            elif k.fault == "mid_stream_error":
                message = k.message or "Provider disconnected unexpectedly"
                event = wire.mid_stream_error_event(plan.head, code=k.error_code, message=message)
                await _send_event(send, event)
                await send({"type": "http.response.body", "body": wire.DONE})
                return Outcome(sent=sent, reasoning=0, finish="error", cancelled=False)
            else:
                if k.fault == "hang_mid_stream":
                    await watch.pause(HANG_S)
                # Returning before the last body message makes uvicorn close the
                # connection: the client sees a chunked body that never ends.
                return Outcome(sent=sent, reasoning=0, finish=None, cancelled=True)
        if i == plan.chunks:
            break
        if i and gap > 0 and await watch.pause(gap):
            return Outcome(sent=sent, reasoning=0, finish=None, cancelled=True)
        await _send_event(send, content)
        sent += 1

    reasoning = k.hidden_tokens if k.fault == "extra_reasoning" else 0
    await _send_event(send, wire.finish_event(plan.head, plan.finish))
    if k.fault != "no_usage":
        completion = sent + reasoning
        cost = wire.cost_of(
            model_id=plan.model_id, prompt=plan.prompt_tokens, completion=completion
        )
        usage = wire.usage_event(
            plan.head,
            prompt=plan.prompt_tokens,
            completion=completion,
            reasoning=reasoning,
            cost=None if k.fault == "usage_without_cost" else cost,
            repeat_finish=plan.finish if k.usage_with_choice else None,
        )
        await _send_event(send, usage)
    cancelled = watch.gone  # read before the last message, which ends the watch itself
    await send({"type": "http.response.body", "body": wire.DONE})
    return Outcome(sent=sent, reasoning=reasoning, finish=plan.finish, cancelled=cancelled)
