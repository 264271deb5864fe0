"""The running estimate of one stream, checked against its hold.

Per event the meter adds an upper bound of the tokens it carries (:func:`token_bound`,
true for any JSON spelling) and compares it with what the hold pays for: an integer
compare. When the estimate outgrows the hold the hold is extended in the store; when the
cap cannot cover it, or the connection is revoked, the stream is to stop (:class:`End`).
The estimate is the backstop: the gateway already bounds ``max_tokens`` by the hold, so an
upstream that honours it never reaches the cut.

Rare events (usage, errors, ``[DONE]``) are parsed; the rest are only measured.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import orjson

from gateway.errors import ConnectionRevoked, GatewayError, SpendCapReached, UpstreamError
from gateway.live import StreamFlag
from gateway.metering import Price
from gateway.relay.outcome import Outcome
from gateway.sse import (
    DONE,
    after_comments,
    first_rare,
    template_of,
    token_bound,
    well_formed,
)
from gateway.store.base import Extension, Hold
from gateway.upstreams.base import Upstream

# How many times a stream tries to learn its template (a read whose first event is not the
# template tries again): once or twice in the common case, and again at the stream's end
# (finish, usage); a stream whose events keep changing shape stops trying.
TEMPLATES = 3


class End(Exception):
    """Ends the pump early: why, and the error the client is told."""

    def __init__(self, status: str, error: GatewayError) -> None:
        super().__init__(status)
        self.status = status
        self.error = error


class Extender(Protocol):
    """What a running stream needs of the store."""

    async def extend(self, hold_id: str, *, add_nano: int, used_nano: int) -> Extension: ...
    def note_generation(self, hold_id: str, generation_id: str) -> asyncio.Future[None]: ...


def revoked() -> ConnectionRevoked:
    return ConnectionRevoked("The connection was revoked.")


def unusable() -> UpstreamError:
    return UpstreamError("The upstream sent an unusable chunk.")


def cap_reached() -> SpendCapReached:
    return SpendCapReached("This user's monthly spending cap for this app is reached.")


class Meter:
    """One stream's estimate and hold. ``strip_usage``: drop the usage-only chunk (the
    client did not ask for it); ``lowered_bound``: the ``max_tokens`` the gateway lowered
    to fit the cap, if it did (reaching it ends the stream as the cap does)."""

    __slots__ = (
        "completion_pico", "completion_tokens", "covered", "done", "done_at", "extend_nano",
        "final", "hold", "hold_nano", "lowered_bound", "price", "prompt_nano",
        "prompt_tokens", "saw_usage", "skip", "stop", "store", "strip_usage", "template",
        "templates_left", "upstream",
    )

    def __init__(
        self, *, price: Price, prompt_tokens: int, hold: Hold, store: Extender,
        extend_tokens: int, upstream: Upstream, strip_usage: bool = False,
        lowered_bound: int | None = None,
    ) -> None:
        self.price = price
        self.prompt_tokens = prompt_tokens
        self.prompt_nano = price.cost_nano(prompt_tokens, 0)
        self.completion_pico = price.completion
        self.completion_tokens = 0
        self.hold = hold
        self.hold_nano = hold.amount_nano
        self.store = store
        self.upstream = upstream
        self.extend_nano = price.cost_nano(0, extend_tokens)
        self.strip_usage = strip_usage
        self.lowered_bound = lowered_bound
        self.saw_usage = False
        self.done = False
        self.final = b""  # [DONE] and what follows it, sent after settlement
        self.done_at = -1  # where [DONE] starts in the read being scanned
        # Spans of the read being scanned that are not forwarded (a usage chunk nobody
        # asked for): rare, so a list built only then.
        self.skip: list[tuple[int, int]] | None = None
        self.covered = self._covered_tokens()
        self.stop: End | None = None
        # The stream's content events, as the bytes around their text (template_of),
        # kept as (length, hash) of each: a stream held open keeps no copy of its
        # events. Tried at most TEMPLATES times a stream.
        self.template: tuple[int, int, int, int] | None = None
        self.templates_left = TEMPLATES

    def estimate_nano(self) -> int:
        return self.prompt_nano + -(-self.completion_tokens * self.completion_pico // 1000)

    def charge_estimate(self, outcome: Outcome) -> None:
        # Our own over-count is not the upstream's report: it is charged up to the hold
        # and never booked as the operator's excess.
        outcome.set_cost(
            cost=min(self.estimate_nano(), self.hold_nano), source="estimate",
            prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
        )
        outcome.estimate_only = True

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

    async def scan(
        self, buf: bytes, end: int, *, flag: StreamFlag, outcome: Outcome, runs: bool = True
    ) -> int:
        """Meter the events in ``buf[:end]``; the offset up to which they may be forwarded
        (less any :attr:`skip` spans). ``runs=False`` meters event by event only (the
        reference the run shortcut is tested against).

        First, events that are the stream's template (its content events: the same bytes
        around a text without quotes) are counted by their text's length, found with one
        byte search each (the bytes around it compared with the stream's template by
        length and hash, CPython's keyed SipHash: a false match is a 2**-64 chance, and
        would only misjudge that event's bound; later events of the same read are
        compared with the first one's bytes).

        Then the run of events before the first rare one (usage, error, ``[DONE]``) is
        metered as a whole when the hold covers all of it and it is well formed: one
        bound, one compare. Otherwise, and for the rest, event by event, so a cut lands
        exactly between the last covered event and the first uncovered one. (Nothing can
        revoke the stream while this runs without awaiting, so one flag check covers the
        run.)
        """
        if flag.revoked:
            self.stop = End("cut_revoked", revoked())
            return 0
        pos = 0
        if runs:
            pos = self._templated(buf, end)
            run_end = first_rare(buf, end, pos) if pos < end else pos
            if run_end > pos:
                tokens = token_bound(buf, pos, run_end)
                if (
                    self.saw_usage or self.completion_tokens + tokens <= self.covered
                ) and well_formed(buf, pos, run_end):
                    self.completion_tokens += tokens
                    pos = run_end
        if pos == end:
            return end
        return await self._scan_events(buf, pos, end, flag=flag, outcome=outcome)

    def _templated(self, buf: bytes, end: int) -> int:
        """Count the events from the start of ``buf[:end]`` (after any comments) that are
        the template, as long as the hold covers them; where the first other event
        starts."""
        pos = after_comments(buf, 0, end) if buf.startswith(b":") else 0  # rare: a call
        if pos == end:
            return end
        # The first event is compared by hash; the rest of this read's with its bytes.
        template = self.template
        head = b"" if template is None else buf[pos:pos + template[0]]
        tail: bytes | None = None
        if template is None or hash(head) != template[1]:
            if self.templates_left <= 0:
                return pos
            self.templates_left -= 1
            learned = template_of(buf, pos, end)
            if learned is None:
                return pos  # the template learned before (if any) stays
            head, tail = learned
            template = self.template = (len(head), hash(head), len(tail), hash(tail))
        head_len, _, tail_len, tail_hash = template
        tokens, covered, saw_usage = self.completion_tokens, self.covered, self.saw_usage
        while True:
            text_end = buf.find(b'"', pos + head_len, end)
            if (
                text_end == -1
                or buf[text_end - 1] == 0x5C  # an escaped quote: the slow path reads it
                or text_end + tail_len > end
            ):
                break
            if tail is None:
                tail = buf[text_end:text_end + tail_len]
                if hash(tail) != tail_hash:
                    break
            elif not buf.startswith(tail, text_end):
                break
            counted = tokens + text_end - pos - head_len
            if counted > covered and not saw_usage:
                break
            tokens, pos = counted, text_end + tail_len
            if pos >= end or not buf.startswith(head, pos):
                break
        self.completion_tokens = tokens
        return pos

    async def _scan_events(
        self, buf: bytes, pos: int, end: int, *, flag: StreamFlag, outcome: Outcome
    ) -> int:
        while pos < end:
            nxt = buf.find(b"\n\n", pos, end)
            if flag.revoked:
                self.stop = End("cut_revoked", revoked())
                return pos
            if buf.startswith(b"data:", pos):
                start = pos + 6 if buf.startswith(b"data: ", pos) else pos + 5
                payload = buf[start:nxt]
                if payload == DONE:
                    if not self.done:
                        self.done, self.done_at = True, pos
                elif not payload or payload[0] != 0x7B or payload[-1] != 0x7D:
                    self.stop = End("upstream_error", unusable())
                    return pos
                else:
                    self.completion_tokens += token_bound(payload)
                    # Cheap supersets of the rare cases; _read_rare parses to be sure.
                    if (b'"usage"' in payload or b'"error"' in payload) and self._read_rare(
                        payload, outcome
                    ):
                        if self.skip is None:
                            self.skip = []
                        self.skip.append((pos, nxt + 2))
                    if self.completion_tokens > self.covered and not self.saw_usage:
                        estimate = self.estimate_nano()
                        if not await self.extend(estimate - self.hold_nano) or flag.revoked:
                            self.stop = End("cut_revoked", revoked())
                            return pos
                        if estimate > self.hold_nano:
                            self.stop = End("cut_cap", cap_reached())
                            return pos
            pos = nxt + 2
        return end

    def _read_rare(self, payload: bytes, outcome: Outcome) -> bool:
        """Read a usage or error chunk; True if the client is not to see it (a usage-only
        chunk it did not ask for, or one the gateway's own tail replaces)."""
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(doc, dict):
            return False
        if isinstance(doc.get("error"), dict):
            outcome.status = "upstream_error"
            outcome.error_code = UpstreamError.code
        usage = doc.get("usage")
        if not isinstance(usage, dict):
            return False
        cost = self.upstream.usage(usage, self.price)
        outcome.set_cost(cost=cost.cost_nano, source=cost.source,
                         prompt_tokens=cost.prompt_tokens,
                         completion_tokens=cost.completion_tokens)
        self.saw_usage = True
        if self.lowered_bound is not None and cost.completion_tokens >= self.lowered_bound:
            outcome.hit_lowered_bound = True
        usage_only = doc.get("choices") == []
        return usage_only and (self.strip_usage or outcome.hit_lowered_bound)
