"""The JSON spellings (compact, spaced, escaped, reordered): valid, equal in value, and
chosen per request or for the whole server."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Any

import httpx
import pytest

from gateway.fake_upstream import FakeUpstreamSettings, create_app
from gateway.fake_upstream.encoding import ENCODINGS, Number, dumps

from .helpers import chat, data, events, generation, stream

TEXT = "héllo/ "
CLAUDE = "anthropic/claude-3.5-sonnet"
# Each encoding's spelling of a content delta `{"content": "héllo/ "}` as it appears in
# the OpenAI-compatible dialect (the only key of the delta, so key order does not show).
CONTENT_SPELLING = {
    "compact": b'{"content":"h\xc3\xa9llo/ "}',
    "spaced": b'{"content": "h\\u00e9llo/ "}',
    "escaped": b'{"content":"h\\u00e9llo\\/ "}',
    "reordered": b'{"content":"h\xc3\xa9llo/ "}',
}


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randrange(-(10**12), 10**12)
    if kind in (2, 3):
        alphabet = 'ab é"\\/\n\t\u2028😀\x00<>&'
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(8)))
    if kind in (4, 5):
        return {f"k{rng.randrange(50)}": _value(rng, depth + 1) for _ in range(rng.randrange(5))}
    return [_value(rng, depth + 1) for _ in range(rng.randrange(5))]


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_every_encoding_decodes_to_the_same_value(encoding: str) -> None:
    rng = random.Random(f"encodings-{encoding}")
    for _ in range(300):
        value = _value(rng)
        encoded = dumps(value, encoding)  # type: ignore[arg-type]
        assert json.loads(encoded) == value
        if encoding == "spaced":
            assert encoded == json.dumps(value).encode()
        if encoding != "compact":
            assert encoded.isascii() or encoding == "reordered"


def test_numbers_keep_their_digits_and_keys_their_order() -> None:
    value = {"a": 1, "cost": Number("1.5e-7"), "z": [True, None]}
    assert dumps(value) == b'{"a":1,"cost":1.5e-7,"z":[true,null]}'
    assert dumps(value, "spaced") == b'{"a": 1, "cost": 1.5e-7, "z": [true, null]}'
    assert dumps(value, "reordered") == b'{"z":[true,null],"cost":1.5e-7,"a":1}'
    assert json.loads(dumps(value, "escaped"), parse_float=Decimal)["cost"] == Decimal("1.5e-7")


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_stream_and_record_in_each_encoding(client: httpx.Client, encoding: str) -> None:
    body = chat(chunks=3, chunk_text=TEXT, encoding=encoding, generation_delay_ms=0)
    response, evs = stream(client, body)
    chunks = [data(e) for e in evs if e.startswith(b"data: {")]
    assert [c["choices"][0]["delta"]["content"] for c in chunks[:3]] == [TEXT] * 3
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == 3
    raw = b"".join(evs)
    if encoding == "spaced":
        assert b'"content": "h\\u00e9llo/ "' in raw
        assert b'"cost": ' in raw
    elif encoding == "escaped":
        assert b'"content":"h\\u00e9llo\\/ "' in raw
    elif encoding == "reordered":
        assert evs[1].startswith(b'data: {"choices":')
    else:
        assert '"content":"héllo/ "'.encode() in raw
    found = client.get("/generation", params={"id": response.headers["x-generation-id"]})
    assert (b'"total_cost": ' in found.content) == (encoding == "spaced")
    assert generation(client, response.headers["x-generation-id"])["total_cost"] == usage["cost"]


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_openai_dialect_in_each_encoding(openai_client: httpx.Client, encoding: str) -> None:
    body = chat(chunks=2, chunk_text=TEXT, encoding=encoding)
    body["stream_options"] = {"include_usage": True}
    _, evs = stream(openai_client, body)
    assert sum(CONTENT_SPELLING[encoding] in e for e in evs) == 2
    assert data(evs[-2])["usage"]["completion_tokens"] == 2


async def test_server_wide_encoding() -> None:
    app = create_app(FakeUpstreamSettings(encoding="spaced", chunks=2, generation_delay_ms=0))
    transport = httpx.ASGITransport(app=app)
    headers = {"authorization": "Bearer x"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://fake/api/v1", headers=headers
    ) as c:
        streamed = await c.post("/chat/completions", json=chat())
        answered = await c.post("/chat/completions", json=chat(stream=False))
        compact = await c.post("/chat/completions", json=chat(stream=False, encoding="compact"))
    assert all(b'"object": "chat.completion.chunk"' in e for e in events(streamed.content)[1:-1])
    assert answered.content.startswith(b'{"id": "gen-')
    assert compact.content.startswith(b'{"id":"gen-')


async def test_a_model_of_its_own_encoding() -> None:
    settings = FakeUpstreamSettings(
        chunks=1, model_encodings=(("anthropic/claude-3.5-sonnet", "spaced"),)
    )
    transport = httpx.ASGITransport(app=create_app(settings))
    headers = {"authorization": "Bearer x"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://fake/api/v1", headers=headers
    ) as c:
        claude = await c.post("/chat/completions", json=chat(stream=False, model=CLAUDE))
        mini = await c.post("/chat/completions", json=chat(stream=False))
        asked = await c.post(
            "/chat/completions", json=chat(stream=False, model=CLAUDE, encoding="compact")
        )
    assert claude.content.startswith(b'{"id": "gen-')
    assert mini.content.startswith(b'{"id":"gen-')
    assert asked.content.startswith(b'{"id":"gen-')
    with pytest.raises(ValueError, match="not in the catalog"):
        FakeUpstreamSettings(model_encodings=(("nobody/nothing", "spaced"),))
