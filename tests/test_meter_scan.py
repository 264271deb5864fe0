"""The relay's meter: metering a run of events at once must never forward more, nor
count differently, than metering them one by one."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from typing import Any

import orjson
import pytest

from gateway.config import settings_from_mapping
from gateway.live import StreamFlag
from gateway.metering import Price
from gateway.relay import Meter, Outcome
from gateway.sse import first_rare, template_of, token_bound, well_formed
from gateway.store.base import Extension, Hold
from gateway.upstreams import Upstreams

PRICE = Price(prompt=1_000, completion=2_000)  # pico-USD per token


class FixedStore:
    """A store that grants nothing more (or revokes) when asked to extend."""

    def __init__(self, *, grant: int = 0, revoked: bool = False) -> None:
        self.grant, self.revoked, self.calls = grant, revoked, 0

    async def extend(self, hold_id: str, *, add_nano: int, used_nano: int) -> Extension:
        self.calls += 1
        return Extension(granted_nano=self.grant if add_nano else 0, revoked=self.revoked)

    def note_generation(self, hold_id: str, generation_id: str) -> asyncio.Future[None]:
        raise AssertionError("the meter itself never keeps generation ids")


UPSTREAM = Upstreams(settings_from_mapping({}).upstreams).default


def meter(hold_nano: int, store: FixedStore) -> Meter:
    return Meter(price=PRICE, prompt_tokens=10, hold=Hold("hold_1", hold_nano, "2026-11"),
                 store=store, extend_tokens=16, upstream=UPSTREAM)


def content(text: str) -> bytes:
    doc = {"id": "gen-1", "choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + orjson.dumps(doc) + b"\n\n"


USAGE = (b'data: {"id":"gen-1","choices":[],"usage":{"prompt_tokens":10,'
         b'"completion_tokens":3,"cost":0.00001}}\n\n')
COMMENT = b": OPENROUTER PROCESSING\n\n"
DONE = b"data: [DONE]\n\n"
MALFORMED = b"data: {not json\n\n"
# Events a sane upstream does not send, which must not confuse the run check.
ODD = (b": ends like json}\n\n", b"\n\n", b"data: {}\n\n", b"data: \n\n", b"data: }\n\n",
       b"data: {\n\n", b"event: x\ndata: {}\n\n")


def test_token_bound_over_a_run_is_the_sum_over_its_events() -> None:
    events = [content("tok "), COMMENT, content('say "hi"'), content("é" * 5)]
    run = b"".join(events)
    assert token_bound(run) == sum(token_bound(e) for e in events)
    assert token_bound(run, len(events[0]), len(run)) == sum(token_bound(e) for e in events[1:])


@pytest.mark.parametrize(
    ("events", "rare_index"),
    [
        ([content("a"), content("b")], None),
        ([content("a"), USAGE, DONE], 1),
        ([USAGE, DONE], 0),
        ([content("a"), COMMENT, DONE], 2),
        ([DONE], 0),
        ([content("a"), b'data: {"error":{"code":502,"message":"x"}}\n\n'], 1),
        ([content('the word \\"usage\\" in text')], None),
    ],
)
def test_first_rare_finds_the_start_of_the_first_rare_event(
    events: list[bytes], rare_index: int | None
) -> None:
    buf = b"".join(events)
    expected = len(buf) if rare_index is None else len(b"".join(events[:rare_index]))
    assert first_rare(buf, len(buf)) == expected


@pytest.mark.parametrize(
    ("events", "ok"),
    [
        ([content("a"), COMMENT, content("b")], True),
        ([content("a"), MALFORMED], False),
        ([b"data: \n\n"], False),
        ([b"data: [1]\n\n"], False),
        ([COMMENT, b"event: x\n\n"], True),
        ([content("a"), b": x}\n\n", content("b")], True),
        ([content("a"), b"\n\n", content("b")], True),
        ([content("a"), b"data: }\n\n", content("b")], False),
        ([content("a"), content("b"), b"data: {\n\n"], False),
    ],
)
def test_well_formed(events: list[bytes], ok: bool) -> None:
    buf = b"".join(events)
    assert well_formed(buf, 0, len(buf)) is ok


# Texts that a content event's template must not be fooled by: quotes, backslashes,
# escapes, the markers of rare events, the template's own bytes.
TRICKY = ('say "hi"', "a\\", "\\", "back\\slash\"", "data: [DONE]", '"usage"', "\n\n",
          "é\u2028", '"}]}', "x" * 40, "")


def _event(rng: random.Random) -> bytes:
    """A content event, most often in the stream's one shape, sometimes in another."""
    roll = rng.random()
    text = rng.choice(TRICKY) if roll < 0.2 else "x" * rng.randint(0, 12)
    if roll < 0.9:
        return content(text)
    if roll < 0.93:  # spaced, as Python's json writes it
        doc = {"id": "gen-1", "choices": [{"index": 0, "delta": {"content": text}}]}
        return b"data: " + json.dumps(doc).encode() + b"\n\n"
    if roll < 0.96:  # two text fields
        doc = {"id": "gen-1", "choices": [{"index": 0, "delta": {"content": text,
                                                                  "reasoning": "r" * 3}}]}
        return b"data: " + orjson.dumps(doc) + b"\n\n"
    finish = {"id": "gen-1", "choices": [{"index": 0, "delta": {"content": ""},
                                          "finish_reason": "stop"}]}
    return b"data: " + orjson.dumps(finish) + b"\n\n"


