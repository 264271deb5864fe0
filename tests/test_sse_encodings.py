"""The running estimate is an upper bound for every valid JSON spelling of a chunk:
spaces, key order, escapes (in text and in keys), as upstreams differ."""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sse import token_bound

TEXT_FIELDS = ("content", "reasoning", "refusal")

texts = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"]), min_size=0, max_size=40
)


def _shuffled(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rng) for v in value]
    return value


def _escape_keys(raw: str, rng: random.Random) -> str:
    """Rewrite some keys with \\u escapes (valid JSON, as odd as it gets)."""
    for key in ("content", "reasoning", "arguments", "delta", "choices"):
        if rng.random() < 0.3:
            escaped = "".join(f"\\u{ord(c):04x}" for c in key)
            raw = raw.replace(f'"{key}"', f'"{escaped}"')
    return raw


def encode(doc: dict[str, Any], *, style: int, rng: random.Random) -> bytes:
    doc = _shuffled(doc, rng)
    if style == 0:
        return orjson.dumps(doc)
    if style == 1:
        return json.dumps(doc).encode()  # Python's default: ", " and ": ", ASCII escapes
    if style == 2:
        return json.dumps(doc, ensure_ascii=False, separators=(" ,", " : ")).encode()
    if style == 3:
        return json.dumps(doc, separators=(",", ":")).encode()
    return _escape_keys(json.dumps(doc, ensure_ascii=rng.random() < 0.5), rng).encode()


def chunk(delta: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "gen-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "openai/gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }


@settings(max_examples=400, deadline=None)
@given(
    fields=st.dictionaries(st.sampled_from(TEXT_FIELDS), texts, min_size=1),
    arguments=st.one_of(st.none(), texts),
    style=st.integers(min_value=0, max_value=4),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_bound_covers_the_text_in_any_spelling(
    fields: dict[str, str], arguments: str | None, style: int, seed: int
) -> None:
    delta: dict[str, Any] = {"role": "assistant", **fields}
    generated = sum(len(t.encode()) for t in fields.values())
    if arguments is not None:
        delta["tool_calls"] = [{"index": 0, "function": {"name": "f", "arguments": arguments}}]
        generated += len(arguments.encode()) + 1
    event = b"data: " + encode(chunk(delta), style=style, rng=random.Random(seed)) + b"\n\n"
    assert token_bound(event) >= generated


@settings(max_examples=100, deadline=None)
@given(
    parts=st.lists(texts, min_size=1, max_size=6),
    style=st.integers(min_value=0, max_value=4),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_bound_over_a_run_covers_every_event(parts: list[str], style: int, seed: int) -> None:
    rng = random.Random(seed)
    run = b"".join(
        b"data: " + encode(chunk({"content": p}), style=style, rng=rng) + b"\n\n"
        for p in parts
    )
    assert token_bound(run) >= sum(len(p.encode()) for p in parts)


def test_compact_and_spaced_spellings_count_alike() -> None:
    doc = chunk({"content": "hello world"})
    compact = b"data: " + orjson.dumps(doc) + b"\n\n"
    spaced = b"data: " + json.dumps(doc).encode() + b"\n\n"
    assert token_bound(compact) == token_bound(spaced) == len("hello world")


def test_text_as_parts_counts_the_rest_of_the_run() -> None:
    event = b'data: {"choices":[{"delta":{"content":[{"type":"text","text":"hi"}]}}]}\n\n'
    assert token_bound(event) >= 2


def test_a_key_that_is_a_value_is_not_counted_as_text() -> None:
    event = b'data: {"choices":[{"delta":{"role":"content","content":"ab"}}]}\n\n'
    assert token_bound(event) == 2


def test_a_string_that_does_not_close_counts_the_whole_run() -> None:
    event = b'data: {"choices":[{"delta":{"content":"abc}]}\n\n'
    assert token_bound(event) == len(event)


def test_text_keys_in_other_strings_are_not_fields() -> None:
    # Inside a string a quote is escaped: a key's spelling there is not a key.
    event = (b'data: {"model":"a \\"content\\": \\"x\\"","choices":[{"delta":'
             b'{"content":"hi"}}]}\n\n')
    assert token_bound(event) == 2