def _random_stream(rng: random.Random) -> list[bytes]:
    events: list[bytes] = []
    for _ in range(rng.randint(0, 30)):
        roll = rng.random()
        if roll < 0.1:
            events.append(COMMENT)
        elif roll < 0.13:
            events.append(MALFORMED)
        elif roll < 0.16:
            events.append(rng.choice(ODD))
        else:
            events.append(_event(rng))
    if rng.random() < 0.5:
        events += [USAGE, DONE]
    elif rng.random() < 0.5:
        events.append(DONE)
    return events


async def _outcome(
    buf: bytes, *, hold_nano: int, grant: int, revoked: bool, fast: bool
) -> tuple[Any, ...]:
    store = FixedStore(grant=grant, revoked=revoked)
    m = meter(hold_nano, store)
    result = Outcome(model="m")
    flag = StreamFlag()
    forward_to = await m.scan(buf, len(buf), flag=flag, outcome=result, runs=fast)
    stop = None if m.stop is None else m.stop.status
    return (forward_to, m.completion_tokens, m.done, m.done_at, m.saw_usage, stop,
            m.hold_nano, result.cost_nano)


async def test_run_metering_matches_event_by_event_metering() -> None:
    rng = random.Random(20261123)
    for _ in range(5000):
        buf = b"".join(_random_stream(rng))
        hold_nano = rng.choice([10, 50, 100, 200, 400, 10_000])
        grant = rng.choice([0, 0, 40])
        revoked = rng.random() < 0.1
        fast = await _outcome(buf, hold_nano=hold_nano, grant=grant, revoked=revoked, fast=True)
        slow = await _outcome(buf, hold_nano=hold_nano, grant=grant, revoked=revoked, fast=False)
        assert fast == slow, buf


async def _outcome_in_reads(
    events: list[bytes], cuts: list[int], *, hold_nano: int, grant: int, fast: bool
) -> tuple[Any, ...]:
    """Meter the stream read by read (cut between events at ``cuts``), as the relay
    does: what was forwarded, counted and charged, and where it stopped."""
    store = FixedStore(grant=grant)
    m = meter(hold_nano, store)
    result = Outcome(model="m")
    flag = StreamFlag()
    forwarded = 0
    bounds = [0, *sorted(set(cuts)), len(events)]
    for a, b in itertools.pairwise(bounds):
        buf = b"".join(events[a:b])
        if not buf:
            continue
        forward_to = await m.scan(buf, len(buf), flag=flag, outcome=result, runs=fast)
        m.skip = None
        forwarded += forward_to
        if m.stop is not None or m.done:
            break
    stop = None if m.stop is None else m.stop.status
    return (forwarded, m.completion_tokens, m.done, m.saw_usage, stop, m.hold_nano,
            result.cost_nano)


async def test_templated_metering_over_many_reads_matches_event_by_event() -> None:
    rng = random.Random(20261202)
    for _ in range(3000):
        events = _random_stream(rng)
        cuts = [rng.randint(0, len(events)) for _ in range(rng.randint(0, 6))]
        hold_nano = rng.choice([10, 50, 100, 200, 400, 10_000])
        grant = rng.choice([0, 0, 40])
        fast = await _outcome_in_reads(events, cuts, hold_nano=hold_nano, grant=grant,
                                       fast=True)
        slow = await _outcome_in_reads(events, cuts, hold_nano=hold_nano, grant=grant,
                                       fast=False)
        assert fast == slow, (events, cuts)


def test_a_template_is_the_bytes_around_the_one_text() -> None:
    event = content("hello")
    head, tail = template_of(event, 0, len(event)) or (b"", b"")
    assert event == head + b"hello" + tail
    assert head.endswith(b'"content":"') and tail.startswith(b'"')
    # Not a template: two text fields, a backslash outside the text, a rare event.
    two = b'data: {"choices":[{"delta":{"content":"a","reasoning":"b"}}]}\n\n'
    escaped_key = b'data: {"choices":[{"delta":{"\\u0063ontent":"a","content":"b"}}]}\n\n'
    for odd in (two, escaped_key, USAGE, DONE, COMMENT, MALFORMED):
        assert template_of(odd, 0, len(odd)) is None


async def test_a_revoked_flag_stops_before_the_first_event() -> None:
    buf = content("a") + content("b")
    m = meter(10_000, FixedStore())
    flag = StreamFlag()
    flag.revoked = True
    assert await m.scan(buf, len(buf), flag=flag, outcome=Outcome(model="m")) == 0
    assert m.stop is not None
    assert m.stop.status == "cut_revoked"
